//! A scripted NBD server on a Unix socket (a thread per connection) that answers the
//! fixed-newstyle handshake correctly and then misbehaves in exactly one named way,
//! after qemu's `nbd-fault-injector.py`. Data reads return [`byte_at`] so a
//! well-behaved run can be checked byte for byte.
//!
//! It negotiates simple replies (it refuses EXTENDED_HEADERS, and STRUCTURED_REPLY
//! unless the fault needs structured replies) and offers no meta contexts, so the
//! client reads every byte.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;

const FLAG_HAS_FLAGS: u16 = 1;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;

const CHUNK_OFFSET_DATA: u16 = 1;
const REPLY_FLAG_DONE: u16 = 1;

/// NBD_EIO.
pub const NBD_EIO: u32 = 5;

/// The byte the fake export holds at `offset`.
pub fn byte_at(offset: u64) -> u8 {
    (offset % 251) as u8 ^ 0x5a
}

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: a correct server (checks the fake itself and simple-reply interop).
    None,
    /// Accept, then never send a byte (the handshake stalls).
    SilentAfterAccept,
    /// Send the greeting, then hang up.
    CloseAfterGreeting,
    /// A greeting whose first magic is wrong.
    BadGreetingMagic,
    /// Advertise an export of 2^63 bytes.
    HugeExportSize,
    /// Advertise multi-conn, then give the second connection a different size.
    SizeChangesBetweenConnections,
    /// Answer the first read with a reply header of the wrong magic.
    ReadReplyBadMagic,
    /// Answer the first read with a reply for a cookie never sent.
    ReadReplyUnknownCookie,
    /// Answer every read with an NBD_EIO error reply.
    ReadReplyEio,
    /// Never answer reads (the connection stays open).
    ReadNoReply,
    /// Send the reply header and half the data of the first read, then hang up.
    ReadShortThenClose,
    /// Structured replies: a data chunk whose offset lies beyond the request.
    StructuredChunkOutOfRange,
}

/// A running fake server; stopped on drop.
#[derive(Debug)]
pub struct FakeNbd {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl FakeNbd {
    /// Listen on `dir/fake.sock` with an export of `size` bytes.
    pub fn start(dir: &Path, size: u64, fault: Fault) -> FakeNbd {
        let socket = dir.join("fake-nbd.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake NBD socket");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (st, conns) = (stop.clone(), connections.clone());
        let thread = std::thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let index = conns.fetch_add(1, Ordering::SeqCst);
                let stop = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(s, size, fault, index, &stop);
                });
            }
        });
        FakeNbd {
            socket,
            stop,
            thread: Some(thread),
            connections,
        }
    }

    /// `nbd+unix:///?socket=...`.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }
}

impl Drop for FakeNbd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_u32(s: &mut UnixStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut UnixStream) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(s: &mut UnixStream, option: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    s.write_all(&v)
}

/// Sleep until told to stop (a stalled peer that keeps its socket open).
fn stall(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(
    mut s: UnixStream,
    size: u64,
    fault: Fault,
    index: usize,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    if fault == Fault::SilentAfterAccept {
        stall(stop);
        return Ok(());
    }
    // Greeting: fixed newstyle, no zeroes.
    let mut g = Vec::new();
    let magic = if fault == Fault::BadGreetingMagic {
        0x1122_3344_5566_7788
    } else {
        NBDMAGIC
    };
    g.extend_from_slice(&magic.to_be_bytes());
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&g)?;
    if fault == Fault::CloseAfterGreeting {
        return Ok(());
    }
    let _client_flags = read_u32(&mut s)?;

    let structured = fault == Fault::StructuredChunkOutOfRange;
    let export_size = match fault {
        Fault::HugeExportSize => 1u64 << 63,
        Fault::SizeChangesBetweenConnections if index > 0 => size * 2,
        _ => size,
    };
    let mut tflags = FLAG_HAS_FLAGS | FLAG_READ_ONLY;
    if fault == Fault::SizeChangesBetweenConnections {
        tflags |= FLAG_CAN_MULTI_CONN;
    }
    // Option haggling.
    loop {
        if read_u64(&mut s)? != IHAVEOPT {
            return Ok(());
        }
        let option = read_u32(&mut s)?;
        let len = read_u32(&mut s)?;
        let mut data = vec![0u8; len.min(1 << 20) as usize];
        s.read_exact(&mut data)?;
        match option {
            OPT_STRUCTURED_REPLY if structured => option_reply(&mut s, option, REP_ACK, &[])?,
            OPT_SET_META_CONTEXT => option_reply(&mut s, option, REP_ACK, &[])?,
            OPT_GO => {
                let mut info = Vec::new();
                info.extend_from_slice(&0u16.to_be_bytes()); // NBD_INFO_EXPORT
                info.extend_from_slice(&export_size.to_be_bytes());
                info.extend_from_slice(&tflags.to_be_bytes());
                option_reply(&mut s, option, REP_INFO, &info)?;
                option_reply(&mut s, option, REP_ACK, &[])?;
                break;
            }
            OPT_ABORT => {
                let _ = option_reply(&mut s, option, REP_ACK, &[]);
                return Ok(());
            }
            OPT_EXPORT_NAME => return Ok(()),
            _ => option_reply(&mut s, option, REP_ERR_UNSUP, &[])?,
        }
    }

    // Transmission.
    let mut reads = 0usize;
    loop {
        let mut h = [0u8; 28];
        s.read_exact(&mut h)?;
        let magic = u32::from_be_bytes(h[0..4].try_into().expect("4"));
        if magic != REQUEST_MAGIC {
            return Ok(());
        }
        let command = u16::from_be_bytes(h[6..8].try_into().expect("2"));
        let cookie = u64::from_be_bytes(h[8..16].try_into().expect("8"));
        let offset = u64::from_be_bytes(h[16..24].try_into().expect("8"));
        let length = u32::from_be_bytes(h[24..28].try_into().expect("4"));
        if command == CMD_DISC {
            return Ok(());
        }
        if command != CMD_READ {
            simple_reply(&mut s, SIMPLE_REPLY_MAGIC, 22, cookie, &[])?; // EINVAL
            continue;
        }
        reads += 1;
        let data: Vec<u8> = (offset..offset + u64::from(length)).map(byte_at).collect();
        match fault {
            Fault::ReadReplyBadMagic => {
                simple_reply(&mut s, 0xdead_beef, 0, cookie, &data)?;
                stall(stop);
                return Ok(());
            }
            Fault::ReadReplyUnknownCookie => {
                simple_reply(&mut s, SIMPLE_REPLY_MAGIC, 0, cookie ^ 0x5555_0000, &data)?;
                stall(stop);
                return Ok(());
            }
            Fault::ReadReplyEio => simple_reply(&mut s, SIMPLE_REPLY_MAGIC, NBD_EIO, cookie, &[])?,
            Fault::ReadNoReply => {
                stall(stop);
                return Ok(());
            }
            Fault::ReadShortThenClose if reads == 1 => {
                simple_reply(
                    &mut s,
                    SIMPLE_REPLY_MAGIC,
                    0,
                    cookie,
                    &data[..data.len() / 2],
                )?;
                return Ok(());
            }
            Fault::StructuredChunkOutOfRange => {
                // One OFFSET_DATA chunk, flagged DONE, placed one request-length past
                // the requested range.
                let mut v = Vec::new();
                v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
                v.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
                v.extend_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
                v.extend_from_slice(&cookie.to_be_bytes());
                v.extend_from_slice(&(8 + data.len() as u32).to_be_bytes());
                v.extend_from_slice(&(offset + u64::from(length)).to_be_bytes());
                v.extend_from_slice(&data);
                s.write_all(&v)?;
            }
            _ => simple_reply(&mut s, SIMPLE_REPLY_MAGIC, 0, cookie, &data)?,
        }
    }
}

fn simple_reply(
    s: &mut UnixStream,
    magic: u32,
    error: u32,
    cookie: u64,
    data: &[u8],
) -> std::io::Result<()> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&magic.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    if error == 0 {
        v.extend_from_slice(data);
    }
    s.write_all(&v)
}
