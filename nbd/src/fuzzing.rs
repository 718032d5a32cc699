//! Fuzz entry points, shared by `fuzz/` (cargo-fuzz) and the corpus-replay test.
//! Each asserts "never panics, bounded allocation" on bytes from a hostile server.

use crate::codec;

/// Decode every server-to-client message form from arbitrary bytes.
pub fn codec_messages(data: &[u8]) {
    let _ = codec::decode_greeting(data);
    let _ = codec::decode_option_reply_header(data);
    let _ = codec::decode_info(data);
    let _ = codec::decode_meta_context(data);
    let _ = codec::decode_export_name_reply(data);
    if let Ok(Some((h, n))) = codec::decode_reply_header(data) {
        let rest = &data[n..];
        if let codec::ReplyHeader::Chunk { kind, .. } = h {
            let _ = codec::decode_block_status(kind, rest);
            let _ = codec::decode_error_chunk(kind, rest);
            let _ = codec::decode_offset_hole(rest);
        }
    }
    if data.len() > 2 {
        let kind = u16::from_be_bytes([data[0], data[1]]);
        let _ = codec::decode_block_status(kind, &data[2..]);
        let _ = codec::decode_error_chunk(kind, &data[2..]);
    }
}
