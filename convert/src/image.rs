//! The one shape every random-access image reader takes, sans-IO: an [`Opener`] asks
//! for the bytes it needs (header, footer, directory tables) one [`Step::Read`] at a
//! time and ends with an [`ImageMap`], which turns each guest *unit* (a qcow2 cluster, a
//! VMDK grain, a VHD/VHDX/VDI block) into a [`Mapping`]: raw bytes at an input offset,
//! zeroes, nothing, or a compressed unit. Tables too large to keep (qcow2 L2, VMDK grain
//! tables) are named by [`ImageMap::table`] and handed back to [`ImageMap::lookup`] by
//! whoever does the I/O, so the same reader serves the importer's async sources
//! (`importer/src/source/image.rs`) and the blocking [`BlockingImage`] of tests and
//! fuzz targets.
//!
//! Every size and count an image declares is checked against a named cap before
//! anything is allocated or read for it; offsets past the end of the input are errors
//! (a truncated download must fail, never read as zeroes).

use std::fmt::Debug;
use std::io::{Read, Seek, SeekFrom};

use crate::detect::Format;

/// The largest single read an opener may ask for (a table read at open).
pub const MAX_OPEN_READ: u64 = 64 << 20;
/// The most reads an opener may ask for before it is ready.
pub const MAX_OPEN_STEPS: usize = 64;
/// The largest table [`ImageMap::table`] may name.
pub const MAX_TABLE_BYTES: u64 = 32 << 20;

/// What a guest range holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Nothing (reads as zeroes: there is no backing file).
    Unallocated,
    /// Zeroes, stored as a flag.
    Zero,
    /// Raw bytes at this input offset.
    Data {
        /// Offset in the image.
        host: u64,
    },
    /// One unit compressed into `len` bytes at `host` (read them all, then
    /// [`ImageMap::decompress`] exactly one unit; trailing bytes may belong to the next
    /// unit or padding).
    Compressed {
        /// Offset in the image (not aligned).
        host: u64,
        /// Bytes to read.
        len: u64,
    },
}

/// What one guest unit holds: one mapping, or one per equal part of it (qcow2's
/// subclusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// The whole unit.
    Whole(Mapping),
    /// Each of its equal parts, in order (none of them [`Mapping::Compressed`]).
    Parts(Box<[Mapping]>),
}

/// Where a table lies in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table {
    /// Offset in the image.
    pub offset: u64,
    /// Bytes (at most [`MAX_TABLE_BYTES`]).
    pub len: u64,
}

/// What an [`Opener`] needs next.
#[derive(Debug)]
pub enum Step {
    /// These bytes of the input (fewer come back only at its end).
    Read {
        /// Offset in the input.
        offset: u64,
        /// Bytes (at most [`MAX_OPEN_READ`]).
        len: u64,
    },
    /// The image is open.
    Ready(Box<dyn ImageMap>),
}

/// Reads an image's header and directories, one [`Step`] at a time.
pub trait Opener: Send {
    /// The next step, given the bytes the previous [`Step::Read`] asked for (`&[]` on
    /// the first call).
    fn next(&mut self, got: &[u8]) -> Result<Step, ImageError>;
}

/// A random-access image's map of guest units.
pub trait ImageMap: Send + Sync + Debug {
    /// The format's name, for logs ("qcow2", "VMDK monolithicSparse").
    fn name(&self) -> String;
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Guest bytes per unit (a power of two, at least 512).
    fn unit(&self) -> u64;
    /// The table that must be read to map unit `index` (None: the map knows already,
    /// or the unit is unallocated at a level above the tables).
    fn table(&self, index: u64) -> Result<Option<Table>, ImageError>;
    /// What unit `index` holds, given the bytes of the table [`ImageMap::table`] named
    /// (None when it named none).
    fn lookup(&self, index: u64, table: Option<&[u8]>) -> Result<Unit, ImageError>;
    /// How many units from `index` on (at least 1) are unallocated as `index` is, given
    /// the same table (None: the one [`ImageMap::table`] named none for): an empty
    /// qcow2 L1 entry or VMDK grain directory entry covers a whole table's units, and a
    /// run of empty entries in a table its units, so a walk of a huge empty disk takes
    /// one step per run, not per unit. Only asked when `index` itself is unallocated.
    fn unallocated_run(&self, index: u64, table: Option<&[u8]>) -> u64 {
        let _ = (index, table);
        1
    }
    /// Decompress one [`Mapping::Compressed`] unit read at `host` into `out` (one unit).
    fn decompress(&self, host: u64, input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
        let _ = (input, out);
        Err(ImageError::Corrupt {
            format: "image",
            what: format!("a compressed unit at {host:#x} in a format without compression"),
        })
    }
}

/// Why an image is refused or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A qcow2 image.
    #[error(transparent)]
    Qcow2(#[from] crate::qcow2::Qcow2Error),
    /// A feature or size this reader does not accept (a refusal: the input is valid).
    #[error("{format}: {what}")]
    Unsupported {
        /// The format.
        format: &'static str,
        /// What, in one line.
        what: String,
    },
    /// The image contradicts itself or its format (a corrupt or hostile input).
    #[error("{format} image is corrupt: {what}")]
    Corrupt {
        /// The format.
        format: &'static str,
        /// What, in one line.
        what: String,
    },
    /// Something lies past the end of the input: truncated or corrupt.
    #[error(
        "{format} {what} at {offset:#x} lies past the end of the image ({end} bytes): the image is truncated or corrupt"
    )]
    PastEnd {
        /// The format.
        format: &'static str,
        /// What ("grain table", "block").
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// The input's size.
        end: u64,
    },
    /// The opener asked for more than [`MAX_OPEN_READ`] or took more than
    /// [`MAX_OPEN_STEPS`] steps.
    #[error("{0}: the image's directories are larger than Ferry reads")]
    OpenTooLarge(&'static str),
}

impl ImageError {
    /// True when the image is valid but uses what Ferry does not read (a usage error:
    /// retrying or another download will not help).
    pub fn is_refusal(&self) -> bool {
        match self {
            ImageError::Qcow2(q) => q.is_refusal(),
            ImageError::Unsupported { .. } | ImageError::OpenTooLarge(_) => true,
            ImageError::Corrupt { .. } | ImageError::PastEnd { .. } => false,
        }
    }

    /// A [`ImageError::Corrupt`].
    pub fn corrupt(format: &'static str, what: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            format,
            what: what.into(),
        }
    }

    /// A [`ImageError::Unsupported`].
    pub fn unsupported(format: &'static str, what: impl Into<String>) -> ImageError {
        ImageError::Unsupported {
            format,
            what: what.into(),
        }
    }
}

/// For [`ImageMap::unallocated_run`]: unit `index` of a table of `per_table` entries of
/// `entry_bytes` each: the units to the table's end when there is no table, else the
/// entries from it on that are all zero bits (at least 1, at most to the table's end).
pub fn empty_run(index: u64, per_table: u64, table: Option<&[u8]>, entry_bytes: usize) -> u64 {
    let n = per_table.max(1);
    let (j, rest) = (index % n, n - index % n);
    let Some(t) = table else { return rest };
    let from = usize::try_from(j)
        .unwrap_or(usize::MAX)
        .saturating_mul(entry_bytes);
    let empty = t
        .get(from..)
        .unwrap_or(&[])
        .chunks_exact(entry_bytes.max(1))
        .take_while(|e| e.iter().all(|b| *b == 0))
        .count() as u64;
    empty.clamp(1, rest)
}

/// `[offset, offset+len)` lies inside an input of `end` bytes.
pub fn within(
    format: &'static str,
    what: &'static str,
    offset: u64,
    len: u64,
    end: u64,
) -> Result<(), ImageError> {
    if offset.checked_add(len).is_none_or(|e| e > end) {
        return Err(ImageError::PastEnd {
            format,
            what,
            offset,
            end,
        });
    }
    Ok(())
}

/// The opener for a format read through a map, for an input of `len` bytes (None: the
/// format is not one of those).
pub fn opener(format: Format, len: u64) -> Option<Box<dyn Opener>> {
    match format {
        Format::Qcow2 => Some(Box::new(crate::qcow2::Qcow2Opener::new(len))),
        Format::Vmdk => Some(Box::new(crate::vmdk::VmdkOpener::new(len))),
        Format::Vhd => Some(Box::new(crate::vhd::VhdOpener::new(len))),
        Format::Vhdx => Some(Box::new(crate::vhdx::VhdxOpener::new(len))),
        Format::Vdi => Some(Box::new(crate::vdi::VdiOpener::new(len))),
        _ => None,
    }
}

/// Little-endian u16 at `at` (the caller checked the length).
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
/// Little-endian u32 at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
/// Little-endian u64 at `at`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}
/// Big-endian u32 at `at`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
/// Big-endian u64 at `at`.
pub fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// An image read with blocking I/O from any `Read + Seek` (tests, fuzz targets, tools):
/// the same openers and maps the importer drives asynchronously.
#[derive(Debug)]
pub struct BlockingImage<R> {
    input: R,
    len: u64,
    map: Box<dyn ImageMap>,
}

/// A failure of [`BlockingImage`]: the image, or the reads under it.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// The image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The input.
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
}

/// Read `[offset, offset+len)` of `input`; fewer bytes only at its end.
pub fn read_at<R: Read + Seek>(input: &mut R, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    input.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    input.take(len).read_to_end(&mut out)?;
    Ok(out)
}

impl<R: Read + Seek> BlockingImage<R> {
    /// Open `input` (`len` bytes) as `format`.
    pub fn open(mut input: R, len: u64, format: Format) -> Result<Self, BlockingError> {
        let mut o = opener(format, len).ok_or_else(|| {
            ImageError::unsupported("image", format!("{format} is not read through a map"))
        })?;
        let mut got = Vec::new();
        for _ in 0..MAX_OPEN_STEPS {
            match o.next(&got)? {
                Step::Ready(map) => return Ok(BlockingImage { input, len, map }),
                Step::Read { offset, len } => {
                    if len > MAX_OPEN_READ {
                        return Err(ImageError::OpenTooLarge("image").into());
                    }
                    got = read_at(&mut input, offset, len)?;
                }
            }
        }
        Err(ImageError::OpenTooLarge("image").into())
    }

    /// The map.
    pub fn map(&self) -> &dyn ImageMap {
        self.map.as_ref()
    }

    /// The input's size.
    pub fn input_len(&self) -> u64 {
        self.len
    }

    /// What unit `index` holds (its table read when it has one).
    pub fn unit(&mut self, index: u64) -> Result<Unit, BlockingError> {
        let table = match self.map.table(index)? {
            Some(t) => {
                let b = read_at(&mut self.input, t.offset, t.len)?;
                if (b.len() as u64) < t.len {
                    return Err(ImageError::PastEnd {
                        format: "image",
                        what: "table",
                        offset: t.offset,
                        end: self.len,
                    }
                    .into());
                }
                Some(b)
            }
            None => None,
        };
        Ok(self.map.lookup(index, table.as_deref())?)
    }

    /// The whole disk, in memory (tests of small images).
    pub fn read_all(&mut self) -> Result<Vec<u8>, BlockingError> {
        let size = self.map.size();
        let unit = self.map.unit();
        let mut out = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
        for index in 0..size.div_ceil(unit) {
            let start = index * unit;
            let end = (start + unit).min(size);
            let u = self.unit(index)?;
            let parts: Vec<Mapping> = match u {
                Unit::Whole(m) => vec![m],
                Unit::Parts(p) => p.into_vec(),
            };
            let part = unit / parts.len().max(1) as u64;
            for (k, m) in parts.iter().enumerate() {
                let p0 = start + k as u64 * part;
                if p0 >= end {
                    break;
                }
                let p1 = (p0 + part).min(end);
                let dst =
                    &mut out[usize::try_from(p0).unwrap_or(0)..usize::try_from(p1).unwrap_or(0)];
                match *m {
                    Mapping::Unallocated | Mapping::Zero => {}
                    Mapping::Data { host } => {
                        let b = read_at(&mut self.input, host, p1 - p0)?;
                        if (b.len() as u64) < p1 - p0 {
                            return Err(ImageError::PastEnd {
                                format: "image",
                                what: "data",
                                offset: host,
                                end: self.len,
                            }
                            .into());
                        }
                        dst.copy_from_slice(&b);
                    }
                    Mapping::Compressed { host, len } => {
                        let b = read_at(&mut self.input, host, len)?;
                        let mut whole = vec![0u8; usize::try_from(unit).unwrap_or(0)];
                        self.map.decompress(host, &b, &mut whole)?;
                        dst.copy_from_slice(&whole[..dst.len()]);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::empty_run;

    #[test]
    fn an_empty_run_ends_at_the_first_entry_in_use_or_the_tables_end() {
        let mut t = vec![0u8; 4 * 8];
        t[2 * 8 + 7] = 1;
        assert_eq!(empty_run(0, 4, Some(&t), 8), 2);
        assert_eq!(empty_run(3, 4, Some(&t), 8), 1);
        assert_eq!(empty_run(4 + 1, 4, None, 8), 3);
        // A table shorter than its entries never runs past itself.
        assert_eq!(empty_run(0, 4, Some(&t[..8]), 8), 1);
    }
}
