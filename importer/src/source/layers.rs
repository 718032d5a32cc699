//! The format layer: what a transport's bytes hold, chosen from its first bytes
//! ([`format::detect`]) through one table, [`LAYERS`]. A raw disk is copied as it is; a
//! compressed one is decompressed as it streams (each compression peeled at most once,
//! as CDI does, so a `.gz.gz` is refused rather than unwrapped twice) and its inside
//! looked at again; anything else is refused with a message saying how to read it.
//! A new format is one row here and its reader's file.

use std::io::Read;
use std::sync::Arc;

use super::format::{self, Format};
use super::stream::{ReadStream, SourceReader, StreamSource};
use super::{Input, Source};
use crate::error::{Error, Retry};

use ferry_convert::image::ImageError;
use ferry_convert::wrappers::{self, Bytes};
use ferry_convert::{tar, vmdk};

/// What a recognised format becomes.
enum Layer {
    /// The bytes are the disk.
    Disk,
    /// The bytes are a compressed stream of what lies inside
    /// ([`ferry_convert::wrappers::decoder`]).
    Decompress,
    /// An image read through its own map ([`super::image::ImageSource`]); it needs
    /// random access (from a stream it is refused).
    Map,
    /// A tar archive (an OVA): one member chosen ([`super::archive`]) and looked at
    /// again; read in place from a random-access source, passed through from a stream.
    /// An archive inside an archive is refused.
    Archive,
}

/// How each format the copy can read is read. Formats not listed are refused
/// ([`Error::NotRaw`]).
const LAYERS: &[(Format, Layer)] = &[
    (Format::Raw, Layer::Disk),
    (Format::Gzip, Layer::Decompress),
    (Format::Xz, Layer::Decompress),
    (Format::Zstd, Layer::Decompress),
    (Format::Qcow2, Layer::Map),
    // A streamOptimized VMDK also reads in order, from a stream ([`peel_blocking`]).
    (Format::Vmdk, Layer::Map),
    (Format::Vhd, Layer::Map),
    (Format::Vhdx, Layer::Map),
    (Format::Vdi, Layer::Map),
    (Format::Tar, Layer::Archive),
];

/// What the user said about the layers: which member of an archive is the disk, and
/// where an image that needs random access but arrives as a stream may be staged.
#[derive(Debug, Clone, Default)]
pub struct Layering<'a> {
    /// The disk of an archive (None: its only disk).
    pub member: Option<&'a str>,
    /// A scratch directory (None: such an image is refused).
    pub scratch: Option<super::scratch::Scratch<'a>>,
    /// What the source's bytes are, as the user says (`--format`), instead of what
    /// their first bytes look like.
    pub forced: Option<Format>,
}

fn layer_of(f: Format) -> Option<&'static Layer> {
    LAYERS.iter().find(|(g, _)| *g == f).map(|(_, l)| l)
}

/// Look at what `input` holds and put the layers on it that turn it into a disk, as
/// `how` says (an archive's member, a scratch directory).
pub async fn layer(input: Input, how: &Layering<'_>) -> Result<Input, Error> {
    layer_within(input, how, false).await
}

async fn layer_within(input: Input, how: &Layering<'_>, in_archive: bool) -> Result<Input, Error> {
    let member = how.member;
    // Only the outermost bytes are what --format says; what lies inside is looked at.
    let inner = Layering {
        forced: None,
        ..how.clone()
    };
    match input {
        Input::Disk(src) => {
            let found = match how.forced {
                Some(f) => f,
                None => match super::sniff_disk(src.as_ref()).await {
                    Ok(f) => f,
                    Err(e) => {
                        src.close().await;
                        return Err(e);
                    }
                },
            };
            match layer_of(found) {
                Some(Layer::Disk) => Ok(Input::Disk(src)),
                Some(Layer::Map) => match super::image::ImageSource::open(src.clone(), found).await
                {
                    Ok(q) => Ok(Input::Disk(Arc::new(q))),
                    Err(e) => {
                        src.close().await;
                        Err(e)
                    }
                },
                Some(Layer::Decompress) => {
                    let what = src.describe();
                    let reader: Bytes = Box::new(SourceReader::new(src.clone()));
                    // Detected, never forced: peel looks at the same first bytes.
                    peel(what, reader, Some(src), &inner, None, in_archive).await
                }
                Some(Layer::Archive) if !in_archive => {
                    match super::archive::MemberSource::open(src.clone(), member).await {
                        Ok(m) => {
                            Box::pin(layer_within(Input::Disk(Arc::new(m)), &inner, true)).await
                        }
                        Err(e) => {
                            src.close().await;
                            Err(e)
                        }
                    }
                }
                _ => {
                    let what = src.describe();
                    src.close().await;
                    Err(Error::NotRaw {
                        what,
                        format: found,
                    })
                }
            }
        }
        Input::Stream(s) => match s.into_bytes() {
            Ok((what, reader, under, check)) => {
                peel(what, reader, under, how, check, in_archive).await
            }
            Err(s) => Ok(Input::Stream(s)),
        },
    }
}

/// A byte stream (`what`, read by `reader`) made a disk: its head looked at, decoded
/// while it is compressed with a compression not yet peeled, until it is raw. `under`
/// is what the reader reads from, closed with the stream (or now, on a refusal);
/// `check` the checksum the reader's bytes feed, checked at the stream's end. An image
/// that needs random access is staged to `how.scratch` when there is one, else refused.
pub async fn peel(
    what: String,
    reader: Bytes,
    under: Option<Arc<dyn Source>>,
    how: &Layering<'_>,
    check: Option<Arc<crate::checksum::ChecksumState>>,
    in_archive: bool,
) -> Result<Input, Error> {
    let w = what.clone();
    let m = how.member.map(str::to_string);
    let forced = how.forced;
    let peeled =
        tokio::task::spawn_blocking(move || peel_blocking(w, reader, m.as_deref(), forced))
            .await
            .map_err(|e| Error::Read {
                offset: 0,
                message: format!("{what}: the reading thread failed: {e}"),
                retry: Retry::Never,
            })
            .and_then(|r| r);
    let staged = match peeled {
        Ok(Peeled::Disk(described, reader, size)) => {
            let s = ReadStream::new(described, size, reader, under);
            return Ok(Input::Stream(Box::new(match check {
                Some(c) => s.checked(c),
                None => s,
            }) as Box<dyn StreamSource>));
        }
        Ok(Peeled::NeedsMap {
            what,
            format,
            reader,
            archive,
        }) => match &how.scratch {
            None => Err(Error::NeedsRandomAccess { what, format }),
            Some(scratch) => stage_and_check(&what, reader, scratch, under.as_deref(), check)
                .await
                .map(|src| (src, archive, format)),
        },
        Err(e) => Err(e),
    };
    if let Some(s) = &under {
        s.close().await;
    }
    let (src, archive, format) = staged?;
    // The staged file is read like a local image (its member already chosen).
    let how = Layering {
        member: None,
        scratch: None,
        forced: Some(format),
    };
    Box::pin(layer_within(Input::Disk(src), &how, in_archive || archive)).await
}

/// Stage the stream to scratch; the bytes under it (now all read) are checked before
/// the staged copy is read.
async fn stage_and_check(
    what: &str,
    reader: Bytes,
    scratch: &super::scratch::Scratch<'_>,
    under: Option<&dyn Source>,
    check: Option<Arc<crate::checksum::ChecksumState>>,
) -> Result<Arc<dyn Source>, Error> {
    let (src, _) = super::scratch::stage(what, reader, scratch).await?;
    if let Some(u) = under {
        u.finish().await?;
    }
    if let Some(c) = check {
        c.check()?;
    }
    Ok(src)
}

impl std::fmt::Debug for Peeled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peeled::Disk(what, _, size) => f.debug_tuple("Disk").field(what).field(size).finish(),
            Peeled::NeedsMap { what, format, .. } => f
                .debug_struct("NeedsMap")
                .field("what", what)
                .field("format", format)
                .finish_non_exhaustive(),
        }
    }
}

/// What [`peel_blocking`] made of a stream.
pub enum Peeled {
    /// A disk: its description, bytes, and size when known before they are read (a
    /// VMDK stream's capacity).
    Disk(String, Bytes, Option<u64>),
    /// An image that needs random access.
    NeedsMap {
        /// The stream, described.
        what: String,
        /// Its format.
        format: Format,
        /// Its bytes, from the first.
        reader: Bytes,
        /// Whether it was a member of an archive.
        archive: bool,
    },
}

/// The first [`format::HEAD_BYTES`] of a stream (fewer when it is shorter), and the
/// stream again from its first byte.
pub(crate) fn head_of(what: &str, mut reader: Bytes) -> Result<(Vec<u8>, Bytes), Error> {
    let mut head = Vec::with_capacity(format::HEAD_BYTES);
    (&mut reader)
        .take(format::HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::Read {
            offset: 0,
            message: format!("{what}: {e}"),
            retry: Retry::Never,
        })?;
    let whole = Box::new(std::io::Cursor::new(head.clone()).chain(reader));
    Ok((head, whole))
}

/// A stream decoder's error: the image's own (a refusal or corruption, by kind) when it
/// holds one, else a read error.
fn stream_err(what: &str, e: std::io::Error) -> Error {
    match e.get_ref().and_then(|x| x.downcast_ref::<ImageError>()) {
        Some(error) => Error::Image {
            what: what.to_string(),
            error: error.clone(),
        },
        None => Error::Read {
            offset: 0,
            message: format!("{what}: {e}"),
            retry: Retry::Never,
        },
    }
}

/// What [`peel`] does, on a blocking thread: the stream's description ("PATH,
/// gzip-decompressed") and its disk bytes, or the image in it that needs random access.
pub fn peel_blocking(
    mut what: String,
    mut reader: Bytes,
    member: Option<&str>,
    mut forced: Option<Format>,
) -> Result<Peeled, Error> {
    let mut peeled: Vec<Format> = Vec::new();
    loop {
        let (first, whole) = head_of(&what, reader)?;
        reader = whole;
        let found = forced
            .take()
            .unwrap_or_else(|| format::detect(&first, None));
        match layer_of(found) {
            Some(Layer::Disk) => return Ok(Peeled::Disk(what, reader, None)),
            Some(Layer::Map) if found == Format::Vmdk && vmdk::is_stream_optimized(&first) => {
                let r = vmdk::VmdkStreamReader::open(reader).map_err(|e| stream_err(&what, e))?;
                let size = r.size();
                return Ok(Peeled::Disk(
                    format!("{what}, VMDK stream"),
                    Box::new(r),
                    Some(size),
                ));
            }
            Some(Layer::Decompress) if !peeled.contains(&found) => {
                let decoded = wrappers::decoder(found, reader)
                    .ok_or(Error::Internal("a decompressing layer without a decoder"))?;
                reader = decoded.map_err(|e| Error::Read {
                    offset: 0,
                    message: format!("{what}: {e}"),
                    retry: Retry::Never,
                })?;
                what = format!("{what}, {}", wrappers::decompressed(found));
                peeled.push(found);
            }
            Some(Layer::Map) => {
                return Ok(Peeled::NeedsMap {
                    what,
                    format: found,
                    reader,
                    archive: peeled.contains(&Format::Tar),
                });
            }
            Some(Layer::Archive) if !peeled.contains(&found) => {
                let r = tar::MemberReader::open(reader, member).map_err(|e| match e {
                    tar::OpenError::Tar(error) => Error::Archive {
                        what: what.clone(),
                        error,
                    },
                    tar::OpenError::Io(e) => Error::Read {
                        offset: 0,
                        message: format!("{what}: {e}"),
                        retry: Retry::Never,
                    },
                })?;
                what = format!("{what}, member {}", r.member().name);
                reader = Box::new(r);
                peeled.push(found);
            }
            _ => {
                return Err(Error::NotRaw {
                    what,
                    format: found,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::Buf;
    use crate::source::stream::Piece;

    fn drain(input: Input) -> Vec<u8> {
        let Input::Stream(mut s) = input else {
            panic!("a stream was expected")
        };
        crate::test_support::rt().block_on(async move {
            let mut got = Vec::new();
            loop {
                match s.next(Buf::new(1 << 16)).await.expect("piece") {
                    Piece::Data(b) => got.extend_from_slice(b.as_slice()),
                    Piece::End(_) => break,
                    Piece::Zero { len, .. } => got.resize(got.len() + len as usize, 0),
                }
            }
            got
        })
    }

    fn peel_bytes(bytes: Vec<u8>) -> Result<Input, Error> {
        crate::test_support::rt().block_on(peel(
            "test".into(),
            Box::new(std::io::Cursor::new(bytes)),
            None,
            &Layering::default(),
            None,
            false,
        ))
    }

    fn disk() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn a_raw_stream_is_its_own_bytes() {
        assert_eq!(drain(peel_bytes(disk()).expect("raw")), disk());
    }

    #[test]
    fn gzip_with_two_members_is_decompressed_whole() {
        use std::io::Write;
        let d = disk();
        let mut z = Vec::new();
        for half in [&d[..100_000], &d[100_000..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(half).expect("gzip");
            z.extend(e.finish().expect("gzip"));
        }
        assert_eq!(drain(peel_bytes(z).expect("gzip")), d);
    }

    #[test]
    fn zstd_is_decompressed() {
        let z = zstd::encode_all(&disk()[..], 1).expect("zstd");
        assert_eq!(drain(peel_bytes(z).expect("zstd")), disk());
    }

    #[test]
    fn a_compression_is_peeled_once_and_a_random_access_image_inside_is_refused() {
        use std::io::Write;
        let gz = |b: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(b).expect("gzip");
            e.finish().expect("gzip")
        };
        let twice = gz(&gz(&disk()));
        let e = peel_bytes(twice).expect_err("gz.gz");
        assert!(
            matches!(
                e,
                Error::NotRaw {
                    format: Format::Gzip,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("test, gzip-decompressed holds a gzip"),
            "{e}"
        );
        let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow.resize(4096, 0);
        let e = peel_bytes(gz(&qcow)).expect_err("qcow2.gz");
        assert!(
            matches!(
                e,
                Error::NeedsRandomAccess {
                    format: Format::Qcow2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("scratch"), "{e}");
    }

    #[test]
    fn a_corrupt_gzip_stream_is_a_read_error_not_a_short_disk() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&disk()).expect("gzip");
        let mut z = e.finish().expect("gzip");
        let n = z.len();
        z[n / 2] ^= 0xff;
        let got = peel_bytes(z).expect("the head is fine");
        let Input::Stream(mut s) = got else { panic!() };
        let r = crate::test_support::rt().block_on(async move {
            loop {
                match s.next(Buf::new(1 << 16)).await {
                    Ok(Piece::End(_)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        });
        let e = r.expect_err("corrupt");
        assert!(matches!(e, Error::Read { .. }), "{e:?}");
    }
}
