//! The resume journal format: what is being copied, onto which target, a proof of what
//! that target holds, and how far the copy has durably got.
//!
//! ```text
//! ferry-journal 2
//! source nbd+unix:///?socket=/run/disk.sock
//! size 8589934592
//! plan full
//! target /data/disk.img
//! target-id file dev=259:1 ino=1835010 btime=1764675600.123456789 len=8589934592
//! sample 0 4096 9ae0daaf
//! sample 4293918720 4096 1c291ca3
//! watermark 4294967296
//! digest 64 5d0e…(64 hex digits)
//! crc 1a2b3c4d
//! ```
//!
//! Every byte below `watermark` was written and flushed before the journal recorded it.
//! `target-id` is the target's identity as the copy left it (device and inode of a file,
//! or a block device's number, size and serial), written by the importer and compared as
//! text. Each `sample` line is the CRC-32 of `LEN` bytes at `OFFSET`, below the watermark,
//! as the copy wrote them: a resumed copy reads them back from the source and the target,
//! so a recreated or re-provisioned target (or a changed source) cannot pass for the one
//! recorded. The CRC (CRC-32/ISO-HDLC, as `crc32fast` computes it) on the last line covers
//! every preceding line, so a truncated or corrupted journal is detected. No I/O here.
//!
//! The optional `digest GROUPS HASH` line (a copy that builds the disk's digest) says the
//! first GROUPS group hashes of that digest are kept beside the journal (the importer's
//! digest file, 32 bytes each), and HASH is BLAKE3 over those bytes: a resumed copy takes
//! them up only if they hash to it, and so still has the whole disk's digest without
//! reading the durable prefix again.

/// Cap on a journal's size: anything larger is not ours.
pub const MAX_JOURNAL_BYTES: usize = 16 * 1024;
/// Cap on one value.
pub const MAX_JOURNAL_VALUE: usize = 4096;
/// Cap on the sample lines of one journal.
pub const MAX_JOURNAL_SAMPLES: usize = 16;
/// Cap on the bytes one sample covers.
pub const MAX_SAMPLE_BYTES: u32 = 64 * 1024;
/// Cap on the digest groups a journal names (64 MiB each: a 64 PiB disk).
pub const MAX_DIGEST_GROUPS: u64 = 1 << 30;
/// What every Ferry journal starts with, whatever its version.
pub const JOURNAL_PREFIX: &str = "ferry-journal ";
const MAGIC: &str = "ferry-journal 2";

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
    /// The target's identity as the copy leaves it (opaque here; one line).
    pub target_id: String,
}

/// `len` bytes at `offset` had this CRC-32 when the copy wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Offset on the disk.
    pub offset: u64,
    /// Bytes covered (1..=[`MAX_SAMPLE_BYTES`]).
    pub len: u32,
    /// CRC-32 of those bytes.
    pub crc: u32,
}

impl Sample {
    /// The sample of `bytes` at `offset` (at most [`MAX_SAMPLE_BYTES`] of them count).
    pub fn of(offset: u64, bytes: &[u8]) -> Sample {
        let len = u32::try_from(bytes.len()).map_or(MAX_SAMPLE_BYTES, |n| n.min(MAX_SAMPLE_BYTES));
        // `len` ≤ MAX_SAMPLE_BYTES ≤ bytes.len(), so it indexes `bytes`.
        let n = bytes.len().min(len as usize);
        Sample {
            offset,
            len,
            crc: crc32fast::hash(&bytes[..n]),
        }
    }

    /// The end offset of the bytes covered.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.len))
    }
}

/// The digest groups kept beside the journal: how many, and BLAKE3 over their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestMark {
    /// Group hashes kept (the disk's first `groups` × 64 MiB).
    pub groups: u64,
    /// BLAKE3 over those `groups` × 32 bytes.
    pub hash: [u8; 32],
}

/// A journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// What is being copied.
    pub identity: JournalIdentity,
    /// Proof of what the target holds below the watermark.
    pub samples: Vec<Sample>,
    /// Every byte below this offset is durably on the target.
    pub watermark: u64,
    /// The digest groups kept, when the copy builds a digest.
    pub digest: Option<DigestMark>,
}

/// Whether `bytes` begin like a Ferry journal of any version (corrupt or not): a file
/// that does not is never read as, written over or removed as a journal.
pub fn looks_like_journal(bytes: &[u8]) -> bool {
    bytes.starts_with(JOURNAL_PREFIX.as_bytes())
}

/// Why a journal is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Larger than [`MAX_JOURNAL_BYTES`].
    #[error("journal of {0} bytes is larger than any journal Ferry writes")]
    TooLarge(usize),
    /// Not a Ferry journal, or a version this build does not know.
    #[error("not a ferry journal (version 2)")]
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
    /// More samples than [`MAX_JOURNAL_SAMPLES`], or one that is empty, too long or not
    /// below the watermark.
    #[error("journal sample {0} is out of bounds")]
    BadSample(usize),
}

fn check_value(name: &'static str, v: &str) -> Result<(), JournalError> {
    if v.contains(['\n', '\r']) || v.len() > MAX_JOURNAL_VALUE {
        Err(JournalError::BadValue(name))
    } else {
        Ok(())
    }
}

fn check_samples(samples: &[Sample], watermark: u64) -> Result<(), JournalError> {
    if samples.len() > MAX_JOURNAL_SAMPLES {
        return Err(JournalError::BadSample(MAX_JOURNAL_SAMPLES));
    }
    for (i, s) in samples.iter().enumerate() {
        let end = s.offset.checked_add(u64::from(s.len));
        if s.len == 0 || s.len > MAX_SAMPLE_BYTES || end.is_none_or(|e| e > watermark) {
            return Err(JournalError::BadSample(i));
        }
    }
    Ok(())
}

/// Encode a journal.
pub fn encode(j: &Journal) -> Result<Vec<u8>, JournalError> {
    let id = &j.identity;
    check_value("source", &id.source)?;
    check_value("plan", &id.plan)?;
    check_value("target", &id.target)?;
    check_value("target-id", &id.target_id)?;
    check_samples(&j.samples, j.watermark)?;
    let mut body = format!(
        "{MAGIC}\nsource {}\nsize {}\nplan {}\ntarget {}\ntarget-id {}\n",
        id.source, id.size, id.plan, id.target, id.target_id
    );
    for s in &j.samples {
        body.push_str(&format!("sample {} {} {:08x}\n", s.offset, s.len, s.crc));
    }
    body.push_str(&format!("watermark {}\n", j.watermark));
    if let Some(d) = &j.digest {
        if d.groups > MAX_DIGEST_GROUPS {
            return Err(JournalError::BadValue("digest"));
        }
        body.push_str(&format!("digest {} {}\n", d.groups, hex32(&d.hash)));
    }
    let crc = crc32fast::hash(body.as_bytes());
    Ok(format!("{body}crc {crc:08x}\n").into_bytes())
}

fn hex32(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(v: &str) -> Option<DigestMark> {
    let (groups, hex) = v.split_once(' ')?;
    let groups: u64 = groups.parse().ok()?;
    if groups > MAX_DIGEST_GROUPS
        || hex.len() != 64
        || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(DigestMark { groups, hash })
}

fn parse_sample(v: &str) -> Option<Sample> {
    let mut it = v.split(' ');
    let offset = it.next()?.parse().ok()?;
    let len = it.next()?.parse().ok()?;
    let hex = it.next()?;
    // Exactly as written: 8 lower-case hex digits.
    if it.next().is_some()
        || hex.len() != 8
        || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let crc = u32::from_str_radix(hex, 16).ok()?;
    Some(Sample { offset, len, crc })
}

/// The next line, which must be `NAME VALUE`; returns the value.
fn field<'a>(
    lines: &mut impl Iterator<Item = &'a str>,
    name: &str,
) -> Result<String, JournalError> {
    let line = lines
        .next()
        .ok_or_else(|| JournalError::Malformed(format!("missing {name}")))?;
    let value = line
        .strip_prefix(name)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or_else(|| {
            JournalError::Malformed(format!(
                "expected {name}, got {:?}",
                line.chars().take(40).collect::<String>()
            ))
        })?;
    // What encode would refuse is not read either: `lines` splits at '\n' only, so a
    // lone '\r' would otherwise come back inside a value.
    if value.contains('\r') || value.len() > MAX_JOURNAL_VALUE {
        return Err(JournalError::Malformed(format!(
            "{name} has a carriage return or is longer than {MAX_JOURNAL_VALUE} bytes"
        )));
    }
    Ok(value.to_string())
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
    let mut lines = fields.lines().peekable();
    let number = |name: &str, v: String| {
        v.parse::<u64>()
            .map_err(|_| JournalError::Malformed(format!("{name} is not a number")))
    };
    let source = field(&mut lines, "source")?;
    let size = number("size", field(&mut lines, "size")?)?;
    let plan = field(&mut lines, "plan")?;
    let target = field(&mut lines, "target")?;
    let target_id = field(&mut lines, "target-id")?;
    let mut samples = Vec::new();
    while lines.peek().is_some_and(|l| l.starts_with("sample ")) {
        let v = field(&mut lines, "sample")?;
        if samples.len() == MAX_JOURNAL_SAMPLES {
            return Err(JournalError::BadSample(MAX_JOURNAL_SAMPLES));
        }
        let s = parse_sample(&v).ok_or_else(|| {
            JournalError::Malformed(format!("sample {} is malformed", samples.len()))
        })?;
        samples.push(s);
    }
    let watermark = number("watermark", field(&mut lines, "watermark")?)?;
    let digest = match lines.peek() {
        Some(l) if l.starts_with("digest ") => {
            let v = field(&mut lines, "digest")?;
            Some(
                parse_digest(&v)
                    .ok_or_else(|| JournalError::Malformed("digest is malformed".into()))?,
            )
        }
        _ => None,
    };
    if lines.next().is_some() {
        return Err(JournalError::Malformed("unexpected extra lines".into()));
    }
    if watermark > size {
        return Err(JournalError::Malformed(format!(
            "watermark {watermark} is past the size {size}"
        )));
    }
    check_samples(&samples, watermark)?;
    Ok(Journal {
        identity: JournalIdentity {
            source,
            size,
            plan,
            target,
            target_id,
        },
        samples,
        watermark,
        digest,
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
                target_id: "file dev=259:1 ino=1835010 btime=1764675600.123456789 len=8589934592"
                    .into(),
            },
            samples: vec![
                Sample::of(0, &[7u8; 4096]),
                Sample::of(4 << 30, &[9u8; 512]),
            ],
            watermark: (4 << 30) + 4096,
            digest: Some(DigestMark {
                groups: 64,
                hash: [0xa5; 32],
            }),
        }
    }

    #[test]
    fn round_trip() {
        let j = sample();
        assert_eq!(decode(&encode(&j).expect("encode")).expect("decode"), j);
        let mut none = sample();
        none.samples.clear();
        none.digest = None;
        assert_eq!(
            decode(&encode(&none).expect("encode")).expect("decode"),
            none
        );
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
        assert!(!looks_like_journal(b"something else\n"));
    }

    #[test]
    fn a_version_1_journal_is_a_journal_but_not_trusted() {
        let v1 =
            b"ferry-journal 1\nsource s\nsize 1\nplan full\ntarget /t\nwatermark 0\ncrc 00000000\n";
        assert!(looks_like_journal(v1));
        assert_eq!(decode(v1), Err(JournalError::BadMagic));
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
    fn a_sample_past_the_watermark_cannot_be_encoded_or_decoded() {
        let mut j = sample();
        j.watermark = 4 << 30;
        assert_eq!(encode(&j), Err(JournalError::BadSample(1)));
        // The same record written by hand, with a valid checksum, is refused on read.
        let body = "ferry-journal 2\nsource s\nsize 100\nplan full\ntarget /t\ntarget-id x\nsample 60 50 00000000\nwatermark 100\n";
        let text = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
        assert_eq!(decode(text.as_bytes()), Err(JournalError::BadSample(0)));
    }

    #[test]
    fn too_many_samples_are_refused() {
        let mut j = sample();
        j.samples = (0..=MAX_JOURNAL_SAMPLES as u64)
            .map(|i| Sample::of(i * 4096, &[1; 4096]))
            .collect();
        j.watermark = 1 << 30;
        assert_eq!(
            encode(&j),
            Err(JournalError::BadSample(MAX_JOURNAL_SAMPLES))
        );
        let mut body =
            "ferry-journal 2\nsource s\nsize 1073741824\nplan full\ntarget /t\ntarget-id x\n"
                .to_string();
        for s in &j.samples {
            body.push_str(&format!("sample {} {} {:08x}\n", s.offset, s.len, s.crc));
        }
        body.push_str("watermark 1073741824\n");
        let text = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
        assert_eq!(
            decode(text.as_bytes()),
            Err(JournalError::BadSample(MAX_JOURNAL_SAMPLES))
        );
    }

    #[test]
    fn an_empty_or_oversized_sample_is_refused() {
        for (len, ok) in [
            (0u32, false),
            (1, true),
            (MAX_SAMPLE_BYTES, true),
            (MAX_SAMPLE_BYTES + 1, false),
        ] {
            let s = Sample {
                offset: 0,
                len,
                crc: 0,
            };
            assert_eq!(check_samples(&[s], 1 << 20).is_ok(), ok, "len {len}");
        }
    }

    #[test]
    fn a_sample_crc_must_be_eight_lower_case_hex_digits() {
        assert!(parse_sample("0 4096 0000abcd").is_some());
        for bad in [
            "0 4096 0000ABCD",
            "0 4096 abcd",
            "0 4096 0000abcd extra",
            "0 4096",
            "x 1 00000000",
            "0 4096 +000abcd",
        ] {
            assert!(parse_sample(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn newline_in_a_value_cannot_be_encoded() {
        let mut j = sample();
        j.identity.source = "a\nwatermark 0".into();
        assert_eq!(encode(&j), Err(JournalError::BadValue("source")));
        let mut j = sample();
        j.identity.target_id = "x\ny".into();
        assert_eq!(encode(&j), Err(JournalError::BadValue("target-id")));
    }

    /// Found by the fuzz campaign (fuzz/corpus/journal/carriage-return-in-target-id): a
    /// lone '\r' inside a value decoded, though encode refuses it. What cannot be
    /// written is not read; an over-long value neither.
    #[test]
    fn a_carriage_return_or_an_over_long_value_is_malformed_as_encode_refuses_it() {
        let seal = |body: String| format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
        let head = "ferry-journal 2\nsource s\nsize 100\nplan full\ntarget /t\n";
        let cr = seal(format!("{head}target-id file ino=1\r835010\nwatermark 0\n"));
        match decode(cr.as_bytes()) {
            Err(JournalError::Malformed(m)) => {
                assert!(m.contains("target-id has a carriage return"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut j = sample();
        j.identity.target_id = "x\ry".into();
        assert_eq!(encode(&j), Err(JournalError::BadValue("target-id")));
        let long = seal(format!(
            "{head}target-id {}\nwatermark 0\n",
            "t".repeat(MAX_JOURNAL_VALUE + 1)
        ));
        assert!(
            matches!(decode(long.as_bytes()), Err(JournalError::Malformed(m)) if m.contains("longer than"))
        );
        // A CRLF line end is no part of the value, and decodes as before.
        let crlf = seal(format!("{head}target-id x\r\nwatermark 0\n"));
        assert_eq!(
            decode(crlf.as_bytes()).map(|j| j.identity.target_id),
            Ok("x".to_string())
        );
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        assert!(matches!(
            decode(&vec![b'a'; MAX_JOURNAL_BYTES + 1]),
            Err(JournalError::TooLarge(_))
        ));
    }

    #[test]
    fn digest_lines_out_of_bounds_are_rejected() {
        let mut j = sample();
        j.digest = Some(DigestMark {
            groups: MAX_DIGEST_GROUPS + 1,
            hash: [0; 32],
        });
        assert_eq!(encode(&j), Err(JournalError::BadValue("digest")));
        let good = String::from_utf8(encode(&sample()).expect("encode")).expect("utf8");
        let line = good
            .lines()
            .find(|l| l.starts_with("digest "))
            .expect("digest line");
        for bad in [
            format!("digest {} {}", MAX_DIGEST_GROUPS + 1, "a5".repeat(32)),
            format!("digest 64 {}", "A5".repeat(32)),
            format!("digest 64 {}", "a5".repeat(31)),
            "digest -1 00".to_string(),
            "digest 64".to_string(),
        ] {
            let body = good.replace(line, &bad);
            let body = body.rsplit_once("crc ").expect("crc").0.to_string();
            let text = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
            assert!(
                matches!(decode(text.as_bytes()), Err(JournalError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn the_largest_journal_fits_the_cap() {
        let long = "v".repeat(MAX_JOURNAL_VALUE);
        let j = Journal {
            identity: JournalIdentity {
                source: long.clone(),
                size: u64::MAX,
                plan: long.clone(),
                target: long,
                target_id: "t".repeat(MAX_JOURNAL_VALUE / 2),
            },
            samples: (0..MAX_JOURNAL_SAMPLES as u64)
                .map(|i| Sample {
                    offset: u64::MAX / 2 + i,
                    len: MAX_SAMPLE_BYTES,
                    crc: u32::MAX,
                })
                .collect(),
            watermark: u64::MAX,
            digest: Some(DigestMark {
                groups: MAX_DIGEST_GROUPS,
                hash: [0xff; 32],
            }),
        };
        let b = encode(&j).expect("encode");
        assert!(b.len() <= MAX_JOURNAL_BYTES, "{} bytes", b.len());
        assert_eq!(decode(&b).expect("decode"), j);
    }
}
