//! The disk digest: what `--verify` and `ferry verify` compare.
//!
//! `blake3-64k`: the disk is cut into 64 KiB leaves (the pool's unit, so reads of any
//! buffer size split into whole leaves except at extent edges); each leaf is hashed with
//! BLAKE3, an all-zero leaf being the constant hash of 64 KiB of zeroes (computed once,
//! so a hole costs no hashing and the digest is the same whether zeroes were read or
//! known from the allocation map); 1024 leaf hashes make a group hash (64 MiB), and the
//! digest is BLAKE3 over a domain tag, the disk size and the group hashes in order.
//! BLAKE3 because it is fast on every core we run on (SIMD, several GB/s a core) and
//! its hashes of leaves can be computed in any order; SHA-256 would cost 2–5× the CPU
//! for the same guarantee here, which is detecting corruption and misplaced writes, not
//! resisting a chosen-collision attacker who controls both disks.
//!
//! The group hashes are kept (32 bytes per 64 MiB: 512 KiB for a 1 TiB disk), so two
//! digests that differ name the first differing 64 MiB, which a direct comparison then
//! narrows to the first differing leaf. Pieces may arrive in any order (the copy
//! completes reads out of order); a leaf covered by several pieces (extent edges) is
//! assembled in a scratch buffer; pieces must not overlap.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use crate::num::usize_of;

/// Leaf size.
pub const LEAF: u64 = 64 * 1024;
/// Leaves per group.
pub const GROUP_LEAVES: u64 = 1024;
/// Bytes per group.
pub const GROUP: u64 = LEAF * GROUP_LEAVES;
/// The digest's name, as printed before its hex.
pub const ALGORITHM: &str = "blake3-64k";
/// Most partly covered leaves kept at once (each holds a 64 KiB scratch buffer); past
/// this the caller fed pieces far out of order or overlapping.
pub const MAX_PARTIAL_LEAVES: usize = 4096;

/// A BLAKE3 hash: a leaf's, a group's or the disk's.
pub type Hash = [u8; 32];

fn zero_leaf() -> &'static Hash {
    static Z: OnceLock<Hash> = OnceLock::new();
    Z.get_or_init(|| *blake3::hash(&[0u8; usize_of(LEAF)]).as_bytes())
}

fn zero_group() -> &'static Hash {
    static Z: OnceLock<Hash> = OnceLock::new();
    Z.get_or_init(|| hash_leaves(&[*zero_leaf(); usize_of(GROUP_LEAVES)]))
}

fn hash_leaves(leaves: &[Hash]) -> Hash {
    let mut h = blake3::Hasher::new();
    for l in leaves {
        h.update(l);
    }
    *h.finalize().as_bytes()
}

/// A group's hash from its leaf hashes in order (a full group of zero leaves is the
/// constant, computed once).
fn group_hash(leaves: &[Hash]) -> Hash {
    if leaves.len() as u64 == GROUP_LEAVES && leaves.iter().all(|l| l == zero_leaf()) {
        *zero_group()
    } else {
        hash_leaves(leaves)
    }
}

/// The digest of a disk of `size` bytes from its group hashes in order.
fn digest_from(size: u64, groups: Vec<Hash>) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry-disk-digest-v1\0");
    h.update(&size.to_le_bytes());
    for g in &groups {
        h.update(g);
    }
    Digest {
        size,
        groups,
        root: *h.finalize().as_bytes(),
    }
}

/// A finished digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Disk size.
    pub size: u64,
    /// The group hashes, in order.
    pub groups: Vec<Hash>,
    /// The digest.
    pub root: Hash,
}

impl Digest {
    /// `blake3-64k:<hex>`.
    pub fn text(&self) -> String {
        let mut s = String::with_capacity(ALGORITHM.len() + 65);
        s.push_str(ALGORITHM);
        s.push(':');
        for b in self.root {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The first group where `self` and `other` differ, as a byte range; `None` when they
    /// are equal. Disks of different sizes differ from the end of the shorter one.
    pub fn first_difference(&self, other: &Digest) -> Option<(u64, u64)> {
        if self.root == other.root && self.size == other.size {
            return None;
        }
        let n = self.groups.len().min(other.groups.len());
        let (smaller, larger) = (self.size.min(other.size), self.size.max(other.size));
        for i in 0..n {
            if self.groups[i] != other.groups[i] {
                let start = i as u64 * GROUP;
                let end = (start + GROUP).min(larger);
                return Some((start, end - start));
            }
        }
        // Equal as far as both go: the longer one's tail differs.
        Some((smaller, larger - smaller))
    }
}

/// Pieces not yet assembled into a leaf.
struct Partial {
    bytes: Vec<u8>,
    covered: u64,
}

/// Builds a [`Digest`] from data and zero ranges given in any order.
pub struct Digester {
    size: u64,
    /// Completed group hashes (`None`: not yet).
    groups: Vec<Option<Hash>>,
    /// Leaf hashes of groups under way.
    pending: BTreeMap<u64, (Vec<Option<Hash>>, u64)>,
    partial: HashMap<u64, Partial>,
}

impl std::fmt::Debug for Digester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digester")
            .field("size", &self.size)
            .field("groups_pending", &self.pending.len())
            .field("partial_leaves", &self.partial.len())
            .finish()
    }
}

/// What a digest could not be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// A piece lies outside the disk.
    #[error("digest: bytes at {offset}+{len} lie beyond the disk's {size} bytes")]
    OutOfRange {
        /// Where.
        offset: u64,
        /// How long.
        len: u64,
        /// The disk size.
        size: u64,
    },
    /// More leaves half-covered than [`MAX_PARTIAL_LEAVES`].
    #[error("digest: more than {MAX_PARTIAL_LEAVES} leaves partly covered at once")]
    TooManyPartial,
    /// `finish` before every byte was given.
    #[error("digest: {missing} bytes of the disk were never given, first at {first}")]
    Incomplete {
        /// Bytes missing (leaf granularity).
        missing: u64,
        /// The first missing offset.
        first: u64,
    },
}

impl Digester {
    /// For a disk of `size` bytes.
    pub fn new(size: u64) -> Digester {
        Digester {
            size,
            groups: vec![None; usize::try_from(size.div_ceil(GROUP)).unwrap_or(0)],
            pending: BTreeMap::new(),
            partial: HashMap::new(),
        }
    }

    /// For a resumed copy: the first `groups.len()` group hashes are known (from the
    /// journal's digest file), and the copy gives the bytes from there on.
    pub fn resumed(size: u64, groups: &[Hash]) -> Digester {
        let mut d = Digester::new(size);
        for (slot, g) in d.groups.iter_mut().zip(groups) {
            *slot = Some(*g);
        }
        d
    }

    /// The group hashes from index `from` on, of the completed groups that lie wholly
    /// below `mark`, in order and without a gap (what a journal at watermark `mark` may
    /// keep).
    pub fn groups_below(&self, from: usize, mark: u64) -> Vec<Hash> {
        let whole = if mark >= self.size {
            self.groups.len()
        } else {
            usize::try_from(mark / GROUP).unwrap_or(usize::MAX)
        };
        self.groups
            .iter()
            .take(whole)
            .skip(from)
            .map_while(|g| *g)
            .collect()
    }

    fn leaf_len(&self, leaf: u64) -> u64 {
        (self.size - leaf * LEAF).min(LEAF)
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DigestError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(DigestError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// `bytes` read at `offset`.
    pub fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DigestError> {
        let len = bytes.len() as u64;
        self.check(offset, len)?;
        let mut at = offset;
        while at < offset + len {
            let leaf = at / LEAF;
            let leaf_start = leaf * LEAF;
            let leaf_len = self.leaf_len(leaf);
            let end = (leaf_start + leaf_len).min(offset + len);
            let piece = &bytes[usize_of(at - offset)..usize_of(end - offset)];
            if at == leaf_start && end == leaf_start + leaf_len && !self.partial.contains_key(&leaf)
            {
                // No zero check first: zeroes hash to the zero leaf's constant anyway,
                // and the bytes are touched once.
                self.leaf_done(leaf, *blake3::hash(piece).as_bytes());
            } else {
                self.piece(leaf, at - leaf_start, Some(piece), end - at)?;
            }
            at = end;
        }
        Ok(())
    }

    /// `len` bytes of zeroes at `offset` (a hole, or zeroes known from the allocation).
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<(), DigestError> {
        self.check(offset, len)?;
        let mut at = offset;
        while at < offset + len {
            // A whole group of zeroes at once (a hole of a sparse disk costs nothing).
            let group = at / GROUP;
            if at.is_multiple_of(GROUP)
                && offset + len - at >= GROUP
                && !self.pending.contains_key(&group)
                && let Some(g) = self.groups.get_mut(usize_of(group))
            {
                *g = Some(*zero_group());
                at += GROUP;
                continue;
            }
            let leaf = at / LEAF;
            let leaf_start = leaf * LEAF;
            let leaf_len = self.leaf_len(leaf);
            let end = (leaf_start + leaf_len).min(offset + len);
            if at == leaf_start && end == leaf_start + leaf_len && !self.partial.contains_key(&leaf)
            {
                let h = if leaf_len == LEAF {
                    *zero_leaf()
                } else {
                    *blake3::hash(&vec![0u8; usize_of(leaf_len)]).as_bytes()
                };
                self.leaf_done(leaf, h);
            } else {
                self.piece(leaf, at - leaf_start, None, end - at)?;
            }
            at = end;
        }
        Ok(())
    }

    /// Part of a leaf: bytes, or zeroes (`None`).
    fn piece(
        &mut self,
        leaf: u64,
        at: u64,
        bytes: Option<&[u8]>,
        len: u64,
    ) -> Result<(), DigestError> {
        let leaf_len = self.leaf_len(leaf);
        if !self.partial.contains_key(&leaf) && self.partial.len() >= MAX_PARTIAL_LEAVES {
            return Err(DigestError::TooManyPartial);
        }
        let p = self.partial.entry(leaf).or_insert_with(|| Partial {
            bytes: vec![0u8; usize_of(leaf_len)],
            covered: 0,
        });
        if let Some(b) = bytes {
            p.bytes[usize_of(at)..usize_of(at + len)].copy_from_slice(b);
        }
        p.covered += len;
        if p.covered >= leaf_len {
            let p = self.partial.remove(&leaf).unwrap_or_else(|| unreachable!());
            self.leaf_done(leaf, *blake3::hash(&p.bytes).as_bytes());
        }
        Ok(())
    }

    fn leaf_done(&mut self, leaf: u64, h: Hash) {
        let group = leaf / GROUP_LEAVES;
        let in_group = self
            .size
            .saturating_sub(group * GROUP)
            .min(GROUP)
            .div_ceil(LEAF);
        let (leaves, done) = self
            .pending
            .entry(group)
            .or_insert_with(|| (vec![None; usize_of(in_group)], 0));
        let slot = &mut leaves[usize_of(leaf % GROUP_LEAVES)];
        if slot.is_none() {
            *done += 1;
        }
        *slot = Some(h);
        if *done == in_group {
            let (leaves, _) = self.pending.remove(&group).unwrap_or_default();
            let leaves: Vec<Hash> = leaves.into_iter().flatten().collect();
            let gh = group_hash(&leaves);
            if let Some(g) = self.groups.get_mut(usize_of(group)) {
                *g = Some(gh);
            }
        }
    }

    /// The digest, once every byte was given.
    pub fn finish(self) -> Result<Digest, DigestError> {
        let mut groups = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter().enumerate() {
            match g {
                Some(h) => groups.push(*h),
                None => {
                    let missing_in: u64 = self
                        .pending
                        .get(&(i as u64))
                        .map_or(0, |(l, _)| l.iter().filter(|x| x.is_none()).count() as u64);
                    let first = i as u64 * GROUP
                        + self
                            .pending
                            .get(&(i as u64))
                            .and_then(|(l, _)| l.iter().position(Option::is_none))
                            .unwrap_or(0) as u64
                            * LEAF;
                    let missing = if missing_in > 0 {
                        missing_in * LEAF
                    } else {
                        GROUP
                    };
                    return Err(DigestError::Incomplete { missing, first });
                }
            }
        }
        Ok(digest_from(self.size, groups))
    }
}

/// Builds a [`Digest`] from bytes given in order, for a stream whose size is known only
/// at its end; the same digest [`Digester`] makes of the same bytes.
#[derive(Debug, Default)]
pub struct Sequential {
    size: u64,
    leaf: Vec<u8>,
    leaves: Vec<Hash>,
    groups: Vec<Hash>,
}

impl Sequential {
    /// An empty disk so far.
    pub fn new() -> Sequential {
        Sequential {
            leaf: Vec::with_capacity(usize_of(LEAF)),
            ..Default::default()
        }
    }

    fn push_leaf(&mut self, h: Hash) {
        self.leaves.push(h);
        if self.leaves.len() as u64 == GROUP_LEAVES {
            self.groups.push(group_hash(&self.leaves));
            self.leaves.clear();
        }
    }

    /// The next bytes.
    pub fn data(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.leaf.is_empty() && bytes.len() as u64 >= LEAF {
                let (l, rest) = bytes.split_at(usize_of(LEAF));
                self.push_leaf(*blake3::hash(l).as_bytes());
                bytes = rest;
                continue;
            }
            let take = (usize_of(LEAF) - self.leaf.len()).min(bytes.len());
            self.leaf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.leaf.len() as u64 == LEAF {
                let h = *blake3::hash(&self.leaf).as_bytes();
                self.leaf.clear();
                self.push_leaf(h);
            }
        }
    }

    /// The next `len` bytes are zeroes.
    pub fn zero(&mut self, mut len: u64) {
        while len > 0 {
            if self.leaf.is_empty() && len >= LEAF {
                self.size += LEAF;
                self.push_leaf(*zero_leaf());
                len -= LEAF;
                continue;
            }
            let take = (LEAF - self.leaf.len() as u64).min(len);
            self.data(&vec![0u8; usize_of(take)]);
            len -= take;
        }
    }

    /// The digest of everything given.
    pub fn finish(mut self) -> Digest {
        if !self.leaf.is_empty() {
            let h = *blake3::hash(&self.leaf).as_bytes();
            self.leaves.push(h);
        }
        if !self.leaves.is_empty() {
            self.groups.push(group_hash(&self.leaves));
        }
        digest_from(self.size, self.groups)
    }
}

/// The digest of a disk: a random-access one from its allocation (holes and zero
/// extents never read) with `count` reads of `buf_size` in flight; a stream front to
/// back.
pub async fn of_input(
    input: crate::source::Input,
    buf_size: usize,
    count: usize,
) -> Result<Digest, crate::Error> {
    use crate::source::Input;
    match input {
        Input::Disk(s) => {
            let d = of_source(&s, buf_size, count).await;
            s.close().await;
            d
        }
        Input::Stream(mut s) => {
            let d = of_stream(s.as_mut(), buf_size).await;
            s.close().await;
            d
        }
    }
}

async fn of_source(
    source: &std::sync::Arc<dyn crate::source::Source>,
    buf_size: usize,
    count: usize,
) -> Result<Digest, crate::Error> {
    of_prefix(source, source.size(), buf_size, count).await
}

/// The digest of the first `size` bytes of a random-access disk (a target larger than
/// the disk copied onto it).
pub async fn of_prefix(
    source: &std::sync::Arc<dyn crate::source::Source>,
    size: u64,
    buf_size: usize,
    count: usize,
) -> Result<Digest, crate::Error> {
    use futures::StreamExt as _;
    use futures::stream::FuturesUnordered;
    let size = size.min(source.size());
    let align = source.block_size().max(crate::buf::BUF_ALIGN as u64);
    let buf_size = (buf_size as u64)
        .min(source.max_read() / align * align)
        .max(align);
    let window = source.extent_window().max(align);
    let mut d = Digester::new(size);
    let mut free: Vec<crate::buf::Buf> = (0..count.max(1))
        .map(|_| crate::buf::Buf::new(crate::num::usize_of(buf_size)))
        .collect();
    let mut in_flight = FuturesUnordered::new();
    let mut off = 0;
    while off < size {
        let len = window.min(size - off);
        let map = source.extents(off, len).await?.align_data(align, size);
        for e in map.split(buf_size, u64::MAX) {
            if e.kind != ferry_cbt::ExtentKind::Data {
                d.zero(e.offset, e.length)?;
                continue;
            }
            let mut buf = match free.pop() {
                Some(b) => b,
                None => {
                    let (at, b): (u64, crate::buf::Buf) = in_flight
                        .next()
                        .await
                        .ok_or(crate::Error::Internal("digest reads stalled"))??;
                    d.data(at, b.as_slice())?;
                    b
                }
            };
            buf.set_len(crate::num::usize_of(e.length));
            let read = source.read(e.offset, buf);
            let at = e.offset;
            in_flight.push(async move { read.await.map(|b| (at, b)) });
        }
        off += len;
    }
    while let Some(r) = in_flight.next().await {
        let (at, b) = r?;
        d.data(at, b.as_slice())?;
    }
    Ok(d.finish()?)
}

/// Read `target` back over `source.size` bytes and compare its digest with `source`'s:
/// a difference is [`crate::Error::Mismatch`] naming the first differing 64 KiB (the
/// differing group narrowed by reading `source_again`, when it opens) or the group. The
/// target's digest on success.
pub async fn check_target<F>(
    source: &Digest,
    target: &std::sync::Arc<dyn crate::source::Source>,
    source_again: F,
    buf_size: usize,
    count: usize,
) -> Result<Digest, crate::Error>
where
    F: std::future::Future<
            Output = Result<std::sync::Arc<dyn crate::source::Source>, crate::Error>,
        >,
{
    let t = of_prefix(target, source.size, buf_size, count).await?;
    let Some((offset, len)) = source.first_difference(&t) else {
        return Ok(t);
    };
    let leaf = match source_again.await {
        Ok(s) => {
            let l = first_differing_leaf(&s, target, offset, len).await;
            s.close().await;
            l.ok().flatten()
        }
        Err(_) => None,
    };
    let (offset, end) = leaf.unwrap_or((offset, offset + len));
    Err(crate::Error::Mismatch(format!(
        "--verify: the target differs from the source: first difference in bytes {offset}..{end} \
         (source {}, target {})",
        source.text(),
        t.text()
    )))
}

/// The first differing 64 KiB leaf of `[start, start+len)` (a differing group), reading
/// both disks again; past the shorter one's end, the longer one's tail. `None` when they
/// read equal there.
pub async fn first_differing_leaf(
    a: &std::sync::Arc<dyn crate::source::Source>,
    b: &std::sync::Arc<dyn crate::source::Source>,
    start: u64,
    len: u64,
) -> Result<Option<(u64, u64)>, crate::Error> {
    let (small, large) = (a.size().min(b.size()), a.size().max(b.size()));
    let end = (start + len).min(small);
    let mut at = start;
    while at < end {
        let n = LEAF.min(end - at);
        let read = |s: &std::sync::Arc<dyn crate::source::Source>| {
            let mut buf = crate::buf::Buf::new(usize_of(LEAF));
            buf.set_len(usize_of(n));
            s.read(at, buf)
        };
        let (x, y) = futures::try_join!(read(a), read(b))?;
        if x.as_slice() != y.as_slice() {
            return Ok(Some((at, at + n)));
        }
        at += n;
    }
    Ok((small != large && start + len > small).then_some((small, large)))
}

async fn of_stream(
    s: &mut dyn crate::source::stream::StreamSource,
    buf_size: usize,
) -> Result<Digest, crate::Error> {
    use crate::source::stream::Piece;
    let mut d = Sequential::new();
    let mut buf = crate::buf::Buf::new(buf_size.max(crate::buf::BUF_ALIGN));
    loop {
        buf = match s.next(buf).await? {
            Piece::Data(b) => {
                d.data(b.as_slice());
                b
            }
            Piece::Zero { len, buf } => {
                d.zero(len);
                buf
            }
            Piece::End(_) => break,
        };
    }
    Ok(d.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        let mut d = Digester::new(bytes.len() as u64);
        d.data(0, bytes).unwrap();
        d.finish().unwrap()
    }

    fn disk(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate() {
            if (i / 100_000) % 3 == 1 {
                continue; // runs of zeroes
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        v
    }

    #[test]
    fn pieces_in_any_order_and_zeroes_by_map_or_by_read_give_one_digest() {
        let len = 2 * usize_of(GROUP) + 3 * usize_of(LEAF) + 777;
        let d = disk(len, 9);
        let whole = digest_of(&d);
        // Odd pieces, shuffled; zero runs given as zero ranges.
        let mut pieces = Vec::new();
        let mut at = 0usize;
        let mut step = 4096 * 7 + 512;
        while at < len {
            let end = (at + step).min(len);
            pieces.push((at, end));
            at = end;
            step = step * 3 % 300_000 + 4096;
        }
        pieces.reverse();
        pieces.swap(0, 3);
        let mut g = Digester::new(len as u64);
        for (a, b) in pieces {
            if d[a..b].iter().all(|x| *x == 0) {
                g.zero(a as u64, (b - a) as u64).unwrap();
            } else {
                g.data(a as u64, &d[a..b]).unwrap();
            }
        }
        assert_eq!(g.finish().unwrap(), whole);
        assert!(whole.text().starts_with("blake3-64k:"));
        assert_eq!(whole.text().len(), "blake3-64k:".len() + 64);
    }

    #[test]
    fn bytes_in_order_give_the_same_digest_as_pieces() {
        let len = usize_of(GROUP) + 5 * usize_of(LEAF) + 1000;
        let d = disk(len, 21);
        let mut s = Sequential::new();
        let mut at = 0;
        for step in [1000usize, 70_000, 5, 3 * usize_of(LEAF), 1 << 20] {
            let end = (at + step).min(len);
            if d[at..end].iter().all(|b| *b == 0) {
                s.zero((end - at) as u64);
            } else {
                s.data(&d[at..end]);
            }
            at = end;
        }
        s.data(&d[at..]);
        assert_eq!(s.finish(), digest_of(&d));
        let mut z = Sequential::new();
        z.zero(3 * GROUP + 17);
        let mut g = Digester::new(3 * GROUP + 17);
        g.zero(0, 3 * GROUP + 17).unwrap();
        assert_eq!(z.finish(), g.finish().unwrap());
    }

    #[test]
    fn one_changed_byte_is_found_in_its_group_and_sizes_matter() {
        let d = disk(3 * usize_of(GROUP), 4);
        let a = digest_of(&d);
        let mut e = d.clone();
        e[usize_of(GROUP) + 12345] ^= 1;
        let b = digest_of(&e);
        assert_ne!(a.root, b.root);
        assert_eq!(a.first_difference(&b), Some((GROUP, GROUP)));
        assert_eq!(a.first_difference(&a.clone()), None);
        // A zero byte more at the end is another disk.
        let mut longer = d.clone();
        longer.push(0);
        let c = digest_of(&longer);
        assert_ne!(a.root, c.root);
        assert_eq!(a.first_difference(&c), Some((3 * GROUP, 1)));
    }

    #[test]
    fn a_sparse_terabyte_costs_no_leaf_hashing_and_missing_bytes_are_named() {
        let size = 1u64 << 40;
        let mut g = Digester::new(size);
        g.zero(0, size).unwrap();
        let d = g.finish().unwrap();
        assert_eq!(d.groups.len(), usize_of(size / GROUP));
        let mut h = Digester::new(10 * LEAF);
        h.data(0, &vec![1u8; usize_of(LEAF)]).unwrap();
        h.zero(2 * LEAF, 8 * LEAF).unwrap();
        assert_eq!(
            h.finish().unwrap_err(),
            DigestError::Incomplete {
                missing: LEAF,
                first: LEAF
            }
        );
        let mut o = Digester::new(100);
        assert!(matches!(
            o.data(90, &[0; 20]),
            Err(DigestError::OutOfRange { .. })
        ));
    }
}
