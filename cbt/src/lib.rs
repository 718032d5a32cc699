//! Extent maps for Ferry's data plane.
//!
//! An [`ExtentMap`] describes byte ranges of a virtual disk: which ranges hold
//! [`ExtentKind::Data`] that must be copied, which read as zeroes, and which are
//! unallocated holes. A map is always kept in canonical form:
//!
//! * extents are sorted by offset,
//! * no extent has zero length,
//! * no two extents overlap,
//! * touching extents of the same kind are merged into one.
//!
//! Ranges not covered by any extent (gaps) are allowed; what a gap means is up
//! to the caller (for changed-block tracking it usually means "unchanged").
//!
//! Because the form is canonical, two maps describing the same bytes with the
//! same kinds compare equal. All operations are linear merges of sorted lists,
//! never per byte, and all arithmetic is overflow-safe: extents may end exactly
//! at `u64::MAX`. The crate does no I/O.

#![forbid(unsafe_code)]
// Every narrowing or sign-dropping `as` in library code is a finding; unit tests build
// their fixtures with plain casts.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod journal;

/// What a range of a virtual disk holds.
///
/// The ordering is the "strength" of a kind: `Data > Zero > Hole`. Where two
/// maps disagree about a byte, set operations keep the stronger kind, since
/// treating zeroes as data (or a hole as zeroes) is always safe for a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtentKind {
    /// Unallocated; reads as zeroes.
    Hole,
    /// Allocated, but reads as zeroes.
    Zero,
    /// Holds data that must be read and written.
    Data,
}

/// One byte range `[offset, offset + length)` of a given kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the range.
    pub offset: u64,
    /// Number of bytes in the range.
    pub length: u64,
    /// What the range holds.
    pub kind: ExtentKind,
}

impl Extent {
    /// Creates an extent covering `[offset, offset + length)`.
    pub fn new(offset: u64, length: u64, kind: ExtentKind) -> Self {
        Self {
            offset,
            length,
            kind,
        }
    }

    /// One past the last byte: `offset + length`, saturating at `u64::MAX`.
    ///
    /// Extents held by an [`ExtentMap`] never overflow, so for them this is
    /// exact. Use [`Extent::checked_end`] to detect overflow on raw input.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// `offset + length`, or `None` if that overflows `u64`.
    pub fn checked_end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }
}

/// Errors from building an [`ExtentMap`] out of untrusted extents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtentError {
    /// An extent starts before the end of the one preceding it.
    #[error("extent at {offset} overlaps the previous one ending at {previous_end}")]
    Overlap {
        /// Offset of the offending extent.
        offset: u64,
        /// End of the extent it overlaps.
        previous_end: u64,
    },
    /// `offset + length` overflows `u64`.
    #[error("extent at {offset} with length {length} overflows u64")]
    Overflow {
        /// Offset of the offending extent.
        offset: u64,
        /// Length of the offending extent.
        length: u64,
    },
    /// The map would hold more than `limit` extents.
    #[error("too many extents (limit {limit})")]
    TooMany {
        /// The cap that was exceeded.
        limit: usize,
    },
}

/// Cap on the number of extents accepted from untrusted input by
/// [`ExtentMap::push`] and [`ExtentMap::from_extents`].
///
/// Maps derived from valid maps by set operations are not capped.
pub const MAX_EXTENTS: usize = 16 * 1024 * 1024;

/// A sorted, coalesced, non-overlapping set of extents (see the crate docs for
/// the invariants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentMap {
    extents: Vec<Extent>,
}

impl ExtentMap {
    /// Creates an empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an extent that starts at or after the end of the last one.
    ///
    /// A zero-length extent is ignored. An extent touching the last one and of
    /// the same kind is merged into it.
    ///
    /// # Errors
    ///
    /// [`ExtentError::Overflow`] if `offset + length` overflows,
    /// [`ExtentError::Overlap`] if it starts before the end of the last extent,
    /// [`ExtentError::TooMany`] if the map already holds [`MAX_EXTENTS`].
    pub fn push(&mut self, e: Extent) -> Result<(), ExtentError> {
        self.push_limited(e, MAX_EXTENTS)
    }

    fn push_limited(&mut self, e: Extent, limit: usize) -> Result<(), ExtentError> {
        if e.checked_end().is_none() {
            return Err(ExtentError::Overflow {
                offset: e.offset,
                length: e.length,
            });
        }
        if e.length == 0 {
            return Ok(());
        }
        if let Some(last) = self.extents.last_mut() {
            let previous_end = last.end();
            if e.offset < previous_end {
                return Err(ExtentError::Overlap {
                    offset: e.offset,
                    previous_end,
                });
            }
            if e.offset == previous_end && e.kind == last.kind {
                last.length += e.length;
                return Ok(());
            }
        }
        if self.extents.len() >= limit {
            return Err(ExtentError::TooMany { limit });
        }
        self.extents.push(e);
        Ok(())
    }

    /// Appends an extent known to be valid and to start at or after the end of
    /// the last one (used by the set operations, whose output is ordered by
    /// construction). Merges touching same-kind extents; ignores empty ones.
    fn push_sorted(&mut self, e: Extent) {
        if e.length == 0 {
            return;
        }
        if let Some(last) = self.extents.last_mut() {
            debug_assert!(e.offset >= last.end());
            if e.offset == last.end() && e.kind == last.kind {
                last.length += e.length;
                return;
            }
        }
        self.extents.push(e);
    }

    /// Builds a map from extents given in any order: sorts them, rejects
    /// overlaps and merges touching extents of the same kind. Zero-length
    /// extents are ignored.
    ///
    /// # Errors
    ///
    /// [`ExtentError::Overflow`] if an extent's end overflows,
    /// [`ExtentError::Overlap`] if two extents overlap,
    /// [`ExtentError::TooMany`] if more than [`MAX_EXTENTS`] non-empty extents
    /// are given (checked while collecting, so memory stays bounded).
    pub fn from_extents<I: IntoIterator<Item = Extent>>(it: I) -> Result<Self, ExtentError> {
        Self::from_extents_limited(it, MAX_EXTENTS)
    }

    fn from_extents_limited<I: IntoIterator<Item = Extent>>(
        it: I,
        limit: usize,
    ) -> Result<Self, ExtentError> {
        let mut raw = Vec::new();
        for e in it {
            if e.checked_end().is_none() {
                return Err(ExtentError::Overflow {
                    offset: e.offset,
                    length: e.length,
                });
            }
            if e.length == 0 {
                continue;
            }
            if raw.len() >= limit {
                return Err(ExtentError::TooMany { limit });
            }
            raw.push(e);
        }
        raw.sort_unstable_by_key(|e| e.offset);
        let mut map = Self {
            extents: Vec::with_capacity(raw.len()),
        };
        for e in raw {
            map.push_limited(e, limit)?;
        }
        Ok(map)
    }

    /// A map covering `[offset, offset + length)` with one kind.
    ///
    /// If `offset + length` overflows, the extent is cut to end at `u64::MAX`.
    /// A zero length gives an empty map.
    pub fn single(offset: u64, length: u64, kind: ExtentKind) -> Self {
        let length = length.min(u64::MAX - offset);
        let mut map = Self::new();
        map.push_sorted(Extent::new(offset, length, kind));
        map
    }

    /// Iterates over the extents in offset order.
    pub fn iter(&self) -> std::slice::Iter<'_, Extent> {
        self.extents.iter()
    }

    /// The extents in offset order.
    pub fn as_slice(&self) -> &[Extent] {
        &self.extents
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// Whether the map holds no extent.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Total number of bytes of the given kind.
    pub fn bytes(&self, kind: ExtentKind) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == kind)
            .fold(0u64, |acc, e| acc.saturating_add(e.length))
    }

    /// Total number of bytes covered by any extent.
    pub fn covered_bytes(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |acc, e| acc.saturating_add(e.length))
    }

    /// Offset of the first covered byte, or `None` if the map is empty.
    pub fn start(&self) -> Option<u64> {
        self.extents.first().map(|e| e.offset)
    }

    /// One past the last covered byte, or `None` if the map is empty.
    pub fn end(&self) -> Option<u64> {
        self.extents.last().map(Extent::end)
    }

    /// The kind of the byte at `offset`, or `None` if no extent covers it.
    /// Binary search: `O(log n)`.
    pub fn kind_at(&self, offset: u64) -> Option<ExtentKind> {
        let i = self.extents.partition_point(|e| e.end() <= offset);
        self.extents
            .get(i)
            .filter(|e| e.offset <= offset)
            .map(|e| e.kind)
    }

    /// Coverage union; where both maps cover a byte, the stronger kind wins
    /// (`Data > Zero > Hole`).
    pub fn union(&self, other: &ExtentMap) -> ExtentMap {
        combine(&self.extents, &other.extents, |a, b| a.max(b))
    }

    /// Bytes covered by both maps; each keeps the stronger of the two kinds.
    pub fn intersection(&self, other: &ExtentMap) -> ExtentMap {
        combine(&self.extents, &other.extents, |a, b| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        })
    }

    /// Bytes covered by `self` and not by `other`, with `self`'s kind.
    pub fn difference(&self, other: &ExtentMap) -> ExtentMap {
        combine(&self.extents, &other.extents, |a, b| match b {
            Some(_) => None,
            None => a,
        })
    }

    /// The part of the map inside `[start, end)`. Empty if `start >= end`.
    pub fn clip(&self, start: u64, end: u64) -> ExtentMap {
        ExtentMap {
            extents: self.clipped(start, end).collect(),
        }
    }

    /// Extents of `self` restricted to `[start, end)`, in order.
    fn clipped(&self, start: u64, end: u64) -> impl Iterator<Item = Extent> + '_ {
        let first = self.extents.partition_point(|e| e.end() <= start);
        self.extents[first..]
            .iter()
            .take_while(move |e| start < end && e.offset < end)
            .map(move |e| {
                let s = e.offset.max(start);
                let t = e.end().min(end);
                Extent::new(s, t - s, e.kind)
            })
    }

    /// Clips the map to `[start, end)` and fills every gap inside that range
    /// with `kind`; existing extents keep their kind. Empty if `start >= end`.
    pub fn fill_gaps(&self, start: u64, end: u64, kind: ExtentKind) -> ExtentMap {
        let mut out = ExtentMap::new();
        if start >= end {
            return out;
        }
        let mut pos = start;
        for e in self.clipped(start, end) {
            out.push_sorted(Extent::new(pos, e.offset - pos, kind));
            out.push_sorted(e);
            pos = e.end();
        }
        out.push_sorted(Extent::new(pos, end - pos, kind));
        out
    }

    /// Grows every `Data` extent outward to multiples of `block`, so that
    /// writes of the data can be block-aligned (`O_DIRECT`).
    ///
    /// Precisely: every `block`-aligned block that holds at least one `Data`
    /// byte becomes `Data` throughout, except that no byte at or beyond
    /// `limit` (the disk size) is added. Bytes taken over from `Zero` or `Hole`
    /// extents, or from gaps, become `Data`; `Data` never becomes anything
    /// else. A `Data` extent therefore starts and ends on a block boundary
    /// unless that boundary was clamped at `limit` or the extent already
    /// extended beyond `limit`.
    ///
    /// If `block` is 0 or not a power of two, the map is returned unchanged.
    pub fn align_data(&self, block: u64, limit: u64) -> ExtentMap {
        if !block.is_power_of_two() {
            return self.clone();
        }
        let mask = block - 1;
        let mut grown = ExtentMap::new();
        for e in self.extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            let start = e.offset & !mask;
            // Rounding up past u64::MAX would land on 2^64; `limit` caps it anyway.
            let end = e.end().checked_add(mask).map_or(u64::MAX, |v| v & !mask);
            let end = end.min(limit);
            if start >= end {
                continue;
            }
            match grown.extents.last_mut() {
                // Grown ranges are sorted by start but may overlap.
                Some(last) if start <= last.end() => {
                    let new_end = last.end().max(end);
                    last.length = new_end - last.offset;
                }
                _ => grown
                    .extents
                    .push(Extent::new(start, end - start, ExtentKind::Data)),
            }
        }
        if grown.is_empty() {
            return self.clone();
        }
        self.union(&grown)
    }

    /// Splits the map into pieces for I/O requests: `Data` pieces are at most
    /// `max_data` bytes and `Zero`/`Hole` pieces at most `max_other` bytes
    /// (0 means unlimited).
    ///
    /// When the limit is a power of two, cuts fall on absolute offsets that are
    /// multiples of it, so requests stay aligned; otherwise pieces are cut
    /// every `limit` bytes from the extent's start. Pieces come in offset
    /// order, and adjacent pieces are not merged. The iterator is lazy.
    pub fn split(&self, max_data: u64, max_other: u64) -> impl Iterator<Item = Extent> + '_ {
        Split {
            rest: self.extents.iter(),
            current: None,
            max_data,
            max_other,
        }
    }
}

impl<'a> IntoIterator for &'a ExtentMap {
    type Item = &'a Extent;
    type IntoIter = std::slice::Iter<'a, Extent>;

    fn into_iter(self) -> Self::IntoIter {
        self.extents.iter()
    }
}

/// Sweeps the boundaries of two canonical extent lists and builds the map
/// whose kind on each elementary segment is `f(kind in a, kind in b)`.
/// Segments covered by neither list are skipped. Linear in `a.len() + b.len()`.
fn combine(
    a: &[Extent],
    b: &[Extent],
    f: impl Fn(Option<ExtentKind>, Option<ExtentKind>) -> Option<ExtentKind>,
) -> ExtentMap {
    let mut out = ExtentMap::new();
    let (mut i, mut j) = (0usize, 0usize);
    let mut pos = 0u64;
    loop {
        while a.get(i).is_some_and(|e| e.end() <= pos) {
            i += 1;
        }
        while b.get(j).is_some_and(|e| e.end() <= pos) {
            j += 1;
        }
        let (ea, eb) = (a.get(i), b.get(j));
        if ea.is_none() && eb.is_none() {
            break;
        }
        let kind_at = |e: Option<&Extent>| e.filter(|e| e.offset <= pos).map(|e| e.kind);
        // Next boundary after `pos`: the start of an extent not yet reached, or
        // the end of the one covering `pos`. Always > pos, so the loop advances.
        let boundary =
            |e: Option<&Extent>| e.map(|e| if e.offset > pos { e.offset } else { e.end() });
        let next = match (boundary(ea), boundary(eb)) {
            (Some(x), Some(y)) => x.min(y),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => break,
        };
        let (ka, kb) = (kind_at(ea), kind_at(eb));
        if (ka.is_some() || kb.is_some())
            && let Some(kind) = f(ka, kb)
        {
            out.push_sorted(Extent::new(pos, next - pos, kind));
        }
        pos = next;
    }
    out
}

/// Lazy iterator behind [`ExtentMap::split`].
#[derive(Debug, Clone)]
struct Split<'a> {
    rest: std::slice::Iter<'a, Extent>,
    /// Remaining part of the extent being cut.
    current: Option<Extent>,
    max_data: u64,
    max_other: u64,
}

impl Iterator for Split<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        let cur = match self.current.take() {
            Some(c) => c,
            None => *self.rest.next()?,
        };
        let max = match cur.kind {
            ExtentKind::Data => self.max_data,
            ExtentKind::Zero | ExtentKind::Hole => self.max_other,
        };
        let end = cur.end();
        let cut = if max == 0 {
            end
        } else if max.is_power_of_two() {
            // Next multiple of `max` strictly after `offset`; none if it overflows.
            (cur.offset | (max - 1))
                .checked_add(1)
                .map_or(end, |m| m.min(end))
        } else {
            cur.offset.saturating_add(max).min(end)
        };
        let piece = Extent::new(cur.offset, cut - cur.offset, cur.kind);
        if cut < end {
            self.current = Some(Extent::new(cut, end - cut, cur.kind));
        }
        Some(piece)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = usize::from(self.current.is_some());
        (self.rest.len() + pending, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtentKind::{Data, Hole, Zero};

    fn ext(offset: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent::new(offset, length, kind)
    }

    fn map(extents: &[(u64, u64, ExtentKind)]) -> ExtentMap {
        ExtentMap::from_extents(extents.iter().map(|&(o, l, k)| ext(o, l, k))).unwrap()
    }

    fn pieces(m: &ExtentMap) -> Vec<(u64, u64, ExtentKind)> {
        m.iter().map(|e| (e.offset, e.length, e.kind)).collect()
    }

    // --- ExtentKind / Extent ---

    #[test]
    fn extent_kind_orders_by_strength() {
        // Arrange / Act / Assert
        assert!(Data > Zero);
        assert!(Zero > Hole);
        assert_eq!([Zero, Data, Hole].iter().max(), Some(&Data));
    }

    #[test]
    fn extent_end_is_offset_plus_length() {
        // Arrange
        let e = ext(4096, 512, Data);
        // Act / Assert
        assert_eq!(e.end(), 4608);
        assert_eq!(e.checked_end(), Some(4608));
    }

    #[test]
    fn extent_end_saturates_on_overflow() {
        // Arrange
        let e = ext(u64::MAX - 1, 10, Data);
        // Act / Assert
        assert_eq!(e.end(), u64::MAX);
        assert_eq!(e.checked_end(), None);
    }

    // --- push ---

    #[test]
    fn push_appends_in_order() {
        // Arrange
        let mut m = ExtentMap::new();
        // Act
        m.push(ext(0, 10, Data)).unwrap();
        m.push(ext(20, 5, Zero)).unwrap();
        // Assert
        assert_eq!(pieces(&m), vec![(0, 10, Data), (20, 5, Zero)]);
    }

    #[test]
    fn push_merges_touching_same_kind() {
        // Arrange
        let mut m = ExtentMap::new();
        m.push(ext(0, 10, Data)).unwrap();
        // Act
        m.push(ext(10, 6, Data)).unwrap();
        // Assert
        assert_eq!(pieces(&m), vec![(0, 16, Data)]);
    }

    #[test]
    fn push_keeps_touching_different_kinds_apart() {
        // Arrange
        let mut m = ExtentMap::new();
        m.push(ext(0, 10, Data)).unwrap();
        // Act
        m.push(ext(10, 6, Hole)).unwrap();
        // Assert
        assert_eq!(pieces(&m), vec![(0, 10, Data), (10, 6, Hole)]);
    }

    #[test]
    fn push_does_not_merge_across_gap() {
        // Arrange
        let mut m = ExtentMap::new();
        m.push(ext(0, 10, Data)).unwrap();
        // Act
        m.push(ext(11, 6, Data)).unwrap();
        // Assert
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn push_ignores_zero_length_extent() {
        // Arrange
        let mut m = ExtentMap::new();
        m.push(ext(0, 10, Data)).unwrap();
        // Act: even one that would otherwise overlap
        m.push(ext(5, 0, Zero)).unwrap();
        // Assert
        assert_eq!(pieces(&m), vec![(0, 10, Data)]);
    }

    #[test]
    fn push_overlapping_extent_returns_overlap() {
        // Arrange
        let mut m = ExtentMap::new();
        m.push(ext(0, 8192, Data)).unwrap();
        // Act
        let err = m.push(ext(4096, 10, Data)).unwrap_err();
        // Assert
        assert_eq!(
            err,
            ExtentError::Overlap {
                offset: 4096,
                previous_end: 8192
            }
        );
        assert_eq!(
            err.to_string(),
            "extent at 4096 overlaps the previous one ending at 8192"
        );
        assert_eq!(pieces(&m), vec![(0, 8192, Data)]);
    }

    #[test]
    fn push_overflowing_extent_returns_overflow() {
        // Arrange
        let mut m = ExtentMap::new();
        // Act
        let err = m.push(ext(u64::MAX, 1, Data)).unwrap_err();
        // Assert
        assert_eq!(
            err,
            ExtentError::Overflow {
                offset: u64::MAX,
                length: 1
            }
        );
        assert!(err.to_string().contains("overflows"));
        assert!(m.is_empty());
    }

    #[test]
    fn push_extent_ending_at_u64_max_is_accepted() {
        // Arrange
        let mut m = ExtentMap::new();
        // Act
        m.push(ext(u64::MAX - 10, 10, Data)).unwrap();
        // Assert
        assert_eq!(m.end(), Some(u64::MAX));
    }

    #[test]
    fn push_beyond_limit_returns_too_many() {
        // Arrange
        let mut m = ExtentMap::new();
        m.push_limited(ext(0, 1, Data), 2).unwrap();
        m.push_limited(ext(1, 1, Zero), 2).unwrap();
        // Act
        let merged = m.push_limited(ext(2, 1, Zero), 2);
        let err = m.push_limited(ext(3, 1, Data), 2).unwrap_err();
        // Assert
        assert_eq!(merged, Ok(()));
        assert_eq!(err, ExtentError::TooMany { limit: 2 });
        assert_eq!(err.to_string(), "too many extents (limit 2)");
        assert_eq!(m.len(), 2);
    }

    // --- from_extents ---

    #[test]
    fn from_extents_sorts_and_merges() {
        // Arrange
        let input = [
            ext(20, 10, Data),
            ext(0, 10, Data),
            ext(10, 10, Data),
            ext(40, 1, Hole),
        ];
        // Act
        let m = ExtentMap::from_extents(input).unwrap();
        // Assert
        assert_eq!(pieces(&m), vec![(0, 30, Data), (40, 1, Hole)]);
    }

    #[test]
    fn from_extents_skips_zero_length() {
        // Arrange
        let input = [ext(5, 0, Data), ext(0, 10, Zero)];
        // Act
        let m = ExtentMap::from_extents(input).unwrap();
        // Assert
        assert_eq!(pieces(&m), vec![(0, 10, Zero)]);
    }

    #[test]
    fn from_extents_overlapping_returns_overlap() {
        // Arrange
        let input = [ext(4096, 100, Zero), ext(0, 8192, Data)];
        // Act
        let err = ExtentMap::from_extents(input).unwrap_err();
        // Assert
        assert_eq!(
            err,
            ExtentError::Overlap {
                offset: 4096,
                previous_end: 8192
            }
        );
    }

    #[test]
    fn from_extents_same_offset_returns_overlap() {
        // Arrange
        let input = [ext(0, 1, Zero), ext(0, 1, Zero)];
        // Act
        let err = ExtentMap::from_extents(input).unwrap_err();
        // Assert
        assert_eq!(
            err,
            ExtentError::Overlap {
                offset: 0,
                previous_end: 1
            }
        );
    }

    #[test]
    fn from_extents_overflowing_returns_overflow() {
        // Arrange
        let input = [ext(0, 1, Data), ext(u64::MAX - 1, 2, Data)];
        // Act
        let err = ExtentMap::from_extents(input).unwrap_err();
        // Assert
        assert_eq!(
            err,
            ExtentError::Overflow {
                offset: u64::MAX - 1,
                length: 2
            }
        );
    }

    #[test]
    fn from_extents_beyond_limit_returns_too_many() {
        // Arrange
        let input = (0..4).map(|i| ext(i * 2, 1, Data));
        // Act
        let err = ExtentMap::from_extents_limited(input, 3).unwrap_err();
        // Assert
        assert_eq!(err, ExtentError::TooMany { limit: 3 });
    }

    #[test]
    fn from_extents_at_limit_is_accepted() {
        // Arrange
        let input = (0..3).map(|i| ext(i * 2, 1, Data));
        // Act
        let m = ExtentMap::from_extents_limited(input, 3).unwrap();
        // Assert
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn max_extents_is_16_mebi() {
        assert_eq!(MAX_EXTENTS, 16_777_216);
    }

    // --- single, accessors ---

    #[test]
    fn single_covers_one_range() {
        // Act
        let m = ExtentMap::single(100, 50, Zero);
        // Assert
        assert_eq!(pieces(&m), vec![(100, 50, Zero)]);
        assert_eq!((m.start(), m.end()), (Some(100), Some(150)));
    }

    #[test]
    fn single_zero_length_is_empty() {
        // Act
        let m = ExtentMap::single(100, 0, Data);
        // Assert
        assert!(m.is_empty());
        assert_eq!(m, ExtentMap::new());
    }

    #[test]
    fn single_overflowing_length_is_cut_at_u64_max() {
        // Act
        let m = ExtentMap::single(u64::MAX - 5, u64::MAX, Data);
        // Assert
        assert_eq!(pieces(&m), vec![(u64::MAX - 5, 5, Data)]);
    }

    #[test]
    fn empty_map_has_no_bounds() {
        // Arrange
        let m = ExtentMap::new();
        // Act / Assert
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.start(), None);
        assert_eq!(m.end(), None);
        assert_eq!(m.covered_bytes(), 0);
    }

    #[test]
    fn bytes_counts_per_kind() {
        // Arrange
        let m = map(&[(0, 10, Data), (10, 5, Zero), (20, 7, Data), (30, 3, Hole)]);
        // Act / Assert
        assert_eq!(m.bytes(Data), 17);
        assert_eq!(m.bytes(Zero), 5);
        assert_eq!(m.bytes(Hole), 3);
        assert_eq!(m.covered_bytes(), 25);
        assert_eq!((m.start(), m.end()), (Some(0), Some(33)));
    }

    #[test]
    fn bytes_of_whole_u64_range_does_not_overflow() {
        // Arrange
        let m = map(&[(0, u64::MAX - 1, Data), (u64::MAX - 1, 1, Zero)]);
        // Act / Assert
        assert_eq!(m.covered_bytes(), u64::MAX);
        assert_eq!(m.bytes(Zero), 1);
    }

    #[test]
    fn iter_as_slice_and_into_iter_agree() {
        // Arrange
        let m = map(&[(0, 10, Data), (20, 5, Zero)]);
        // Act
        let a: Vec<Extent> = m.iter().copied().collect();
        let b: Vec<Extent> = (&m).into_iter().copied().collect();
        let mut c = Vec::new();
        for e in &m {
            c.push(*e);
        }
        // Assert
        assert_eq!(a, m.as_slice());
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn kind_at_finds_covering_extent() {
        // Arrange
        let m = map(&[(10, 10, Data), (20, 5, Zero)]);
        // Act / Assert
        assert_eq!(m.kind_at(9), None);
        assert_eq!(m.kind_at(10), Some(Data));
        assert_eq!(m.kind_at(19), Some(Data));
        assert_eq!(m.kind_at(20), Some(Zero));
        assert_eq!(m.kind_at(25), None);
    }

    // --- union / intersection / difference ---

    #[test]
    fn union_stronger_kind_wins() {
        // Arrange
        let a = map(&[(0, 100, Hole)]);
        let b = map(&[(50, 100, Data)]);
        // Act
        let u = a.union(&b);
        // Assert
        assert_eq!(pieces(&u), vec![(0, 50, Hole), (50, 100, Data)]);
    }

    #[test]
    fn union_keeps_gaps_and_merges_touching() {
        // Arrange
        let a = map(&[(0, 10, Zero), (30, 10, Data)]);
        let b = map(&[(10, 10, Zero), (50, 10, Data)]);
        // Act
        let u = a.union(&b);
        // Assert
        assert_eq!(
            pieces(&u),
            vec![(0, 20, Zero), (30, 10, Data), (50, 10, Data)]
        );
    }

    #[test]
    fn union_with_empty_is_identity() {
        // Arrange
        let a = map(&[(0, 10, Zero), (30, 10, Data)]);
        // Act / Assert
        assert_eq!(a.union(&ExtentMap::new()), a);
        assert_eq!(ExtentMap::new().union(&a), a);
    }

    #[test]
    fn union_near_u64_max_does_not_panic() {
        // Arrange
        let a = map(&[(u64::MAX - 10, 10, Hole)]);
        let b = map(&[(u64::MAX - 5, 5, Data)]);
        // Act
        let u = a.union(&b);
        // Assert
        assert_eq!(
            pieces(&u),
            vec![(u64::MAX - 10, 5, Hole), (u64::MAX - 5, 5, Data)]
        );
    }

    #[test]
    fn intersection_keeps_common_bytes_with_stronger_kind() {
        // Arrange
        let a = map(&[(0, 100, Data), (200, 100, Hole)]);
        let b = map(&[(50, 200, Zero)]);
        // Act
        let i = a.intersection(&b);
        // Assert
        assert_eq!(pieces(&i), vec![(50, 50, Data), (200, 50, Zero)]);
    }

    #[test]
    fn intersection_of_disjoint_is_empty() {
        // Arrange
        let a = map(&[(0, 10, Data)]);
        let b = map(&[(10, 10, Data)]);
        // Act / Assert
        assert!(a.intersection(&b).is_empty());
    }

    #[test]
    fn difference_removes_other_coverage_and_keeps_own_kind() {
        // Arrange
        let a = map(&[(0, 100, Zero)]);
        let b = map(&[(10, 10, Data), (50, 100, Hole)]);
        // Act
        let d = a.difference(&b);
        // Assert
        assert_eq!(pieces(&d), vec![(0, 10, Zero), (20, 30, Zero)]);
    }

    #[test]
    fn difference_with_self_is_empty() {
        // Arrange
        let a = map(&[(0, 10, Zero), (30, 10, Data)]);
        // Act / Assert
        assert!(a.difference(&a).is_empty());
        assert_eq!(a.difference(&ExtentMap::new()), a);
    }

    // --- clip / fill_gaps ---

    #[test]
    fn clip_restricts_to_range() {
        // Arrange
        let m = map(&[(0, 10, Data), (10, 10, Zero), (30, 10, Hole)]);
        // Act
        let c = m.clip(5, 35);
        // Assert
        assert_eq!(
            pieces(&c),
            vec![(5, 5, Data), (10, 10, Zero), (30, 5, Hole)]
        );
    }

    #[test]
    fn clip_empty_or_inverted_range_is_empty() {
        // Arrange
        let m = map(&[(0, 10, Data)]);
        // Act / Assert
        assert!(m.clip(5, 5).is_empty());
        assert!(m.clip(8, 2).is_empty());
        assert!(m.clip(10, 20).is_empty());
    }

    #[test]
    fn clip_to_u64_max_keeps_tail() {
        // Arrange
        let m = map(&[(u64::MAX - 10, 10, Data)]);
        // Act
        let c = m.clip(u64::MAX - 4, u64::MAX);
        // Assert
        assert_eq!(pieces(&c), vec![(u64::MAX - 4, 4, Data)]);
    }

    #[test]
    fn fill_gaps_fills_inside_range_only() {
        // Arrange
        let m = map(&[(10, 10, Data), (30, 10, Hole), (60, 10, Data)]);
        // Act
        let f = m.fill_gaps(0, 35, Hole);
        // Assert
        assert_eq!(
            pieces(&f),
            vec![(0, 10, Hole), (10, 10, Data), (20, 15, Hole)]
        );
    }

    #[test]
    fn fill_gaps_of_empty_map_is_single() {
        // Act
        let f = ExtentMap::new().fill_gaps(7, 19, Zero);
        // Assert
        assert_eq!(f, ExtentMap::single(7, 12, Zero));
    }

    #[test]
    fn fill_gaps_inverted_range_is_empty() {
        // Arrange
        let m = map(&[(0, 10, Data)]);
        // Act / Assert
        assert!(m.fill_gaps(10, 10, Zero).is_empty());
        assert!(m.fill_gaps(10, 3, Zero).is_empty());
    }

    #[test]
    fn fill_gaps_up_to_u64_max() {
        // Arrange
        let m = map(&[(u64::MAX - 10, 5, Data)]);
        // Act
        let f = m.fill_gaps(u64::MAX - 20, u64::MAX, Hole);
        // Assert
        assert_eq!(
            pieces(&f),
            vec![
                (u64::MAX - 20, 10, Hole),
                (u64::MAX - 10, 5, Data),
                (u64::MAX - 5, 5, Hole)
            ]
        );
    }

    // --- align_data ---

    #[test]
    fn align_data_grows_data_to_block_boundaries() {
        // Arrange
        let m = map(&[(0, 4100, Zero), (4100, 100, Data), (4200, 8000, Hole)]);
        // Act
        let a = m.align_data(4096, 1 << 20);
        // Assert
        assert_eq!(
            pieces(&a),
            vec![(0, 4096, Zero), (4096, 4096, Data), (8192, 4008, Hole)]
        );
    }

    #[test]
    fn align_data_grows_into_gaps_and_merges_data() {
        // Arrange
        let m = map(&[(10, 10, Data), (500, 10, Data), (600, 10, Data)]);
        // Act
        let a = m.align_data(512, 10_000);
        // Assert
        assert_eq!(pieces(&a), vec![(0, 1024, Data)]);
    }

    #[test]
    fn align_data_clamps_at_limit() {
        // Arrange
        let m = map(&[(4000, 10, Data), (4010, 90, Zero)]);
        // Act
        let a = m.align_data(4096, 4050);
        // Assert
        assert_eq!(pieces(&a), vec![(0, 4050, Data), (4050, 50, Zero)]);
    }

    #[test]
    fn align_data_leaves_data_beyond_limit_alone() {
        // Arrange
        let m = map(&[(5000, 10, Data)]);
        // Act
        let a = m.align_data(4096, 4096);
        // Assert
        assert_eq!(a, m);
    }

    #[test]
    fn align_data_ignores_zero_and_hole_extents() {
        // Arrange
        let m = map(&[(1, 10, Zero), (20, 10, Hole)]);
        // Act / Assert
        assert_eq!(m.align_data(512, 4096), m);
    }

    #[test]
    fn align_data_with_invalid_block_returns_map_unchanged() {
        // Arrange
        let m = map(&[(3, 10, Data)]);
        // Act / Assert
        assert_eq!(m.align_data(0, 4096), m);
        assert_eq!(m.align_data(3000, 4096), m);
    }

    #[test]
    fn align_data_near_u64_max_does_not_panic() {
        // Arrange
        let m = map(&[(u64::MAX - 10, 5, Data)]);
        // Act
        let a = m.align_data(4096, u64::MAX);
        // Assert
        let start = (u64::MAX - 10) & !4095;
        assert_eq!(pieces(&a), vec![(start, u64::MAX - start, Data)]);
    }

    #[test]
    fn align_data_with_block_one_is_identity() {
        // Arrange
        let m = map(&[(3, 10, Data), (13, 5, Zero)]);
        // Act / Assert
        assert_eq!(m.align_data(1, u64::MAX), m);
    }

    // --- split ---

    #[test]
    fn split_cuts_data_at_aligned_offsets() {
        // Arrange
        let m = map(&[(100, 2000, Data)]);
        // Act
        let p: Vec<Extent> = m.split(1024, 0).collect();
        // Assert
        assert_eq!(
            p,
            vec![
                ext(100, 924, Data),
                ext(1024, 1024, Data),
                ext(2048, 52, Data)
            ]
        );
    }

    #[test]
    fn split_cuts_from_extent_start_for_non_power_of_two() {
        // Arrange
        let m = map(&[(100, 2500, Data)]);
        // Act
        let p: Vec<Extent> = m.split(1000, 0).collect();
        // Assert
        assert_eq!(
            p,
            vec![
                ext(100, 1000, Data),
                ext(1100, 1000, Data),
                ext(2100, 500, Data)
            ]
        );
    }

    #[test]
    fn split_uses_separate_limit_for_zero_and_hole() {
        // Arrange
        let m = map(&[(0, 10, Data), (10, 10, Zero), (20, 6, Hole)]);
        // Act
        let p: Vec<Extent> = m.split(4, 8).collect();
        // Assert
        assert_eq!(
            p,
            vec![
                ext(0, 4, Data),
                ext(4, 4, Data),
                ext(8, 2, Data),
                ext(10, 6, Zero),
                ext(16, 4, Zero),
                ext(20, 4, Hole),
                ext(24, 2, Hole),
            ]
        );
    }

    #[test]
    fn split_with_zero_limits_yields_extents_unchanged() {
        // Arrange
        let m = map(&[(0, 10, Data), (10, 10, Zero)]);
        // Act
        let p: Vec<Extent> = m.split(0, 0).collect();
        // Assert
        assert_eq!(p, m.as_slice());
    }

    #[test]
    fn split_of_empty_map_is_empty() {
        assert_eq!(ExtentMap::new().split(4, 4).count(), 0);
    }

    #[test]
    fn split_near_u64_max_does_not_panic() {
        // Arrange
        let m = map(&[(u64::MAX - 100, 100, Data)]);
        // Act
        let p: Vec<Extent> = m.split(64, 0).collect();
        // Assert
        assert_eq!(p.iter().map(|e| e.length).sum::<u64>(), 100);
        assert_eq!(p.last().map(Extent::end), Some(u64::MAX));
        assert!(p.iter().all(|e| e.length <= 64));
    }

    #[test]
    fn split_near_u64_max_non_power_of_two_does_not_panic() {
        // Arrange
        let m = map(&[(u64::MAX - 100, 100, Zero)]);
        // Act
        let p: Vec<Extent> = m.split(0, 30).collect();
        // Assert
        assert_eq!(p.len(), 4);
        assert_eq!(p.last().map(Extent::end), Some(u64::MAX));
    }
}
