//! What the bytes of a source are, from its head (and, for a fixed VHD, its last
//! sector), sans-IO: the importer's format layer decodes what it can (a raw disk, a
//! compressed raw disk) and refuses the rest with a clear message instead of copying
//! container bytes as if they were the disk. Magic numbers as in reference/formats.md §3.

use std::fmt;

/// Bytes of the head [`detect`] looks at (VDI's signature is at 0x40, tar's at 0x101).
pub const HEAD_BYTES: usize = 4096;
/// Bytes of the tail it looks at (a VHD footer).
pub const TAIL_BYTES: usize = 512;

/// What a source holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// A disk, byte for byte (ISO images are raw too).
    Raw,
    /// qcow2 (`QFI\xfb`, version 2 or 3).
    Qcow2,
    /// qcow version 1.
    Qcow1,
    /// QED (`QED\0`).
    Qed,
    /// VMDK: a hosted sparse extent (`KDMV`), an ESX sparse one (`COWD`) or a
    /// descriptor file.
    Vmdk,
    /// VHD (`conectix` at 0 for a dynamic one, or in the last sector for a fixed one).
    Vhd,
    /// VHDX (`vhdxfile`).
    Vhdx,
    /// VirtualBox VDI (`0xBEDA107F` at 0x40).
    Vdi,
    /// gzip-compressed.
    Gzip,
    /// xz-compressed.
    Xz,
    /// zstd-compressed.
    Zstd,
    /// bzip2-compressed.
    Bzip2,
    /// A tar archive.
    Tar,
}

impl Format {
    /// The name `qemu-img -f` / `qemu-nbd -f` knows it by, when it has one.
    pub fn qemu_name(self) -> Option<&'static str> {
        Some(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qcow1 => "qcow",
            Format::Qed => "qed",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            _ => return None,
        })
    }
}

impl Format {
    /// How to get a raw disk out of it, for messages.
    pub fn how_to_read(self) -> String {
        match self.qemu_name() {
            Some(f) => format!(
                "serve it decoded (qemu-nbd -f {f}) or convert it (qemu-img convert -O raw)"
            ),
            None => "decompress or unpack it first".to_string(),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw disk",
            Format::Qcow2 => "qcow2 image",
            Format::Qcow1 => "qcow (version 1) image",
            Format::Qed => "QED image",
            Format::Vmdk => "VMDK image",
            Format::Vhd => "VHD image",
            Format::Vhdx => "VHDX image",
            Format::Vdi => "VDI image",
            Format::Gzip => "gzip-compressed file",
            Format::Xz => "xz-compressed file",
            Format::Zstd => "zstd-compressed file",
            Format::Bzip2 => "bzip2-compressed file",
            Format::Tar => "tar archive",
        })
    }
}

/// What `head` (the first bytes, up to [`HEAD_BYTES`]) and `tail` (the last sector, if
/// the source is larger than the head) say the source is. Anything not recognised is
/// [`Format::Raw`].
pub fn detect(head: &[u8], tail: Option<&[u8]>) -> Format {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        let version = head
            .get(4..8)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        return match version {
            Some(1) => Format::Qcow1,
            _ => Format::Qcow2,
        };
    }
    if at(0, b"QED\0") {
        return Format::Qed;
    }
    // A descriptor as VMware writes it, and as VMDKstream does ("Descriptor File").
    if at(0, b"KDMV")
        || at(0, b"COWD")
        || at(0, b"# Disk DescriptorFile")
        || at(0, b"# Disk Descriptor File")
    {
        return Format::Vmdk;
    }
    if at(0, b"vhdxfile") {
        return Format::Vhdx;
    }
    if at(0, b"conectix") {
        return Format::Vhd;
    }
    if at(0x40, &0xBEDA_107Fu32.to_le_bytes()) {
        return Format::Vdi;
    }
    // gzip: the magic, CM 8 (deflate), and no reserved FLG bits (RFC 1952), so that a
    // raw disk starting with 1F 8B by chance is not taken for one.
    if at(0, &[0x1f, 0x8b, 0x08]) && head.get(3).is_some_and(|f| f & 0xe0 == 0) {
        return Format::Gzip;
    }
    if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Format::Xz;
    }
    if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        return Format::Zstd;
    }
    if at(0, b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        return Format::Bzip2;
    }
    if at(0x101, b"ustar") {
        return Format::Tar;
    }
    // A fixed VHD is raw data followed by a 512-byte footer.
    if tail.is_some_and(|t| {
        t.len() >= TAIL_BYTES && t[t.len() - TAIL_BYTES..].starts_with(b"conectix")
    }) {
        return Format::Vhd;
    }
    Format::Raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_recognised_and_anything_else_is_raw() {
        let mut h = vec![0u8; HEAD_BYTES];
        assert_eq!(detect(&h, None), Format::Raw);
        h[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        assert_eq!(detect(&h, None), Format::Qcow2);
        h[..8].copy_from_slice(b"QFI\xfb\0\0\0\x01");
        assert_eq!(detect(&h, None), Format::Qcow1);
        let mut h = vec![0u8; HEAD_BYTES];
        h[0x40..0x44].copy_from_slice(&0xBEDA_107Fu32.to_le_bytes());
        assert_eq!(detect(&h, None), Format::Vdi);
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        assert_eq!(detect(&[0u8; 16], Some(&tail)), Format::Vhd);
        assert_eq!(detect(b"BZh9", None), Format::Bzip2);
        // Descriptor files as VMware and VMDKstream write them.
        assert_eq!(detect(b"# Disk DescriptorFile\n", None), Format::Vmdk);
        assert_eq!(detect(b"# Disk Descriptor File\n", None), Format::Vmdk);
        assert_eq!(detect(&[0x1f, 0x8b, 0x08, 0x00], None), Format::Gzip);
        assert_eq!(detect(&[0x1f, 0x8b, 0x07, 0x00], None), Format::Raw);
        assert_eq!(detect(&[0x1f, 0x8b, 0x08, 0xff], None), Format::Raw);
        assert_eq!(detect(b"BZhx", None), Format::Raw);
        // Short heads never panic.
        for n in 0..16 {
            let _ = detect(&b"QFI\xfb\0\0\0\x03vhdxfile"[..n], Some(&[]));
        }
        // An MBR is raw.
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[0] = 0xeb;
        assert_eq!(detect(&mbr, None), Format::Raw);
    }
}
