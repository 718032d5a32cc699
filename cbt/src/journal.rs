//! The resume journal format: what is being copied, and how far the copy has durably got.
//!
//! ```text
//! ferry-journal 1
//! source nbd+unix:///?socket=/run/disk.sock
//! size 8589934592
//! plan full
//! target /data/disk.img
//! watermark 4294967296
//! crc 1a2b3c4d
//! ```
//!
//! Every byte below `watermark` was written and flushed before the journal recorded it.
//! The CRC (CRC-32/ISO-HDLC, as `crc32fast` computes it) covers every
//! preceding line, so a truncated or corrupted journal is detected; a journal for
//! another source, size, plan or target is foreign. Neither is ever trusted. No I/O here.

/// Cap on a journal's size: anything larger is not ours.
pub const MAX_JOURNAL_BYTES: usize = 16 * 1024;
/// Cap on one value.
pub const MAX_JOURNAL_VALUE: usize = 4096;
const MAGIC: &str = "ferry-journal 1";

/// What a copy is: a journal for anything else is foreign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalIdentity {
    /// The source, as described by the copy (URI, path, VDDK disk and snapshot).
    pub source: String,
    /// Source size in bytes.
    pub size: u64,
    /// The plan: `full`, or the change source of a delta (`bitmap:NAME`, `extents:…`).
    pub plan: String,
    /// The target path.
    pub target: String,
}

/// A journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// What is being copied.
    pub identity: JournalIdentity,
    /// Every byte below this offset is durably on the target.
    pub watermark: u64,
}

/// Why a journal is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Larger than [`MAX_JOURNAL_BYTES`].
    #[error("journal of {0} bytes is larger than any journal Ferry writes")]
    TooLarge(usize),
    /// Not a Ferry journal, or a version this build does not know.
    #[error("not a ferry journal (version 1)")]
    BadMagic,
    /// A line is missing, out of order, or malformed (includes truncation).
    #[error("malformed journal: {0}")]
    Malformed(String),
    /// The checksum does not match the contents.
    #[error("journal checksum mismatch (corrupted)")]
    BadChecksum,
    /// A value cannot be written on one line.
    #[error("journal value for {0} has a newline or is too long")]
    BadValue(&'static str),
}

fn check_value(name: &'static str, v: &str) -> Result<(), JournalError> {
    if v.contains(['\n', '\r']) || v.len() > MAX_JOURNAL_VALUE {
        Err(JournalError::BadValue(name))
    } else {
        Ok(())
    }
}

/// Encode a journal.
pub fn encode(j: &Journal) -> Result<Vec<u8>, JournalError> {
    let id = &j.identity;
    check_value("source", &id.source)?;
    check_value("plan", &id.plan)?;
    check_value("target", &id.target)?;
    let body = format!(
        "{MAGIC}\nsource {}\nsize {}\nplan {}\ntarget {}\nwatermark {}\n",
        id.source, id.size, id.plan, id.target, j.watermark
    );
    let crc = crc32fast::hash(body.as_bytes());
    Ok(format!("{body}crc {crc:08x}\n").into_bytes())
}

/// Decode and verify a journal.
pub fn decode(bytes: &[u8]) -> Result<Journal, JournalError> {
    if bytes.len() > MAX_JOURNAL_BYTES {
        return Err(JournalError::TooLarge(bytes.len()));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| JournalError::Malformed("not UTF-8".into()))?;
    let Some(rest) = text.strip_prefix(MAGIC).and_then(|r| r.strip_prefix('\n')) else {
        return Err(JournalError::BadMagic);
    };
    let crc_at = rest
        .rfind("crc ")
        .ok_or_else(|| JournalError::Malformed("no checksum line (truncated?)".into()))?;
    let (fields, crc_line) = rest.split_at(crc_at);
    let crc_hex = crc_line
        .strip_prefix("crc ")
        .and_then(|c| c.strip_suffix('\n'))
        .ok_or_else(|| {
            JournalError::Malformed("checksum line is not terminated (truncated?)".into())
        })?;
    let body_len = MAGIC.len() + 1 + fields.len();
    // Compared as the exact text written (8 lower-case hex digits), so that no altered
    // byte — not even a hex digit's case — is accepted.
    if format!("{:08x}", crc32fast::hash(&bytes[..body_len])) != crc_hex {
        return Err(JournalError::BadChecksum);
    }
    let mut lines = fields.lines();
    let mut field = |name: &str| -> Result<String, JournalError> {
        let line = lines
            .next()
            .ok_or_else(|| JournalError::Malformed(format!("missing {name}")))?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_string)
            .ok_or_else(|| {
                JournalError::Malformed(format!(
                    "expected {name}, got {:?}",
                    line.chars().take(40).collect::<String>()
                ))
            })
    };
    let number = |name: &str, v: String| {
        v.parse::<u64>()
            .map_err(|_| JournalError::Malformed(format!("{name} is not a number")))
    };
    let source = field("source")?;
    let size = number("size", field("size")?)?;
    let plan = field("plan")?;
    let target = field("target")?;
    let watermark = number("watermark", field("watermark")?)?;
    if lines.next().is_some() {
        return Err(JournalError::Malformed("unexpected extra lines".into()));
    }
    if watermark > size {
        return Err(JournalError::Malformed(format!(
            "watermark {watermark} is past the size {size}"
        )));
    }
    Ok(Journal {
        identity: JournalIdentity {
            source,
            size,
            plan,
            target,
        },
        watermark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            identity: JournalIdentity {
                source: "nbd+unix:///?socket=/run/d.sock".into(),
                size: 8 << 30,
                plan: "full".into(),
                target: "/data/disk.img".into(),
            },
            watermark: 4 << 30,
        }
    }

    #[test]
    fn round_trip() {
        let j = sample();
        assert_eq!(decode(&encode(&j).expect("encode")).expect("decode"), j);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let b = encode(&sample()).expect("encode");
        for n in 0..b.len() {
            assert!(
                decode(&b[..n]).is_err(),
                "truncated to {n} bytes was accepted"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let b = encode(&sample()).expect("encode");
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                assert!(
                    decode(&c).is_err(),
                    "flip of bit {bit} in byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn foreign_magic_is_bad_magic() {
        assert_eq!(decode(b"something else\n"), Err(JournalError::BadMagic));
    }

    #[test]
    fn watermark_past_size_is_malformed() {
        let mut j = sample();
        j.watermark = j.identity.size + 1;
        assert!(matches!(
            decode(&encode(&j).expect("encode")),
            Err(JournalError::Malformed(_))
        ));
    }

    #[test]
    fn newline_in_a_value_cannot_be_encoded() {
        let mut j = sample();
        j.identity.source = "a\nwatermark 0".into();
        assert_eq!(encode(&j), Err(JournalError::BadValue("source")));
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        assert!(matches!(
            decode(&vec![b'a'; MAX_JOURNAL_BYTES + 1]),
            Err(JournalError::TooLarge(_))
        ));
    }
}
