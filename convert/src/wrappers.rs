//! The compressions a raw disk may arrive in, as decoding readers over any reader: gzip
//! (every member: pigz and bgzip write several), xz (every stream, the blocks of a
//! multi-block file — `xz -T` writes them — decoded by several threads), zstd (every
//! frame).

use std::io::{BufRead, BufReader, Read};

use crate::detect::Format;

/// A reader of bytes that can be moved to another thread.
pub type Bytes = Box<dyn Read + Send>;

/// A decoder of `format` over `input`, or None when `format` is not a compression this
/// crate decodes (bzip2 and tar are recognised by [`crate::detect`] but not read).
pub fn decoder(format: Format, input: Bytes) -> Option<std::io::Result<Bytes>> {
    Some(match format {
        Format::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(input))),
        Format::Xz => Ok(Box::new(XzStreams {
            current: None,
            rest: Some(BufReader::with_capacity(XZ_INPUT_BUFFER, input)),
        })),
        Format::Zstd => zstd::stream::read::Decoder::new(input).map(|d| Box::new(d) as Bytes),
        _ => return None,
    })
}

/// Memory the threaded xz decoder may use for its threads before it decodes with one
/// (liblzma's `memlimit_threading`); a block larger than this is still decoded, by one
/// thread.
pub const XZ_THREADING_MEMLIMIT: u64 = 256 << 20;
/// Most threads an xz decoder uses (fewer when the process may use fewer CPUs).
pub const MAX_XZ_THREADS: u32 = 8;
/// Bytes of compressed input read at once.
pub const XZ_INPUT_BUFFER: usize = 1 << 20;

/// Every xz stream of the input, one after the other (`cat a.xz b.xz` is one file, as
/// `xz -d` reads it), separated by stream padding; each by liblzma's threaded decoder
/// (which, unlike its single-threaded one, cannot itself go on to the next stream).
struct XzStreams {
    current: Option<liblzma::bufread::XzDecoder<BufReader<Bytes>>>,
    /// The input between streams.
    rest: Option<BufReader<Bytes>>,
}

fn xz_threads() -> u32 {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    u32::try_from(n)
        .unwrap_or(MAX_XZ_THREADS)
        .min(MAX_XZ_THREADS)
}

impl Read for XzStreams {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(d) = self.current.as_mut() {
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                // This stream ended; what follows is padding, another stream, or the end.
                self.rest = self
                    .current
                    .take()
                    .map(liblzma::bufread::XzDecoder::into_inner);
            }
            let Some(mut input) = self.rest.take() else {
                return Ok(0);
            };
            loop {
                let b = input.fill_buf()?;
                if b.is_empty() {
                    return Ok(0);
                }
                let zeros = b.iter().take_while(|x| **x == 0).count();
                if zeros == 0 {
                    break;
                }
                input.consume(zeros);
            }
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(xz_threads())
                .memlimit_threading(XZ_THREADING_MEMLIMIT)
                .memlimit_stop(u64::MAX)
                .decoder()
                .map_err(std::io::Error::other)?;
            self.current = Some(liblzma::bufread::XzDecoder::new_stream(input, stream));
        }
    }
}

/// "gzip-decompressed", for descriptions of what a stream became.
pub fn decompressed(format: Format) -> &'static str {
    match format {
        Format::Gzip => "gzip-decompressed",
        Format::Xz => "xz-decompressed",
        Format::Zstd => "zstd-decompressed",
        _ => "decoded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(f: Format, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(f, Box::new(std::io::Cursor::new(bytes)))
            .expect("a compression")?
            .read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn each_compression_decodes_and_others_are_not_decoders() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let z = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(decode(Format::Zstd, z).unwrap(), data);
        for f in [Format::Raw, Format::Qcow2, Format::Bzip2, Format::Tar] {
            assert!(decoder(f, Box::new(std::io::empty())).is_none(), "{f:?}");
        }
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn xz_streams_one_after_another_with_padding_are_decoded_whole() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let b = vec![5u8; 123_457];
        let mut file = xz(&a);
        file.extend([0u8; 8]); // stream padding
        file.extend(xz(&b));
        let mut whole = a.clone();
        whole.extend(&b);
        assert_eq!(decode(Format::Xz, file.clone()).unwrap(), whole);
        let cut = file[..file.len() - 10].to_vec();
        assert!(
            decode(Format::Xz, cut).is_err(),
            "a cut last stream is an error"
        );
        let mut junk = xz(&a);
        junk.extend(b"not xz");
        assert!(
            decode(Format::Xz, junk).is_err(),
            "garbage after a stream is an error"
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_short_output() {
        let data = vec![9u8; 200_000];
        let z = zstd::encode_all(&data[..], 1).unwrap();
        let cut = z[..z.len() / 2].to_vec();
        assert!(decode(Format::Zstd, cut).is_err());
    }
}
