//! The built-in synthetic disk used by `ferry bench` with no arguments: generated in
//! process, deterministic, partly sparse. Every 1 MiB block is either a hole or data;
//! data is a xorshift stream keyed by the byte offset, so any range can be regenerated
//! (and verified) independently.

use ferry_cbt::{Extent, ExtentKind, ExtentMap};

use super::Source;
use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::Error;

/// Granularity of the synthetic disk's allocation.
pub const SYNTHETIC_BLOCK: u64 = 1024 * 1024;

/// Shape of a synthetic disk.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticSpec {
    /// Size in bytes.
    pub size: u64,
    /// Percentage (0–100) of 1 MiB blocks that hold data.
    pub data_percent: u8,
    /// Seed for the layout and the data.
    pub seed: u64,
}

/// The synthetic disk.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    spec: SyntheticSpec,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl SyntheticSource {
    /// A synthetic disk of the given shape.
    pub fn new(spec: SyntheticSpec) -> Self {
        SyntheticSource { spec }
    }

    /// Whether the 1 MiB block with this index holds data.
    pub fn block_is_data(&self, block: u64) -> bool {
        mix(block ^ self.spec.seed.rotate_left(17)) % 100 < u64::from(self.spec.data_percent)
    }

    /// Fill `out` with the disk's bytes starting at `offset`.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut at = offset;
        let mut rest = out;
        while !rest.is_empty() {
            let block = at / SYNTHETIC_BLOCK;
            let block_end = (block + 1) * SYNTHETIC_BLOCK;
            let n = crate::num::usize_of(block_end - at).min(rest.len());
            let (here, tail) = rest.split_at_mut(n);
            if self.block_is_data(block) {
                fill_data(self.spec.seed, at, here);
            } else {
                here.fill(0);
            }
            at += n as u64;
            rest = tail;
        }
    }
}

/// Data bytes: each aligned 8-byte word is a hash of its offset and the seed.
fn fill_data(seed: u64, offset: u64, out: &mut [u8]) {
    let mut at = offset;
    let mut i = 0;
    while i < out.len() {
        let word = at & !7;
        let v = mix(word ^ seed).to_le_bytes();
        let from = crate::num::usize_of(at - word);
        let n = (8 - from).min(out.len() - i);
        out[i..i + n].copy_from_slice(&v[from..from + n]);
        i += n;
        at += n as u64;
    }
}

impl Source for SyntheticSource {
    fn describe(&self) -> String {
        format!(
            "synthetic disk ({} bytes, {}% data, seed {})",
            self.spec.size, self.spec.data_percent, self.spec.seed
        )
    }

    fn size(&self) -> u64 {
        self.spec.size
    }

    fn block_size(&self) -> u64 {
        1
    }

    fn max_read(&self) -> u64 {
        64 * 1024 * 1024
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let end = offset + len;
            let mut map = ExtentMap::new();
            let mut at = offset;
            while at < end {
                let block = at / SYNTHETIC_BLOCK;
                let n = ((block + 1) * SYNTHETIC_BLOCK).min(end) - at;
                let kind = if self.block_is_data(block) {
                    ExtentKind::Data
                } else {
                    ExtentKind::Hole
                };
                map.push(Extent::new(at, n, kind))?;
                at += n;
            }
            Ok(map)
        })
    }

    fn read(&self, offset: u64, mut buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let this = self.clone();
        Box::pin(async move {
            this.fill(offset, buf.as_mut_slice());
            Ok(buf)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_the_same_whatever_the_split() {
        let s = SyntheticSource::new(SyntheticSpec {
            size: 8 << 20,
            data_percent: 60,
            seed: 7,
        });
        let mut whole = vec![0u8; 3 << 20];
        s.fill(1000, &mut whole);
        let mut parts = vec![0u8; 3 << 20];
        let (a, b) = parts.split_at_mut(12345);
        s.fill(1000, a);
        s.fill(1000 + 12345, b);
        assert_eq!(whole, parts);
    }

    #[test]
    fn holes_read_as_zero_and_data_blocks_exist() {
        let s = SyntheticSource::new(SyntheticSpec {
            size: 64 << 20,
            data_percent: 50,
            seed: 1,
        });
        let kinds: Vec<bool> = (0..64).map(|b| s.block_is_data(b)).collect();
        assert!(kinds.iter().any(|d| *d) && kinds.iter().any(|d| !*d));
        let hole = kinds.iter().position(|d| !*d).unwrap_or(0) as u64;
        let mut buf = vec![1u8; 4096];
        s.fill(hole * SYNTHETIC_BLOCK, &mut buf);
        assert!(buf.iter().all(|b| *b == 0));
    }
}
