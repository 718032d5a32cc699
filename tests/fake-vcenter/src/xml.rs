//! A minimal XML tree for reading SOAP requests (local names only).

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// One element.
#[derive(Debug, Clone, Default)]
pub struct El {
    /// Local name.
    pub name: String,
    /// (qualified name, value).
    pub attrs: Vec<(String, String)>,
    /// Text content.
    pub text: String,
    /// Children.
    pub children: Vec<El>,
}

impl El {
    /// First child by local name.
    pub fn child(&self, n: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == n)
    }
    /// All children by local name.
    pub fn all<'a>(&'a self, n: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == n)
    }
    /// Trimmed text of a child.
    pub fn text_of(&self, n: &str) -> Option<String> {
        self.child(n).map(|c| c.text.trim().to_string())
    }
    /// Attribute by local name.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.rsplit(':').next() == Some(local) && !k.starts_with("xmlns"))
            .map(|(_, v)| v.as_str())
    }
}

fn start(e: &BytesStart<'_>) -> Result<El, String> {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let v = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
        attrs.push((String::from_utf8_lossy(a.key.as_ref()).into_owned(), v));
    }
    Ok(El {
        name,
        attrs,
        ..Default::default()
    })
}

/// Parse a document into its root element.
pub fn parse(doc: &str) -> Result<El, String> {
    let mut r = Reader::from_str(doc);
    let mut stack: Vec<El> = Vec::new();
    let mut root = None;
    loop {
        match r.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                if stack.len() > 200 {
                    return Err("too deep".into());
                }
                stack.push(start(&e)?)
            }
            Event::Empty(e) => {
                let el = start(&e)?;
                match stack.last_mut() {
                    Some(p) => p.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("unbalanced")?;
                match stack.last_mut() {
                    Some(p) => p.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::GeneralRef(g) => {
                let c = match g.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c,
                    None => match &*g.decode().map_err(|e| e.to_string())? {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(format!("unknown entity {other}")),
                    },
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(c);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    root.ok_or_else(|| "empty document".into())
}

/// Escape text for XML.
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}
