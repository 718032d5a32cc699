//! The compressions a raw disk may arrive in, as decoding readers over any reader: gzip
//! (every member: pigz and bgzip write several), xz (every stream), zstd (every frame).

use std::io::Read;

use crate::detect::Format;

/// A reader of bytes that can be moved to another thread.
pub type Bytes = Box<dyn Read + Send>;

/// A decoder of `format` over `input`, or None when `format` is not a compression this
/// crate decodes (bzip2 and tar are recognised by [`crate::detect`] but not read).
pub fn decoder(format: Format, input: Bytes) -> Option<std::io::Result<Bytes>> {
    Some(match format {
        Format::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(input))),
        Format::Xz => Ok(Box::new(liblzma::read::XzDecoder::new_multi_decoder(input))),
        Format::Zstd => zstd::stream::read::Decoder::new(input).map(|d| Box::new(d) as Bytes),
        _ => return None,
    })
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

    #[test]
    fn truncated_input_is_an_error_not_a_short_output() {
        let data = vec![9u8; 200_000];
        let z = zstd::encode_all(&data[..], 1).unwrap();
        let cut = z[..z.len() / 2].to_vec();
        assert!(decode(Format::Zstd, cut).is_err());
    }
}
