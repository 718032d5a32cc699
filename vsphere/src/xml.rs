//! A small, namespace-tolerant XML element tree, built with quick-xml.
//!
//! Responses from vSphere are parsed into [`Element`]s whose names are *local* names (the
//! namespace prefix is dropped), so `soapenv:Body`, `soap:Body` and `Body` all read as
//! `Body`. Attributes keep their local name too (`xsi:type` → `type`, but see
//! [`Element::xsi_type`]). Unknown elements are kept and simply ignored by the readers.
//! The parser bounds depth and element count so that a hostile server cannot make it
//! recurse or allocate without limit (the body size is capped before parsing).

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Deepest element nesting accepted in a response.
pub const MAX_XML_DEPTH: usize = 256;
/// Most elements accepted in one response.
pub const MAX_XML_ELEMENTS: usize = 2_000_000;

/// One XML element: local name, attributes, concatenated text, child elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name, without namespace prefix.
    pub name: String,
    /// Attributes as (qualified name, value), e.g. `("xsi:type", "VirtualDisk")`.
    pub attrs: Vec<(String, String)>,
    /// Text directly inside this element (entities resolved).
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Element>,
}

impl Element {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text of the first child with this name, trimmed.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// Value of an attribute by local name (prefix ignored).
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.rsplit(':').next() == Some(local) && !k.starts_with("xmlns"))
            .map(|(_, v)| v.as_str())
    }

    /// Value of the attribute named exactly `name` (no prefix): `type` of a moref, not
    /// `xsi:type`, whichever comes first.
    pub fn plain_attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `xsi:type` attribute without its prefix (`xsd:string` → `string`).
    pub fn xsi_type(&self) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.ends_with(":type"))
            .map(|(_, v)| v.rsplit(':').next().unwrap_or(v))
    }
}

/// Why a document could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct XmlError(pub String);

fn local(qname: &[u8]) -> String {
    let s = String::from_utf8_lossy(qname);
    match s.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => s.into_owned(),
    }
}

fn start_element(e: &BytesStart<'_>) -> Result<Element, XmlError> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| XmlError(format!("bad attribute: {err}")))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| XmlError(format!("bad attribute value: {err}")))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name: local(e.name().as_ref()),
        attrs,
        text: String::new(),
        children: Vec::new(),
    })
}

fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// Parse a whole document and return its root element.
pub fn parse(doc: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(doc);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let ev = reader.read_event().map_err(|e| {
            XmlError(format!(
                "malformed XML at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match ev {
            Event::Start(e) => {
                count += 1;
                if count > MAX_XML_ELEMENTS {
                    return Err(XmlError(format!("more than {MAX_XML_ELEMENTS} elements")));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(XmlError(format!("nesting deeper than {MAX_XML_DEPTH}")));
                }
                if root.is_some() && stack.is_empty() {
                    return Err(XmlError("content after the root element".into()));
                }
                stack.push(start_element(&e)?);
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_XML_ELEMENTS {
                    return Err(XmlError(format!("more than {MAX_XML_ELEMENTS} elements")));
                }
                let el = start_element(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => return Err(XmlError("content after the root element".into())),
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| XmlError(format!("bad text: {e}")))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                } else if !s.trim().is_empty() {
                    return Err(XmlError("text outside the root element".into()));
                }
            }
            Event::CData(t) => {
                let s = t
                    .decode()
                    .map_err(|e| XmlError(format!("bad CDATA: {e}")))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let name = r
                            .decode()
                            .map_err(|e| XmlError(format!("bad entity: {e}")))?;
                        predefined_entity(&name)
                            .ok_or_else(|| XmlError(format!("unknown entity &{name};")))?
                    }
                    Err(e) => return Err(XmlError(format!("bad character reference: {e}"))),
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(ch);
                }
            }
            Event::DocType(_) => {
                return Err(XmlError(
                    "DOCTYPE is not accepted in a SOAP response".into(),
                ));
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("document ended inside an element".into()));
    }
    root.ok_or_else(|| XmlError("empty document".into()))
}

/// Escape text for use inside an element or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaces_entities_and_empty_elements() {
        let doc = r#"<?xml version="1.0"?><s:Envelope xmlns:s="x"><s:Body><a xsi:type="xsd:string">x &amp; y&#33;</a><b/></s:Body></s:Envelope>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "Envelope");
        let body = root.child("Body").unwrap();
        let a = body.child("a").unwrap();
        assert_eq!(a.text, "x & y!");
        assert_eq!(a.xsi_type(), Some("string"));
        assert!(body.child("b").is_some());
    }

    #[test]
    fn rejects_malformed_and_doctype() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("").is_err());
        assert!(parse("<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>").is_err());
        assert!(parse("<a>&unknown;</a>").is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let doc = "<a>".repeat(MAX_XML_DEPTH + 1) + &"</a>".repeat(MAX_XML_DEPTH + 1);
        assert!(parse(&doc).unwrap_err().0.contains("nesting"));
    }

    #[test]
    fn escape_round_trips() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
