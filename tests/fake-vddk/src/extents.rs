//! QueryAllocatedBlocks arithmetic: argument rules and chunk rounding (pure).

/// Bytes per sector.
pub(crate) const SECTOR: u64 = 512;
/// VIXDISKLIB_MIN_CHUNK_SIZE.
pub(crate) const MIN_CHUNK: u64 = vddk_sys::VIXDISKLIB_MIN_CHUNK_SIZE as u64;
/// VIXDISKLIB_MAX_CHUNK_NUMBER.
pub(crate) const MAX_CHUNKS: u64 = vddk_sys::VIXDISKLIB_MAX_CHUNK_NUMBER as u64;

/// Check VDDK's rules for a query of `count` sectors at `start` in `chunk`-sector chunks
/// on a disk of `capacity` sectors. The error says which rule broke.
pub(crate) fn check_query(start: u64, count: u64, chunk: u64, capacity: u64) -> Result<(), String> {
    if chunk < MIN_CHUNK {
        return Err(format!(
            "chunkSize {chunk} is below the minimum {MIN_CHUNK}"
        ));
    }
    if !start.is_multiple_of(chunk) {
        return Err(format!(
            "startSector {start} is not a multiple of chunkSize {chunk}"
        ));
    }
    if !count.is_multiple_of(chunk) {
        return Err(format!(
            "numSectors {count} is not a multiple of chunkSize {chunk}"
        ));
    }
    if count / chunk > MAX_CHUNKS {
        return Err(format!(
            "numSectors/chunkSize = {} is above VIXDISKLIB_MAX_CHUNK_NUMBER {MAX_CHUNKS}",
            count / chunk
        ));
    }
    match start.checked_add(count) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(format!(
            "sectors {start}+{count} run past the disk's capacity {capacity}"
        )),
    }
}

/// Allocated runs, in sectors, for the query `[start, start+count)`: each data extent
/// (`(offset, length)` in bytes) rounded outward to `chunk`-sector boundaries, merged
/// with its neighbours when they touch or overlap, and clipped to the query.
pub(crate) fn allocated_chunks(
    extents: &[(u64, u64)],
    start: u64,
    count: u64,
    chunk: u64,
) -> Vec<(u64, u64)> {
    let end = start.saturating_add(count);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut sorted: Vec<(u64, u64)> = extents.iter().copied().filter(|e| e.1 > 0).collect();
    sorted.sort_unstable();
    for (off, len) in sorted {
        let s = off / SECTOR;
        let e = off.saturating_add(len).div_ceil(SECTOR);
        let s = (s / chunk) * chunk;
        let e = e.div_ceil(chunk).saturating_mul(chunk);
        let (s, e) = (s.max(start), e.min(end));
        if s >= e {
            continue;
        }
        match out.last_mut() {
            Some((ls, ll)) if *ls + *ll >= s => *ll = (*ll).max(e - *ls),
            _ => out.push((s, e - s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let cap = 1 << 20;
        assert!(check_query(0, 128, 128, cap).is_ok());
        assert!(check_query(0, 64, 64, cap).is_err(), "chunk below 128");
        assert!(check_query(1, 128, 128, cap).is_err(), "unaligned start");
        assert!(check_query(0, 129, 128, cap).is_err(), "unaligned count");
        assert!(
            check_query(cap - 128, 256, 128, cap).is_err(),
            "past the end"
        );
        assert!(check_query(0, 128 * (MAX_CHUNKS + 1), 128, u64::MAX).is_err());
        assert!(check_query(0, 128 * MAX_CHUNKS, 128, u64::MAX).is_ok());
    }

    #[test]
    fn rounding_merging_clipping() {
        let k = SECTOR * 128; // one chunk in bytes
        // One byte in chunk 1, a run over chunks 3..=4, one touching chunk 5.
        let ext = [(k + 10, 1), (3 * k + 7, k), (5 * k, 4096)];
        assert_eq!(
            allocated_chunks(&ext, 0, 8 * 128, 128),
            vec![(128, 128), (3 * 128, 3 * 128)]
        );
        // Clipped to a query that starts inside the second run.
        assert_eq!(
            allocated_chunks(&ext, 4 * 128, 128, 128),
            vec![(4 * 128, 128)]
        );
        // A larger chunk swallows everything into one run.
        assert_eq!(allocated_chunks(&ext, 0, 1024, 1024), vec![(0, 1024)]);
        assert!(allocated_chunks(&[], 0, 1024, 128).is_empty());
    }
}
