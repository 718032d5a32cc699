//! A checksum over the bytes downloaded (`--checksum`, CDI's `IMPORTER_CHECKSUM`):
//! `md5|sha1|sha256|sha512:HEX`, read as CDI reads it, computed over the source's bytes
//! as they arrive (before any decompression or image decoding) and checked before the
//! copy is reported complete. A mismatch fails the job; the target is left incomplete.
//!
//! A stream is hashed as it is read ([`HashTee`]). A random-access source
//! ([`HashingSource`]) is read in parallel and only where the image has data: bytes are
//! hashed in order as they arrive, reads that come early wait in a bounded buffer
//! ([`MAX_PENDING_HASH_BYTES`]), and at the end whatever was not read (holes, image
//! metadata, early reads that did not fit) is read once, in order, to finish the hash.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use md5::Digest as _;

use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::Error;
use crate::source::Source;

/// Most bytes read ahead of the hash kept until the hash reaches them.
pub const MAX_PENDING_HASH_BYTES: u64 = 32 << 20;
/// Longest checksum value accepted.
pub const MAX_CHECKSUM_LEN: usize = 256;
/// Bytes read at once to finish a random-access source's hash.
pub const HASH_FILL_READ: u64 = 4 << 20;
/// Farthest ahead of the hash a read that could not be kept may be for the gap before
/// it to be read at once ([`HashingSource`]); more than [`MAX_PENDING_HASH_BYTES`], as
/// only reads past that are dropped.
pub const HASH_GAP_FILL: u64 = 2 * MAX_PENDING_HASH_BYTES;

/// A hash algorithm CDI accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The name in `alg:hex`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// An expected checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub alg: Algorithm,
    /// The digest, lower-case hex.
    pub hex: String,
}

impl std::str::FromStr for Checksum {
    type Err = String;
    /// As CDI's `checksum.ParseAndValidate`: `alg:hex`, both trimmed and lower-cased,
    /// the length the algorithm gives, hex digits only.
    fn from_str(s: &str) -> Result<Checksum, String> {
        if s.len() > MAX_CHECKSUM_LEN {
            return Err(format!("longer than {MAX_CHECKSUM_LEN} characters"));
        }
        let (alg, hex) = s.split_once(':').ok_or_else(|| {
            format!("invalid checksum format: expected 'algorithm:hash', got {s:?}")
        })?;
        let (alg, hex) = (
            alg.trim().to_ascii_lowercase(),
            hex.trim().to_ascii_lowercase(),
        );
        if hex.is_empty() {
            return Err("checksum hash value cannot be empty".into());
        }
        let alg = match alg.as_str() {
            "md5" => Algorithm::Md5,
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(format!(
                    "unsupported hash algorithm {other:?}: supported algorithms are: md5, sha1, sha256, sha512"
                ));
            }
        };
        if hex.len() != alg.hex_len() {
            return Err(format!(
                "invalid {} hash length: expected {} hex characters, got {}",
                alg.name(),
                alg.hex_len(),
                hex.len()
            ));
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("checksum hash is not valid hexadecimal".into());
        }
        Ok(Checksum { alg, hex })
    }
}

enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(alg: Algorithm) -> Hasher {
        match alg {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

struct State {
    hasher: Option<Hasher>,
    /// Bytes hashed: `[0, at)`.
    at: u64,
    /// Bytes read past `at`, by offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: u64,
    /// The digest, once the input ended.
    got: Option<String>,
}

/// The hash of one input, fed by whoever reads it.
pub struct ChecksumState {
    want: Checksum,
    what: String,
    s: Mutex<State>,
}

impl std::fmt::Debug for ChecksumState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChecksumState")
            .field("want", &self.want)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl ChecksumState {
    /// A hash of `what` expected to be `want`.
    pub fn new(want: Checksum, what: String) -> Arc<ChecksumState> {
        Arc::new(ChecksumState {
            s: Mutex::new(State {
                hasher: Some(Hasher::new(want.alg)),
                at: 0,
                pending: BTreeMap::new(),
                pending_bytes: 0,
                got: None,
            }),
            want,
            what,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.s
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes hashed so far (from the start).
    pub fn hashed(&self) -> u64 {
        self.lock().at
    }

    /// `bytes` were read at `offset`. False when they came too far ahead of the hash
    /// to be kept ([`MAX_PENDING_HASH_BYTES`]): they are then dropped.
    pub fn feed(&self, offset: u64, bytes: &[u8]) -> bool {
        let mut s = self.lock();
        let end = offset + bytes.len() as u64;
        if s.got.is_some() || end <= s.at || bytes.is_empty() {
            return true;
        }
        if offset > s.at {
            if s.pending.contains_key(&offset) {
                return true;
            }
            if s.pending_bytes + bytes.len() as u64 <= MAX_PENDING_HASH_BYTES {
                s.pending_bytes += bytes.len() as u64;
                s.pending.insert(offset, bytes.to_vec());
                return true;
            }
            return false;
        }
        let skip = crate::num::usize_of(s.at - offset);
        if let Some(h) = s.hasher.as_mut() {
            h.update(&bytes[skip..]);
        }
        s.at = end;
        // What waited for these bytes.
        while let Some((&k, _)) = s.pending.first_key_value() {
            if k > s.at {
                break;
            }
            let Some(v) = s.pending.remove(&k) else { break };
            s.pending_bytes -= v.len() as u64;
            let vend = k + v.len() as u64;
            if vend > s.at {
                let skip = crate::num::usize_of(s.at - k);
                if let Some(h) = s.hasher.as_mut() {
                    h.update(&v[skip..]);
                }
                s.at = vend;
            }
        }
        true
    }

    /// The input ended at `len` bytes (all hashed): the digest is final.
    fn end(&self, len: u64) {
        let mut s = self.lock();
        if s.got.is_none() && s.at == len {
            s.got = s.hasher.take().map(Hasher::hex);
        }
    }

    /// The digest matches; an error naming both if not, or if the input was not read to
    /// its end.
    pub fn check(&self) -> Result<(), Error> {
        let s = self.lock();
        let want = format!("{}:{}", self.want.alg.name(), self.want.hex);
        match &s.got {
            Some(got) if *got == self.want.hex => {
                tracing::info!(source = %self.what, checksum = %want, "checksum verified");
                Ok(())
            }
            Some(got) => Err(Error::Checksum {
                what: self.what.clone(),
                message: format!(
                    "checksum mismatch: expected {want}, calculated {}:{got}",
                    self.want.alg.name()
                ),
            }),
            None => Err(Error::Checksum {
                what: self.what.clone(),
                message: format!(
                    "the {} checksum could not be computed: the download was not read to its end ({} bytes hashed)",
                    self.want.alg.name(),
                    s.at
                ),
            }),
        }
    }
}

/// A stream's bytes, hashed as they are read.
pub struct HashTee {
    inner: Box<dyn Read + Send>,
    state: Arc<ChecksumState>,
    at: u64,
}

impl std::fmt::Debug for HashTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashTee")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl HashTee {
    /// Hash what `inner` reads into `state`.
    pub fn new(inner: Box<dyn Read + Send>, state: Arc<ChecksumState>) -> HashTee {
        HashTee {
            inner,
            state,
            at: 0,
        }
    }
}

impl Read for HashTee {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        if n == 0 && !out.is_empty() {
            self.state.end(self.at);
        } else {
            self.state.feed(self.at, &out[..n]);
            self.at += n as u64;
        }
        Ok(n)
    }
}

/// A random-access source whose bytes are hashed as they are read, the hash finished
/// and checked by [`Source::finish`].
#[derive(Debug)]
pub struct HashingSource {
    inner: Arc<dyn Source>,
    state: Arc<ChecksumState>,
    /// One gap read at a time.
    filling: Arc<tokio::sync::Mutex<()>>,
}

impl HashingSource {
    /// Hash what is read of `inner` into `state`.
    pub fn new(inner: Arc<dyn Source>, state: Arc<ChecksumState>) -> HashingSource {
        HashingSource {
            inner,
            state,
            filling: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

impl Source for HashingSource {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> u64 {
        self.inner.block_size()
    }
    fn max_read(&self) -> u64 {
        self.inner.max_read()
    }
    fn extent_window(&self) -> u64 {
        self.inner.extent_window()
    }
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ferry_cbt::ExtentMap, Error>> {
        self.inner.extents(offset, len)
    }
    fn changes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ferry_cbt::ExtentMap, Error>> {
        self.inner.changes(offset, len)
    }
    fn read(&self, offset: u64, buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let (inner, state, filling) =
            (self.inner.clone(), self.state.clone(), self.filling.clone());
        Box::pin(async move {
            let buf = inner.read(offset, buf).await?;
            if state.feed(offset, buf.as_slice()) {
                return Ok(buf);
            }
            // Too far ahead of the hash to be kept: before it lies a gap that no read of
            // the copy closes (an image's metadata). Read what is missing of it now, once
            // (what waits is taken as the hash reaches it), so the hash goes on instead
            // of dropping every later read and reading the source again at the end.
            if offset.saturating_sub(state.hashed()) <= HASH_GAP_FILL {
                let _one = filling.lock().await;
                loop {
                    let at = state.hashed();
                    if at >= offset {
                        break;
                    }
                    let n = HASH_FILL_READ.min(offset - at);
                    let bytes = crate::source::image::read_bytes(inner.as_ref(), at, n).await?;
                    if bytes.is_empty() {
                        break;
                    }
                    state.feed(at, &bytes);
                }
                state.feed(offset, buf.as_slice());
            }
            Ok(buf)
        })
    }
    fn local_path(&self) -> Option<&std::path::Path> {
        self.inner.local_path()
    }
    fn finish(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let size = self.inner.size();
            loop {
                let at = self.state.hashed();
                if at >= size {
                    break;
                }
                let n = HASH_FILL_READ.min(size - at);
                let bytes = crate::source::image::read_bytes(self.inner.as_ref(), at, n).await?;
                if bytes.is_empty() {
                    break;
                }
                self.state.feed(at, &bytes);
            }
            self.state.end(size);
            self.inner.finish().await?;
            self.state.check()
        })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_read_as_cdi_reads_them() {
        let c: Checksum =
            " SHA256 : ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
                .parse()
                .unwrap();
        assert_eq!(c.alg, Algorithm::Sha256);
        assert!(c.hex.starts_with("abcdef"));
        for (bad, why) in [
            ("sha256", "expected 'algorithm:hash'"),
            ("sha256:", "cannot be empty"),
            ("crc32:00000000", "unsupported hash algorithm"),
            ("md5:abc", "expected 32 hex characters, got 3"),
            (
                "sha1:zz00000000000000000000000000000000000000",
                "not valid hexadecimal",
            ),
        ] {
            let e = bad.parse::<Checksum>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn state(data: &[u8], alg: &str, hex: &str) -> Arc<ChecksumState> {
        let _ = data;
        ChecksumState::new(format!("{alg}:{hex}").parse().unwrap(), "t".into())
    }

    #[test]
    fn out_of_order_reads_hash_as_the_bytes_in_order() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let want = {
            let mut h = sha2::Sha256::new();
            h.update(&data);
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let s = state(&data, "sha256", &want);
        // Late, early, overlapping and repeated pieces.
        for (a, b) in [
            (30_000, 60_000),
            (0, 10_000),
            (5_000, 31_000),
            (60_000, 100_000),
            (0, 100),
        ] {
            s.feed(a as u64, &data[a..b]);
        }
        s.end(data.len() as u64);
        s.check().unwrap();
        let wrong = state(&data, "sha256", &"0".repeat(64));
        wrong.feed(0, &data);
        wrong.end(data.len() as u64);
        let e = wrong.check().unwrap_err().to_string();
        assert!(e.contains("checksum mismatch: expected sha256:000"), "{e}");
        let short = state(&data, "sha256", &want);
        short.feed(0, &data[..10]);
        short.end(data.len() as u64);
        assert!(
            short
                .check()
                .unwrap_err()
                .to_string()
                .contains("not read to its end")
        );
    }

    #[test]
    fn each_algorithm_gives_the_known_digest_of_abc() {
        for (alg, hex) in [
            ("md5", "900150983cd24fb0d6963f7d28e17f72"),
            ("sha1", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                "sha256",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                "sha512",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ] {
            let s = state(b"abc", alg, hex);
            let mut t = HashTee::new(Box::new(std::io::Cursor::new(b"abc".to_vec())), s.clone());
            let mut out = Vec::new();
            t.read_to_end(&mut out).unwrap();
            s.check().unwrap_or_else(|e| panic!("{alg}: {e}"));
        }
    }
}
