//! Changed areas for delta copies (warm migration rounds).
//!
//! A delta reads and writes only the areas that changed since the previous round, onto
//! the target that holds that round: inside a changed area, data is copied and zero or
//! hole ranges are zeroed on the target; nothing outside the changed areas is touched.
//! Changed areas come from the source (an NBD `qemu:dirty-bitmap:NAME` context) or from
//! a file a controller hands over (`--changed-extents FILE`).

use std::path::Path;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};

use crate::error::Error;

/// Cap on a changed-extents file.
pub const MAX_EXTENTS_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Cap on the number of areas in a changed-extents file.
pub const MAX_CHANGED_EXTENTS: usize = 4 * 1024 * 1024;

#[derive(serde::Deserialize)]
struct Area {
    offset: u64,
    length: u64,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ExtentsDoc {
    List(Vec<Area>),
    Object { extents: Vec<Area> },
}

/// Parse a changed-extents document: a JSON array of `{"offset": N, "length": N}` (or an
/// object with such an `extents` array), in any order, possibly overlapping (areas are
/// merged), every area inside `[0, disk_size)`, at most [`MAX_CHANGED_EXTENTS`] areas.
/// Returns a map whose Data extents are the changed areas.
pub fn parse_extents(text: &[u8], disk_size: u64) -> Result<ExtentMap, String> {
    if text.len() as u64 > MAX_EXTENTS_FILE_BYTES {
        return Err(format!(
            "{} bytes; the limit is {MAX_EXTENTS_FILE_BYTES}",
            text.len()
        ));
    }
    let doc: ExtentsDoc = serde_json::from_slice(text)
        .map_err(|e| format!("not a list of {{\"offset\", \"length\"}} areas: {e}"))?;
    let areas = match doc {
        ExtentsDoc::List(v) | ExtentsDoc::Object { extents: v } => v,
    };
    if areas.len() > MAX_CHANGED_EXTENTS {
        return Err(format!(
            "{} areas; the limit is {MAX_CHANGED_EXTENTS}",
            areas.len()
        ));
    }
    let mut sorted: Vec<(u64, u64)> = Vec::with_capacity(areas.len());
    for (i, a) in areas.iter().enumerate() {
        let end = a
            .offset
            .checked_add(a.length)
            .filter(|e| *e <= disk_size)
            .ok_or_else(|| {
                format!(
                    "area {i} ({} + {}) is outside the disk of {disk_size} bytes",
                    a.offset, a.length
                )
            })?;
        if a.length > 0 {
            sorted.push((a.offset, end));
        }
    }
    sorted.sort_unstable();
    let mut map = ExtentMap::new();
    let mut cur: Option<(u64, u64)> = None;
    for (s, e) in sorted {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                map.push(Extent::new(cs, ce - cs, ExtentKind::Data))
                    .map_err(|e| e.to_string())?;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = cur {
        map.push(Extent::new(cs, ce - cs, ExtentKind::Data))
            .map_err(|e| e.to_string())?;
    }
    Ok(map)
}

/// Read and parse a changed-extents file.
pub fn load_extents_file(path: &Path, disk_size: u64) -> Result<ExtentMap, Error> {
    let bad = |reason: String| {
        Error::from(crate::error::UsageError::ChangedExtents {
            path: path.to_owned(),
            reason,
        })
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_EXTENTS_FILE_BYTES {
        return Err(bad(format!(
            "{} bytes; the limit is {MAX_EXTENTS_FILE_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    parse_extents(&text, disk_size).map_err(bad)
}

/// A delta goes onto the target that holds the previous round, at the source's size
/// (`allow_larger`: a disk.img grown to the volume's requested size is fine); a missing
/// target, a disk that changed size, or something that is not a file or block device
/// needs a full copy. `what` names the delta's start in the messages.
pub fn check_target(target: &Path, size: u64, allow_larger: bool, what: &str) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let full = |reason: String| Error::NeedsFullCopy {
        subject: format!("delta copy ({what}) onto target {}", target.display()),
        reason,
    };
    let meta = std::fs::metadata(target).map_err(|e| full(format!("not usable ({e})")))?;
    let ft = meta.file_type();
    if ft.is_file() && (meta.len() < size || (!allow_larger && meta.len() != size)) {
        return Err(full(format!(
            "it is {} bytes but the source is {size}: the disk changed size since the previous round",
            meta.len()
        )));
    }
    if !ft.is_file() && !ft.is_block_device() {
        return Err(full("not a file or block device".into()));
    }
    Ok(())
}

/// What a delta does inside `changed` (Data extents = changed areas), given the source's
/// allocation `alloc` over the same window: the allocation restricted to the changed
/// areas, keeping its kinds (data is copied; zero and hole become zeroes on the target).
pub fn plan_window(alloc: &ExtentMap, changed: &ExtentMap) -> ExtentMap {
    alloc.difference(&alloc.difference(changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_in_any_order_are_sorted_and_merged() {
        let m = parse_extents(br#"[{"offset":8192,"length":4096},{"offset":0,"length":4096},{"offset":4096,"length":100}]"#, 1 << 20)
            .expect("parse");
        assert_eq!(
            m.as_slice(),
            &[
                Extent::new(0, 4196, ExtentKind::Data),
                Extent::new(8192, 4096, ExtentKind::Data)
            ]
        );
    }

    #[test]
    fn object_form_is_accepted() {
        let m = parse_extents(br#"{"extents":[{"offset":0,"length":512}]}"#, 4096).expect("parse");
        assert_eq!(m.covered_bytes(), 512);
    }

    #[test]
    fn an_area_past_the_disk_is_refused() {
        let e = parse_extents(br#"[{"offset":4000,"length":200}]"#, 4096).expect_err("outside");
        assert!(e.contains("outside the disk"), "{e}");
    }

    #[test]
    fn an_overflowing_area_is_refused() {
        let e = parse_extents(br#"[{"offset":18446744073709551615,"length":2}]"#, 4096)
            .expect_err("overflow");
        assert!(e.contains("outside the disk"), "{e}");
    }

    #[test]
    fn junk_is_refused() {
        assert!(parse_extents(b"{\"nope\":1}", 4096).is_err());
        assert!(parse_extents(b"", 4096).is_err());
    }

    #[test]
    fn plan_keeps_allocation_kinds_inside_changed_areas_only() {
        let alloc = ExtentMap::from_extents([
            Extent::new(0, 4096, ExtentKind::Data),
            Extent::new(4096, 4096, ExtentKind::Hole),
            Extent::new(8192, 4096, ExtentKind::Data),
        ])
        .expect("alloc");
        let changed =
            ExtentMap::from_extents([Extent::new(2048, 4096, ExtentKind::Data)]).expect("changed");
        let plan = plan_window(&alloc, &changed);
        assert_eq!(
            plan.as_slice(),
            &[
                Extent::new(2048, 2048, ExtentKind::Data),
                Extent::new(4096, 2048, ExtentKind::Hole)
            ]
        );
    }
}
