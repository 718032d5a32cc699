//! A streaming `multipart/form-data` reader for uploads (RFC 7578 over RFC 2046), sans
//! I/O: fed the body's bytes as they arrive, it hands out the bytes of the part named
//! [`FILE_PART`] (as CDI's upload server takes them, Go's `mime/multipart`) and skips
//! the parts before it, holding back at most one delimiter's worth of bytes.
//!
//! Everything it keeps is bounded by a named constant: the boundary
//! ([`MAX_BOUNDARY_BYTES`], RFC 2046's limit), a part's header block
//! ([`MAX_PART_HEADER_BYTES`]), the parts before the file ([`MAX_PARTS_BEFORE_FILE`]),
//! each skipped part and the preamble ([`MAX_SKIPPED_BYTES`]), and the padding after a
//! delimiter ([`MAX_PADDING_BYTES`]). Once the file part's closing delimiter is seen the
//! reader is [`Multipart::is_done`]; what follows (more parts, the epilogue) is not read.
//!
//! A delimiter followed by anything but `--` or optional padding and CRLF is refused
//! rather than taken as file content (the boundary must not occur in the content).

use memchr::memmem::Finder;

/// The form field holding the image (CDI's `formReadCloser`).
pub const FILE_PART: &str = "file";
/// Longest boundary (RFC 2046 §5.1.1: 1 to 70 characters).
pub const MAX_BOUNDARY_BYTES: usize = 70;
/// Longest header block of one part (Content-Disposition, Content-Type, …).
pub const MAX_PART_HEADER_BYTES: usize = 16 * 1024;
/// Parts allowed before the one named [`FILE_PART`].
pub const MAX_PARTS_BEFORE_FILE: usize = 16;
/// Most bytes of one skipped part's content, or of the preamble before the first
/// delimiter.
pub const MAX_SKIPPED_BYTES: usize = 1 << 20;
/// Most transport padding (spaces, tabs) between a delimiter and its CRLF.
pub const MAX_PADDING_BYTES: usize = 64;
/// Longest `Content-Type` value looked at for the boundary.
pub const MAX_CONTENT_TYPE_BYTES: usize = 1024;

/// Why a multipart body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MultipartError {
    /// The `Content-Type` is not `multipart/form-data` with a usable boundary.
    #[error("Content-Type {0}")]
    ContentType(String),
    /// A bound was passed.
    #[error("multipart body: {what} is longer than {limit} bytes")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// More parts than [`MAX_PARTS_BEFORE_FILE`] before the file.
    #[error(
        "multipart body: more than {MAX_PARTS_BEFORE_FILE} parts before the one named \"{FILE_PART}\""
    )]
    TooManyParts,
    /// The bytes are not multipart framing.
    #[error("multipart body: {0}")]
    Malformed(&'static str),
    /// The body ended before the file part did.
    #[error("multipart body: {0}")]
    Truncated(&'static str),
}

/// The boundary of a `multipart/form-data` Content-Type value.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let bad = |why: &str| MultipartError::ContentType(why.to_string());
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(MultipartError::TooLong {
            what: "the Content-Type",
            limit: MAX_CONTENT_TYPE_BYTES,
        });
    }
    let mut params = split_params(content_type);
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(bad("is not multipart/form-data"));
    }
    let mut found = None;
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.trim().eq_ignore_ascii_case("boundary") {
            found = Some(unquote(v.trim()));
        }
    }
    let b = found.ok_or_else(|| bad("has no boundary"))?;
    if b.is_empty() {
        return Err(bad("has an empty boundary"));
    }
    if b.len() > MAX_BOUNDARY_BYTES {
        return Err(MultipartError::TooLong {
            what: "the boundary",
            limit: MAX_BOUNDARY_BYTES,
        });
    }
    // RFC 2046 bchars; a space may not end it.
    let bchar = |c: u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c);
    if !b.bytes().all(bchar) || b.ends_with(' ') {
        return Err(bad(
            "has a boundary with characters RFC 2046 does not allow",
        ));
    }
    Ok(b)
}

/// `a; b="x;y"; c` split at the semicolons outside quotes.
fn split_params(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// A parameter value without its quotes and escapes.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter (bytes skipped).
    Preamble,
    /// Right after a delimiter: `--`, or padding and CRLF.
    AfterDelimiter,
    /// A part's header block.
    Headers,
    /// Content of a part other than the file (bytes skipped).
    Skip,
    /// The file's content (bytes handed out).
    File,
    /// The file part ended.
    Done,
}

/// The streaming reader of one multipart body.
#[derive(Debug)]
pub struct Multipart {
    /// `CRLF--boundary`.
    finder: Finder<'static>,
    delimiter: Vec<u8>,
    state: State,
    /// Bytes that may start a delimiter (fewer than its length), or the header block
    /// or padding read so far.
    held: Vec<u8>,
    /// Bytes skipped in the current preamble or part.
    skipped: usize,
    /// Parts seen before the file.
    parts: usize,
}

impl Multipart {
    /// A reader for a body with this boundary ([`boundary`]).
    pub fn new(boundary: &str) -> Multipart {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Multipart {
            finder: Finder::new(&delimiter).into_owned(),
            delimiter,
            state: State::Preamble,
            // The first delimiter may open the body without a CRLF before it.
            held: b"\r\n".to_vec(),
            skipped: 0,
            parts: 0,
        }
    }

    /// Whether the file part has ended (nothing more is read).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Take `input` (all of it, or up to the end of the file part), appending the file's
    /// bytes to `out`. Returns how many bytes of `input` were taken: fewer than its
    /// length only once [`Multipart::is_done`].
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, MultipartError> {
        let mut at = 0;
        while at < input.len() && self.state != State::Done {
            at += match self.state {
                State::Preamble | State::Skip | State::File => self.content(&input[at..], out)?,
                State::AfterDelimiter => self.after_delimiter(&input[at..])?,
                State::Headers => self.headers(&input[at..])?,
                State::Done => 0,
            };
        }
        Ok(at)
    }

    /// The body ended: an error unless the file part was read to its delimiter.
    pub fn finish(&self) -> Result<(), MultipartError> {
        match self.state {
            State::Done => Ok(()),
            State::File => Err(MultipartError::Truncated(
                "the body ended inside the file part",
            )),
            _ => Err(MultipartError::Truncated(
                "the body ended without a part named \"file\"",
            )),
        }
    }

    /// Content bytes (preamble, a skipped part, the file) up to the next delimiter.
    fn content(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, MultipartError> {
        let dlen = self.delimiter.len();
        if !self.held.is_empty() {
            // The held bytes and enough new ones to finish any delimiter they start.
            let held = self.held.len();
            let take = input.len().min(dlen);
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(&input[..take]);
            if let Some(i) = self.finder.find(&joined) {
                self.emit(&joined[..i], out)?;
                self.delimited();
                return Ok(i + dlen - held);
            }
            let keep = self.partial_suffix(&joined);
            self.emit(&joined[..joined.len() - keep], out)?;
            self.held = joined[joined.len() - keep..].to_vec();
            return Ok(take);
        }
        if let Some(i) = self.finder.find(input) {
            self.emit(&input[..i], out)?;
            self.delimited();
            return Ok(i + dlen);
        }
        let keep = self.partial_suffix(input);
        self.emit(&input[..input.len() - keep], out)?;
        self.held = input[input.len() - keep..].to_vec();
        Ok(input.len())
    }

    /// The longest end of `bytes` that begins a delimiter (shorter than one).
    fn partial_suffix(&self, bytes: &[u8]) -> usize {
        let max = bytes.len().min(self.delimiter.len() - 1);
        (1..=max)
            .rev()
            .find(|&k| bytes[bytes.len() - k..] == self.delimiter[..k])
            .unwrap_or(0)
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), MultipartError> {
        if self.state == State::File {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        self.skipped += bytes.len();
        if self.skipped > MAX_SKIPPED_BYTES {
            return Err(MultipartError::TooLong {
                what: if self.state == State::Preamble {
                    "the preamble"
                } else {
                    "a part before the file"
                },
                limit: MAX_SKIPPED_BYTES,
            });
        }
        Ok(())
    }

    /// A delimiter was found in the current state.
    fn delimited(&mut self) {
        self.held.clear();
        self.skipped = 0;
        self.state = if self.state == State::File {
            State::Done
        } else {
            State::AfterDelimiter
        };
    }

    /// `--` (the close delimiter) or padding then CRLF (a part follows).
    fn after_delimiter(&mut self, input: &[u8]) -> Result<usize, MultipartError> {
        for (i, &b) in input.iter().enumerate() {
            self.held.push(b);
            let h = &self.held[..];
            if h == b"--" {
                return Err(MultipartError::Malformed(
                    "the body has no part named \"file\"",
                ));
            }
            if h.ends_with(b"\r\n") {
                let pad = &h[..h.len() - 2];
                if pad.len() > MAX_PADDING_BYTES {
                    return Err(MultipartError::TooLong {
                        what: "the padding after a delimiter",
                        limit: MAX_PADDING_BYTES,
                    });
                }
                if !pad.iter().all(|c| *c == b' ' || *c == b'\t') {
                    return Err(MultipartError::Malformed(
                        "a delimiter is followed by something other than a line end",
                    ));
                }
                self.held.clear();
                self.state = State::Headers;
                return Ok(i + 1);
            }
            let ok_so_far = h == b"-"
                || h.iter()
                    .enumerate()
                    .all(|(j, c)| *c == b' ' || *c == b'\t' || (*c == b'\r' && j == h.len() - 1));
            if !ok_so_far {
                return Err(MultipartError::Malformed(
                    "a delimiter is followed by something other than a line end",
                ));
            }
            if h.len() > MAX_PADDING_BYTES + 1 {
                return Err(MultipartError::TooLong {
                    what: "the padding after a delimiter",
                    limit: MAX_PADDING_BYTES,
                });
            }
        }
        Ok(input.len())
    }

    /// A part's header block, up to the empty line.
    fn headers(&mut self, input: &[u8]) -> Result<usize, MultipartError> {
        let before = self.held.len();
        let room = MAX_PART_HEADER_BYTES + 4 - before;
        let take = input.len().min(room);
        self.held.extend_from_slice(&input[..take]);
        let end = if self.held.starts_with(b"\r\n") {
            Some(2)
        } else {
            memchr::memmem::find(&self.held, b"\r\n\r\n").map(|i| i + 4)
        };
        let Some(end) = end else {
            if self.held.len() > MAX_PART_HEADER_BYTES {
                return Err(MultipartError::TooLong {
                    what: "a part's header block",
                    limit: MAX_PART_HEADER_BYTES,
                });
            }
            return Ok(take);
        };
        if end > MAX_PART_HEADER_BYTES + 4 {
            return Err(MultipartError::TooLong {
                what: "a part's header block",
                limit: MAX_PART_HEADER_BYTES,
            });
        }
        let is_file = form_name(&self.held[..end]).as_deref() == Some(FILE_PART);
        self.held.clear();
        if is_file {
            self.state = State::File;
        } else {
            self.parts += 1;
            if self.parts > MAX_PARTS_BEFORE_FILE {
                return Err(MultipartError::TooManyParts);
            }
            self.state = State::Skip;
        }
        Ok(end - before)
    }
}

/// The `name` of a part's `Content-Disposition: form-data; name="…"` header.
fn form_name(block: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    for line in text.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut params = split_params(value);
        if !params
            .next()
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("form-data"))
        {
            return None;
        }
        for p in params {
            if let Some((k, v)) = p.split_once('=')
                && k.trim().eq_ignore_ascii_case("name")
            {
                return Some(unquote(v.trim()));
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "------------------------d74496d66958873e";

    fn body(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, data) in parts {
            v.extend_from_slice(format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"disk.img\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
            v.extend_from_slice(data);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        v
    }

    /// The file's bytes, fed in chunks of `chunk` bytes.
    fn read(body: &[u8], boundary: &str, chunk: usize) -> Result<Vec<u8>, MultipartError> {
        let mut m = Multipart::new(boundary);
        let mut out = Vec::new();
        for c in body.chunks(chunk) {
            let n = m.feed(c, &mut out)?;
            if m.is_done() {
                break;
            }
            assert_eq!(n, c.len());
        }
        m.finish()?;
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={B}")).unwrap(),
            B
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b=c\"").unwrap(),
            "a b=c"
        );
        for bad in [
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"x \"",
            "multipart/form-data; boundary=a\u{e9}",
        ] {
            assert!(
                matches!(boundary(bad), Err(MultipartError::ContentType(_))),
                "{bad}"
            );
        }
        let long = format!("multipart/form-data; boundary={}", "x".repeat(71));
        assert!(matches!(
            boundary(&long),
            Err(MultipartError::TooLong { .. })
        ));
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(70))).unwrap(),
            "x".repeat(70)
        );
    }

    #[test]
    fn the_file_part_is_read_whatever_the_chunking() {
        let file = data(100_000);
        let b = body(&[("name", b"cirros"), ("file", &file), ("after", b"x")]);
        for chunk in [1, 2, 3, 7, 41, 42, 43, 1000, 65536, b.len()] {
            assert_eq!(read(&b, B, chunk).unwrap(), file, "chunk {chunk}");
        }
    }

    #[test]
    fn content_that_looks_like_a_delimiter_but_is_not_is_kept() {
        // CRLF and dashes and most of the boundary, inside the file.
        let mut file = b"\r\n--".to_vec();
        file.extend_from_slice(&B.as_bytes()[..B.len() - 1]);
        file.extend_from_slice(b"\r\n\r\n-\r");
        let b = body(&[("file", &file)]);
        for chunk in [1, 5, 44, b.len()] {
            assert_eq!(read(&b, B, chunk).unwrap(), file, "chunk {chunk}");
        }
    }

    #[test]
    fn an_empty_file_a_preamble_padding_and_no_headers() {
        let b = format!(
            "preamble\r\n--{B}  \t\r\n\r\nskipped\r\n--{B}\r\ncontent-disposition: form-data; name=file\r\n\r\n\r\n--{B}--"
        );
        assert_eq!(read(b.as_bytes(), B, 3).unwrap(), b"");
    }

    #[test]
    fn a_truncated_body_is_an_error() {
        let file = data(5000);
        let b = body(&[("file", &file)]);
        for cut in [0, 10, 150, 3000, b.len() - 50] {
            let e = read(&b[..cut], B, 100).unwrap_err();
            assert!(matches!(e, MultipartError::Truncated(_)), "{cut}: {e}");
        }
    }

    #[test]
    fn a_body_without_a_file_part_is_an_error() {
        let b = body(&[("name", b"x"), ("other", b"y")]);
        let e = read(&b, B, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "multipart body: the body has no part named \"file\""
        );
    }

    #[test]
    fn bounds_hold() {
        let many: Vec<(&str, &[u8])> = (0..=MAX_PARTS_BEFORE_FILE)
            .map(|_| ("x", &b"1"[..]))
            .chain([("file", &b"f"[..])])
            .collect();
        assert_eq!(
            read(&body(&many), B, 50).unwrap_err(),
            MultipartError::TooManyParts
        );
        let big = vec![b'a'; MAX_SKIPPED_BYTES + 1];
        assert!(matches!(
            read(&body(&[("x", &big), ("file", b"f")]), B, 4096).unwrap_err(),
            MultipartError::TooLong { .. }
        ));
        let header = format!("--{B}\r\nX: {}\r\n\r\n", "h".repeat(MAX_PART_HEADER_BYTES));
        assert!(matches!(
            read(header.as_bytes(), B, 999).unwrap_err(),
            MultipartError::TooLong { .. }
        ));
        let pad = format!("--{B}{}\r\n", " ".repeat(MAX_PADDING_BYTES + 1));
        assert!(matches!(
            read(pad.as_bytes(), B, 1).unwrap_err(),
            MultipartError::TooLong { .. }
        ));
        let junk = format!("--{B}x\r\n");
        assert!(matches!(
            read(junk.as_bytes(), B, 1).unwrap_err(),
            MultipartError::Malformed(_)
        ));
    }

    #[test]
    fn feeding_stops_at_the_end_of_the_file_part() {
        let b = body(&[("file", b"abc"), ("later", b"zzz")]);
        let mut m = Multipart::new(B);
        let mut out = Vec::new();
        let n = m.feed(&b, &mut out).unwrap();
        assert!(m.is_done());
        assert_eq!(out, b"abc");
        assert!(n < b.len());
        assert!(b[n..].starts_with(b"\r\nContent-Disposition: form-data; name=\"later\""));
        assert_eq!(m.feed(b"more", &mut out).unwrap(), 0);
    }
}
