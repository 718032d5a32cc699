//! Changed Block Tracking: the changed areas of a snapshot disk, page by page.
//!
//! `VirtualMachine.QueryChangedDiskAreas` answers one `DiskChangeInfo` page at a time
//! (about 2000 areas at most on real vCenters). A caller that reads only the first page
//! copies an incomplete delta and silently corrupts the disk (F1, CDI #3534); a server
//! that answers an empty page without advancing (vcsim) would make a naive loop spin
//! forever. This module is the page types and [`check_page`], with no I/O;
//! [`crate::changed_areas::for_each_changed_area_page`] walks every page from offset 0
//! (or a given start) to the disk's end, checks each page with it before handing it on,
//! and never holds more than one page.

use crate::error::Error;

/// Most pages [`for_each_changed_area_page`](crate::for_each_changed_area_page) reads for one disk (2 billion areas at
/// 2000 per page): a guard against a server that advances by a few bytes per page.
pub const MAX_CHANGED_AREA_PAGES: u64 = 1_000_000;

/// Most areas accepted in one `DiskChangeInfo` page.
pub const MAX_AREAS_PER_PAGE: usize = 100_000;

/// The change ID that asks for every allocated area instead of the changed ones.
pub const ALL_ALLOCATED: &str = "*";

/// One changed (or allocated) byte range of a disk (`DiskChangeExtent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedArea {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One `DiskChangeInfo` page: the areas within `[start_offset, start_offset + length)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangedAreasPage {
    /// Start of the range the page describes.
    pub start_offset: u64,
    /// Length of that range; the next page starts at `start_offset + length`.
    pub length: u64,
    /// The changed areas in the range, sorted, not overlapping.
    pub areas: Vec<ChangedArea>,
}

impl ChangedAreasPage {
    /// Sum of the area lengths (saturating).
    pub fn changed_bytes(&self) -> u64 {
        self.areas
            .iter()
            .fold(0u64, |n, a| n.saturating_add(a.length))
    }
}

fn bad_page(requested: u64, page: &ChangedAreasPage, why: String) -> Error {
    Error::Protocol(format!(
        "QueryChangedDiskAreas page for start {requested} (startOffset {}, length {}, {} areas): {why}",
        page.start_offset,
        page.length,
        page.areas.len()
    ))
}

/// Check a page answered for a request starting at `requested` on a disk of `capacity`
/// bytes. Return the end of the page (the next start) and the changed bytes in it.
///
/// Errors ([`Error::Protocol`]): a page that does not start at `requested` (going
/// backwards, or skipping bytes whose changes would be lost); one that does not advance
/// (`start_offset + length <= requested`, F1: vcsim answered empty pages forever); one
/// that ends past `capacity`; areas outside the page, unsorted or overlapping.
pub fn check_page(
    requested: u64,
    capacity: u64,
    page: &ChangedAreasPage,
) -> Result<(u64, u64), Error> {
    let end = page
        .start_offset
        .checked_add(page.length)
        .ok_or_else(|| bad_page(requested, page, "startOffset + length overflows".into()))?;
    if page.start_offset < requested {
        return Err(bad_page(requested, page, "the page goes backwards".into()));
    }
    if page.start_offset > requested {
        return Err(bad_page(
            requested,
            page,
            format!(
                "the page skips bytes {requested}..{}; their changes would be lost",
                page.start_offset
            ),
        ));
    }
    if end <= requested {
        return Err(bad_page(
            requested,
            page,
            "the page does not advance (an empty page would repeat forever)".into(),
        ));
    }
    if end > capacity {
        return Err(bad_page(
            requested,
            page,
            format!("the page ends at {end}, past the disk capacity {capacity}"),
        ));
    }
    let mut prev_end = page.start_offset;
    let mut bytes = 0u64;
    for (i, a) in page.areas.iter().enumerate() {
        let a_end = a.start.checked_add(a.length).ok_or_else(|| {
            bad_page(
                requested,
                page,
                format!("area {i} start + length overflows"),
            )
        })?;
        if a.start < page.start_offset || a_end > end {
            return Err(bad_page(
                requested,
                page,
                format!(
                    "area {i} ({}+{}) lies outside the page {}..{end}",
                    a.start, a.length, page.start_offset
                ),
            ));
        }
        if a.start < prev_end {
            return Err(bad_page(
                requested,
                page,
                format!(
                    "area {i} ({}+{}) overlaps or precedes the previous area ending at {prev_end}",
                    a.start, a.length
                ),
            ));
        }
        prev_end = a_end;
        bytes += a.length; // areas are disjoint within [0, capacity): cannot overflow
    }
    Ok((end, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(start: u64, length: u64, areas: &[(u64, u64)]) -> ChangedAreasPage {
        ChangedAreasPage {
            start_offset: start,
            length,
            areas: areas
                .iter()
                .map(|&(start, length)| ChangedArea { start, length })
                .collect(),
        }
    }

    fn protocol(r: Result<(u64, u64), Error>) -> String {
        match r {
            Err(Error::Protocol(m)) => m,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn good_pages() {
        assert_eq!(
            check_page(0, 1000, &page(0, 300, &[(0, 10), (10, 5), (100, 200)])).unwrap(),
            (300, 215)
        );
        // The last page reaches the disk end, with or without areas.
        assert_eq!(
            check_page(300, 1000, &page(300, 700, &[])).unwrap(),
            (1000, 0)
        );
        assert_eq!(
            check_page(300, 1000, &page(300, 700, &[(999, 1)])).unwrap(),
            (1000, 1)
        );
    }

    #[test]
    fn bad_pages() {
        let m = protocol(check_page(500, 1000, &page(500, 0, &[])));
        assert!(m.contains("does not advance"), "{m}");
        let m = protocol(check_page(500, 1000, &page(0, 0, &[])));
        assert!(m.contains("backwards"), "{m}");
        let m = protocol(check_page(500, 1000, &page(400, 600, &[])));
        assert!(m.contains("backwards"), "{m}");
        let m = protocol(check_page(500, 1000, &page(600, 400, &[])));
        assert!(m.contains("skips"), "{m}");
        let m = protocol(check_page(0, 1000, &page(0, 1001, &[])));
        assert!(m.contains("past the disk capacity"), "{m}");
        let m = protocol(check_page(0, 1000, &page(0, u64::MAX, &[])));
        assert!(m.contains("past the disk capacity"), "{m}");
        let m = protocol(check_page(1, 1000, &page(1, u64::MAX, &[])));
        assert!(m.contains("overflows"), "{m}");
        let m = protocol(check_page(0, 1000, &page(0, 100, &[(90, 20)])));
        assert!(m.contains("outside the page"), "{m}");
        let m = protocol(check_page(10, 1000, &page(10, 100, &[(5, 10)])));
        assert!(m.contains("outside the page"), "{m}");
        let m = protocol(check_page(0, 1000, &page(0, 100, &[(10, 10), (15, 10)])));
        assert!(m.contains("overlaps"), "{m}");
        let m = protocol(check_page(0, 1000, &page(0, 100, &[(50, 10), (10, 10)])));
        assert!(m.contains("overlaps or precedes"), "{m}");
        let m = protocol(check_page(0, 1000, &page(0, 100, &[(10, u64::MAX)])));
        assert!(m.contains("overflows"), "{m}");
    }
}
