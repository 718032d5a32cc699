//! Sans-IO NBD codec: pure encoders and decoders over byte slices.
//!
//! Nothing here owns a socket. The async driver in [`crate::client`] reads fixed-size
//! headers, asks this module how to interpret them and how many payload bytes follow,
//! and reads the payload (bounded by the caps below) before handing it back here.
//! Every length that comes from the peer is checked against a named cap before any
//! allocation, so a hostile server cannot make the client allocate unbounded memory.

use crate::error::ProtocolError;

/// "NBDMAGIC": first 8 bytes of every handshake.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation magic, and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle negotiation magic (not supported by this client).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Compact (28-byte) request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended (32-byte) request magic.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk magic.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flag: server supports fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: server can omit the 124 zero bytes after EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option numbers.
pub mod opt {
    /// Legacy export selection (no error path).
    pub const EXPORT_NAME: u32 = 1;
    /// Abort negotiation.
    pub const ABORT: u32 = 2;
    /// STARTTLS.
    pub const STARTTLS: u32 = 5;
    /// Query an export without entering transmission.
    pub const INFO: u32 = 6;
    /// Select an export and enter transmission.
    pub const GO: u32 = 7;
    /// Enable structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List meta contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select meta contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Enable extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// Final acknowledgement.
    pub const ACK: u32 = 1;
    /// One export in a LIST reply.
    pub const SERVER: u32 = 2;
    /// Export information.
    pub const INFO: u32 = 3;
    /// One selected meta context.
    pub const META_CONTEXT: u32 = 4;
    /// Bit set on every error reply type.
    pub const ERR_BIT: u32 = 1 << 31;
    /// Option not supported.
    pub const ERR_UNSUP: u32 = ERR_BIT | 1;
    /// Refused by policy.
    pub const ERR_POLICY: u32 = ERR_BIT | 2;
    /// Invalid option.
    pub const ERR_INVALID: u32 = ERR_BIT | 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = ERR_BIT | 4;
    /// TLS required first.
    pub const ERR_TLS_REQD: u32 = ERR_BIT | 5;
    /// Export unknown.
    pub const ERR_UNKNOWN: u32 = ERR_BIT | 6;
    /// Server shutting down.
    pub const ERR_SHUTDOWN: u32 = ERR_BIT | 7;
    /// Block size negotiation required.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR_BIT | 8;
    /// Request too big.
    pub const ERR_TOO_BIG: u32 = ERR_BIT | 9;
    /// Extended headers required.
    pub const ERR_EXT_HEADER_REQD: u32 = ERR_BIT | 10;
}

/// NBD_INFO types.
pub mod info {
    /// Export size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical export name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// TRIM supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// DF flag supported.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections may share the export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// FAST_ZERO supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command types.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim.
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cmdflag {
    /// Force unit access.
    pub const FUA: u16 = 1 << 0;
    /// Do not punch holes when writing zeroes.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Do not fragment the read reply.
    pub const DF: u16 = 1 << 2;
    /// One extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// Fail fast if zeroing is slow.
    pub const FAST_ZERO: u16 = 1 << 4;
    /// Extended headers: the length is a payload length.
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Structured reply chunk types.
pub mod chunk {
    /// Empty final chunk.
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// A hole (zeroes) at an offset.
    pub const OFFSET_HOLE: u16 = 2;
    /// Block status (compact).
    pub const BLOCK_STATUS: u16 = 5;
    /// Block status (extended headers).
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// Error.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// Error at an offset.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
    /// Bit set on all error chunk types.
    pub const ERROR_BIT: u16 = 1 << 15;
}

/// Reply flag: last chunk of this reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

/// `base:allocation` flag: not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:` flag: dirty.
pub const STATE_DIRTY: u32 = 1 << 0;

/// Length of the server greeting (magic, IHAVEOPT, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Length of an extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Length of a simple reply.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Length of an extended reply chunk header.
pub const EXTENDED_REPLY_LEN: usize = 32;

/// Cap on an option reply payload. Replies we need (info, meta contexts, error
/// messages) are tiny; anything larger is a hostile or broken server.
pub const MAX_OPTION_REPLY_LEN: u32 = 64 * 1024;
/// Cap on a string the server sends (export names, descriptions, messages).
pub const MAX_STRING_LEN: usize = 4096;
/// Cap on option replies of one option (REP_INFO / REP_META_CONTEXT before the ACK).
pub const MAX_OPTION_REPLIES: usize = 1024;
/// Cap on the payload of a non-data reply chunk (block status: 2^20 compact
/// descriptors of 8 bytes, or 2^19 extended descriptors of 16 bytes, plus the header).
pub const MAX_CHUNK_PAYLOAD: u64 = (1 << 23) + 8;
/// Cap on a read request's length, and so on the data a reply may carry.
pub const MAX_READ_LEN: u64 = 64 * 1024 * 1024;
/// Cap on an export name we send.
pub const MAX_EXPORT_NAME_LEN: usize = 4096;
/// Cap on block-status descriptors accepted from one chunk.
pub const MAX_BLOCK_DESCRIPTORS: usize = 1 << 20;

/// The server's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags.
    pub flags: u16,
}

/// Decode the 18-byte greeting.
pub fn decode_greeting(b: &[u8]) -> Result<Greeting, ProtocolError> {
    let mut r = Reader::new(b);
    let magic = r.u64()?;
    if magic != NBD_MAGIC {
        return Err(ProtocolError::BadMagic {
            what: "greeting",
            got: magic,
        });
    }
    let second = r.u64()?;
    if second == CLISERV_MAGIC {
        return Err(ProtocolError::Unsupported("oldstyle negotiation"));
    }
    if second != IHAVEOPT {
        return Err(ProtocolError::BadMagic {
            what: "newstyle greeting",
            got: second,
        });
    }
    let flags = r.u16()?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ProtocolError::Unsupported(
            "servers without fixed newstyle negotiation",
        ));
    }
    Ok(Greeting { flags })
}

/// Encode an option request.
pub fn encode_option(option: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    // Option payloads we build are bounded by MAX_EXPORT_NAME_LEN and a few queries.
    out.extend_from_slice(&(u32::try_from(data.len()).unwrap_or(u32::MAX)).to_be_bytes());
    out.extend_from_slice(data);
}

/// A length as the protocol's big-endian u32, or [`ProtocolError::TooLong`].
fn be_u32_len(what: &'static str, n: usize) -> Result<[u8; 4], ProtocolError> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| ProtocolError::TooLong {
            what,
            len: n as u64,
            max: u64::from(u32::MAX),
        })
}

/// Payload of NBD_OPT_GO / NBD_OPT_INFO: the export name and the info types asked for.
pub fn go_payload(export: &str, infos: &[u16]) -> Result<Vec<u8>, ProtocolError> {
    check_name(export)?;
    let mut d = Vec::with_capacity(6 + export.len() + 2 * infos.len());
    d.extend_from_slice(&be_u32_len("name", export.len())?);
    d.extend_from_slice(export.as_bytes());
    let n = u16::try_from(infos.len()).map_err(|_| ProtocolError::TooLong {
        what: "info requests",
        len: infos.len() as u64,
        max: u64::from(u16::MAX),
    })?;
    d.extend_from_slice(&n.to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    Ok(d)
}

/// Payload of NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT.
pub fn meta_context_payload(export: &str, queries: &[&str]) -> Result<Vec<u8>, ProtocolError> {
    check_name(export)?;
    let mut d = Vec::new();
    d.extend_from_slice(&be_u32_len("name", export.len())?);
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&be_u32_len("meta context queries", queries.len())?);
    for q in queries {
        check_name(q)?;
        d.extend_from_slice(&be_u32_len("meta context query", q.len())?);
        d.extend_from_slice(q.as_bytes());
    }
    Ok(d)
}

fn check_name(s: &str) -> Result<(), ProtocolError> {
    if s.len() > MAX_EXPORT_NAME_LEN {
        return Err(ProtocolError::TooLong {
            what: "name",
            len: s.len() as u64,
            max: MAX_EXPORT_NAME_LEN as u64,
        });
    }
    Ok(())
}

/// An option reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this replies to.
    pub option: u32,
    /// Reply type (see [`rep`]).
    pub reply_type: u32,
    /// Payload length that follows.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        self.reply_type & rep::ERR_BIT != 0
    }
}

/// Decode a 20-byte option reply header, checking the magic and the payload cap.
pub fn decode_option_reply_header(b: &[u8]) -> Result<OptionReplyHeader, ProtocolError> {
    let mut r = Reader::new(b);
    let magic = r.u64()?;
    if magic != OPTION_REPLY_MAGIC {
        return Err(ProtocolError::BadMagic {
            what: "option reply",
            got: magic,
        });
    }
    let h = OptionReplyHeader {
        option: r.u32()?,
        reply_type: r.u32()?,
        length: r.u32()?,
    };
    if h.length > MAX_OPTION_REPLY_LEN {
        return Err(ProtocolError::TooLong {
            what: "option reply",
            len: u64::from(h.length),
            max: u64::from(MAX_OPTION_REPLY_LEN),
        });
    }
    Ok(h)
}

/// Name of an option reply error, for messages.
pub fn option_error_name(reply_type: u32) -> &'static str {
    match reply_type {
        rep::ERR_UNSUP => "unsupported",
        rep::ERR_POLICY => "refused by policy",
        rep::ERR_INVALID => "invalid",
        rep::ERR_PLATFORM => "unsupported on this platform",
        rep::ERR_TLS_REQD => "TLS required",
        rep::ERR_UNKNOWN => "unknown export",
        rep::ERR_SHUTDOWN => "server shutting down",
        rep::ERR_BLOCK_SIZE_REQD => "block size negotiation required",
        rep::ERR_TOO_BIG => "request too big",
        rep::ERR_EXT_HEADER_REQD => "extended headers required",
        _ => "error",
    }
}

/// Block size constraints (NBD_INFO_BLOCK_SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size (power of two, ≤ 64 KiB).
    pub minimum: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum payload.
    pub maximum: u32,
}

impl Default for BlockSize {
    /// The protocol's defaults when the server advertises nothing.
    fn default() -> Self {
        BlockSize {
            minimum: 1,
            preferred: 4096,
            maximum: 32 * 1024 * 1024,
        }
    }
}

/// One REP_INFO payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// Size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// Block size constraints.
    BlockSize(BlockSize),
    /// Canonical name.
    Name(String),
    /// Description.
    Description(String),
    /// An info type this client does not know.
    Unknown(u16),
}

/// Decode a REP_INFO payload.
pub fn decode_info(b: &[u8]) -> Result<Info, ProtocolError> {
    let mut r = Reader::new(b);
    let t = r.u16()?;
    let info = match t {
        info::EXPORT => {
            let size = r.u64()?;
            let flags = r.u16()?;
            r.finish("NBD_INFO_EXPORT")?;
            Info::Export { size, flags }
        }
        info::BLOCK_SIZE => {
            let bs = BlockSize {
                minimum: r.u32()?,
                preferred: r.u32()?,
                maximum: r.u32()?,
            };
            r.finish("NBD_INFO_BLOCK_SIZE")?;
            validate_block_size(&bs)?;
            Info::BlockSize(bs)
        }
        info::NAME => Info::Name(r.string_rest()?),
        info::DESCRIPTION => Info::Description(r.string_rest()?),
        other => Info::Unknown(other),
    };
    Ok(info)
}

/// Reject block sizes the spec forbids.
fn validate_block_size(bs: &BlockSize) -> Result<(), ProtocolError> {
    let ok = bs.minimum.is_power_of_two()
        && bs.minimum <= 64 * 1024
        && bs.preferred.is_power_of_two()
        && bs.preferred >= bs.minimum
        && bs.maximum >= bs.minimum
        && (bs.maximum == u32::MAX || bs.maximum.is_multiple_of(bs.minimum));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::Invalid(format!(
            "impossible block sizes: minimum {}, preferred {}, maximum {}",
            bs.minimum, bs.preferred, bs.maximum
        )))
    }
}

/// Decode a REP_META_CONTEXT payload: (context id, name).
pub fn decode_meta_context(b: &[u8]) -> Result<(u32, String), ProtocolError> {
    let mut r = Reader::new(b);
    let id = r.u32()?;
    let name = r.string_rest()?;
    Ok((id, name))
}

/// The message carried by an option error reply (may be empty).
pub fn decode_option_error_message(b: &[u8]) -> String {
    let end = b.len().min(MAX_STRING_LEN);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Reply to legacy NBD_OPT_EXPORT_NAME: size and flags (the zero padding is read separately).
pub fn decode_export_name_reply(b: &[u8]) -> Result<(u64, u16), ProtocolError> {
    let mut r = Reader::new(b);
    Ok((r.u64()?, r.u16()?))
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub command: u16,
    /// Cookie the reply echoes.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length (or effect length).
    pub length: u64,
}

/// Encode a request header in compact or extended form.
pub fn encode_request(
    req: &Request,
    extended: bool,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    if extended {
        out.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&req.flags.to_be_bytes());
        out.extend_from_slice(&req.command.to_be_bytes());
        out.extend_from_slice(&req.cookie.to_be_bytes());
        out.extend_from_slice(&req.offset.to_be_bytes());
        out.extend_from_slice(&req.length.to_be_bytes());
    } else {
        let len = u32::try_from(req.length).map_err(|_| ProtocolError::TooLong {
            what: "request",
            len: req.length,
            max: u64::from(u32::MAX),
        })?;
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&req.flags.to_be_bytes());
        out.extend_from_slice(&req.command.to_be_bytes());
        out.extend_from_slice(&req.cookie.to_be_bytes());
        out.extend_from_slice(&req.offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Which reply header format a magic announces, and its total length.
pub fn reply_header_len(magic: u32) -> Result<usize, ProtocolError> {
    match magic {
        SIMPLE_REPLY_MAGIC => Ok(SIMPLE_REPLY_LEN),
        STRUCTURED_REPLY_MAGIC => Ok(STRUCTURED_REPLY_LEN),
        EXTENDED_REPLY_MAGIC => Ok(EXTENDED_REPLY_LEN),
        other => Err(ProtocolError::BadMagic {
            what: "reply",
            got: u64::from(other),
        }),
    }
}

/// A decoded reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (read data, if any, follows).
    Simple {
        /// Error (0 = success).
        error: u32,
        /// Cookie.
        cookie: u64,
    },
    /// A structured or extended chunk header; `length` payload bytes follow.
    Chunk {
        /// Chunk flags.
        flags: u16,
        /// Chunk type.
        kind: u16,
        /// Cookie.
        cookie: u64,
        /// Request offset echo (extended headers only; 0 otherwise).
        offset: u64,
        /// Payload length.
        length: u64,
    },
}

impl ReplyHeader {
    /// The cookie of the request this answers.
    pub fn cookie(&self) -> u64 {
        match self {
            ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => *cookie,
        }
    }
}

/// Decode a whole reply header (16, 20 or 32 bytes, per the magic in its first 4 bytes).
/// Returns `Ok(None)` when `b` holds fewer bytes than the header needs.
pub fn decode_reply_header(b: &[u8]) -> Result<Option<(ReplyHeader, usize)>, ProtocolError> {
    if b.len() < 4 {
        return Ok(None);
    }
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let need = reply_header_len(magic)?;
    if b.len() < need {
        return Ok(None);
    }
    let mut r = Reader::new(&b[4..need]);
    let h = match magic {
        SIMPLE_REPLY_MAGIC => ReplyHeader::Simple {
            error: r.u32()?,
            cookie: r.u64()?,
        },
        STRUCTURED_REPLY_MAGIC => {
            let flags = r.u16()?;
            let kind = r.u16()?;
            let cookie = r.u64()?;
            let length = u64::from(r.u32()?);
            ReplyHeader::Chunk {
                flags,
                kind,
                cookie,
                offset: 0,
                length,
            }
        }
        _ => {
            let flags = r.u16()?;
            let kind = r.u16()?;
            let cookie = r.u64()?;
            let offset = r.u64()?;
            let length = r.u64()?;
            ReplyHeader::Chunk {
                flags,
                kind,
                cookie,
                offset,
                length,
            }
        }
    };
    Ok(Some((h, need)))
}

/// Payload of an OFFSET_HOLE chunk: (offset, length). Accepts the 32-bit hole size and,
/// with extended headers, the 64-bit one.
pub fn decode_offset_hole(b: &[u8]) -> Result<(u64, u64), ProtocolError> {
    let mut r = Reader::new(b);
    let off = r.u64()?;
    let len = match b.len() {
        12 => u64::from(r.u32()?),
        16 => r.u64()?,
        n => {
            return Err(ProtocolError::Invalid(format!(
                "OFFSET_HOLE chunk of {n} bytes"
            )));
        }
    };
    if len == 0 {
        return Err(ProtocolError::Invalid(
            "OFFSET_HOLE chunk of zero length".into(),
        ));
    }
    Ok((off, len))
}

/// Payload of an ERROR or ERROR_OFFSET chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorChunk {
    /// Errno-style NBD error (never 0 once decoded).
    pub error: u32,
    /// Human message.
    pub message: String,
    /// Offset for ERROR_OFFSET.
    pub offset: Option<u64>,
}

/// Decode an ERROR / ERROR_OFFSET chunk payload.
pub fn decode_error_chunk(kind: u16, b: &[u8]) -> Result<ErrorChunk, ProtocolError> {
    let mut r = Reader::new(b);
    let error = r.u32()?;
    if error == 0 {
        return Err(ProtocolError::Invalid(
            "error chunk with error value 0".into(),
        ));
    }
    let mlen = usize::from(r.u16()?);
    let msg = r.bytes(mlen)?;
    let message = String::from_utf8_lossy(&msg[..mlen.min(MAX_STRING_LEN)]).into_owned();
    let offset = if kind == chunk::ERROR_OFFSET {
        Some(r.u64()?)
    } else {
        None
    };
    r.finish("error chunk")?;
    Ok(ErrorChunk {
        error,
        message,
        offset,
    })
}

/// One block-status descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDescriptor {
    /// Extent length (never 0).
    pub length: u64,
    /// Status flags for the context.
    pub flags: u64,
}

/// Decode a BLOCK_STATUS (compact) or BLOCK_STATUS_EXT payload: (context id, descriptors).
pub fn decode_block_status(
    kind: u16,
    b: &[u8],
) -> Result<(u32, Vec<BlockDescriptor>), ProtocolError> {
    let mut r = Reader::new(b);
    let id = r.u32()?;
    let (count, each) = if kind == chunk::BLOCK_STATUS_EXT {
        let n = r.u32()? as usize;
        if r.remaining() != n.saturating_mul(16) {
            return Err(ProtocolError::Invalid(format!(
                "BLOCK_STATUS_EXT announces {n} descriptors in {} bytes",
                r.remaining()
            )));
        }
        (n, 16)
    } else {
        if !r.remaining().is_multiple_of(8) {
            return Err(ProtocolError::Invalid(
                "BLOCK_STATUS payload not a multiple of 8".into(),
            ));
        }
        (r.remaining() / 8, 8)
    };
    if count == 0 {
        return Err(ProtocolError::Invalid(
            "block status chunk with no descriptors".into(),
        ));
    }
    if count > MAX_BLOCK_DESCRIPTORS {
        return Err(ProtocolError::TooLong {
            what: "block status descriptors",
            len: count as u64,
            max: MAX_BLOCK_DESCRIPTORS as u64,
        });
    }
    let mut v = Vec::with_capacity(count);
    for _ in 0..count {
        let d = if each == 16 {
            BlockDescriptor {
                length: r.u64()?,
                flags: r.u64()?,
            }
        } else {
            BlockDescriptor {
                length: u64::from(r.u32()?),
                flags: u64::from(r.u32()?),
            }
        };
        if d.length == 0 {
            return Err(ProtocolError::Invalid(
                "block status extent of zero length".into(),
            ));
        }
        v.push(d);
    }
    Ok((id, v))
}

/// Name of an NBD error value.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "EINVAL (unknown error value)",
    }
}

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        if self.b.len() < N {
            return Err(ProtocolError::Truncated);
        }
        let (h, t) = self.b.split_at(N);
        self.b = t;
        let mut a = [0u8; N];
        a.copy_from_slice(h);
        Ok(a)
    }
    pub(crate) fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.b.len() < n {
            return Err(ProtocolError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn remaining(&self) -> usize {
        self.b.len()
    }
    fn string_rest(&mut self) -> Result<String, ProtocolError> {
        let rest = self.bytes(self.b.len())?;
        if rest.len() > MAX_STRING_LEN {
            return Err(ProtocolError::TooLong {
                what: "string",
                len: rest.len() as u64,
                max: MAX_STRING_LEN as u64,
            });
        }
        String::from_utf8(rest.to_vec())
            .map_err(|_| ProtocolError::Invalid("string is not UTF-8".into()))
    }
    fn finish(&self, what: &str) -> Result<(), ProtocolError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Invalid(format!(
                "{} trailing bytes after {what}",
                self.b.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(flags: u16) -> Vec<u8> {
        let mut v = NBD_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v
    }

    #[test]
    fn greeting_with_fixed_newstyle_decodes() {
        let g = decode_greeting(&greeting(3)).unwrap();
        assert_eq!(g.flags, 3);
    }

    #[test]
    fn greeting_without_fixed_newstyle_is_unsupported() {
        let e = decode_greeting(&greeting(0)).unwrap_err();
        assert!(e.to_string().contains("fixed newstyle"), "{e}");
    }

    #[test]
    fn oldstyle_greeting_is_unsupported() {
        let mut v = NBD_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&CLISERV_MAGIC.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        assert!(
            decode_greeting(&v)
                .unwrap_err()
                .to_string()
                .contains("oldstyle")
        );
    }

    #[test]
    fn bad_greeting_magic_is_rejected() {
        let mut v = greeting(1);
        v[0] = b'X';
        assert!(matches!(
            decode_greeting(&v),
            Err(ProtocolError::BadMagic { .. })
        ));
    }

    #[test]
    fn option_reply_over_cap_is_rejected_before_allocation() {
        let mut v = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&opt::GO.to_be_bytes());
        v.extend_from_slice(&rep::INFO.to_be_bytes());
        v.extend_from_slice(&(MAX_OPTION_REPLY_LEN + 1).to_be_bytes());
        assert!(matches!(
            decode_option_reply_header(&v),
            Err(ProtocolError::TooLong { .. })
        ));
    }

    #[test]
    fn info_export_decodes_size_and_flags() {
        let mut v = info::EXPORT.to_be_bytes().to_vec();
        v.extend_from_slice(&(1u64 << 40).to_be_bytes());
        v.extend_from_slice(&0x0103u16.to_be_bytes());
        assert_eq!(
            decode_info(&v).unwrap(),
            Info::Export {
                size: 1 << 40,
                flags: 0x0103
            }
        );
    }

    #[test]
    fn block_size_with_min_above_max_is_invalid() {
        let mut v = info::BLOCK_SIZE.to_be_bytes().to_vec();
        for x in [4096u32, 4096, 512] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        assert!(matches!(decode_info(&v), Err(ProtocolError::Invalid(_))));
    }

    #[test]
    fn compact_request_encodes_28_bytes() {
        let mut out = Vec::new();
        let r = Request {
            flags: 0,
            command: cmd::READ,
            cookie: 7,
            offset: 512,
            length: 4096,
        };
        encode_request(&r, false, &mut out).unwrap();
        assert_eq!(out.len(), REQUEST_LEN);
        assert_eq!(&out[..4], &REQUEST_MAGIC.to_be_bytes());
    }

    #[test]
    fn compact_request_over_4g_is_rejected() {
        let mut out = Vec::new();
        let r = Request {
            flags: 0,
            command: cmd::BLOCK_STATUS,
            cookie: 1,
            offset: 0,
            length: 1 << 32,
        };
        assert!(encode_request(&r, false, &mut out).is_err());
    }

    #[test]
    fn extended_request_encodes_32_bytes() {
        let mut out = Vec::new();
        let r = Request {
            flags: 0,
            command: cmd::BLOCK_STATUS,
            cookie: 1,
            offset: 0,
            length: 1 << 33,
        };
        encode_request(&r, true, &mut out).unwrap();
        assert_eq!(out.len(), EXTENDED_REQUEST_LEN);
    }

    #[test]
    fn reply_header_needs_more_bytes_returns_none() {
        let b = STRUCTURED_REPLY_MAGIC.to_be_bytes();
        assert_eq!(decode_reply_header(&b).unwrap(), None);
    }

    #[test]
    fn structured_reply_header_decodes() {
        let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        b.extend_from_slice(&chunk::OFFSET_DATA.to_be_bytes());
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(&100u32.to_be_bytes());
        let (h, n) = decode_reply_header(&b).unwrap().unwrap();
        assert_eq!(n, STRUCTURED_REPLY_LEN);
        assert_eq!(
            h,
            ReplyHeader::Chunk {
                flags: 1,
                kind: chunk::OFFSET_DATA,
                cookie: 9,
                offset: 0,
                length: 100
            }
        );
    }

    #[test]
    fn unknown_reply_magic_is_bad_magic() {
        let b = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0];
        assert!(matches!(
            decode_reply_header(&b),
            Err(ProtocolError::BadMagic { .. })
        ));
    }

    #[test]
    fn error_chunk_with_zero_error_is_invalid() {
        let mut b = 0u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        assert!(decode_error_chunk(chunk::ERROR, &b).is_err());
    }

    #[test]
    fn error_offset_chunk_decodes_message_and_offset() {
        let mut b = 5u32.to_be_bytes().to_vec();
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(b"bad");
        b.extend_from_slice(&4096u64.to_be_bytes());
        let e = decode_error_chunk(chunk::ERROR_OFFSET, &b).unwrap();
        assert_eq!(
            e,
            ErrorChunk {
                error: 5,
                message: "bad".into(),
                offset: Some(4096)
            }
        );
    }

    #[test]
    fn error_chunk_with_message_longer_than_payload_is_truncated_error() {
        let mut b = 5u32.to_be_bytes().to_vec();
        b.extend_from_slice(&100u16.to_be_bytes());
        b.extend_from_slice(b"short");
        assert_eq!(
            decode_error_chunk(chunk::ERROR, &b),
            Err(ProtocolError::Truncated)
        );
    }

    #[test]
    fn block_status_zero_length_extent_is_invalid() {
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        assert!(decode_block_status(chunk::BLOCK_STATUS, &b).is_err());
    }

    #[test]
    fn block_status_ext_count_mismatch_is_invalid() {
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        assert!(decode_block_status(chunk::BLOCK_STATUS_EXT, &b).is_err());
    }

    #[test]
    fn block_status_compact_decodes_descriptors() {
        let mut b = 1u32.to_be_bytes().to_vec();
        for (l, f) in [(4096u32, 0u32), (8192, 3)] {
            b.extend_from_slice(&l.to_be_bytes());
            b.extend_from_slice(&f.to_be_bytes());
        }
        let (id, d) = decode_block_status(chunk::BLOCK_STATUS, &b).unwrap();
        assert_eq!(id, 1);
        assert_eq!(
            d,
            vec![
                BlockDescriptor {
                    length: 4096,
                    flags: 0
                },
                BlockDescriptor {
                    length: 8192,
                    flags: 3
                }
            ]
        );
    }

    #[test]
    fn offset_hole_of_zero_length_is_invalid() {
        let mut b = 0u64.to_be_bytes().to_vec();
        b.extend_from_slice(&0u32.to_be_bytes());
        assert!(decode_offset_hole(&b).is_err());
    }
}
