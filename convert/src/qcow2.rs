//! qcow2 (versions 2 and 3), sans-IO: the header read and checked, and L1/L2 entries
//! turned into what each guest cluster holds. Facts as in reference/formats.md §1 and
//! qemu's `docs/interop/qcow2.rst`; every size and count read from the image is capped.
//!
//! Refused, each with one line naming the feature: a backing file, an external data
//! file, encryption (AES or LUKS), unknown incompatible features, versions other than 2
//! and 3, cluster sizes outside 512 B–2 MiB, virtual sizes over [`MAX_VIRTUAL_SIZE`], an
//! L1 table over [`MAX_L1_BYTES`] or too small for the disk, tables or data that are
//! misaligned or lie past the end of the image (a truncated download must fail, never
//! read as zeroes). Internal snapshots are ignored (the active L1 is the disk).

/// The largest virtual size accepted (VMDK's own limit is 62 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// The largest active L1 table (qemu's own limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Smallest and largest cluster_bits (qemu's range).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Bytes of the fixed header fields read (v3's 104, and the compression type byte).
pub const FIXED_HEADER_BYTES: usize = 105;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: usize = 32;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2;

const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;

/// Bits 9–55 of an L1 or standard L2 entry: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// Why a qcow2 image is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Qcow2Error {
    /// Shorter than its header.
    #[error("qcow2 header truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the header needs.
        need: u64,
        /// Bytes given.
        have: u64,
    },
    /// Not `QFI\xfb`.
    #[error("not a qcow2 image (no QFI\\xfb magic)")]
    Magic,
    /// A version other than 2 or 3.
    #[error("qcow2 version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// cluster_bits outside 9..=21, or under 14 with extended L2 entries.
    #[error(
        "qcow2 cluster size 2^{0} is not supported (512 B to 2 MiB; at least 16 KiB with extended L2 entries)"
    )]
    ClusterBits(u32),
    /// A virtual size over [`MAX_VIRTUAL_SIZE`].
    #[error(
        "qcow2 virtual size {0} bytes is larger than {MAX_VIRTUAL_SIZE}, the most Ferry accepts"
    )]
    TooBig(u64),
    /// AES or LUKS encryption.
    #[error("the qcow2 image is encrypted ({0}); Ferry does not decrypt images")]
    Encrypted(&'static str),
    /// A backing file is named.
    #[error(
        "the qcow2 image has a backing file; Ferry reads single images only and never opens a file an image names (qemu-img convert it into one image first)"
    )]
    BackingFile,
    /// An external data file is named.
    #[error(
        "the qcow2 image keeps its data in an external data file; Ferry never opens a file an image names"
    )]
    ExternalDataFile,
    /// Incompatible feature bits this reader does not know.
    #[error("the qcow2 image uses unknown incompatible features (bits {0:#x})")]
    UnknownFeatures(u64),
    /// A compression type other than deflate (0) and zstd (1), or zstd without its bit.
    #[error("qcow2 compression type {0} is not supported (0 deflate, 1 zstd)")]
    CompressionType(u8),
    /// The header length is not one qemu writes or reads.
    #[error("qcow2 header length {0} is invalid")]
    HeaderLength(u32),
    /// The header extensions run past the first cluster.
    #[error("qcow2 header extensions run past the first cluster")]
    Extensions,
    /// The L1 table is larger than [`MAX_L1_BYTES`] or smaller than the disk needs.
    #[error("qcow2 L1 table of {entries} entries is invalid ({needed} needed, at most {max})")]
    L1Size {
        /// Entries in the header.
        entries: u32,
        /// Entries the virtual size needs.
        needed: u64,
        /// The most accepted.
        max: u64,
    },
    /// A table or cluster offset that is not aligned as it must be.
    #[error("qcow2 {what} at {offset:#x} is not cluster-aligned")]
    Misaligned {
        /// "L1 table", "L2 table", "data cluster".
        what: &'static str,
        /// The offset.
        offset: u64,
    },
    /// A table or cluster past the end of the image: a truncated or corrupt image.
    #[error(
        "qcow2 {what} at {offset:#x} lies past the end of the image ({end} bytes): the image is truncated or corrupt"
    )]
    PastEnd {
        /// "L1 table", "L2 table", "data cluster", "compressed cluster".
        what: &'static str,
        /// The offset.
        offset: u64,
        /// The image's size.
        end: u64,
    },
    /// A compressed cluster that does not decompress to one cluster.
    #[error("qcow2 compressed cluster at {host:#x} is corrupt: {why}")]
    Compressed {
        /// Where it is in the image.
        host: u64,
        /// Why.
        why: &'static str,
    },
    /// A table or cluster that lies on the image's own metadata (its header cluster or
    /// its L1 table): a corrupt or hostile image.
    #[error("qcow2 {what} at {offset:#x} overlaps the image's {with}: the image is corrupt")]
    Overlap {
        /// "L2 table", "data cluster", "compressed cluster".
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// "header", "L1 table".
        with: &'static str,
    },
    /// An L2 entry that no valid image holds.
    #[error("qcow2 L2 entry {entry:#018x} is invalid: {why}")]
    BadEntry {
        /// The entry.
        entry: u64,
        /// Why.
        why: &'static str,
    },
}

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (RFC 1951), qemu's "zlib".
    Deflate,
    /// zstd frames.
    Zstd,
}

/// A checked qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// Entries of the active L1 table.
    pub l1_entries: u32,
    /// Where the active L1 table is.
    pub l1_offset: u64,
    /// Compressed clusters' compression.
    pub compression: Compression,
    /// L2 entries carry a subcluster bitmap.
    pub extended_l2: bool,
    /// The image says it is corrupt (read anyway, as qemu does; worth a warning).
    pub corrupt: bool,
    /// Internal snapshots (ignored: the active L1 is the disk).
    pub snapshots: u32,
}

use crate::image::{ImageError, ImageMap, Opener, Step, Table, be32, be64};
pub use crate::image::{Mapping, Unit};

impl Header {
    /// Read and check the header from the image's first bytes: at least
    /// [`FIXED_HEADER_BYTES`], and the whole first cluster to check its extensions
    /// ([`Header::cluster_size`] of a first parse says how much that is; fewer bytes
    /// than that fail as truncated when extensions are present). `image_len` is the
    /// image's size, when known, to refuse tables past its end.
    pub fn parse(head: &[u8], image_len: Option<u64>) -> Result<Header, Qcow2Error> {
        let truncated = |need: usize| Qcow2Error::Truncated {
            need: need as u64,
            have: head.len() as u64,
        };
        if head.len() < 72 {
            return Err(truncated(72));
        }
        if &head[..4] != b"QFI\xfb" {
            return Err(Qcow2Error::Magic);
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::Version(version));
        }
        if version == 3 && head.len() < FIXED_HEADER_BYTES {
            return Err(truncated(FIXED_HEADER_BYTES));
        }
        let (incompat, header_len) = if version == 3 {
            (be64(head, 72), be32(head, 100))
        } else {
            (0, 72)
        };
        if version == 3 && !(104..=4096).contains(&header_len) {
            return Err(Qcow2Error::HeaderLength(header_len));
        }
        let cluster_bits = be32(head, 20);
        let extended_l2 = incompat & INCOMPAT_EXTENDED_L2 != 0;
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits)
            || (extended_l2 && cluster_bits < 14)
        {
            return Err(Qcow2Error::ClusterBits(cluster_bits));
        }
        let size = be64(head, 24);
        if size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::TooBig(size));
        }
        match be32(head, 32) {
            0 => {}
            1 => return Err(Qcow2Error::Encrypted("AES")),
            2 => return Err(Qcow2Error::Encrypted("LUKS")),
            _ => return Err(Qcow2Error::Encrypted("an unknown method")),
        }
        if be64(head, 8) != 0 {
            return Err(Qcow2Error::BackingFile);
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::ExternalDataFile);
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Qcow2Error::UnknownFeatures(incompat & !INCOMPAT_KNOWN));
        }
        let compression = match (header_len > 104).then(|| head[104]) {
            None | Some(0) if incompat & INCOMPAT_COMPRESSION == 0 => Compression::Deflate,
            Some(1) if incompat & INCOMPAT_COMPRESSION != 0 => Compression::Zstd,
            Some(t) => return Err(Qcow2Error::CompressionType(t)),
            None => return Err(Qcow2Error::CompressionType(0)),
        };
        let h = Header {
            version,
            cluster_bits,
            size,
            l1_entries: be32(head, 36),
            l1_offset: be64(head, 40),
            compression,
            extended_l2,
            corrupt: incompat & INCOMPAT_CORRUPT != 0,
            snapshots: be32(head, 60),
        };
        h.check_l1(image_len)?;
        if version == 3 {
            check_extensions(head, header_len as usize, h.cluster_size())?;
        }
        Ok(h)
    }

    fn check_l1(&self, image_len: Option<u64>) -> Result<(), Qcow2Error> {
        let needed = self.size.div_ceil(self.cluster_size() * self.l2_entries());
        let max = MAX_L1_BYTES / 8;
        if u64::from(self.l1_entries) < needed || u64::from(self.l1_entries) > max {
            return Err(Qcow2Error::L1Size {
                entries: self.l1_entries,
                needed,
                max,
            });
        }
        if self.l1_entries == 0 {
            return Ok(());
        }
        if !self.l1_offset.is_multiple_of(self.cluster_size()) || self.l1_offset == 0 {
            return Err(Qcow2Error::Misaligned {
                what: "L1 table",
                offset: self.l1_offset,
            });
        }
        self.within("L1 table", self.l1_offset, self.l1_bytes(), image_len)
    }

    /// `[offset, offset+len)` does not overlap the header cluster or the L1 table.
    pub fn clear_of_metadata(
        &self,
        what: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<(), Qcow2Error> {
        let end = offset.saturating_add(len.max(1));
        let cs = self.cluster_size();
        let l1_end = self
            .l1_offset
            .saturating_add(self.l1_bytes().next_multiple_of(cs));
        let with = if offset < cs {
            "header"
        } else if self.l1_entries > 0 && offset < l1_end && end > self.l1_offset {
            "L1 table"
        } else {
            return Ok(());
        };
        Err(Qcow2Error::Overlap { what, offset, with })
    }

    /// `[offset, offset+len)` lies inside an image of `image_len` bytes (when known).
    pub fn within(
        &self,
        what: &'static str,
        offset: u64,
        len: u64,
        image_len: Option<u64>,
    ) -> Result<(), Qcow2Error> {
        match image_len {
            Some(end) if offset.checked_add(len).is_none_or(|e| e > end) => {
                Err(Qcow2Error::PastEnd { what, offset, end })
            }
            _ => Ok(()),
        }
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / if self.extended_l2 { 16 } else { 8 }
    }

    /// Bytes of one L2 table (one cluster).
    pub fn l2_bytes(&self) -> u64 {
        self.cluster_size()
    }

    /// Bytes of the active L1 table.
    pub fn l1_bytes(&self) -> u64 {
        u64::from(self.l1_entries) * 8
    }

    /// Guest bytes one L2 table covers.
    pub fn l2_span(&self) -> u64 {
        self.cluster_size() * self.l2_entries()
    }

    /// The L2 table an L1 entry points at (None: that part of the disk is unallocated).
    pub fn l1_entry(&self, entry: u64, image_len: Option<u64>) -> Result<Option<u64>, Qcow2Error> {
        let off = entry & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if !off.is_multiple_of(self.cluster_size()) {
            return Err(Qcow2Error::Misaligned {
                what: "L2 table",
                offset: off,
            });
        }
        self.within("L2 table", off, self.l2_bytes(), image_len)?;
        self.clear_of_metadata("L2 table", off, self.l2_bytes())?;
        Ok(Some(off))
    }

    /// What a guest cluster holds, from its L2 entry (and, with extended L2 entries,
    /// the subcluster bitmap that follows it).
    pub fn l2_entry(
        &self,
        entry: u64,
        bitmap: u64,
        image_len: Option<u64>,
    ) -> Result<Unit, Qcow2Error> {
        if entry & L2_COMPRESSED != 0 {
            if self.extended_l2 && bitmap != 0 {
                return Err(Qcow2Error::BadEntry {
                    entry,
                    why: "a compressed cluster with a subcluster bitmap",
                });
            }
            return self.compressed(entry, image_len).map(Unit::Whole);
        }
        let off = entry & OFFSET_MASK;
        if !off.is_multiple_of(self.cluster_size()) {
            return Err(Qcow2Error::Misaligned {
                what: "data cluster",
                offset: off,
            });
        }
        // The cluster must start inside the image; a read that runs past its end fails
        // then (the image's last cluster may be short, and with subclusters only the
        // allocated ones are stored).
        if off != 0 {
            self.within("data cluster", off, 1, image_len)?;
            self.clear_of_metadata("data cluster", off, self.cluster_size())?;
        }
        if !self.extended_l2 {
            return Ok(Unit::Whole(if self.version == 3 && entry & L2_ZERO != 0 {
                Mapping::Zero
            } else if off != 0 {
                Mapping::Data { host: off }
            } else {
                Mapping::Unallocated
            }));
        }
        let (alloc, zero) = (bitmap & 0xffff_ffff, bitmap >> 32);
        if alloc & zero != 0 {
            return Err(Qcow2Error::BadEntry {
                entry,
                why: "a subcluster both allocated and zero",
            });
        }
        if alloc != 0 && off == 0 {
            return Err(Qcow2Error::BadEntry {
                entry,
                why: "allocated subclusters without a host cluster",
            });
        }
        let sub = self.cluster_size() / SUBCLUSTERS as u64;
        let mut subs = [Mapping::Unallocated; SUBCLUSTERS];
        for (i, m) in subs.iter_mut().enumerate() {
            if alloc >> i & 1 != 0 {
                *m = Mapping::Data {
                    host: off + i as u64 * sub,
                };
            } else if zero >> i & 1 != 0 {
                *m = Mapping::Zero;
            }
        }
        Ok(
            if subs.iter().all(|m| *m == subs[0]) && !matches!(subs[0], Mapping::Data { .. }) {
                Unit::Whole(subs[0])
            } else {
                Unit::Parts(Box::new(subs))
            },
        )
    }

    fn compressed(&self, entry: u64, image_len: Option<u64>) -> Result<Mapping, Qcow2Error> {
        let x = 62 - (self.cluster_bits - 8);
        let desc = entry & ((1 << 62) - 1);
        let host = desc & ((1 << x) - 1);
        if host >> 56 != 0 {
            return Err(Qcow2Error::BadEntry {
                entry,
                why: "a compressed cluster's offset past bit 55",
            });
        }
        let sectors = desc >> x;
        let mut len = (sectors + 1) * 512 - (host & 511);
        // The last sector may run past the end of the image (qemu clamps the read).
        if let Some(end) = image_len {
            if host >= end {
                return Err(Qcow2Error::PastEnd {
                    what: "compressed cluster",
                    offset: host,
                    end,
                });
            }
            len = len.min(end - host);
        }
        self.clear_of_metadata("compressed cluster", host, len)?;
        Ok(Mapping::Compressed { host, len })
    }
}

/// Walk the header extensions (each inside the first cluster; a crypto header or an
/// external data file name refused even without its feature bit).
fn check_extensions(head: &[u8], start: usize, cluster: u64) -> Result<(), Qcow2Error> {
    let limit = usize::try_from(cluster).unwrap_or(usize::MAX);
    let mut at = start.div_ceil(8) * 8;
    loop {
        if at + 8 > limit {
            return Err(Qcow2Error::Extensions);
        }
        if at + 8 > head.len() {
            return Err(Qcow2Error::Truncated {
                need: (at + 8) as u64,
                have: head.len() as u64,
            });
        }
        let (kind, len) = (be32(head, at), be32(head, at + 4) as usize);
        match kind {
            EXT_END => return Ok(()),
            EXT_CRYPTO => return Err(Qcow2Error::Encrypted("LUKS")),
            EXT_DATA_FILE => return Err(Qcow2Error::ExternalDataFile),
            _ => {}
        }
        at = at
            .checked_add(8 + len.div_ceil(8) * 8)
            .ok_or(Qcow2Error::Extensions)?;
    }
}

/// Decompress one compressed cluster: `input` is the [`Mapping::Compressed`] bytes
/// (which may run on into padding or the next cluster), `out` exactly one cluster. As
/// qemu: deflate is raw (no zlib header), zstd is one or more frames; what follows the
/// cluster is ignored; a cluster that decodes short, or input that is not a stream of
/// its compression, is an error.
pub fn decompress_cluster(
    compression: Compression,
    host: u64,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), Qcow2Error> {
    let bad = |why: &'static str| Qcow2Error::Compressed { host, why };
    match compression {
        Compression::Deflate => DEFLATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = slot.get_or_insert_with(|| flate2::Decompress::new(false));
            d.reset(false);
            match d.decompress(input, out, flate2::FlushDecompress::Finish) {
                Ok(_) if d.total_out() == out.len() as u64 => Ok(()),
                Ok(_) => Err(bad("it decompresses to less than a cluster")),
                Err(_) => Err(bad("it is not a deflate stream")),
            }
        }),
        Compression::Zstd => ZSTD.with(|cell| {
            use zstd::stream::raw::Operation;
            let mut slot = cell.borrow_mut();
            let d = match slot.as_mut() {
                Some(d) => {
                    d.reinit()
                        .map_err(|_| bad("the zstd decoder cannot start"))?;
                    d
                }
                None => slot.insert(
                    zstd::stream::raw::Decoder::new()
                        .map_err(|_| bad("the zstd decoder cannot start"))?,
                ),
            };
            zstd_cluster(d, input, out).map_err(|()| {
                // A decoder left mid-frame is dropped, not reused.
                *slot = None;
                bad("it does not decompress to a cluster of zstd data")
            })
        }),
    }
}

thread_local! {
    /// One raw-deflate decompressor per thread, reset for every cluster.
    static DEFLATE: std::cell::RefCell<Option<flate2::Decompress>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread, reused for every cluster (making
    /// one costs more than decompressing a small cluster).
    static ZSTD: std::cell::RefCell<Option<zstd::stream::raw::Decoder<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decode zstd frames from `input` until `out` is full; what follows is ignored.
fn zstd_cluster(
    d: &mut zstd::stream::raw::Decoder<'static>,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), ()> {
    use zstd::stream::raw::Operation;
    let (mut read, mut written) = (0, 0);
    while written < out.len() {
        let st = d
            .run_on_buffers(&input[read..], &mut out[written..])
            .map_err(|_| ())?;
        read += st.bytes_read;
        written += st.bytes_written;
        if st.bytes_read == 0 && st.bytes_written == 0 {
            return Err(());
        }
    }
    Ok(())
}

impl Qcow2Error {
    /// True when the image is valid but uses what Ferry does not read.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Qcow2Error::BackingFile
                | Qcow2Error::ExternalDataFile
                | Qcow2Error::Encrypted(_)
                | Qcow2Error::UnknownFeatures(_)
                | Qcow2Error::Version(_)
                | Qcow2Error::CompressionType(_)
                | Qcow2Error::TooBig(_)
        )
    }
}

/// Opens a qcow2 image: the first 4 KiB, the whole first cluster when it is larger (its
/// header extensions), then the active L1 table.
#[derive(Debug)]
pub struct Qcow2Opener {
    len: u64,
    state: OpenState,
}

#[derive(Debug)]
enum OpenState {
    Start,
    Head { asked: u64 },
    L1(Header),
}

impl Qcow2Opener {
    /// For an input of `len` bytes.
    pub fn new(len: u64) -> Self {
        Qcow2Opener {
            len,
            state: OpenState::Start,
        }
    }
}

impl Opener for Qcow2Opener {
    fn next(&mut self, got: &[u8]) -> Result<Step, ImageError> {
        match std::mem::replace(&mut self.state, OpenState::Start) {
            OpenState::Start => {
                let asked = 4096.min(self.len);
                self.state = OpenState::Head { asked };
                Ok(Step::Read {
                    offset: 0,
                    len: asked,
                })
            }
            OpenState::Head { asked } => {
                // The whole first cluster holds the header extensions.
                let bits = got
                    .get(20..24)
                    .map_or(0, |_| be32(got, 20).min(MAX_CLUSTER_BITS));
                let first = (1u64 << bits)
                    .clamp(4096, 1 << MAX_CLUSTER_BITS)
                    .min(self.len);
                if first > asked {
                    self.state = OpenState::Head { asked: first };
                    return Ok(Step::Read {
                        offset: 0,
                        len: first,
                    });
                }
                let h = Header::parse(got, Some(self.len))?;
                let step = Step::Read {
                    offset: h.l1_offset,
                    len: h.l1_bytes(),
                };
                self.state = OpenState::L1(h);
                Ok(step)
            }
            OpenState::L1(h) => {
                if (got.len() as u64) < h.l1_bytes() {
                    return Err(Qcow2Error::PastEnd {
                        what: "L1 table",
                        offset: h.l1_offset,
                        end: self.len,
                    }
                    .into());
                }
                let l1 = got.chunks_exact(8).map(|c| be64(c, 0)).collect();
                Ok(Step::Ready(Box::new(Qcow2Map {
                    h,
                    len: self.len,
                    l1,
                })))
            }
        }
    }
}

/// An open qcow2 image's map: the header and the active L1 table; L2 tables are the
/// [`Table`]s.
#[derive(Debug)]
pub struct Qcow2Map {
    /// The header.
    pub h: Header,
    len: u64,
    l1: Vec<u64>,
}

impl ImageMap for Qcow2Map {
    fn name(&self) -> String {
        format!(
            "qcow2 v{} ({} KiB clusters{})",
            self.h.version,
            self.h.cluster_size() >> 10,
            if self.h.extended_l2 {
                ", extended L2"
            } else {
                ""
            }
        )
    }

    fn size(&self) -> u64 {
        self.h.size
    }

    fn unit(&self) -> u64 {
        self.h.cluster_size()
    }

    fn table(&self, index: u64) -> Result<Option<Table>, ImageError> {
        let i = usize::try_from(index / self.h.l2_entries()).unwrap_or(usize::MAX);
        let entry = self.l1.get(i).copied().unwrap_or(0);
        Ok(self.h.l1_entry(entry, Some(self.len))?.map(|offset| Table {
            offset,
            len: self.h.l2_bytes(),
        }))
    }

    fn unallocated_run(&self, index: u64, table: Option<&[u8]>) -> u64 {
        // Entries (and, extended, their bitmaps) that are all zero bits: unallocated.
        let step = if self.h.extended_l2 { 16 } else { 8 };
        crate::image::empty_run(index, self.h.l2_entries(), table, step)
    }

    fn lookup(&self, index: u64, table: Option<&[u8]>) -> Result<Unit, ImageError> {
        let Some(t) = table else {
            return Ok(Unit::Whole(Mapping::Unallocated));
        };
        let j = usize::try_from(index % self.h.l2_entries()).unwrap_or(0);
        let step = if self.h.extended_l2 { 16 } else { 8 };
        let at = j * step;
        let entry = t.get(at..at + 8).map_or(0, |b| be64(b, 0));
        let bitmap = if self.h.extended_l2 {
            t.get(at + 8..at + 16).map_or(0, |b| be64(b, 0))
        } else {
            0
        };
        Ok(self.h.l2_entry(entry, bitmap, Some(self.len))?)
    }

    fn decompress(&self, host: u64, input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
        Ok(decompress_cluster(self.h.compression, host, input, out)?)
    }
}
