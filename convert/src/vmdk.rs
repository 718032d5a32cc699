//! VMDK, sans-IO: a hosted sparse extent (`KDMV`) read through its grain directory and
//! grain tables — monolithicSparse, and streamOptimized in both layouts (qemu's, with
//! the directory up front, and VMware's, with the directory at the end found through
//! the footer) — and a streamOptimized VMDK decoded in order, without seeking
//! ([`VmdkStreamReader`]). Facts as in reference/formats.md §2 and qemu's
//! `block/vmdk.c`; every size and count read from the image is capped.
//!
//! Ferry never opens a file named inside an image: a sparse file is read only from its
//! own extent, and a descriptor file, an extent in another file (FLAT, a split disk's
//! `-s001`), a delta with a parent, an ESX `COWD` extent, capacity 0 (which qemu would
//! read as a descriptor file) are refused with one line naming what. Offsets past the
//! end of the input are errors (a truncated download must fail, never read as zeroes).

use std::io::{BufReader, Read};

use crate::image::{ImageError, ImageMap, Mapping, Opener, Step, Table, Unit, le16, le32, le64};
use crate::image::{MAX_OPEN_READ, within};

/// Bytes per sector: every VMDK offset and size is in sectors.
pub const SECTOR: u64 = 512;
/// Bytes of the hosted sparse extent header (and of the footer's copy of it).
pub const HEADER_BYTES: u64 = 512;
/// The largest virtual size accepted (VMware's own limit is 62 TiB).
pub const MAX_VMDK_CAPACITY: u64 = 64 << 40;
/// The largest grain (qemu accepts up to 1 GiB; VMware writes 64 KiB).
pub const MAX_GRAIN_BYTES: u64 = 2 << 20;
/// The most entries per grain table (qemu's limit; VMware always writes 512).
pub const MAX_GTES_PER_GT: u32 = 512;
/// The most grain directory entries (a 16 MiB directory: 64 TiB of 32 KiB grains).
pub const MAX_GD_ENTRIES: u64 = 4 << 20;
/// The largest descriptor read (qemu reads at most 1 MiB of it).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// `gdOffset` of a stream whose grain directory is found through the footer.
pub const GD_AT_END: u64 = u64::MAX;
/// Bytes of a grain marker before its compressed data (`u64 lba`, `u32 size`).
pub const MARKER_BYTES: u64 = 12;
/// Bytes at the end of a GD_AT_END stream: footer marker, footer, end-of-stream marker.
pub const FOOTER_BYTES: u64 = 3 * SECTOR;

/// The most compressed bytes one grain may take: more than zlib's `compressBound` for
/// any grain (qemu allows two grains; no zlib writer needs more than this).
pub const fn max_compressed_grain(grain: u64) -> u64 {
    grain + grain / 64 + SECTOR
}

const FORMAT: &str = "VMDK";
const FLAG_NL_DETECT: u32 = 1 << 0;
const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESS_NONE: u16 = 0;
const COMPRESS_DEFLATE: u16 = 1;
const GTE_ZEROED: u32 = 1;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// The first read of an opener: the header and a typical embedded descriptor.
const FIRST_READ: u64 = 64 << 10;

/// A checked hosted sparse extent header (all offsets and sizes in sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1, 2 or 3.
    pub version: u32,
    /// The flags word.
    pub flags: u32,
    /// Virtual size in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain: u64,
    /// Where the embedded descriptor is (0: none).
    pub desc_offset: u64,
    /// Its size.
    pub desc_size: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u32,
    /// The redundant grain directory (not read).
    pub rgd_offset: u64,
    /// The grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors before the first grain.
    pub overhead: u64,
    /// Grains are deflate-compressed (compressAlgorithm 1).
    pub compressed: bool,
}

fn need(b: &[u8], n: u64, what: &'static str, offset: u64, end: u64) -> Result<(), ImageError> {
    if (b.len() as u64) < n {
        return Err(ImageError::PastEnd {
            format: FORMAT,
            what,
            offset,
            end,
        });
    }
    Ok(())
}

impl Header {
    /// Read and check a `KDMV` header from its 512 bytes (more may follow). `end` is
    /// the input's size, for the error when fewer bytes are given.
    pub fn parse(b: &[u8], end: u64) -> Result<Header, ImageError> {
        need(b, HEADER_BYTES, "sparse header", 0, end)?;
        if b.get(..4) != Some(b"KDMV") {
            return Err(ImageError::corrupt(
                FORMAT,
                "no KDMV magic in the sparse header",
            ));
        }
        let h = Header {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain: le64(b, 20),
            desc_offset: le64(b, 28),
            desc_size: le64(b, 36),
            gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            compressed: false,
        };
        let algorithm = le16(b, 77);
        let h = Header {
            compressed: algorithm == COMPRESS_DEFLATE,
            ..h
        };
        if !(1..=3).contains(&h.version) {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "sparse extent version {} is not supported (1 to 3 are)",
                    h.version
                ),
            ));
        }
        if h.capacity == 0 {
            return Err(ImageError::unsupported(
                FORMAT,
                "the sparse header says capacity 0 (qemu would then read the embedded descriptor as a descriptor file naming other files); refused",
            ));
        }
        if h.flags & FLAG_NL_DETECT != 0 && b.get(73..77) != Some(b"\n \r\n") {
            return Err(ImageError::corrupt(
                FORMAT,
                "the newline-detection bytes are altered (was it transferred as text?)",
            ));
        }
        if algorithm != COMPRESS_NONE && algorithm != COMPRESS_DEFLATE {
            return Err(ImageError::unsupported(
                FORMAT,
                format!("compressAlgorithm {algorithm} is not supported (0 none, 1 deflate)"),
            ));
        }
        if h.compressed && h.flags & FLAG_MARKERS == 0 {
            return Err(ImageError::unsupported(
                FORMAT,
                "compressed grains without grain markers are not read",
            ));
        }
        let size = h.capacity.saturating_mul(SECTOR);
        if size > MAX_VMDK_CAPACITY {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "capacity {} sectors is larger than {MAX_VMDK_CAPACITY} bytes, the most Ferry accepts",
                    h.capacity
                ),
            ));
        }
        if !h.grain.is_power_of_two() || h.grain > MAX_GRAIN_BYTES / SECTOR {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "grain size {} sectors is not supported (a power of two up to {} sectors)",
                    h.grain,
                    MAX_GRAIN_BYTES / SECTOR
                ),
            ));
        }
        if h.gtes_per_gt == 0 || h.gtes_per_gt > MAX_GTES_PER_GT {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "{} entries per grain table is not supported (1 to {MAX_GTES_PER_GT})",
                    h.gtes_per_gt
                ),
            ));
        }
        if h.gd_entries() > MAX_GD_ENTRIES {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "a grain directory of {} entries is larger than {MAX_GD_ENTRIES}, the most Ferry reads",
                    h.gd_entries()
                ),
            ));
        }
        if h.desc_size
            .checked_mul(SECTOR)
            .is_none_or(|n| n > MAX_DESCRIPTOR_BYTES)
        {
            return Err(ImageError::unsupported(
                FORMAT,
                format!(
                    "an embedded descriptor of {} sectors is larger than {MAX_DESCRIPTOR_BYTES} bytes, the most Ferry reads",
                    h.desc_size
                ),
            ));
        }
        if h.desc_offset.checked_mul(SECTOR).is_none() {
            return Err(ImageError::corrupt(
                FORMAT,
                "the descriptor offset overflows",
            ));
        }
        Ok(h)
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.capacity.saturating_mul(SECTOR)
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        self.grain.saturating_mul(SECTOR)
    }

    /// Grain directory entries the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(
            self.grain
                .saturating_mul(u64::from(self.gtes_per_gt))
                .max(1),
        )
    }

    /// Bytes of one grain table.
    pub fn gt_bytes(&self) -> u64 {
        u64::from(self.gtes_per_gt) * 4
    }

    /// Grains are compressed and framed by markers (streamOptimized).
    pub fn is_stream(&self) -> bool {
        self.compressed
    }

    /// Zeroed-grain entries (1) mean zeroes.
    pub fn zeroed_grain(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN != 0
    }

    /// Where the embedded descriptor is, in bytes (None: there is none).
    fn descriptor(&self) -> Option<(u64, u64)> {
        (self.desc_offset != 0 && self.desc_size != 0)
            .then(|| (self.desc_offset * SECTOR, self.desc_size * SECTOR))
    }
}

/// One extent line of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// `RW`, `RDONLY` or `NOACCESS`.
    pub access: String,
    /// Its size in sectors.
    pub sectors: u64,
    /// `SPARSE`, `FLAT`, `ZERO`, `VMFS`, ...
    pub kind: String,
    /// The file it names (none for ZERO).
    pub file: Option<String>,
}

/// What a descriptor (embedded or a file of its own) says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `createType`.
    pub create_type: Option<String>,
    /// A parent: `parentCID` other than ffffffff, or `parentFileNameHint`.
    pub parent: Option<String>,
    /// The extent lines, in order.
    pub extents: Vec<Extent>,
}

/// The most extent lines a descriptor may have.
pub const MAX_EXTENTS: usize = 4096;

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// Parse a descriptor's text (up to its first NUL; CRLF tolerated; `#` comments).
pub fn parse_descriptor(text: &[u8]) -> Result<Descriptor, ImageError> {
    let text = &text[..text.iter().position(|b| *b == 0).unwrap_or(text.len())];
    let text = String::from_utf8_lossy(text);
    let mut d = Descriptor::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            if d.extents.len() >= MAX_EXTENTS {
                return Err(ImageError::unsupported(
                    FORMAT,
                    format!("the descriptor has more than {MAX_EXTENTS} extents"),
                ));
            }
            d.extents.push(parse_extent(line)?);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value);
        match key.trim() {
            "createType" => d.create_type = Some(value.to_string()),
            "parentCID" if !value.eq_ignore_ascii_case("ffffffff") => {
                d.parent.get_or_insert_with(|| format!("parentCID {value}"));
            }
            "parentFileNameHint" => d.parent = Some(format!("{value:?}")),
            _ => {}
        }
    }
    Ok(d)
}

fn parse_extent(line: &str) -> Result<Extent, ImageError> {
    let bad = || ImageError::corrupt(FORMAT, format!("invalid extent line {line:?}"));
    let mut words = line.splitn(3, char::is_whitespace);
    let access = words.next().ok_or_else(bad)?.to_string();
    let rest = words.next().map(str::trim).ok_or_else(bad)?;
    let sectors: u64 = rest.parse().map_err(|_| bad())?;
    let rest = words.next().unwrap_or("").trim_start();
    let (kind, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if kind.is_empty() {
        return Err(bad());
    }
    let rest = rest.trim();
    let file = if let Some(q) = rest.strip_prefix('"') {
        let (name, _offset) = q.split_once('"').ok_or_else(bad)?;
        Some(name.to_string())
    } else if rest.is_empty() {
        None
    } else {
        return Err(bad());
    };
    Ok(Extent {
        access,
        sectors,
        kind: kind.to_string(),
        file,
    })
}

/// The refusal of an extent in another file, naming it.
fn separate_file(name: &str) -> ImageError {
    let why = if name.starts_with('/') || name.starts_with('\\') || name.get(1..2) == Some(":") {
        " (an absolute path)"
    } else if name.split(['/', '\\']).any(|c| c == "..") {
        " (a path outside the image's directory)"
    } else {
        ""
    };
    ImageError::unsupported(
        FORMAT,
        format!(
            "extent {name:?} is a separate file{why}; Ferry reads only what is inside the input"
        ),
    )
}

/// Refuse a descriptor file (text, not a sparse extent): it names the disk's data.
fn refuse_descriptor_file(text: &[u8]) -> ImageError {
    let d = match parse_descriptor(text) {
        Ok(d) => d,
        Err(e) => return e,
    };
    if let Some(name) = d.extents.iter().find_map(|e| e.file.as_deref()) {
        return separate_file(name);
    }
    ImageError::unsupported(
        FORMAT,
        format!(
            "a descriptor file (createType {:?}) without a sparse extent inside it; Ferry reads only what is inside the input",
            d.create_type.as_deref().unwrap_or("?")
        ),
    )
}

/// Check the descriptor embedded in a sparse extent: one sparse extent (the file
/// itself) of the header's capacity, no parent, a single-file createType.
pub fn check_embedded(d: &Descriptor, h: &Header) -> Result<(), ImageError> {
    if let Some(p) = &d.parent {
        return Err(ImageError::unsupported(
            FORMAT,
            format!(
                "the disk is a delta of a parent ({p}); Ferry reads single images only and never opens a file an image names"
            ),
        ));
    }
    let first = match d.extents.as_slice() {
        [] => {
            return Err(ImageError::unsupported(
                FORMAT,
                "the sparse extent's descriptor names no extent: it is one extent of a split disk, whose descriptor file names the others; Ferry reads only what is inside the input",
            ));
        }
        [one] => one,
        [first, rest @ ..] => {
            let other = if first.kind == "SPARSE" {
                rest.iter()
            } else {
                d.extents.iter()
            }
            .find_map(|e| e.file.as_deref());
            return Err(match other {
                Some(name) => separate_file(name),
                None => ImageError::unsupported(
                    FORMAT,
                    format!(
                        "the descriptor has {} extents; Ferry reads one sparse extent, inside the input",
                        d.extents.len()
                    ),
                ),
            });
        }
    };
    if first.kind != "SPARSE" {
        return Err(match &first.file {
            Some(name) => separate_file(name),
            None => ImageError::unsupported(
                FORMAT,
                format!("a {} extent in a sparse file is not supported", first.kind),
            ),
        });
    }
    if first.access == "NOACCESS" {
        return Err(ImageError::unsupported(FORMAT, "the extent is NOACCESS"));
    }
    if first.sectors != h.capacity {
        return Err(ImageError::corrupt(
            FORMAT,
            format!(
                "the descriptor's extent has {} sectors, the header's capacity is {}",
                first.sectors, h.capacity
            ),
        ));
    }
    match d.create_type.as_deref() {
        None | Some("monolithicSparse" | "streamOptimized") => Ok(()),
        Some(t) if t.eq_ignore_ascii_case("monolithicSparse") => Ok(()),
        Some(t) if t.eq_ignore_ascii_case("streamOptimized") => Ok(()),
        Some(t) => Err(ImageError::unsupported(
            FORMAT,
            format!(
                "createType {t:?} is not read (its data is in other files); Ferry reads monolithicSparse and streamOptimized VMDKs"
            ),
        )),
    }
}

/// Whether a source's first bytes are a streamOptimized VMDK (compressed grains with
/// markers, deflate; or a sparse extent whose descriptor says streamOptimized), which
/// [`VmdkStreamReader`] decodes in order.
pub fn is_stream_optimized(head: &[u8]) -> bool {
    if head.get(..4) != Some(b"KDMV") || head.len() < 79 {
        return false;
    }
    let flags = le32(head, 8);
    if flags & FLAG_COMPRESSED != 0
        && flags & FLAG_MARKERS != 0
        && le16(head, 77) == COMPRESS_DEFLATE
    {
        return true;
    }
    let start = usize::try_from(le64(head, 28).saturating_mul(SECTOR)).unwrap_or(usize::MAX);
    head.get(start..)
        .and_then(|t| parse_descriptor(t).ok())
        .is_some_and(|d| d.create_type.as_deref() == Some("streamOptimized"))
}

/// Opens a VMDK: the first 64 KiB (header and embedded descriptor), the descriptor
/// when it lies further, the footer of a GD_AT_END stream, then the grain directory.
#[derive(Debug)]
pub struct VmdkOpener {
    len: u64,
    state: OpenState,
}

#[derive(Debug)]
enum OpenState {
    Start,
    Head,
    Descriptor(Header),
    Footer(Header),
    Directory { h: Header, at_end: bool },
    Done,
}

impl VmdkOpener {
    /// For an input of `len` bytes.
    pub fn new(len: u64) -> Self {
        VmdkOpener {
            len,
            state: OpenState::Start,
        }
    }

    /// After the descriptor: the footer or the grain directory.
    fn after_descriptor(&mut self, h: Header) -> Result<Step, ImageError> {
        if h.gd_offset == GD_AT_END {
            let offset = self
                .len
                .checked_sub(FOOTER_BYTES)
                .ok_or(ImageError::PastEnd {
                    format: FORMAT,
                    what: "stream footer",
                    offset: 0,
                    end: self.len,
                })?;
            self.state = OpenState::Footer(h);
            return Ok(Step::Read {
                offset,
                len: FOOTER_BYTES,
            });
        }
        self.directory(h, false)
    }

    fn directory(&mut self, h: Header, at_end: bool) -> Result<Step, ImageError> {
        let (offset, len) = gd_range(&h)?;
        if h.gd_offset == 0 || ranges_overlap(offset, len, 0, HEADER_BYTES) {
            return Err(ImageError::corrupt(
                FORMAT,
                format!(
                    "the grain directory at sector {} overlaps the header",
                    h.gd_offset
                ),
            ));
        }
        within(FORMAT, "grain directory", offset, len, self.len)?;
        if len > MAX_OPEN_READ {
            return Err(ImageError::OpenTooLarge(FORMAT));
        }
        self.state = OpenState::Directory { h, at_end };
        Ok(Step::Read { offset, len })
    }
}

fn gd_range(h: &Header) -> Result<(u64, u64), ImageError> {
    let offset = h
        .gd_offset
        .checked_mul(SECTOR)
        .ok_or_else(|| ImageError::corrupt(FORMAT, "the grain directory offset overflows"))?;
    Ok((offset, h.gd_entries() * 4))
}

fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

fn check_descriptor(h: &Header, text: &[u8], at: u64, end: u64) -> Result<(), ImageError> {
    let (_, len) = h.descriptor().unwrap_or((0, 0));
    need(text, len, "embedded descriptor", at, end)?;
    check_embedded(&parse_descriptor(text)?, h)
}

impl Opener for VmdkOpener {
    fn next(&mut self, got: &[u8]) -> Result<Step, ImageError> {
        match std::mem::replace(&mut self.state, OpenState::Done) {
            OpenState::Start => {
                self.state = OpenState::Head;
                Ok(Step::Read {
                    offset: 0,
                    len: FIRST_READ.min(self.len),
                })
            }
            OpenState::Head => {
                if got.starts_with(b"COWD") {
                    return Err(ImageError::unsupported(
                        FORMAT,
                        "an ESX sparse (COWD, vmfsSparse) extent is a snapshot delta that needs its descriptor file and parent; Ferry reads only what is inside the input",
                    ));
                }
                if !got.starts_with(b"KDMV") {
                    return Err(if looks_like_text(got) {
                        refuse_descriptor_file(got)
                    } else {
                        ImageError::corrupt(FORMAT, "no KDMV magic and not a descriptor file")
                    });
                }
                let h = Header::parse(got, self.len)?;
                let Some((offset, len)) = h.descriptor() else {
                    return Err(ImageError::unsupported(
                        FORMAT,
                        "the sparse extent has no embedded descriptor: it is one extent of a split disk, whose descriptor file names the others; Ferry reads only what is inside the input",
                    ));
                };
                within(FORMAT, "embedded descriptor", offset, len, self.len)?;
                if ranges_overlap(offset, len, 0, HEADER_BYTES) {
                    return Err(ImageError::corrupt(
                        FORMAT,
                        "the embedded descriptor overlaps the header",
                    ));
                }
                let (Ok(o), Ok(e)) = (usize::try_from(offset), usize::try_from(offset + len))
                else {
                    return Err(ImageError::OpenTooLarge(FORMAT));
                };
                match got.get(o..e) {
                    Some(text) => {
                        check_descriptor(&h, text, offset, self.len)?;
                        self.after_descriptor(h)
                    }
                    None => {
                        self.state = OpenState::Descriptor(h);
                        Ok(Step::Read { offset, len })
                    }
                }
            }
            OpenState::Descriptor(h) => {
                let (offset, _) = h.descriptor().unwrap_or((0, 0));
                check_descriptor(&h, got, offset, self.len)?;
                self.after_descriptor(h)
            }
            OpenState::Footer(h) => {
                let at = self.len.saturating_sub(FOOTER_BYTES);
                need(got, FOOTER_BYTES, "stream footer", at, self.len)?;
                let f = footer(&h, got)?;
                self.directory(f, true)
            }
            OpenState::Directory { h, at_end } => {
                let (offset, len) = gd_range(&h)?;
                need(got, len, "grain directory", offset, self.len)?;
                let gd = got
                    .chunks_exact(4)
                    .take(usize::try_from(h.gd_entries()).unwrap_or(0))
                    .map(|c| le32(c, 0))
                    .collect();
                Ok(Step::Ready(Box::new(VmdkMap {
                    h,
                    len: self.len,
                    gd,
                    gd_at_end: at_end,
                })))
            }
            OpenState::Done => Err(ImageError::corrupt(FORMAT, "the opener was asked again")),
        }
    }
}

/// Text: a descriptor file (qemu accepts comments, blank lines, then `version=`).
fn looks_like_text(b: &[u8]) -> bool {
    let head = &b[..b.len().min(1024)];
    !head.is_empty()
        && (head.starts_with(b"#") || head.starts_with(b"version=") || head.starts_with(b"\n"))
        && head
            .iter()
            .take_while(|c| **c != 0)
            .all(|c| c.is_ascii_graphic() || c.is_ascii_whitespace() || *c >= 0x80)
}

/// The header a GD_AT_END stream's footer holds, from the last [`FOOTER_BYTES`]: footer
/// marker, footer, end-of-stream marker (as qemu checks them).
fn footer(h: &Header, b: &[u8]) -> Result<Header, ImageError> {
    let bad =
        |why: &str| ImageError::corrupt(FORMAT, format!("the stream footer is invalid: {why}"));
    let (m, f, eos) = (&b[..512], &b[512..1024], &b[1024..1536]);
    if le32(m, 8) != 0 || le32(m, 12) != MARKER_FOOTER {
        return Err(bad("no footer marker 1536 bytes before the end"));
    }
    if le64(eos, 0) != 0 || le32(eos, 8) != 0 || le32(eos, 12) != MARKER_EOS {
        return Err(bad("no end-of-stream marker in the last sector"));
    }
    if !f.starts_with(b"KDMV") {
        return Err(bad("no KDMV magic"));
    }
    let fh = Header::parse(f, u64::MAX)?;
    if fh.gd_offset == GD_AT_END {
        return Err(bad("its grain directory is at the end too"));
    }
    if (fh.capacity, fh.grain, fh.gtes_per_gt, fh.compressed)
        != (h.capacity, h.grain, h.gtes_per_gt, h.compressed)
    {
        return Err(bad("it disagrees with the header"));
    }
    Ok(fh)
}

/// An open VMDK's map: the header and the grain directory; grain tables are the
/// [`Table`]s.
#[derive(Debug)]
pub struct VmdkMap {
    /// The header (the footer's, for a GD_AT_END stream).
    pub h: Header,
    len: u64,
    gd: Vec<u32>,
    /// The header said GD_AT_END (VMware's stream layout): the footer's header is `h`.
    gd_at_end: bool,
}

impl VmdkMap {
    /// A grain or a table must not lie in the header, the descriptor or the directory.
    fn check_metadata(&self, what: &str, sector: u64, bytes: u64) -> Result<(), ImageError> {
        let at = sector * SECTOR;
        let (d, dl) = self.h.descriptor().unwrap_or((0, 0));
        let (g, gl) = gd_range(&self.h)?;
        for (name, o, l) in [
            ("the header", 0, HEADER_BYTES),
            ("the descriptor", d, dl),
            ("the grain directory", g, gl),
        ] {
            if ranges_overlap(at, bytes, o, l) {
                return Err(ImageError::corrupt(
                    FORMAT,
                    format!("the {what} at sector {sector} overlaps {name}"),
                ));
            }
        }
        Ok(())
    }
}

impl ImageMap for VmdkMap {
    fn name(&self) -> String {
        format!(
            "VMDK {} ({} grains{}{})",
            if self.h.is_stream() {
                "streamOptimized"
            } else {
                "monolithicSparse"
            },
            match self.h.grain_bytes() {
                g if g >= 1024 => format!("{} KiB", g >> 10),
                g => format!("{g} B"),
            },
            if self.h.zeroed_grain() {
                ", zeroed grains"
            } else {
                ""
            },
            if self.gd_at_end {
                ", directory at the end"
            } else {
                ""
            }
        )
    }

    fn size(&self) -> u64 {
        self.h.size()
    }

    fn unit(&self) -> u64 {
        self.h.grain_bytes()
    }

    fn table(&self, index: u64) -> Result<Option<Table>, ImageError> {
        let i = index / u64::from(self.h.gtes_per_gt);
        let entry = usize::try_from(i)
            .ok()
            .and_then(|i| self.gd.get(i))
            .copied()
            .unwrap_or(0);
        if entry == 0 {
            return Ok(None);
        }
        let sector = u64::from(entry);
        let len = self.h.gt_bytes();
        self.check_metadata("grain table", sector, len)?;
        within(FORMAT, "grain table", sector * SECTOR, len, self.len)?;
        Ok(Some(Table {
            offset: sector * SECTOR,
            len,
        }))
    }

    fn unallocated_run(&self, index: u64, table: Option<&[u8]>) -> u64 {
        crate::image::empty_run(index, u64::from(self.h.gtes_per_gt), table, 4)
    }

    fn lookup(&self, index: u64, table: Option<&[u8]>) -> Result<Unit, ImageError> {
        let Some(t) = table else {
            return Ok(Unit::Whole(Mapping::Unallocated));
        };
        let j = usize::try_from(index % u64::from(self.h.gtes_per_gt)).unwrap_or(0);
        let entry = j
            .checked_mul(4)
            .and_then(|at| t.get(at..at + 4))
            .map(|b| le32(b, 0))
            .ok_or_else(|| ImageError::corrupt(FORMAT, "a grain table shorter than its entries"))?;
        if entry == 0 {
            return Ok(Unit::Whole(Mapping::Unallocated));
        }
        if entry == GTE_ZEROED && self.h.zeroed_grain() {
            return Ok(Unit::Whole(Mapping::Zero));
        }
        let sector = u64::from(entry);
        let host = sector * SECTOR;
        let grain = self.h.grain_bytes();
        if self.h.is_stream() {
            self.check_metadata("grain marker", sector, MARKER_BYTES)?;
            within(FORMAT, "compressed grain", host, MARKER_BYTES, self.len)?;
            let want = (MARKER_BYTES + max_compressed_grain(grain)).next_multiple_of(SECTOR);
            return Ok(Unit::Whole(Mapping::Compressed {
                host,
                len: want.min(self.len - host),
            }));
        }
        let start = index.saturating_mul(grain);
        let bytes = grain.min(self.h.size().saturating_sub(start)).max(1);
        self.check_metadata("grain", sector, bytes)?;
        within(FORMAT, "grain", host, bytes, self.len)?;
        Ok(Unit::Whole(Mapping::Data { host }))
    }

    fn decompress(&self, host: u64, input: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
        let (lba, size) = match input.get(..12) {
            Some(m) => (le64(m, 0), le32(m, 8)),
            None => {
                return Err(ImageError::PastEnd {
                    format: FORMAT,
                    what: "grain marker",
                    offset: host,
                    end: self.len,
                });
            }
        };
        let data = usize::try_from(u64::from(size) + MARKER_BYTES)
            .ok()
            .and_then(|e| input.get(12..e));
        let Some(data) = data else {
            if host.saturating_add(MARKER_BYTES + u64::from(size)) > self.len {
                return Err(ImageError::PastEnd {
                    format: FORMAT,
                    what: "compressed grain",
                    offset: host,
                    end: self.len,
                });
            }
            return Err(ImageError::corrupt(
                FORMAT,
                format!(
                    "the grain marker at {host:#x} says {size} compressed bytes, more than a grain takes"
                ),
            ));
        };
        inflate_grain(&self.h, host, lba, data, out)
    }
}

/// Inflate one grain (zlib, as qemu's `uncompress()`) from a marker of `lba` at `host`
/// into `out` (one grain, zero-filled past a short last grain). The grain must be
/// where a grain starts inside the disk and inflate to exactly its share of the disk
/// (the last grain of a disk may be short; by less than a sector for a disk whose size
/// was not a multiple of 512), and not beyond.
fn inflate_grain(
    h: &Header,
    host: u64,
    lba: u64,
    data: &[u8],
    out: &mut [u8],
) -> Result<(), ImageError> {
    let bad = |why: String| ImageError::corrupt(FORMAT, format!("the grain at {host:#x} {why}"));
    if data.is_empty() {
        return Err(bad(
            "has a marker of size 0 (a metadata marker where a grain should be)".into(),
        ));
    }
    if !lba.is_multiple_of(h.grain) || lba >= h.capacity {
        return Err(bad(format!(
            "is for sector {lba}, not the start of a grain inside the disk ({} sectors)",
            h.capacity
        )));
    }
    let grain = h.grain_bytes();
    let expect = grain.min(h.size() - lba * SECTOR);
    let expect = usize::try_from(expect).map_err(|_| bad("is too large".into()))?;
    let Some(dst) = out.get_mut(..expect) else {
        return Err(bad("does not fit the buffer given".into()));
    };
    let mut d = flate2::Decompress::new(true);
    let status = d
        .decompress(data, dst, flate2::FlushDecompress::Finish)
        .map_err(|_| bad("is not a zlib stream".into()))?;
    let got = usize::try_from(d.total_out()).unwrap_or(usize::MAX);
    if status != flate2::Status::StreamEnd {
        return Err(if got >= expect {
            bad(format!("inflates to more than its {expect} bytes"))
        } else {
            bad(format!(
                "is cut short: it inflates to {got} of its {expect} bytes"
            ))
        });
    }
    let last = lba + h.grain >= h.capacity;
    if got < expect && !(last && expect - got < 512) {
        return Err(bad(format!("inflates to {got} bytes, not its {expect}")));
    }
    if let Some(rest) = out.get_mut(got..) {
        rest.fill(0);
    }
    Ok(())
}

/// A streamOptimized VMDK decoded in order, without seeking: the header and the
/// embedded descriptor checked, then each grain marker inflated and written at its
/// place, zeroes between and after; metadata markers (grain tables, directory,
/// footer) skipped. The output is the whole virtual disk, or an error: grains must
/// come in increasing order; the stream ends at its end-of-stream marker, or at the
/// end of the input after its footer or after every grain its up-front grain tables
/// (qemu's layout) name — a truncated stream is an error, never a shorter disk.
///
/// Errors are `std::io::Error`s of kind `InvalidData` (or `UnexpectedEof` for a
/// truncated stream) holding an [`ImageError`].
pub struct VmdkStreamReader<R: Read> {
    input: BufReader<R>,
    h: Header,
    /// Input bytes consumed.
    at: u64,
    /// Virtual bytes produced.
    out: u64,
    /// The current grain: its bytes and where they go.
    grain: Vec<u8>,
    grain_at: u64,
    grain_len: u64,
    /// Where the next grain may start at the earliest (the end of the last one).
    next_min: u64,
    /// Compressed bytes of the current marker.
    packed: Vec<u8>,
    /// The input sector of the last grain the up-front tables name, when known.
    last_named: Option<u64>,
    /// The input sector of the last grain read.
    last_read: Option<u64>,
    saw_footer: bool,
    ended: bool,
    failed: Option<(std::io::ErrorKind, ImageError)>,
}

impl<R: Read> std::fmt::Debug for VmdkStreamReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkStreamReader")
            .field("h", &self.h)
            .field("at", &self.at)
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

fn invalid(e: ImageError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

fn truncated(what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        ImageError::corrupt(FORMAT, format!("the stream is truncated: {what}")),
    )
}

/// Read exactly `buf.len()` bytes, or say how many came before the end.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> VmdkStreamReader<R> {
    /// Read and check the header and everything before the first grain (descriptor;
    /// qemu's up-front grain directory and tables), for a disk of at most
    /// [`MAX_VMDK_CAPACITY`].
    pub fn open(input: R) -> std::io::Result<Self> {
        Self::open_with_limit(input, MAX_VMDK_CAPACITY)
    }

    /// [`VmdkStreamReader::open`] refusing a disk larger than `max_size` bytes.
    pub fn open_with_limit(input: R, max_size: u64) -> std::io::Result<Self> {
        let mut input = BufReader::with_capacity(256 << 10, input);
        let mut sector = [0u8; 512];
        let n = fill(&mut input, &mut sector)?;
        if n < sector.len() {
            if !sector.starts_with(b"KDMV") && looks_like_text(&sector[..n]) {
                return Err(invalid(refuse_descriptor_file(&sector[..n])));
            }
            return Err(truncated(format!("{n} bytes, shorter than the header")));
        }
        if !sector.starts_with(b"KDMV") {
            return Err(invalid(if looks_like_text(&sector) {
                refuse_descriptor_file(&sector)
            } else {
                ImageError::corrupt(FORMAT, "no KDMV magic: not a streamOptimized VMDK")
            }));
        }
        let h = Header::parse(&sector, u64::MAX).map_err(invalid)?;
        if !h.is_stream() {
            return Err(invalid(ImageError::unsupported(
                FORMAT,
                "not a streamOptimized VMDK (its grains are not compressed): it needs random access",
            )));
        }
        if h.size() > max_size {
            return Err(invalid(ImageError::unsupported(
                FORMAT,
                format!(
                    "a disk of {} bytes is larger than {max_size}, the most read here",
                    h.size()
                ),
            )));
        }
        let Some((desc, desc_len)) = h.descriptor() else {
            return Err(invalid(ImageError::unsupported(
                FORMAT,
                "the stream has no embedded descriptor: it is one extent of a split disk; Ferry reads only what is inside the input",
            )));
        };
        let prefix = h.overhead.saturating_mul(SECTOR);
        if desc < SECTOR || desc.saturating_add(desc_len) > prefix {
            return Err(invalid(ImageError::corrupt(
                FORMAT,
                format!(
                    "the descriptor (sectors {}+{}) is not between the header and the first grain (sector {})",
                    h.desc_offset, h.desc_size, h.overhead
                ),
            )));
        }
        let mut r = VmdkStreamReader {
            input,
            grain: vec![
                0;
                usize::try_from(h.grain_bytes())
                    .map_err(|_| invalid(ImageError::OpenTooLarge(FORMAT)))?
            ],
            h,
            at: SECTOR,
            out: 0,
            grain_at: 0,
            grain_len: 0,
            next_min: 0,
            packed: Vec::new(),
            last_named: None,
            last_read: None,
            saw_footer: false,
            ended: false,
            failed: None,
        };
        r.prefix(desc, desc_len, prefix)?;
        Ok(r)
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.h.size()
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.h
    }

    /// Sectors 1 to overHead: the descriptor checked; with qemu's layout (grain
    /// directory there, its tables after it) the last grain the tables name noted.
    fn prefix(&mut self, desc: u64, desc_len: u64, prefix: u64) -> std::io::Result<()> {
        let h = self.h.clone();
        let mut text = Vec::new();
        let gd = (h.gd_offset != GD_AT_END)
            .then(|| gd_range(&h).ok())
            .flatten()
            .filter(|(o, l)| *o >= SECTOR && o.saturating_add(*l) <= prefix);
        let mut gd_bytes: Vec<u8> = Vec::new();
        // Sorted table offsets (bytes), once the directory has gone by.
        let mut tables: Option<Vec<u64>> = None;
        let mut max_entry: u64 = 0;
        let mut missed_table = false;
        let mut sector = [0u8; 512];
        while self.at < prefix {
            let n = fill(&mut self.input, &mut sector)?;
            if n < sector.len() {
                return Err(truncated(format!(
                    "it ends at {:#x}, before its first grain (sector {})",
                    self.at + n as u64,
                    h.overhead
                )));
            }
            let s = self.at;
            self.at += SECTOR;
            if s >= desc && s < desc + desc_len {
                text.extend_from_slice(&sector);
            }
            if let Some((o, l)) = gd
                && s >= o
                && s < o + l
            {
                let take = usize::try_from((o + l - s).min(SECTOR)).unwrap_or(0);
                gd_bytes.extend_from_slice(&sector[..take]);
                if s + SECTOR >= o + l {
                    let mut t: Vec<u64> = gd_bytes
                        .chunks_exact(4)
                        .map(|c| u64::from(le32(c, 0)) * SECTOR)
                        .filter(|t| *t != 0)
                        .collect();
                    t.sort_unstable();
                    t.dedup();
                    missed_table = t
                        .iter()
                        .any(|t| *t <= s || t.saturating_add(h.gt_bytes()) > prefix);
                    tables = Some(t);
                }
                continue;
            }
            if let Some(t) = &tables {
                let i = t.partition_point(|t| *t <= s);
                if let Some(start) = i.checked_sub(1).and_then(|i| t.get(i)) {
                    let gt = h.gt_bytes();
                    if s < start + gt {
                        let take = usize::try_from((start + gt - s).min(SECTOR)).unwrap_or(0);
                        for c in sector[..take].chunks_exact(4) {
                            let e = le32(c, 0);
                            if !(e == GTE_ZEROED && h.zeroed_grain()) {
                                max_entry = max_entry.max(u64::from(e));
                            }
                        }
                    }
                }
            }
        }
        check_embedded(&parse_descriptor(&text).map_err(invalid)?, &h).map_err(invalid)?;
        if tables.is_some() && !missed_table {
            self.last_named = Some(max_entry);
        }
        Ok(())
    }

    fn fail(&mut self, e: std::io::Error) -> std::io::Error {
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ImageError>()) {
            self.failed = Some((e.kind(), inner.clone()));
        }
        e
    }

    /// The next marker: a grain (decoded into `self.grain`), metadata (skipped), or
    /// the end.
    fn next_marker(&mut self) -> std::io::Result<()> {
        let mut m = [0u8; 512];
        let at = self.at;
        let n = fill(&mut self.input, &mut m[..16])?;
        if n == 0 {
            return self.end_of_input();
        }
        if n < 16 {
            return Err(truncated(format!("in the marker at {at:#x}")));
        }
        let (val, size, kind) = (le64(&m, 0), le32(&m, 8), le32(&m, 12));
        if size == 0 {
            let n = fill(&mut self.input, &mut m[16..])?;
            if n < 512 - 16 {
                return Err(truncated(format!("in the marker at {at:#x}")));
            }
            self.at += SECTOR;
            return match kind {
                MARKER_EOS => {
                    self.ended = true;
                    Ok(())
                }
                MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                    let bytes = val.checked_mul(SECTOR).ok_or_else(|| {
                        invalid(ImageError::corrupt(
                            FORMAT,
                            format!("the marker at {at:#x} says {val} sectors"),
                        ))
                    })?;
                    let skipped =
                        std::io::copy(&mut (&mut self.input).take(bytes), &mut std::io::sink())?;
                    if skipped < bytes {
                        return Err(truncated(format!(
                            "in the metadata after the marker at {at:#x}"
                        )));
                    }
                    self.at += bytes;
                    if kind == MARKER_FOOTER {
                        self.saw_footer = true;
                    }
                    Ok(())
                }
                k => Err(invalid(ImageError::corrupt(
                    FORMAT,
                    format!("the marker at {at:#x} has unknown type {k}"),
                ))),
            };
        }
        // A grain: lba, size, then `size` bytes of zlib data, padded to a sector.
        let grain = self.h.grain_bytes();
        if u64::from(size) > max_compressed_grain(grain) {
            return Err(invalid(ImageError::corrupt(
                FORMAT,
                format!(
                    "the grain marker at {at:#x} says {size} compressed bytes, more than a grain takes"
                ),
            )));
        }
        let total = (MARKER_BYTES + u64::from(size)).next_multiple_of(SECTOR);
        let total =
            usize::try_from(total).map_err(|_| invalid(ImageError::OpenTooLarge(FORMAT)))?;
        self.packed.clear();
        self.packed.extend_from_slice(&m[..16]);
        self.packed.resize(total, 0);
        let n = fill(&mut self.input, &mut self.packed[16..])?;
        if n < total - 16 {
            return Err(truncated(format!("in the middle of the grain at {at:#x}")));
        }
        self.at += total as u64;
        let lba = val;
        let start = lba.saturating_mul(SECTOR);
        if start < self.next_min {
            return Err(invalid(ImageError::corrupt(
                FORMAT,
                format!(
                    "the grain at {at:#x} is for sector {lba}, before the end of the grain before it: grains out of order"
                ),
            )));
        }
        let data = self.packed.get(12..12 + size as usize).unwrap_or(&[]);
        inflate_grain(&self.h, at, lba, data, &mut self.grain).map_err(invalid)?;
        self.grain_at = start;
        self.grain_len = grain.min(self.h.size() - start);
        self.next_min = start + self.grain_len;
        self.last_read = Some(at / SECTOR);
        Ok(())
    }

    /// The input ended at a marker's place: the end of the disk if the footer was read
    /// or every grain the up-front tables name was.
    fn end_of_input(&mut self) -> std::io::Result<()> {
        let named_all = match self.last_named {
            Some(0) => true,
            Some(last) => self.last_read.is_some_and(|r| r >= last),
            None => false,
        };
        if self.saw_footer || named_all {
            self.ended = true;
            return Ok(());
        }
        Err(truncated(format!(
            "it ends at {:#x} without an end-of-stream marker{}",
            self.at,
            if self.last_named.is_some() {
                " before the last grain its grain tables name"
            } else {
                ""
            }
        )))
    }
}

impl<R: Read> Read for VmdkStreamReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((kind, e)) = &self.failed {
            return Err(std::io::Error::new(*kind, e.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let size = self.h.size();
        loop {
            let grain_end = self.grain_at + self.grain_len;
            if self.out < grain_end || self.ended {
                let (limit, from_grain) = if self.out < self.grain_at || self.out >= grain_end {
                    (
                        if self.ended && self.out >= grain_end {
                            size
                        } else {
                            self.grain_at
                        },
                        false,
                    )
                } else {
                    (grain_end, true)
                };
                let n = usize::try_from((limit - self.out).min(buf.len() as u64)).unwrap_or(0);
                if n == 0 {
                    return Ok(0);
                }
                if from_grain {
                    let o = usize::try_from(self.out - self.grain_at).unwrap_or(0);
                    buf[..n].copy_from_slice(&self.grain[o..o + n]);
                } else {
                    buf[..n].fill(0);
                }
                self.out += n as u64;
                return Ok(n);
            }
            if let Err(e) = self.next_marker() {
                return Err(self.fail(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(capacity: u64, grain: u64, gd: u64, flags: u32, algorithm: u16) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(b"KDMV");
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[12..20].copy_from_slice(&capacity.to_le_bytes());
        b[20..28].copy_from_slice(&grain.to_le_bytes());
        b[28..36].copy_from_slice(&1u64.to_le_bytes());
        b[36..44].copy_from_slice(&1u64.to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[56..64].copy_from_slice(&gd.to_le_bytes());
        b[64..72].copy_from_slice(&2u64.to_le_bytes());
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&algorithm.to_le_bytes());
        b
    }

    fn descriptor(capacity: u64, kind: &str) -> Vec<u8> {
        let mut d = format!(
            "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"{kind}\"\nRW {capacity} SPARSE \"x.vmdk\"\n"
        )
        .into_bytes();
        d.resize(512, 0);
        d
    }

    fn marker(lba: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&lba.to_le_bytes());
        b.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().next_multiple_of(512), 0);
        b
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A GD_AT_END-less stream (no tables): header, descriptor, the grains, EOS.
    fn stream(capacity: u64, grains: &[(u64, Vec<u8>)], eos: bool) -> Vec<u8> {
        let mut s = header(capacity, 8, GD_AT_END, 0x30001, 1);
        s.extend(descriptor(capacity, "streamOptimized"));
        for (lba, data) in grains {
            s.extend(marker(*lba, data));
        }
        if eos {
            s.extend([0u8; 512]);
        }
        s
    }

    fn read_stream(s: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut r = VmdkStreamReader::open(s)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_stream_decodes_grains_in_place_with_zeroes_between_and_after() {
        let a = vec![0xabu8; 4096];
        let b = vec![0xcdu8; 4096];
        let s = stream(64, &[(8, zlib(&a)), (32, zlib(&b))], true);
        let out = read_stream(&s).unwrap();
        assert_eq!(out.len(), 64 * 512);
        assert!(out[..4096].iter().all(|x| *x == 0));
        assert_eq!(&out[4096..8192], &a[..]);
        assert!(out[8192..16384].iter().all(|x| *x == 0));
        assert_eq!(&out[16384..20480], &b[..]);
        assert!(out[20480..].iter().all(|x| *x == 0));
    }

    #[test]
    fn a_stream_out_of_order_is_refused() {
        let a = vec![1u8; 4096];
        let s = stream(64, &[(16, zlib(&a)), (8, zlib(&a))], true);
        let e = read_stream(&s).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }

    #[test]
    fn a_stream_without_an_end_is_truncated() {
        let a = vec![1u8; 4096];
        let s = stream(64, &[(8, zlib(&a))], false);
        let e = read_stream(&s).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        let cut = stream(64, &[(8, zlib(&a))], true);
        let e = read_stream(&cut[..1024 + 20]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("middle of the grain"), "{e}");
    }

    #[test]
    fn a_grain_that_inflates_beyond_a_grain_is_refused() {
        let bomb = zlib(&vec![0u8; 1 << 20]);
        let s = stream(64, &[(8, bomb)], true);
        let e = read_stream(&s).unwrap_err();
        assert!(e.to_string().contains("more than its 4096 bytes"), "{e}");
    }

    #[test]
    fn a_grain_for_a_sector_inside_a_grain_is_refused() {
        let s = stream(64, &[(9, zlib(&[1u8; 4096]))], true);
        let e = read_stream(&s).unwrap_err();
        assert!(e.to_string().contains("not the start of a grain"), "{e}");
    }

    #[test]
    fn capacity_zero_is_refused() {
        let h = header(0, 8, 2, 3, 0);
        let e = Header::parse(&h, 512).unwrap_err();
        assert!(e.is_refusal());
        assert!(e.to_string().contains("capacity 0"), "{e}");
    }

    #[test]
    fn descriptor_lines_parse_with_quotes_spaces_and_crlf() {
        let d = parse_descriptor(
            b"# Disk DescriptorFile\r\nversion=1\r\ncreateType=\"monolithicFlat\"\r\nRW 2048 FLAT \"my disk-flat.vmdk\" 0\r\nRDONLY 10 ZERO\r\n\0junk",
        )
        .unwrap();
        assert_eq!(d.create_type.as_deref(), Some("monolithicFlat"));
        assert_eq!(d.extents.len(), 2);
        assert_eq!(d.extents[0].file.as_deref(), Some("my disk-flat.vmdk"));
        assert_eq!(d.extents[1].kind, "ZERO");
        assert_eq!(d.extents[1].file, None);
        assert!(parse_descriptor(b"RW lots SPARSE \"x\"").is_err());
    }

    #[test]
    fn separate_files_are_named_with_why() {
        assert!(
            separate_file("/etc/hostname")
                .to_string()
                .contains("absolute")
        );
        assert!(separate_file("../x").to_string().contains("outside"));
        assert_eq!(
            separate_file("d-flat.vmdk").to_string(),
            "VMDK: extent \"d-flat.vmdk\" is a separate file; Ferry reads only what is inside the input"
        );
    }

    #[test]
    fn stream_optimized_is_told_from_its_head() {
        assert!(is_stream_optimized(&header(64, 8, GD_AT_END, 0x30001, 1)));
        assert!(!is_stream_optimized(&header(64, 8, 2, 3, 0)));
        let mut h = header(64, 8, 2, 3, 0);
        h.extend(descriptor(64, "streamOptimized"));
        assert!(is_stream_optimized(&h));
        assert!(!is_stream_optimized(b"KDMV"));
    }
}
