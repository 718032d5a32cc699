//! VHDX (version 1), dynamic and fixed, sans-IO: the file identifier `vhdxfile`, the two
//! headers at 64 and 128 KiB (CRC-32C over 4 KiB; the valid one with the larger sequence
//! number is current), the region table at 192 KiB (or its copy at 256 KiB; CRC-32C over
//! 64 KiB) naming the BAT and metadata regions, the metadata items (file parameters,
//! virtual disk size, logical and physical sector size, page 83 data), and the BAT:
//! 64-bit little-endian entries, a payload block state in the low 3 bits and a file
//! offset in MiB in the top 44, with a sector bitmap entry after every chunk ratio
//! payload entries. Facts as in Microsoft's VHDX specification (MS-VHDX) and qemu's
//! `block/vhdx.c` / `block/vhdx.h`.
//!
//! Payload blocks read as qemu reads them: fully present blocks are data; not present
//! and undefined blocks are unallocated; zero and unmapped blocks (state 3, and 5 of the
//! 0.95 draft) are zero. Refused, each with one line: a log that is not empty (it must be
//! replayed first), a differencing image (has-parent), unknown required regions or
//! metadata items, partially present blocks (only a differencing image has them),
//! block sizes outside 1–256 MiB or not a power of two, logical sectors other than 512
//! and 4096, virtual sizes over [`MAX_VIRTUAL_SIZE`], metadata over
//! [`MAX_METADATA_BYTES`], a BAT over [`MAX_BAT_BYTES`] or too small for the disk, and
//! regions or blocks that overlap each other or lie past the end of the input.

use crate::image::{
    ImageError, ImageMap, Mapping, Opener, Step, Table, Unit, le16, le32, le64, within,
};

/// The largest virtual size accepted (the format's limit, 64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// The smallest payload block (the format's).
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// The largest payload block (the format's).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// The largest metadata region read (qemu writes 1 MiB).
pub const MAX_METADATA_BYTES: u64 = 8 << 20;
/// The largest BAT read (4 Mi entries: 4 TiB of 1 MiB blocks, 128 TiB of 32 MiB ones).
pub const MAX_BAT_BYTES: u64 = 32 << 20;
/// The most region table and metadata table entries (the format's).
pub const MAX_TABLE_ENTRIES: u32 = 2047;
/// Bytes read first: the file identifier, both headers and both region tables.
pub const HEAD_BYTES: u64 = 320 << 10;
/// The header section (file identifier, headers, region tables, reserved).
pub const HEADER_SECTION: u64 = 1 << 20;

const FORMAT: &str = "VHDX";
const BLOCK: usize = 64 << 10;
const HEADER_CRC_BYTES: usize = 4 << 10;

const BAT_GUID: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_GUID: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const PAGE83: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

const PAYLOAD_NOT_PRESENT: u64 = 0;
const PAYLOAD_UNDEFINED: u64 = 1;
const PAYLOAD_ZERO: u64 = 2;
const PAYLOAD_UNMAPPED: u64 = 3;
const PAYLOAD_UNMAPPED_V095: u64 = 5;
const PAYLOAD_FULLY_PRESENT: u64 = 6;
const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
const STATE_MASK: u64 = 7;
const OFFSET_MASK: u64 = 0xFFFF_FFFF_FFF0_0000;

/// A GUID as stored: the first three fields little-endian, the last eight bytes as is.
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    let mut n = 0u32;
    while i < 256 {
        let mut c = n;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
        n += 1;
    }
    t
};

/// CRC-32C (Castagnoli) of `b` with the four bytes at `skip` taken as zero, as VHDX
/// checksums are computed.
pub fn crc32c(b: &[u8], skip: usize) -> u32 {
    let mut c = !0u32;
    for (i, &x) in b.iter().enumerate() {
        let x = if (skip..skip + 4).contains(&i) { 0 } else { x };
        c = CRC32C_TABLE[((c ^ u32::from(x)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// The current header's fields that matter for reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Its sequence number.
    pub sequence: u64,
    /// Where the log is.
    pub log_offset: u64,
    /// Bytes of the log.
    pub log_length: u32,
}

fn parse_header(b: &[u8]) -> Result<(Header, bool), &'static str> {
    if b.len() < HEADER_CRC_BYTES {
        return Err("truncated");
    }
    let b = &b[..HEADER_CRC_BYTES];
    if &b[..4] != b"head" {
        return Err("no \"head\" signature");
    }
    if crc32c(b, 4) != le32(b, 4) {
        return Err("checksum mismatch");
    }
    if le16(b, 66) != 1 {
        return Err("version is not 1");
    }
    let log_empty = b[48..64].iter().all(|&x| x == 0);
    Ok((
        Header {
            sequence: le64(b, 8),
            log_offset: le64(b, 72),
            log_length: le32(b, 68),
        },
        log_empty,
    ))
}

/// The current header of the first [`HEAD_BYTES`] of a VHDX.
pub fn current_header(head: &[u8]) -> Result<Header, ImageError> {
    let h1 = parse_header(head.get(BLOCK..).unwrap_or(&[]));
    let h2 = parse_header(head.get(2 * BLOCK..).unwrap_or(&[]));
    let (h, log_empty) = match (h1, h2) {
        (Ok(a), Ok(b)) => {
            if a.0.sequence == b.0.sequence
                && head[BLOCK..BLOCK + 80] != head[2 * BLOCK..2 * BLOCK + 80]
            {
                return Err(ImageError::corrupt(
                    FORMAT,
                    "both headers are valid with the same sequence number but differ",
                ));
            }
            if b.0.sequence > a.0.sequence { b } else { a }
        }
        (Ok(a), Err(_)) => a,
        (Err(_), Ok(b)) => b,
        (Err(a), Err(b)) => {
            return Err(ImageError::corrupt(
                FORMAT,
                format!("no valid header (header 1: {a}; header 2: {b})"),
            ));
        }
    };
    if !log_empty {
        return Err(ImageError::unsupported(
            FORMAT,
            "the VHDX log must be replayed first (e.g. by opening it in Hyper-V or qemu-img check -r all)",
        ));
    }
    Ok(h)
}

/// A region (BAT or metadata) of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Offset in the file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

fn parse_region_table(b: &[u8]) -> Result<(Region, Region), ImageError> {
    let bad = |what: &str| ImageError::corrupt(FORMAT, format!("region table {what}"));
    if b.len() < BLOCK || &b[..4] != b"regi" {
        return Err(bad("has no \"regi\" signature"));
    }
    if crc32c(&b[..BLOCK], 4) != le32(b, 4) {
        return Err(bad("checksum mismatch"));
    }
    let count = le32(b, 8);
    if count > MAX_TABLE_ENTRIES {
        return Err(bad(&format!(
            "of {count} entries (at most {MAX_TABLE_ENTRIES})"
        )));
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..usize::try_from(count).unwrap_or(0) {
        let e = &b[16 + i * 32..16 + (i + 1) * 32];
        let r = Region {
            offset: le64(e, 16),
            len: u64::from(le32(e, 24)),
        };
        let slot = if e[..16] == BAT_GUID {
            &mut bat
        } else if e[..16] == METADATA_GUID {
            &mut meta
        } else if le32(e, 28) & 1 != 0 {
            return Err(ImageError::unsupported(
                FORMAT,
                "the image has a required region Ferry does not know",
            ));
        } else {
            continue;
        };
        if slot.replace(r).is_some() {
            return Err(bad("names a region twice"));
        }
    }
    match (bat, meta) {
        (Some(b), Some(m)) => Ok((b, m)),
        _ => Err(bad("lacks the BAT or the metadata region")),
    }
}

/// What the metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Bytes per payload block.
    pub block_size: u32,
    /// The virtual disk's size (rounded down to a logical sector, as qemu reads it).
    pub size: u64,
    /// 512 or 4096.
    pub logical_sector: u32,
    /// 512 or 4096.
    pub physical_sector: u32,
    /// A fixed VHDX (all blocks allocated).
    pub leave_blocks_allocated: bool,
}

impl Metadata {
    /// Parse the metadata region's bytes.
    pub fn parse(b: &[u8]) -> Result<Metadata, ImageError> {
        let bad = |what: String| ImageError::corrupt(FORMAT, what);
        if b.len() < BLOCK || &b[..8] != b"metadata" {
            return Err(bad("metadata table has no \"metadata\" signature".into()));
        }
        let count = usize::from(le16(b, 10));
        if count > MAX_TABLE_ENTRIES as usize {
            return Err(bad(format!("metadata table of {count} entries")));
        }
        let mut items: [Option<&[u8]>; 6] = [None; 6];
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE83,
            LOGICAL_SECTOR,
            PHYSICAL_SECTOR,
            PARENT_LOCATOR,
        ];
        let sizes = [8u64, 8, 16, 4, 4, 20];
        for i in 0..count {
            let e = &b[32 + i * 32..32 + (i + 1) * 32];
            let Some(k) = known.iter().position(|g| e[..16] == *g) else {
                if le32(e, 24) & 4 != 0 {
                    return Err(ImageError::unsupported(
                        FORMAT,
                        "the image has a required metadata item Ferry does not know",
                    ));
                }
                continue;
            };
            let (off, len) = (u64::from(le32(e, 16)), u64::from(le32(e, 20)));
            if len < sizes[k] || off.checked_add(len).is_none_or(|end| end > b.len() as u64) {
                return Err(bad(format!(
                    "metadata item {k} ({len} bytes at {off:#x}) does not fit the metadata region"
                )));
            }
            // Both fit in usize: they are inside `b`.
            let off = usize::try_from(off).unwrap_or(0);
            if items[k].replace(&b[off..]).is_some() {
                return Err(bad(format!("metadata item {k} appears twice")));
            }
        }
        let [
            Some(params),
            Some(size),
            Some(_page83),
            Some(logical),
            Some(physical),
            parent,
        ] = items
        else {
            return Err(bad("a required metadata item is missing".into()));
        };
        let flags = le32(params, 4);
        if flags & 2 != 0 || parent.is_some() {
            return Err(ImageError::unsupported(
                FORMAT,
                "a differencing image needs its parent image, which Ferry does not open (qemu-img convert it into one image first)",
            ));
        }
        let block_size = le32(params, 0);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(bad(format!(
                "block size {block_size} is not a power of two from 1 MiB to 256 MiB"
            )));
        }
        let logical_sector = le32(logical, 0);
        let physical_sector = le32(physical, 0);
        for s in [logical_sector, physical_sector] {
            if s != 512 && s != 4096 {
                return Err(bad(format!("sector size {s} is not 512 or 4096")));
            }
        }
        let size = le64(size, 0);
        if size > MAX_VIRTUAL_SIZE {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "virtual size {size} bytes is larger than {MAX_VIRTUAL_SIZE}, the format's limit"
                ),
            ));
        }
        Ok(Metadata {
            block_size,
            size: size / u64::from(logical_sector) * u64::from(logical_sector),
            logical_sector,
            physical_sector,
            leave_blocks_allocated: flags & 1 != 0,
        })
    }

    /// Payload blocks per sector bitmap block.
    pub fn chunk_ratio(&self) -> u64 {
        (1u64 << 23) * u64::from(self.logical_sector) / u64::from(self.block_size)
    }

    /// BAT entries the disk needs (payload entries and the sector bitmap entries
    /// between them).
    pub fn bat_entries(&self) -> u64 {
        let blocks = self.size.div_ceil(u64::from(self.block_size));
        blocks + blocks.saturating_sub(1) / self.chunk_ratio()
    }
}

/// Opens a VHDX: the head (identifier, headers, region tables), the metadata region,
/// then the BAT.
#[derive(Debug)]
pub struct VhdxOpener {
    len: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    Head,
    Metadata {
        regions: Vec<(u64, u64, &'static str)>,
        bat: Region,
    },
    Bat {
        regions: Vec<(u64, u64, &'static str)>,
        bat: Region,
        m: Metadata,
    },
    Done,
}

impl VhdxOpener {
    /// For an input of `len` bytes.
    pub fn new(len: u64) -> Self {
        VhdxOpener {
            len,
            state: State::Start,
        }
    }
}

impl Opener for VhdxOpener {
    fn next(&mut self, got: &[u8]) -> Result<Step, ImageError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => {
                within(FORMAT, "header section", 0, HEAD_BYTES, self.len)?;
                self.state = State::Head;
                Ok(Step::Read {
                    offset: 0,
                    len: HEAD_BYTES,
                })
            }
            State::Head => {
                if (got.len() as u64) < HEAD_BYTES || &got[..8] != b"vhdxfile" {
                    return Err(ImageError::corrupt(FORMAT, "no \"vhdxfile\" identifier"));
                }
                let h = current_header(got)?;
                let (bat, meta) = parse_region_table(&got[3 * BLOCK..4 * BLOCK])
                    .or_else(|_| parse_region_table(&got[4 * BLOCK..5 * BLOCK]))?;
                let regions = vec![
                    (0, HEADER_SECTION, "header section"),
                    (h.log_offset, u64::from(h.log_length), "log"),
                    (bat.offset, bat.len, "BAT region"),
                    (meta.offset, meta.len, "metadata region"),
                ];
                for (i, a) in regions.iter().enumerate() {
                    for b in &regions[i + 1..] {
                        if a.1 > 0
                            && b.1 > 0
                            && a.0 < b.0.saturating_add(b.1)
                            && b.0 < a.0.saturating_add(a.1)
                        {
                            return Err(ImageError::corrupt(
                                FORMAT,
                                format!("the {} overlaps the {}", b.2, a.2),
                            ));
                        }
                    }
                }
                within(FORMAT, "BAT region", bat.offset, bat.len, self.len)?;
                within(FORMAT, "metadata region", meta.offset, meta.len, self.len)?;
                if meta.len > MAX_METADATA_BYTES {
                    return Err(ImageError::unsupported(
                        FORMAT,
                        format!(
                            "a metadata region of {} bytes is larger than {MAX_METADATA_BYTES}, the most Ferry reads",
                            meta.len
                        ),
                    ));
                }
                self.state = State::Metadata { regions, bat };
                Ok(Step::Read {
                    offset: meta.offset,
                    len: meta.len,
                })
            }
            State::Metadata { regions, bat } => {
                let m = Metadata::parse(got)?;
                let bytes = m.bat_entries() * 8;
                if bytes > MAX_BAT_BYTES {
                    return Err(ImageError::unsupported(
                        FORMAT,
                        format!(
                            "a BAT of {bytes} bytes is larger than {MAX_BAT_BYTES}, the most Ferry reads"
                        ),
                    ));
                }
                if bytes > bat.len {
                    return Err(ImageError::corrupt(
                        FORMAT,
                        format!(
                            "the BAT region ({} bytes) is too small for the disk ({bytes} needed)",
                            bat.len
                        ),
                    ));
                }
                self.state = State::Bat { regions, bat, m };
                Ok(Step::Read {
                    offset: bat.offset,
                    len: bytes,
                })
            }
            State::Bat { regions, bat, m } => {
                let n = usize::try_from(m.bat_entries()).unwrap_or(usize::MAX);
                if got.len() / 8 < n {
                    return Err(ImageError::PastEnd {
                        format: FORMAT,
                        what: "BAT",
                        offset: bat.offset,
                        end: self.len,
                    });
                }
                let entries: Vec<u64> = got.chunks_exact(8).take(n).map(|c| le64(c, 0)).collect();
                let ratio = m.chunk_ratio();
                let bs = u64::from(m.block_size);
                let mut starts = Vec::new();
                for (i, &e) in entries.iter().enumerate() {
                    if (i as u64 + 1).is_multiple_of(ratio + 1) {
                        continue; // a sector bitmap entry (only a differencing image uses them)
                    }
                    match e & STATE_MASK {
                        PAYLOAD_NOT_PRESENT
                        | PAYLOAD_UNDEFINED
                        | PAYLOAD_ZERO
                        | PAYLOAD_UNMAPPED
                        | PAYLOAD_UNMAPPED_V095 => {}
                        PAYLOAD_FULLY_PRESENT => {
                            let at = e & OFFSET_MASK;
                            within(FORMAT, "block", at, bs, self.len)?;
                            starts.push(at);
                            crate::vhd::too_many(FORMAT, starts.len(), self.len / bs)?;
                        }
                        PAYLOAD_PARTIALLY_PRESENT => {
                            return Err(ImageError::corrupt(
                                FORMAT,
                                format!(
                                    "BAT entry {i} is partially present, which only a differencing image may be"
                                ),
                            ));
                        }
                        s => {
                            return Err(ImageError::corrupt(
                                FORMAT,
                                format!("BAT entry {i} has the unknown state {s}"),
                            ));
                        }
                    }
                }
                crate::vhd::check_blocks(FORMAT, &mut starts, bs, &regions)?;
                Ok(Step::Ready(Box::new(VhdxMap { m, bat: entries })))
            }
            State::Done => Err(ImageError::corrupt(FORMAT, "the opener was called again")),
        }
    }
}

/// An open VHDX's map (the BAT is kept whole: [`ImageMap::table`] names none).
#[derive(Debug)]
pub struct VhdxMap {
    /// The metadata.
    pub m: Metadata,
    bat: Vec<u64>,
}

impl ImageMap for VhdxMap {
    fn name(&self) -> String {
        format!(
            "VHDX {} ({} MiB blocks)",
            if self.m.leave_blocks_allocated {
                "fixed"
            } else {
                "dynamic"
            },
            self.m.block_size >> 20
        )
    }

    fn size(&self) -> u64 {
        self.m.size
    }

    fn unit(&self) -> u64 {
        u64::from(self.m.block_size)
    }

    fn table(&self, _index: u64) -> Result<Option<Table>, ImageError> {
        Ok(None)
    }

    fn lookup(&self, index: u64, _table: Option<&[u8]>) -> Result<Unit, ImageError> {
        let at = index
            .checked_add(index / self.m.chunk_ratio())
            .and_then(|i| usize::try_from(i).ok());
        let e = at.and_then(|i| self.bat.get(i)).copied().unwrap_or(0);
        Ok(Unit::Whole(match e & STATE_MASK {
            PAYLOAD_FULLY_PRESENT => Mapping::Data {
                host: e & OFFSET_MASK,
            },
            PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNMAPPED_V095 => Mapping::Zero,
            _ => Mapping::Unallocated,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789", 100), 0xE306_9283);
        assert_eq!(
            crc32c(b"1234\x00\x00\x00\x00789", 4),
            crc32c(b"1234abcd789", 4)
        );
    }

    #[test]
    fn guids_are_stored_mixed_endian() {
        assert_eq!(
            BAT_GUID,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }

    #[test]
    fn bat_entries_interleave_a_bitmap_entry_every_chunk_ratio() {
        let m = Metadata {
            block_size: 32 << 20,
            size: 10 << 40,
            logical_sector: 512,
            physical_sector: 4096,
            leave_blocks_allocated: false,
        };
        assert_eq!(m.chunk_ratio(), 128);
        let blocks = (10u64 << 40) / (32 << 20);
        assert_eq!(m.bat_entries(), blocks + (blocks - 1) / 128);
        let empty = Metadata { size: 0, ..m };
        assert_eq!(empty.bat_entries(), 0);
    }

    #[test]
    fn garbage_heads_fail_without_panicking() {
        let mut head = vec![0u8; HEAD_BYTES as usize];
        head[..8].copy_from_slice(b"vhdxfile");
        assert!(
            current_header(&head)
                .unwrap_err()
                .to_string()
                .contains("no valid header")
        );
        assert!(current_header(&head[..100]).is_err());
        assert!(parse_region_table(&head[..10]).is_err());
        assert!(Metadata::parse(&head[..10]).is_err());
    }
}
