//! Tar archives, sans-IO: an OVA is one (the OVF descriptor, a manifest, the disks), and
//! so is a container image's layer. A [`Walker`] asks for each header block (and a pax
//! or GNU long-name extension) at the offset it names and lists the members with where
//! their data lies, so the same walk serves a random-access source (the member read in
//! place, through its own format's map) and a stream ([`MemberReader`], which passes one
//! member's bytes through and reads the rest of the archive after it).
//!
//! Only ustar headers are read (POSIX `ustar\0` and GNU `ustar  `; the OVF standard
//! requires ustar), with a checked header checksum; sizes in octal or GNU base-256;
//! names from pax `path`, GNU `L` records, or the ustar prefix and name. Every size read
//! from a header is checked against a named cap. Nothing here opens a file: a member's
//! name only selects it, and links, directories and sparse members are never a disk.

use std::io::Read;

/// Tar's block: headers and data padding are in these.
pub const BLOCK: u64 = 512;
/// The most members listed (or walked past in a stream) before the archive is refused.
pub const MAX_TAR_MEMBERS: usize = 4096;
/// The largest pax extended header or GNU long-name record read.
pub const MAX_TAR_EXTENSION_BYTES: u64 = 64 << 10;
/// The longest member name kept.
pub const MAX_MEMBER_NAME_BYTES: usize = 4096;
/// The largest OVF descriptor read in a stream to learn how many disks it names.
pub const MAX_OVF_BYTES: u64 = 4 << 20;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic or hard link (never followed).
    Link,
    /// Anything else (a device, a FIFO, a GNU sparse file), by its type flag.
    Other(u8),
}

/// One member of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name, without a leading `./`.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Where its data starts in the archive.
    pub offset: u64,
    /// Its data's length.
    pub size: u64,
    /// Its permission bits (`0o7777` of the header's mode).
    pub mode: u32,
}

impl Member {
    /// The offset of the header after this member.
    fn next(&self) -> Option<u64> {
        self.offset
            .checked_add(self.size.checked_next_multiple_of(BLOCK)?)
    }
}

/// Why an archive cannot be read or a member chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// A header is not a valid ustar header.
    #[error("tar header at {offset:#x} is corrupt: {what}")]
    Corrupt {
        /// The header's offset.
        offset: u64,
        /// What, in one line.
        what: String,
    },
    /// The archive ends inside a header or a member.
    #[error("the archive ends at {end} bytes, inside {what} at {offset:#x}: it is truncated")]
    Truncated {
        /// What was cut ("a header", "member disk1.vmdk").
        what: String,
        /// Where it starts.
        offset: u64,
        /// The archive's length.
        end: u64,
    },
    /// More members than the walk allows ([`MAX_TAR_MEMBERS`] when choosing a disk).
    #[error("the archive has more than {max} members")]
    TooManyMembers {
        /// The most allowed.
        max: usize,
    },
    /// No member looks like a disk.
    #[error("the archive holds no disk image (members: {members})")]
    NoDisk {
        /// The members, listed.
        members: String,
    },
    /// Several members look like disks and none was named.
    #[error("the archive holds {count} disks ({disks}): name the one to copy")]
    Ambiguous {
        /// How many.
        count: usize,
        /// Their names.
        disks: String,
    },
    /// The named member is not in the archive.
    #[error("the archive has no member {name:?} (members: {members})")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The members, listed.
        members: String,
    },
    /// The named member is not a regular file.
    #[error("member {name:?} is {what}, not a disk image")]
    NotAFile {
        /// Its name.
        name: String,
        /// What it is instead.
        what: String,
    },
}

impl TarError {
    /// True when the archive is valid but the member asked for (or left unnamed) cannot
    /// be chosen: a usage error.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TarError::NoDisk { .. }
                | TarError::Ambiguous { .. }
                | TarError::NotFound { .. }
                | TarError::NotAFile { .. }
                | TarError::TooManyMembers { .. }
        )
    }
}

/// What a [`Walker`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member.
    Member(Member),
    /// The end-of-archive block, or the input's end at a header boundary.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Header,
    /// The payload of a pax (`x`) or GNU long-name (`L`) record, or one skipped (`g`,
    /// `K`).
    Extension {
        flag: u8,
        len: u64,
    },
}

/// Walks an archive's headers, one [`Walker::want`] at a time.
#[derive(Debug, Clone)]
pub struct Walker {
    at: u64,
    want: Want,
    /// A name for the next member (pax `path`, GNU `L`).
    name: Option<String>,
    /// A size for the next member (pax `size`).
    size: Option<u64>,
    members: usize,
    /// The most members walked ([`MAX_TAR_MEMBERS`] unless set).
    max_members: usize,
    ended: bool,
}

impl Default for Walker {
    fn default() -> Self {
        Walker::new()
    }
}

fn corrupt(offset: u64, what: impl Into<String>) -> TarError {
    TarError::Corrupt {
        offset,
        what: what.into(),
    }
}

/// A NUL- (or space-) terminated octal field, or GNU's base-256 (high bit set).
fn number(field: &[u8], offset: u64, what: &str) -> Result<u64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] != 0x80 {
            return Err(corrupt(offset, format!("a negative or huge {what}")));
        }
        return field[1..].iter().try_fold(0u64, |n, b| {
            n.checked_mul(256)
                .map(|n| n | u64::from(*b))
                .ok_or_else(|| corrupt(offset, format!("a {what} past 64 bits")))
        });
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if digits.is_empty() {
        return Ok(0);
    }
    digits.iter().try_fold(0u64, |n, b| {
        if !(b'0'..=b'7').contains(b) {
            return Err(corrupt(offset, format!("a {what} that is not octal")));
        }
        n.checked_mul(8)
            .map(|n| n | u64::from(b - b'0'))
            .ok_or_else(|| corrupt(offset, format!("a {what} past 64 bits")))
    })
}

/// The bytes of a NUL-terminated field.
fn text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn name_of(bytes: &[u8], offset: u64) -> Result<String, TarError> {
    if bytes.len() > MAX_MEMBER_NAME_BYTES {
        return Err(corrupt(offset, "a member name longer than Ferry keeps"));
    }
    let s = String::from_utf8_lossy(bytes);
    let mut s: &str = &s;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    Ok(s.to_string())
}

/// The `path` and `size` of a pax extended header's records (`LEN key=value\n`).
fn pax(mut b: &[u8], offset: u64) -> Result<(Option<String>, Option<u64>), TarError> {
    let (mut path, mut size) = (None, None);
    while !b.is_empty() {
        let sp = b
            .iter()
            .position(|c| *c == b' ')
            .filter(|p| *p <= 20)
            .ok_or_else(|| corrupt(offset, "a pax record without a length"))?;
        let len: usize = std::str::from_utf8(&b[..sp])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > sp + 1 && *l <= b.len())
            .ok_or_else(|| corrupt(offset, "a pax record whose length is wrong"))?;
        let rec = &b[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|c| *c == b'=') {
            let (k, v) = (&rec[..eq], &rec[eq + 1..]);
            match k {
                b"path" => path = Some(name_of(v, offset)?),
                b"size" => {
                    size = Some(
                        std::str::from_utf8(v)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| corrupt(offset, "a pax size that is not a number"))?,
                    );
                }
                _ => {}
            }
        }
        b = &b[len..];
    }
    Ok((path, size))
}

impl Walker {
    /// A walk from the archive's first byte.
    pub fn new() -> Walker {
        Walker {
            at: 0,
            want: Want::Header,
            name: None,
            size: None,
            members: 0,
            max_members: MAX_TAR_MEMBERS,
            ended: false,
        }
    }

    /// A walk that allows up to `max` members (an archive of files unpacked into a
    /// volume has more than an OVA).
    pub fn with_max_members(max: usize) -> Walker {
        Walker {
            max_members: max,
            ..Walker::new()
        }
    }

    /// The bytes needed next: `(offset, len)`. Offsets only grow.
    pub fn want(&self) -> (u64, u64) {
        match self.want {
            Want::Header => (self.at, BLOCK),
            Want::Extension { len, .. } => (self.at, len),
        }
    }

    /// Feed the bytes [`Walker::want`] asked for (fewer: the input ended there). Returns
    /// a member or the end when one is known; `None` when it needs more.
    pub fn feed(&mut self, got: &[u8]) -> Result<Option<Event>, TarError> {
        if self.ended {
            return Ok(Some(Event::End));
        }
        let (at, len) = self.want();
        match self.want {
            Want::Header if got.is_empty() => {
                if self.name.is_some() || self.size.is_some() {
                    return Err(TarError::Truncated {
                        what: "an extended header's member".into(),
                        offset: at,
                        end: at,
                    });
                }
                self.ended = true;
                Ok(Some(Event::End))
            }
            _ if (got.len() as u64) < len => Err(TarError::Truncated {
                what: match self.want {
                    Want::Header => "a header".into(),
                    Want::Extension { .. } => "an extended header".into(),
                },
                offset: at,
                end: at + got.len() as u64,
            }),
            Want::Header => self.header(&got[..512]),
            Want::Extension { flag, len } => {
                let payload = &got[..usize::try_from(len).unwrap_or(got.len())];
                match flag {
                    b'x' => {
                        let (path, size) = pax(payload, at)?;
                        self.name = path.or(self.name.take());
                        self.size = size.or(self.size);
                    }
                    b'L' => self.name = Some(name_of(text(payload), at)?),
                    _ => {}
                }
                self.at = at
                    .checked_add(len.next_multiple_of(BLOCK))
                    .ok_or_else(|| corrupt(at, "an offset past 64 bits"))?;
                self.want = Want::Header;
                Ok(None)
            }
        }
    }

    fn header(&mut self, h: &[u8]) -> Result<Option<Event>, TarError> {
        let at = self.at;
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(Some(Event::End));
        }
        if &h[257..262] != b"ustar" {
            return Err(corrupt(at, "not a ustar header"));
        }
        let stored = number(&h[148..156], at, "checksum")?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        if stored != sum {
            return Err(corrupt(
                at,
                format!("checksum {stored:o} where the header sums to {sum:o}"),
            ));
        }
        let flag = h[156];
        let size = number(&h[124..136], at, "size")?;
        let data = at
            .checked_add(BLOCK)
            .ok_or_else(|| corrupt(at, "an offset past 64 bits"))?;
        if matches!(flag, b'x' | b'g' | b'L' | b'K') {
            if size > MAX_TAR_EXTENSION_BYTES {
                return Err(corrupt(
                    at,
                    format!(
                        "an extended header of {size} bytes (Ferry reads at most {MAX_TAR_EXTENSION_BYTES})"
                    ),
                ));
            }
            self.at = data;
            self.want = Want::Extension { flag, len: size };
            if size == 0 {
                self.want = Want::Header;
            }
            return Ok(None);
        }
        self.members += 1;
        if self.members > self.max_members {
            return Err(TarError::TooManyMembers {
                max: self.max_members,
            });
        }
        let name = match self.name.take() {
            Some(n) => n,
            None => {
                let posix = &h[257..263] == b"ustar\0";
                let base = text(&h[0..100]);
                let prefix = if posix { text(&h[345..500]) } else { &[][..] };
                if prefix.is_empty() {
                    name_of(base, at)?
                } else {
                    name_of(&[prefix, b"/", base].concat(), at)?
                }
            }
        };
        let size = self.size.take().unwrap_or(size);
        let kind = match flag {
            b'0' | 0 | b'7' => Kind::File,
            b'5' => Kind::Directory,
            b'1' | b'2' => Kind::Link,
            f => Kind::Other(f),
        };
        // Links and directories have no data whatever their size field says.
        let size = if matches!(kind, Kind::Link | Kind::Directory) {
            0
        } else {
            size
        };
        let mode = u32::try_from(number(&h[100..108], at, "mode")? & 0o7777).unwrap_or(0o644);
        let m = Member {
            name,
            kind,
            offset: data,
            size,
            mode,
        };
        self.at = m
            .next()
            .ok_or_else(|| corrupt(at, "a member size past 64 bits"))?;
        Ok(Some(Event::Member(m)))
    }
}

/// Whether a member's name looks like a disk image (by its extension, a compression's
/// after it allowed): what an OVA's disks and a container image's `/disk/` file are
/// called. Descriptors, manifests and certificates are not.
pub fn is_disk_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let base = ["gz", "xz", "zst"]
        .iter()
        .find_map(|c| lower.strip_suffix(&format!(".{c}")))
        .unwrap_or(&lower);
    let ext = base.rsplit_once('.').map_or("", |(_, e)| e);
    matches!(
        ext,
        "vmdk" | "qcow2" | "qcow" | "img" | "raw" | "vhd" | "vhdx" | "vdi" | "iso"
    )
}

fn what_kind(k: Kind) -> String {
    match k {
        Kind::File => "a file".into(),
        Kind::Directory => "a directory".into(),
        Kind::Link => "a link".into(),
        Kind::Other(b'S') => "a GNU sparse file".into(),
        Kind::Other(f) => format!("a member of type {:?}", char::from(f)),
    }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.take(16).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Whether member `m` is the one named `wanted` (its whole name or its last component).
pub fn names(m: &Member, wanted: &str) -> bool {
    m.name == wanted || m.name.rsplit('/').next() == Some(wanted)
}

/// The member to copy: the one named `wanted`, or, unnamed, the only one that looks like
/// a disk ([`is_disk_name`]).
pub fn pick<'a>(members: &'a [Member], wanted: Option<&str>) -> Result<&'a Member, TarError> {
    let all = || list(members.iter().map(|m| m.name.as_str()));
    let m = match wanted {
        Some(w) => members
            .iter()
            .find(|m| names(m, w))
            .ok_or_else(|| TarError::NotFound {
                name: w.to_string(),
                members: all(),
            })?,
        None => {
            let disks: Vec<&Member> = members
                .iter()
                .filter(|m| m.kind == Kind::File && is_disk_name(&m.name))
                .collect();
            match disks[..] {
                [one] => one,
                [] => return Err(TarError::NoDisk { members: all() }),
                _ => {
                    return Err(TarError::Ambiguous {
                        count: disks.len(),
                        disks: list(disks.iter().map(|m| m.name.as_str())),
                    });
                }
            }
        }
    };
    if m.kind != Kind::File {
        return Err(TarError::NotAFile {
            name: m.name.clone(),
            what: what_kind(m.kind),
        });
    }
    Ok(m)
}

/// The files an OVF descriptor names (`ovf:href="…"` of its `References`), for a stream
/// to learn up front whether an unnamed disk is ambiguous.
pub fn ovf_files(ovf: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(ovf);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        let Some(end) = rest.find('"') else { break };
        out.push(rest[..end].to_string());
        rest = &rest[end..];
        if out.len() >= MAX_TAR_MEMBERS {
            break;
        }
    }
    out
}

fn io(e: TarError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Read exactly `len` bytes at the reader's position, or fewer at its end.
fn read_up_to(r: &mut impl Read, len: u64) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(len).read_to_end(&mut v)?;
    Ok(v)
}

/// One member of an archive arriving as a stream: [`MemberReader::open`] walks to it
/// (reading what lies before), then reads give its bytes; at its end the rest of the
/// archive is read (so whoever hashes the download sees every byte) and walked, and a
/// second disk after an unnamed one, or a truncated archive, is an error.
pub struct MemberReader<R: Read> {
    input: R,
    walker: Walker,
    /// Bytes of the archive consumed.
    at: u64,
    member: Member,
    /// Bytes of the member still to give.
    left: u64,
    /// The member was chosen unnamed: no other disk may follow.
    unnamed: bool,
    done: bool,
}

impl<R: Read> std::fmt::Debug for MemberReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberReader")
            .field("member", &self.member)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// Why [`MemberReader::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The archive, or the choice of member.
    #[error(transparent)]
    Tar(#[from] TarError),
    /// Reading the input.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<OpenError> for std::io::Error {
    fn from(e: OpenError) -> std::io::Error {
        match e {
            OpenError::Tar(t) => io(t),
            OpenError::Io(e) => e,
        }
    }
}

impl<R: Read> MemberReader<R> {
    /// Walk `input` to the member named `wanted` (or, unnamed, the first that looks like
    /// a disk when the archive's OVF descriptor, if it comes first, names at most one).
    pub fn open(mut input: R, wanted: Option<&str>) -> Result<MemberReader<R>, OpenError> {
        let mut walker = Walker::new();
        let mut at = 0u64;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let ev = step(&mut input, &mut walker, &mut at)?;
            let m = match ev {
                Event::End => {
                    let members = list(seen.iter().map(String::as_str));
                    return Err(match wanted {
                        Some(w) => TarError::NotFound {
                            name: w.into(),
                            members,
                        },
                        None => TarError::NoDisk { members },
                    }
                    .into());
                }
                Event::Member(m) => m,
            };
            let chosen = match wanted {
                Some(w) => names(&m, w),
                None => m.kind == Kind::File && is_disk_name(&m.name),
            };
            if chosen {
                if m.kind != Kind::File {
                    return Err(TarError::NotAFile {
                        name: m.name.clone(),
                        what: what_kind(m.kind),
                    }
                    .into());
                }
                return Ok(MemberReader {
                    input,
                    left: m.size,
                    member: m,
                    walker,
                    at,
                    unnamed: wanted.is_none(),
                    done: false,
                });
            }
            seen.push(m.name.clone());
            if wanted.is_none() && m.name.to_ascii_lowercase().ends_with(".ovf") {
                let ovf = read_member(&mut input, &mut at, &m, MAX_OVF_BYTES)?;
                let disks: Vec<String> = ovf_files(&ovf)
                    .into_iter()
                    .filter(|f| is_disk_name(f))
                    .collect();
                if disks.len() > 1 {
                    return Err(TarError::Ambiguous {
                        count: disks.len(),
                        disks: list(disks.iter().map(String::as_str)),
                    }
                    .into());
                }
            }
            skip_to(&mut input, &mut at, walker.want().0, &m)?;
        }
    }

    /// The member being read.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Read the rest of the archive after the member: walk it to its end.
    fn finish(&mut self) -> std::io::Result<()> {
        loop {
            match step(&mut self.input, &mut self.walker, &mut self.at)? {
                Event::End => break,
                Event::Member(m) => {
                    if self.unnamed && m.kind == Kind::File && is_disk_name(&m.name) {
                        return Err(io(TarError::Ambiguous {
                            count: 2,
                            disks: format!("{}, {}", self.member.name, m.name),
                        }));
                    }
                    skip_to(&mut self.input, &mut self.at, self.walker.want().0, &m)?;
                }
            }
        }
        // What follows the end-of-archive blocks (more zero blocks) is read, not walked.
        std::io::copy(&mut self.input, &mut std::io::sink())?;
        Ok(())
    }
}

/// The next event of `walker`, reading what it wants from `input` (at `at`).
fn step(input: &mut impl Read, walker: &mut Walker, at: &mut u64) -> Result<Event, OpenError> {
    loop {
        let (off, len) = walker.want();
        // An extended header's payload is padded to a block.
        let pad = off.saturating_sub(*at);
        let skipped = std::io::copy(&mut input.take(pad), &mut std::io::sink())?;
        *at += skipped;
        if skipped < pad {
            return Err(TarError::Truncated {
                what: "an extended header".into(),
                offset: off,
                end: *at,
            }
            .into());
        }
        let got = read_up_to(input, len)?;
        *at += got.len() as u64;
        if let Some(ev) = walker.feed(&got)? {
            return Ok(ev);
        }
    }
}

/// Walk the archive arriving on `input` to its end with `walker`, handing each member
/// and a reader of exactly its data to `each` (what it leaves unread is read past);
/// the input after the end-of-archive blocks is read too. A member cut short, or an
/// archive that ends inside a header, is an error.
pub fn for_each_member<R: Read>(
    mut input: R,
    mut walker: Walker,
    mut each: impl FnMut(&Member, &mut dyn Read) -> std::io::Result<()>,
) -> Result<(), OpenError> {
    let mut at = 0u64;
    loop {
        match step(&mut input, &mut walker, &mut at)? {
            Event::End => break,
            Event::Member(m) => {
                let mut data = (&mut input).take(m.size);
                each(&m, &mut data)?;
                let read = m.size - data.limit();
                at += read;
                skip_to(&mut input, &mut at, walker.want().0, &m)?;
            }
        }
    }
    std::io::copy(&mut input, &mut std::io::sink())?;
    Ok(())
}

/// Read up to `cap` bytes of member `m`'s data (at the input's position, its start).
fn read_member(
    input: &mut impl Read,
    at: &mut u64,
    m: &Member,
    cap: u64,
) -> Result<Vec<u8>, OpenError> {
    let n = m.size.min(cap);
    let got = read_up_to(input, n)?;
    *at += got.len() as u64;
    if (got.len() as u64) < n {
        return Err(TarError::Truncated {
            what: format!("member {}", m.name),
            offset: m.offset,
            end: *at,
        }
        .into());
    }
    Ok(got)
}

/// Read and drop the input up to `to` (the next header), which member `m` ends before.
fn skip_to(input: &mut impl Read, at: &mut u64, to: u64, m: &Member) -> Result<(), OpenError> {
    let n = to.saturating_sub(*at);
    let skipped = std::io::copy(&mut input.take(n), &mut std::io::sink())?;
    *at += skipped;
    if skipped < n {
        return Err(TarError::Truncated {
            what: format!("member {}", m.name),
            offset: m.offset,
            end: *at,
        }
        .into());
    }
    Ok(())
}

impl<R: Read> Read for MemberReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let m = self.member.clone();
            skip_to(&mut self.input, &mut self.at, self.walker.want().0, &m)?;
            self.finish()?;
            self.done = true;
            return Ok(0);
        }
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = self.input.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io(TarError::Truncated {
                what: format!("member {}", self.member.name),
                offset: self.member.offset,
                end: self.at,
            }));
        }
        self.left -= got as u64;
        self.at += got as u64;
        Ok(got)
    }
}

/// An archive arriving as a stream, walked member by member: [`Entries::next`] gives the
/// next member (reading past what was left of the one before), reads give the current
/// member's data, and at the end-of-archive the rest of the input is read too (so
/// whoever hashes it sees every byte). A member cut short is an error.
pub struct Entries<R: Read> {
    input: R,
    walker: Walker,
    at: u64,
    /// The current member and how much of its data is left.
    cur: Option<(Member, u64)>,
    ended: bool,
}

impl<R: Read> std::fmt::Debug for Entries<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("at", &self.at)
            .field("cur", &self.cur)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Entries<R> {
    /// Walk `input` from its first byte with `walker`.
    pub fn new(input: R, walker: Walker) -> Entries<R> {
        Entries {
            input,
            walker,
            at: 0,
            cur: None,
            ended: false,
        }
    }

    /// The next member, or None at the end of the archive (the input then read to its
    /// end).
    pub fn next_member(&mut self) -> Result<Option<Member>, OpenError> {
        if self.ended {
            return Ok(None);
        }
        if let Some((m, _)) = self.cur.take() {
            skip_to(&mut self.input, &mut self.at, self.walker.want().0, &m)?;
        }
        match step(&mut self.input, &mut self.walker, &mut self.at)? {
            Event::End => {
                self.at += std::io::copy(&mut self.input, &mut std::io::sink())?;
                self.ended = true;
                Ok(None)
            }
            Event::Member(m) => {
                self.cur = Some((m.clone(), m.size));
                Ok(Some(m))
            }
        }
    }

    /// Bytes of the archive read so far.
    pub fn position(&self) -> u64 {
        self.at
    }
}

impl<R: Read> Read for Entries<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some((m, left)) = self.cur.as_mut() else {
            return Ok(0);
        };
        if *left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
        let got = self.input.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io(TarError::Truncated {
                what: format!("member {}", m.name),
                offset: m.offset,
                end: self.at,
            }));
        }
        *left -= got as u64;
        self.at += got as u64;
        Ok(got)
    }
}

/// The directory a container disk image keeps its disk in (KubeVirt's containerDisk:
/// `COPY disk.img /disk/`).
pub const CONTAINER_DISK_DIR: &str = "disk/";
/// The prefix of an OCI whiteout file's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// What a container image layer's member is to the search for its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEntry {
    /// A regular file under `/disk/`: the disk.
    Disk,
    /// Anything outside `/disk/`, and the directory itself: passed over.
    Other,
    /// Something under `/disk/` that cannot be read as the disk or hides it (a
    /// whiteout, a link, a directory, a device): refused, with what it is.
    Refused(String),
}

/// Classify `m` of a container image layer ([`ContainerEntry`]).
pub fn container_entry(m: &Member) -> ContainerEntry {
    let name = m.name.trim_start_matches('/');
    let dir = CONTAINER_DISK_DIR.trim_end_matches('/');
    if name == dir || name == CONTAINER_DISK_DIR {
        return match m.kind {
            Kind::Directory => ContainerEntry::Other,
            Kind::Link => ContainerEntry::Refused(format!("/{dir} is a link")),
            _ => ContainerEntry::Other,
        };
    }
    if name == format!("{WHITEOUT_PREFIX}{dir}") {
        return ContainerEntry::Refused(format!("a whiteout ({name}) deletes /{dir}"));
    }
    let Some(inner) = name.strip_prefix(CONTAINER_DISK_DIR) else {
        return ContainerEntry::Other;
    };
    let base = inner
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(inner);
    if base.starts_with(WHITEOUT_PREFIX) {
        return ContainerEntry::Refused(format!("{name} is a whiteout"));
    }
    match m.kind {
        Kind::File => ContainerEntry::Disk,
        k => ContainerEntry::Refused(format!("{name} is {}", what_kind(k))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for `name` of `size` bytes and type `flag`.
    fn header(name: &str, size: u64, flag: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive(members: &[(&str, &[u8], u8)]) -> Vec<u8> {
        let mut a = Vec::new();
        for (name, data, flag) in members {
            a.extend(header(name, data.len() as u64, *flag));
            a.extend_from_slice(data);
            a.resize(a.len().next_multiple_of(512), 0);
        }
        a.extend([0u8; 1024]);
        a
    }

    fn walk(a: &[u8]) -> Result<Vec<Member>, TarError> {
        let mut w = Walker::new();
        let mut out = Vec::new();
        loop {
            let (off, len) = w.want();
            let from = usize::try_from(off).unwrap().min(a.len());
            let to = (from + usize::try_from(len).unwrap()).min(a.len());
            match w.feed(&a[from..to])? {
                Some(Event::Member(m)) => out.push(m),
                Some(Event::End) => return Ok(out),
                None => {}
            }
        }
    }

    #[test]
    fn members_are_listed_with_where_their_data_lies() {
        let a = archive(&[
            ("vm.ovf", b"<Envelope/>", b'0'),
            ("./disk1.vmdk", &[7u8; 1000], b'0'),
            ("dir/", b"", b'5'),
        ]);
        let m = walk(&a).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].name, "disk1.vmdk");
        assert_eq!((m[1].offset, m[1].size), (1536, 1000));
        assert_eq!(&a[1536..2536], &[7u8; 1000][..]);
        assert_eq!(m[2].kind, Kind::Directory);
        assert_eq!(pick(&m, None).unwrap().name, "disk1.vmdk");
    }

    #[test]
    fn a_pax_path_and_size_override_the_header() {
        let long = format!("{}/disk.qcow2", "d".repeat(200));
        // A record's length counts its own digits.
        let record = |kv: &str| {
            let mut n = kv.len() + 3;
            while format!("{n} {kv}\n").len() != n {
                n += 1;
            }
            format!("{n} {kv}\n")
        };
        let body = record(&format!("path={long}")) + &record("mtime=1.5") + &record("size=5");
        let a = archive(&[
            ("PaxHeader", body.as_bytes(), b'x'),
            ("short", b"hello", b'0'),
        ]);
        let m = walk(&a).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, long);
        assert_eq!(m[0].size, 5);
    }

    #[test]
    fn a_gnu_long_name_names_the_next_member() {
        let long = "x".repeat(300) + ".img";
        let a = archive(&[
            ("././@LongLink", format!("{long}\0").as_bytes(), b'L'),
            ("trunc", b"abc", b'0'),
        ]);
        assert_eq!(walk(&a).unwrap()[0].name, long);
    }

    #[test]
    fn a_bad_checksum_is_corrupt() {
        let mut a = archive(&[("disk.img", b"abc", b'0')]);
        a[0] ^= 1;
        let e = walk(&a).unwrap_err();
        assert!(matches!(e, TarError::Corrupt { offset: 0, .. }), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn a_non_ustar_header_is_corrupt() {
        let mut a = archive(&[("disk.img", b"abc", b'0')]);
        a[257..263].copy_from_slice(b"nosuch");
        assert!(
            walk(&a)
                .unwrap_err()
                .to_string()
                .contains("not a ustar header")
        );
    }

    #[test]
    fn an_archive_cut_inside_a_header_is_truncated() {
        let a = archive(&[("a.img", b"abc", b'0'), ("b.txt", b"abc", b'0')]);
        let e = walk(&a[..1024 + 100]).unwrap_err();
        assert!(matches!(e, TarError::Truncated { offset: 1024, .. }), "{e}");
    }

    #[test]
    fn an_oversized_extension_is_refused_before_it_is_read() {
        let mut h = header("PaxHeader", MAX_TAR_EXTENSION_BYTES + 1, b'x');
        h.extend([0u8; 1024]);
        let e = walk(&h).unwrap_err();
        assert!(e.to_string().contains("extended header of"), "{e}");
    }

    #[test]
    fn a_size_in_base_256_is_read() {
        let mut h = header("big.img", 0, b'0');
        h[124..136].fill(0);
        h[124] = 0x80;
        h[135] = 0x10; // 16 bytes... in the last byte
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h.extend([1u8; 16]);
        h.resize(1024, 0);
        h.extend([0u8; 1024]);
        assert_eq!(walk(&h).unwrap()[0].size, 16);
    }

    #[test]
    fn a_member_is_chosen_by_name_and_links_are_never_disks() {
        let a = archive(&[
            ("a.vmdk", b"1", b'0'),
            ("b.vmdk", b"2", b'0'),
            ("c.vmdk", b"", b'2'),
            ("vm.mf", b"x", b'0'),
        ]);
        let m = walk(&a).unwrap();
        let e = pick(&m, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the archive holds 2 disks (a.vmdk, b.vmdk): name the one to copy"
        );
        assert!(e.is_refusal());
        assert_eq!(pick(&m, Some("b.vmdk")).unwrap().offset, 1536);
        let e = pick(&m, Some("c.vmdk")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "member \"c.vmdk\" is a link, not a disk image"
        );
        let e = pick(&m, Some("d.vmdk")).unwrap_err();
        assert!(e.to_string().contains("no member \"d.vmdk\""), "{e}");
        assert!(matches!(pick(&m[3..], None), Err(TarError::NoDisk { .. })));
    }

    #[test]
    fn a_stream_gives_the_member_and_reads_the_rest() {
        let disk = vec![9u8; 3000];
        let a = archive(&[
            ("vm.ovf", b"<File ovf:href=\"disk.vmdk\"/>", b'0'),
            ("disk.vmdk", &disk, b'0'),
            ("vm.mf", b"SHA256(disk.vmdk)= 00", b'0'),
        ]);
        let mut counted = Counting(std::io::Cursor::new(a.clone()), 0);
        let mut r = MemberReader::open(&mut counted, None).unwrap();
        assert_eq!(r.member().name, "disk.vmdk");
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, disk);
        assert_eq!(counted.1, a.len(), "every byte of the archive was read");
    }

    struct Counting<R>(R, usize);
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(b)?;
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn a_stream_with_two_disks_and_none_named_fails() {
        // Named by the OVF: refused before a byte of a disk is given.
        let a = archive(&[
            (
                "vm.ovf",
                b"<File ovf:href=\"a.vmdk\"/><File ovf:href=\"b.vmdk\"/>",
                b'0',
            ),
            ("a.vmdk", b"1", b'0'),
            ("b.vmdk", b"2", b'0'),
        ]);
        let e = MemberReader::open(std::io::Cursor::new(a.clone()), None).unwrap_err();
        assert!(
            e.to_string().contains("holds 2 disks (a.vmdk, b.vmdk)"),
            "{e}"
        );
        // Named: the second one.
        let mut r = MemberReader::open(std::io::Cursor::new(a), Some("b.vmdk")).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"2");
        // No OVF: the second disk is found after the first; the read fails.
        let a = archive(&[("a.vmdk", b"1", b'0'), ("b.vmdk", b"2", b'0')]);
        let mut r = MemberReader::open(std::io::Cursor::new(a), None).unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("holds 2 disks"), "{e}");
    }

    #[test]
    fn a_stream_reads_past_a_pax_header_to_its_member() {
        let a = archive(&[
            ("PaxHeader", b"15 path=d.vmdk\n", b'x'),
            ("x", b"data", b'0'),
        ]);
        let mut r = MemberReader::open(std::io::Cursor::new(a), None).unwrap();
        assert_eq!(r.member().name, "d.vmdk");
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"data");
    }

    #[test]
    fn a_stream_cut_inside_its_member_fails() {
        let a = archive(&[("disk.img", &[1u8; 5000], b'0')]);
        let mut r = MemberReader::open(std::io::Cursor::new(a[..3000].to_vec()), None).unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn disk_names() {
        for n in [
            "a.vmdk",
            "A.VMDK",
            "x/disk.img",
            "d.qcow2.gz",
            "c.iso",
            "e.raw.zst",
        ] {
            assert!(is_disk_name(n), "{n}");
        }
        for n in ["vm.ovf", "vm.mf", "vm.cert", "disk", "x.nvram", "a.tar"] {
            assert!(!is_disk_name(n), "{n}");
        }
    }

    #[test]
    fn entries_walk_a_stream_and_read_each_member() {
        let a = archive(&[
            ("a.txt", b"hello", b'0'),
            ("disk/", b"", b'5'),
            ("disk/disk.img", &[9u8; 700], b'0'),
        ]);
        let mut tail = a.clone();
        tail.extend([0u8; 4096]);
        let mut e = Entries::new(&tail[..], Walker::new());
        let m = e.next_member().unwrap().unwrap();
        assert_eq!(m.name, "a.txt");
        // Not read: passed over by the next call.
        let d = e.next_member().unwrap().unwrap();
        assert_eq!(container_entry(&d), ContainerEntry::Other);
        let f = e.next_member().unwrap().unwrap();
        assert_eq!(container_entry(&f), ContainerEntry::Disk);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(data, vec![9u8; 700]);
        assert!(e.next_member().unwrap().is_none());
        assert_eq!(e.position(), tail.len() as u64);

        // Cut inside the member's data.
        let cut = &a[..1536 + 100 + 512];
        let mut e = Entries::new(cut, Walker::new());
        e.next_member().unwrap();
        e.next_member().unwrap();
        e.next_member().unwrap();
        let err = std::io::copy(&mut e, &mut std::io::sink()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn container_entries_under_disk_are_the_disk_or_refused() {
        let m = |name: &str, kind: Kind| Member {
            name: name.into(),
            kind,
            offset: 0,
            size: 0,
            mode: 0o644,
        };
        assert_eq!(
            container_entry(&m("disk/x.qcow2", Kind::File)),
            ContainerEntry::Disk
        );
        assert_eq!(
            container_entry(&m("/disk/x", Kind::File)),
            ContainerEntry::Disk
        );
        assert_eq!(
            container_entry(&m("disk", Kind::Directory)),
            ContainerEntry::Other
        );
        assert_eq!(
            container_entry(&m("etc/.wh.x", Kind::File)),
            ContainerEntry::Other
        );
        assert_eq!(
            container_entry(&m("diskette/x", Kind::File)),
            ContainerEntry::Other
        );
        for (name, kind, why) in [
            ("disk/.wh.x.img", Kind::File, "whiteout"),
            ("disk/.wh..wh..opq", Kind::File, "whiteout"),
            (".wh.disk", Kind::File, "deletes /disk"),
            ("disk/x.img", Kind::Link, "a link"),
            ("disk", Kind::Link, "is a link"),
            ("disk/sub/", Kind::Directory, "a directory"),
            ("disk/fifo", Kind::Other(b'6'), "type"),
        ] {
            match container_entry(&m(name, kind)) {
                ContainerEntry::Refused(r) => assert!(r.contains(why), "{name}: {r}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
