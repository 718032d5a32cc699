//! VirtualBox VDI (version 1.1), dynamic and static, sans-IO: the 512-byte header
//! (signature `0xbeda107f` at 0x40; the text banner before it varies and is not read),
//! then the block map of little-endian u32 entries, each the index of a block in the
//! data area (`0xffffffff` unallocated, `0xfffffffe` discarded: zeroes). Facts as in
//! qemu's `block/vdi.c` and VirtualBox's `VDICore.h`.
//!
//! The disk's size is the header's, rounded up to a sector as qemu does (VirtualBox can
//! write odd sizes). Refused, each with one line: versions other than 1.1, image types
//! other than dynamic (1) and static (2) (undo and differencing images need a parent),
//! a parent or link UUID, sector sizes other than 512, blocks that are not a power of
//! two between 512 B and [`MAX_BLOCK_SIZE`] or carry extra data, disks over
//! [`MAX_DISK_SIZE`] or larger than their block map, maps over [`MAX_BLOCKS`] entries,
//! unaligned offsets, and blocks that are shared, overlap the header or the map, or lie
//! past the end of the input.

use crate::image::{ImageError, ImageMap, Mapping, Opener, Step, Table, Unit, le32, le64, within};

/// The largest disk accepted.
pub const MAX_DISK_SIZE: u64 = 8 << 40;
/// The most block map entries accepted (a 32 MiB map: 8 TiB of 1 MiB blocks).
pub const MAX_BLOCKS: u32 = 8 << 20;
/// The largest block size accepted (VirtualBox and qemu write 1 MiB).
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// Bytes of the header read.
pub const HEADER_BYTES: u64 = 512;
/// The signature at 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;

const FORMAT: &str = "VDI";
const UNALLOCATED: u32 = 0xffff_ffff;
const DISCARDED: u32 = 0xffff_fffe;

/// A checked VDI header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1 dynamic, 2 static.
    pub image_type: u32,
    /// Where the block map is.
    pub offset_bmap: u64,
    /// Where block 0 of the data area is.
    pub offset_data: u64,
    /// The disk's size (rounded up to a sector).
    pub size: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// Entries of the block map.
    pub blocks: u32,
}

impl Header {
    /// Parse and check the first 512 bytes.
    pub fn parse(b: &[u8]) -> Result<Header, ImageError> {
        if (b.len() as u64) < HEADER_BYTES || le32(b, 0x40) != SIGNATURE {
            return Err(ImageError::corrupt(
                FORMAT,
                "no signature 0xbeda107f at 0x40",
            ));
        }
        let version = le32(b, 0x44);
        if version != 0x0001_0001 {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "version {}.{} is not supported (1.1 is)",
                    version >> 16,
                    version & 0xffff
                ),
            ));
        }
        let image_type = le32(b, 0x4c);
        match image_type {
            1 | 2 => {}
            3 | 4 => {
                return Err(ImageError::unsupported(
                    FORMAT,
                    format!(
                        "image type {image_type} ({}) needs its parent image, which Ferry does not open",
                        if image_type == 3 {
                            "undo"
                        } else {
                            "differencing"
                        }
                    ),
                ));
            }
            t => return Err(ImageError::unsupported(FORMAT, format!("image type {t}"))),
        }
        if b[0x1a8..0x1c8].iter().any(|&x| x != 0) {
            return Err(ImageError::unsupported(
                FORMAT,
                "the image names a parent (link or parent UUID), which Ferry does not open",
            ));
        }
        let sector = le32(b, 0x168);
        if sector != 512 {
            return Err(ImageError::unsupported(
                FORMAT,
                format!("sector size {sector} is not supported (512 is)"),
            ));
        }
        let (offset_bmap, offset_data) = (u64::from(le32(b, 0x154)), u64::from(le32(b, 0x158)));
        for (what, off) in [("block map", offset_bmap), ("data", offset_data)] {
            if off % 512 != 0 || off < HEADER_BYTES {
                return Err(ImageError::corrupt(
                    FORMAT,
                    format!("{what} offset {off:#x} is not a sector past the header"),
                ));
            }
        }
        let block_size = le32(b, 0x178);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "block size {block_size} is not supported (a power of two from 512 to {MAX_BLOCK_SIZE})"
                ),
            ));
        }
        let extra = le32(b, 0x17c);
        if extra != 0 {
            return Err(ImageError::unsupported(
                FORMAT,
                format!("blocks with {extra} bytes of extra data are not supported"),
            ));
        }
        let size = le64(b, 0x170);
        if size > MAX_DISK_SIZE {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "disk size {size} bytes is larger than {MAX_DISK_SIZE}, the most Ferry accepts"
                ),
            ));
        }
        let size = size.div_ceil(512) * 512;
        let blocks = le32(b, 0x180);
        if blocks > MAX_BLOCKS {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "a block map of {blocks} entries is more than {MAX_BLOCKS}, the most Ferry reads"
                ),
            ));
        }
        let room = u64::from(blocks) * u64::from(block_size);
        if size > room {
            return Err(ImageError::corrupt(
                FORMAT,
                format!("disk size {size} bytes is larger than its block map covers ({room})"),
            ));
        }
        Ok(Header {
            image_type,
            offset_bmap,
            offset_data,
            size,
            block_size,
            blocks,
        })
    }

    /// Bytes of the block map.
    pub fn bmap_bytes(&self) -> u64 {
        u64::from(self.blocks) * 4
    }
}

/// Opens a VDI: the header, then the block map.
#[derive(Debug)]
pub struct VdiOpener {
    len: u64,
    header: Option<Header>,
    started: bool,
}

impl VdiOpener {
    /// For an input of `len` bytes.
    pub fn new(len: u64) -> Self {
        VdiOpener {
            len,
            header: None,
            started: false,
        }
    }
}

impl Opener for VdiOpener {
    fn next(&mut self, got: &[u8]) -> Result<Step, ImageError> {
        if !self.started {
            self.started = true;
            within(FORMAT, "header", 0, HEADER_BYTES, self.len)?;
            return Ok(Step::Read {
                offset: 0,
                len: HEADER_BYTES,
            });
        }
        let Some(h) = self.header.take() else {
            let h = Header::parse(got)?;
            within(FORMAT, "block map", h.offset_bmap, h.bmap_bytes(), self.len)?;
            let step = Step::Read {
                offset: h.offset_bmap,
                len: h.bmap_bytes(),
            };
            self.header = Some(h);
            return Ok(step);
        };
        if (got.len() as u64) < h.bmap_bytes() {
            return Err(ImageError::PastEnd {
                format: FORMAT,
                what: "block map",
                offset: h.offset_bmap,
                end: self.len,
            });
        }
        let map: Vec<u32> = got.chunks_exact(4).map(|c| le32(c, 0)).collect();
        let bs = u64::from(h.block_size);
        let mut starts = Vec::new();
        for &e in map.iter().filter(|&&e| e < DISCARDED) {
            let at = h.offset_data + u64::from(e) * bs;
            within(FORMAT, "block", at, bs, self.len)?;
            starts.push(at);
            crate::vhd::too_many(FORMAT, starts.len(), self.len / bs)?;
        }
        crate::vhd::check_blocks(
            FORMAT,
            &mut starts,
            bs,
            &[
                (0, HEADER_BYTES, "header"),
                (h.offset_bmap, h.bmap_bytes(), "block map"),
            ],
        )?;
        Ok(Step::Ready(Box::new(VdiMap { h, map })))
    }
}

/// An open VDI's map (the block map is kept whole: [`ImageMap::table`] names none).
#[derive(Debug)]
pub struct VdiMap {
    /// The header.
    pub h: Header,
    map: Vec<u32>,
}

impl ImageMap for VdiMap {
    fn name(&self) -> String {
        format!(
            "VDI {} ({} KiB blocks)",
            if self.h.image_type == 2 {
                "static"
            } else {
                "dynamic"
            },
            self.h.block_size >> 10
        )
    }

    fn size(&self) -> u64 {
        self.h.size
    }

    fn unit(&self) -> u64 {
        u64::from(self.h.block_size)
    }

    fn table(&self, _index: u64) -> Result<Option<Table>, ImageError> {
        Ok(None)
    }

    fn lookup(&self, index: u64, _table: Option<&[u8]>) -> Result<Unit, ImageError> {
        let e = usize::try_from(index)
            .ok()
            .and_then(|i| self.map.get(i))
            .copied()
            .unwrap_or(UNALLOCATED);
        Ok(Unit::Whole(match e {
            UNALLOCATED => Mapping::Unallocated,
            DISCARDED => Mapping::Zero,
            e => Mapping::Data {
                host: self.h.offset_data + u64::from(e) * u64::from(self.h.block_size),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0x40..0x44].copy_from_slice(&SIGNATURE.to_le_bytes());
        b[0x44..0x48].copy_from_slice(&0x0001_0001u32.to_le_bytes());
        b[0x4c..0x50].copy_from_slice(&1u32.to_le_bytes());
        b[0x154..0x158].copy_from_slice(&512u32.to_le_bytes());
        b[0x158..0x15c].copy_from_slice(&1024u32.to_le_bytes());
        b[0x168..0x16c].copy_from_slice(&512u32.to_le_bytes());
        b[0x170..0x178].copy_from_slice(&(3u64 << 20).to_le_bytes());
        b[0x178..0x17c].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[0x180..0x184].copy_from_slice(&3u32.to_le_bytes());
        b
    }

    #[test]
    fn a_good_header_parses_and_each_bad_field_is_named() {
        assert_eq!(Header::parse(&header()).unwrap().size, 3 << 20);
        let bad = |at: usize, v: u32| {
            let mut b = header();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            Header::parse(&b).unwrap_err().to_string()
        };
        assert!(bad(0x44, 0x0001_0000).contains("version 1.0"));
        assert!(bad(0x4c, 4).contains("differencing"));
        assert!(bad(0x178, 3 << 19).contains("block size"));
        assert!(bad(0x17c, 16).contains("extra data"));
        assert!(bad(0x180, 2).contains("larger than its block map"));
        assert!(bad(0x158, 1000).contains("data offset"));
        assert!(bad(0x1b8, 1).contains("parent"));
    }

    #[test]
    fn odd_sizes_round_up_to_a_sector() {
        let mut b = header();
        b[0x170..0x178].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap().size, 1024);
    }
}
