//! VHD (Virtual PC / Hyper-V "vpc"), fixed and dynamic, sans-IO: the footer in the last
//! 512 bytes (checksum verified), for a dynamic disk the `cxsparse` header and the block
//! allocation table (BAT), each block a sector bitmap followed by its data. Facts as in
//! the Microsoft VHD specification and qemu's `block/vpc.c`; big-endian throughout.
//!
//! The disk's size follows qemu 10: the CHS geometry × 512 for images whose creator
//! application is `vpc ` or `qemu` (unless that geometry is the largest there is), the
//! footer's current size otherwise. As qemu, the sector bitmap of an allocated block is
//! not consulted: the whole block is data.
//!
//! Refused, each with one line: a differencing disk (it needs its parent image), unknown
//! disk types, disks over [`MAX_DISK_SIZE`], block sizes that are not a power of two of
//! at least 512 bytes or over [`MAX_BLOCK_SIZE`], a BAT of more than
//! [`MAX_TABLE_ENTRIES`] entries or too small for the disk, and blocks that overlap each
//! other or the image's metadata or lie past the end of the input (a truncated download
//! must fail, never read as zeroes). The footer must be in the last 512 bytes: a dynamic
//! disk that has only its copy at offset 0 is cut short (qemu would open it from the copy).
//! As qemu 10, a footer whose checksum is wrong is refused; the dynamic header's checksum
//! is not checked (qemu does not either).

use crate::image::{ImageError, ImageMap, Mapping, Opener, Step, Table, Unit, be32, be64, within};

/// The largest disk accepted (qemu's `VHD_MAX_SECTORS`, 2040 GiB, the format's limit).
pub const MAX_DISK_SIZE: u64 = 0xff00_0000 * 512;
/// The most BAT entries accepted (a 32 MiB table).
pub const MAX_TABLE_ENTRIES: u32 = 8 << 20;
/// The largest block size accepted (the format's default is 2 MiB).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// The smallest block size (one sector).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Bytes of the footer (and of its copy at offset 0).
pub const FOOTER_BYTES: u64 = 512;
/// Bytes of the dynamic disk header.
pub const DYNAMIC_HEADER_BYTES: u64 = 1024;
/// The unit a fixed disk is mapped in (any power of two would do).
pub const FIXED_UNIT: u64 = 2 << 20;

const FORMAT: &str = "VHD";
const UNALLOCATED: u32 = 0xffff_ffff;
/// qemu's `VHD_MAX_GEOMETRY`: a disk this large in CHS is sized by current_size.
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// What kind of VHD it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// The data, then the footer.
    Fixed,
    /// A BAT of blocks.
    Dynamic,
}

/// A checked footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Fixed or dynamic.
    pub disk_type: DiskType,
    /// The disk's size as qemu reads it.
    pub size: u64,
    /// Where the dynamic disk header is.
    pub data_offset: u64,
    /// The creator application (`qemu`, `win `, `vpc `…).
    pub creator: [u8; 4],
}

/// The one's complement of the byte sum of `b` with the checksum field (64..68) taken
/// as zero, as the footer's checksum is defined.
pub fn checksum(b: &[u8]) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, &x)| a.wrapping_add(u32::from(x)));
    !sum
}

impl Footer {
    /// Parse and check a 512-byte footer.
    pub fn parse(b: &[u8]) -> Result<Footer, ImageError> {
        if (b.len() as u64) < FOOTER_BYTES || &b[..8] != b"conectix" {
            return Err(ImageError::corrupt(FORMAT, "no footer (\"conectix\")"));
        }
        let stored = be32(b, 64);
        let computed = checksum(&b[..512]);
        if stored != computed {
            return Err(ImageError::corrupt(
                FORMAT,
                format!("footer checksum {stored:#010x} does not match {computed:#010x}"),
            ));
        }
        let disk_type = match be32(b, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => {
                return Err(ImageError::unsupported(
                    FORMAT,
                    "a differencing disk needs its parent image, which Ferry does not open (qemu-img convert it into one image first)",
                ));
            }
            t => return Err(ImageError::unsupported(FORMAT, format!("disk type {t}"))),
        };
        let creator = [b[28], b[29], b[30], b[31]];
        let current = be64(b, 48);
        let chs =
            u64::from(u16::from_be_bytes([b[56], b[57]])) * u64::from(b[58]) * u64::from(b[59]);
        // qemu 10's vpc_ignore_current_size(): Virtual PC and old qemu size by geometry.
        let use_chs = (&creator == b"vpc " || &creator == b"qemu") && chs != MAX_GEOMETRY;
        let size = if use_chs {
            chs * 512
        } else {
            current / 512 * 512
        };
        if size > MAX_DISK_SIZE {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "disk size {size} bytes is larger than {MAX_DISK_SIZE}, the format's limit"
                ),
            ));
        }
        Ok(Footer {
            disk_type,
            size,
            data_offset: be64(b, 16),
            creator,
        })
    }
}

/// A checked dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Where the BAT is.
    pub table_offset: u64,
    /// BAT entries.
    pub max_table_entries: u32,
    /// Bytes per block.
    pub block_size: u32,
}

impl DynamicHeader {
    /// Parse and check the header for a disk of `size` bytes.
    pub fn parse(b: &[u8], size: u64) -> Result<DynamicHeader, ImageError> {
        if (b.len() as u64) < DYNAMIC_HEADER_BYTES || &b[..8] != b"cxsparse" {
            return Err(ImageError::corrupt(
                FORMAT,
                "no dynamic disk header (\"cxsparse\") at the footer's data offset",
            ));
        }
        let block_size = be32(b, 32);
        if !block_size.is_power_of_two() || block_size < MIN_BLOCK_SIZE {
            return Err(ImageError::corrupt(
                FORMAT,
                format!("block size {block_size} is not a power of two of at least 512"),
            ));
        }
        if block_size > MAX_BLOCK_SIZE {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "block size {block_size} is larger than {MAX_BLOCK_SIZE}, the most Ferry reads"
                ),
            ));
        }
        let max_table_entries = be32(b, 28);
        if max_table_entries > MAX_TABLE_ENTRIES {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "a BAT of {max_table_entries} entries is more than {MAX_TABLE_ENTRIES}, the most Ferry reads"
                ),
            ));
        }
        let needed = size.div_ceil(u64::from(block_size));
        if u64::from(max_table_entries) < needed {
            return Err(ImageError::corrupt(
                FORMAT,
                format!(
                    "a BAT of {max_table_entries} entries is too small for the disk ({needed} needed)"
                ),
            ));
        }
        Ok(DynamicHeader {
            table_offset: be64(b, 16),
            max_table_entries,
            block_size,
        })
    }

    /// Bytes of each block's sector bitmap (one bit per sector, in whole sectors).
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / (8 * 512)).div_ceil(512) * 512
    }

    /// Bytes of the BAT.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.max_table_entries) * 4
    }
}

/// Check that blocks of `len` bytes starting at each of `starts` (sorted in place) are
/// disjoint, and that none overlaps one of `meta` (offset, length, name).
pub(crate) fn check_blocks(
    format: &'static str,
    starts: &mut [u64],
    len: u64,
    meta: &[(u64, u64, &'static str)],
) -> Result<(), ImageError> {
    starts.sort_unstable();
    for w in starts.windows(2) {
        if w[1] - w[0] < len {
            return Err(ImageError::corrupt(
                format,
                format!("blocks overlap at {:#x}", w[1]),
            ));
        }
    }
    for &(off, n, what) in meta {
        if n == 0 {
            continue;
        }
        let end = off.saturating_add(n);
        // The last block that starts before the end of the region must end before it.
        let i = starts.partition_point(|&s| s < end);
        if i > 0 && starts[i - 1].saturating_add(len) > off {
            return Err(ImageError::corrupt(
                format,
                format!("a block at {:#x} overlaps the {what}", starts[i - 1]),
            ));
        }
    }
    Ok(())
}

/// More allocated blocks than an input of that many blocks holds: some overlap (found
/// before a hostile table makes the list of blocks large).
pub(crate) fn too_many(format: &'static str, n: usize, fit: u64) -> Result<(), ImageError> {
    if n as u64 > fit {
        return Err(ImageError::corrupt(
            format,
            format!("blocks overlap: more are allocated than the image holds ({fit})"),
        ));
    }
    Ok(())
}

/// Opens a VHD: the footer in the last sector, then (dynamic) the header and the BAT.
#[derive(Debug)]
pub struct VhdOpener {
    len: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Start,
    Tail,
    Head,
    Dynamic(Footer),
    Bat(Footer, DynamicHeader),
    Done,
}

impl VhdOpener {
    /// For an input of `len` bytes.
    pub fn new(len: u64) -> Self {
        VhdOpener {
            len,
            state: State::Start,
        }
    }

    fn footer_at(&self) -> u64 {
        self.len - FOOTER_BYTES
    }
}

impl Opener for VhdOpener {
    fn next(&mut self, got: &[u8]) -> Result<Step, ImageError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start => {
                if self.len < FOOTER_BYTES {
                    return Err(ImageError::corrupt(
                        FORMAT,
                        format!("{} bytes is shorter than a footer", self.len),
                    ));
                }
                self.state = State::Tail;
                Ok(Step::Read {
                    offset: self.footer_at(),
                    len: FOOTER_BYTES,
                })
            }
            State::Tail => {
                if !got.starts_with(b"conectix") {
                    // A dynamic disk cut short keeps its footer copy at offset 0.
                    self.state = State::Head;
                    return Ok(Step::Read {
                        offset: 0,
                        len: FOOTER_BYTES,
                    });
                }
                let f = Footer::parse(got)?;
                match f.disk_type {
                    DiskType::Fixed => {
                        within(FORMAT, "data", 0, f.size, self.footer_at())?;
                        Ok(Step::Ready(Box::new(VhdMap {
                            footer: f,
                            dynamic: None,
                        })))
                    }
                    DiskType::Dynamic => {
                        within(
                            FORMAT,
                            "dynamic disk header",
                            f.data_offset,
                            DYNAMIC_HEADER_BYTES,
                            self.footer_at(),
                        )?;
                        let step = Step::Read {
                            offset: f.data_offset,
                            len: DYNAMIC_HEADER_BYTES,
                        };
                        self.state = State::Dynamic(f);
                        Ok(step)
                    }
                }
            }
            State::Head => Err(ImageError::corrupt(
                FORMAT,
                if got.starts_with(b"conectix") {
                    "the footer copy at offset 0 is there but the footer in the last 512 bytes is not: the image is truncated"
                } else {
                    "no footer (\"conectix\") in the last 512 bytes"
                },
            )),
            State::Dynamic(f) => {
                let h = DynamicHeader::parse(got, f.size)?;
                within(
                    FORMAT,
                    "BAT",
                    h.table_offset,
                    h.table_bytes(),
                    self.footer_at(),
                )?;
                let step = Step::Read {
                    offset: h.table_offset,
                    len: h.table_bytes(),
                };
                self.state = State::Bat(f, h);
                Ok(step)
            }
            State::Bat(f, h) => {
                if (got.len() as u64) < h.table_bytes() {
                    return Err(ImageError::PastEnd {
                        format: FORMAT,
                        what: "BAT",
                        offset: h.table_offset,
                        end: self.len,
                    });
                }
                let bat: Vec<u32> = got.chunks_exact(4).map(|c| be32(c, 0)).collect();
                let block = h.bitmap_size() + u64::from(h.block_size);
                let mut starts = Vec::new();
                for &e in bat.iter().filter(|&&e| e != UNALLOCATED) {
                    let at = u64::from(e) * 512;
                    within(FORMAT, "block", at, block, self.footer_at())?;
                    starts.push(at);
                    too_many(FORMAT, starts.len(), self.len / block)?;
                }
                check_blocks(
                    FORMAT,
                    &mut starts,
                    block,
                    &[
                        (0, FOOTER_BYTES, "footer copy"),
                        (f.data_offset, DYNAMIC_HEADER_BYTES, "dynamic disk header"),
                        (h.table_offset, h.table_bytes(), "BAT"),
                    ],
                )?;
                Ok(Step::Ready(Box::new(VhdMap {
                    footer: f,
                    dynamic: Some((h, bat)),
                })))
            }
            State::Done => Err(ImageError::corrupt(FORMAT, "the opener was called again")),
        }
    }
}

/// An open VHD's map (the BAT is kept whole: [`ImageMap::table`] names none).
#[derive(Debug)]
pub struct VhdMap {
    /// The footer.
    pub footer: Footer,
    dynamic: Option<(DynamicHeader, Vec<u32>)>,
}

impl ImageMap for VhdMap {
    fn name(&self) -> String {
        match &self.dynamic {
            None => "VHD fixed".to_string(),
            Some((h, _)) => format!("VHD dynamic ({} KiB blocks)", h.block_size >> 10),
        }
    }

    fn size(&self) -> u64 {
        self.footer.size
    }

    fn unit(&self) -> u64 {
        self.dynamic
            .as_ref()
            .map_or(FIXED_UNIT, |(h, _)| u64::from(h.block_size))
    }

    fn table(&self, _index: u64) -> Result<Option<Table>, ImageError> {
        Ok(None)
    }

    fn lookup(&self, index: u64, _table: Option<&[u8]>) -> Result<Unit, ImageError> {
        let Some((h, bat)) = &self.dynamic else {
            return Ok(Unit::Whole(match index.checked_mul(FIXED_UNIT) {
                Some(host) if host < self.footer.size => Mapping::Data { host },
                _ => Mapping::Unallocated,
            }));
        };
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| bat.get(i))
            .copied()
            .unwrap_or(UNALLOCATED);
        Ok(Unit::Whole(if entry == UNALLOCATED {
            Mapping::Unallocated
        } else {
            Mapping::Data {
                host: u64::from(entry) * 512 + h.bitmap_size(),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(kind: u32, app: &[u8; 4], chs: (u16, u8, u8), current: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(b"conectix");
        b[16..24].copy_from_slice(&512u64.to_be_bytes());
        b[28..32].copy_from_slice(app);
        b[48..56].copy_from_slice(&current.to_be_bytes());
        b[56..58].copy_from_slice(&chs.0.to_be_bytes());
        b[58] = chs.1;
        b[59] = chs.2;
        b[60..64].copy_from_slice(&kind.to_be_bytes());
        let c = checksum(&b);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn size_is_chs_for_vpc_and_qemu_and_current_size_otherwise() {
        let chs = (100, 16, 63);
        let f = |app| Footer::parse(&footer(3, app, chs, 1 << 30)).unwrap().size;
        assert_eq!(f(b"qemu"), 100 * 16 * 63 * 512);
        assert_eq!(f(b"vpc "), 100 * 16 * 63 * 512);
        assert_eq!(f(b"qem2"), 1 << 30);
        assert_eq!(f(b"win "), 1 << 30);
        assert_eq!(f(b"wa\0\0"), 1 << 30);
        let max = Footer::parse(&footer(3, b"qemu", (65535, 16, 255), 1 << 40)).unwrap();
        assert_eq!(
            max.size,
            1 << 40,
            "the largest geometry defers to current_size"
        );
    }

    #[test]
    fn differencing_and_unknown_types_are_refused() {
        let e = Footer::parse(&footer(4, b"win ", (1, 1, 1), 1 << 20)).unwrap_err();
        assert!(
            e.is_refusal() && e.to_string().contains("parent image"),
            "{e}"
        );
        let e = Footer::parse(&footer(7, b"win ", (1, 1, 1), 1 << 20)).unwrap_err();
        assert_eq!(e.to_string(), "VHD: disk type 7");
    }

    #[test]
    fn overlapping_blocks_are_found() {
        let meta = [(0, 512, "footer copy")];
        assert!(check_blocks("VHD", &mut [4096, 1024], 1024, &meta).is_ok());
        assert!(check_blocks("VHD", &mut [4096, 4096 + 1023], 1024, &meta).is_err());
        assert!(check_blocks("VHD", &mut [256], 1024, &meta).is_err());
        assert!(check_blocks("VHD", &mut [], 1024, &meta).is_ok());
    }

    #[test]
    fn short_or_garbage_inputs_fail_without_panicking() {
        for len in [0u64, 100, 511, 512, 4096] {
            let mut o = VhdOpener::new(len);
            let mut got: Vec<u8> = Vec::new();
            for _ in 0..8 {
                match o.next(&got) {
                    Ok(Step::Read { len, .. }) => got = vec![0xff; usize::try_from(len).unwrap()],
                    Ok(Step::Ready(_)) => panic!("garbage opened"),
                    Err(_) => break,
                }
            }
        }
    }
}
