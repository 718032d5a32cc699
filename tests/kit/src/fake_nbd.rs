//! A fake NBD server, in two layers:
//!
//! * [`Peer`]: the server end of one connection (any tokio stream), scripted by a test
//!   step by step: the fixed-newstyle handshake agreed per [`Hs`] (structured replies or
//!   extended headers, `base:allocation`, GO with NBD_INFO_EXPORT and block sizes), then
//!   requests read and replies sent, correct ones ([`Peer::answer`], [`Peer::serve`]) or
//!   raw bytes ([`Peer::send`], and the byte builders [`opt_reply_bytes`],
//!   [`info_export`], [`Peer::chunk_header`]) for the replies a codec would never
//!   produce. `nbd/tests/malformed.rs` scripts one per test over an in-memory pipe
//!   ([`duplex`]).
//! * [`FakeNbd`]: a Unix-socket listener in a thread of its own that runs a script per
//!   connection, stopped on drop; [`FakeNbd::start`] runs the named [`Fault`]s after
//!   qemu's `nbd-fault-injector.py`, for the `ferry` binary's tests
//!   (`importer/tests/protocol.rs`).
//!
//! Data reads are answered with [`byte_at`], so a well-behaved run can be checked byte
//! for byte. Protocol numbers come from `ferry_nbd::codec`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use ferry_nbd::codec::{self, chunk, cmd, info, opt, rep, tflag};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// NBD_EIO.
pub const NBD_EIO: u32 = 5;
/// NBD_EINVAL.
pub const NBD_EINVAL: u32 = 22;
const DONE: u16 = codec::REPLY_FLAG_DONE;

/// The byte the fake export holds at `offset`.
pub fn byte_at(offset: u64) -> u8 {
    (offset % 251) as u8 ^ 0x5a
}

/// `len` bytes of the fake export from `offset`.
pub fn content(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(byte_at).collect()
}

/// Big-endian bytes, for scripting replies.
pub fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}
/// Big-endian bytes, for scripting replies.
pub fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}
/// Big-endian bytes, for scripting replies.
pub fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// A fixed-newstyle greeting with handshake `flags`.
pub fn greeting_bytes(flags: u16) -> Vec<u8> {
    let mut g = be64(codec::NBD_MAGIC).to_vec();
    g.extend(be64(codec::IHAVEOPT));
    g.extend(be16(flags));
    g
}

/// An option reply: header and `data`.
pub fn opt_reply_bytes(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut v = be64(codec::OPTION_REPLY_MAGIC).to_vec();
    v.extend(be32(option));
    v.extend(be32(reply_type));
    v.extend(be32(data.len() as u32));
    v.extend(data);
    v
}

/// The payload of an NBD_INFO_EXPORT reply.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut v = be16(info::EXPORT).to_vec();
    v.extend(be64(size));
    v.extend(be16(flags));
    v
}

/// A simple reply: header and `data`.
pub fn simple_bytes(cookie: u64, error: u32, data: &[u8]) -> Vec<u8> {
    let mut v = be32(codec::SIMPLE_REPLY_MAGIC).to_vec();
    v.extend(be32(error));
    v.extend(be64(cookie));
    v.extend(data);
    v
}

/// What the standard handshake agrees to.
#[derive(Debug, Clone)]
pub struct Hs {
    /// Accept NBD_OPT_EXTENDED_HEADERS.
    pub extended: bool,
    /// Accept NBD_OPT_STRUCTURED_REPLY.
    pub structured: bool,
    /// The export size.
    pub size: u64,
    /// The transmission flags.
    pub flags: u16,
    /// NBD_INFO_BLOCK_SIZE (minimum, preferred, maximum), sent after NBD_INFO_EXPORT.
    pub block_size: Option<(u32, u32, u32)>,
    /// The id `base:allocation` is given on NBD_OPT_SET_META_CONTEXT; `None` offers no
    /// contexts (the option is acknowledged empty).
    pub context: Option<u32>,
}

/// A request as the server reads it (a write's payload is read and dropped).
#[derive(Debug, Clone, Copy)]
pub struct Req {
    /// The command.
    pub kind: u16,
    /// The cookie to answer.
    pub cookie: u64,
    /// The offset.
    pub offset: u64,
    /// The length.
    pub len: u64,
}

/// The server end of one connection. Reads return `None` once the client has gone (or
/// sent something that is not NBD).
#[derive(Debug)]
pub struct Peer<S = DuplexStream> {
    s: S,
    /// Extended headers are in use (requests and chunks are the 32-byte forms).
    pub extended: bool,
    /// The id given to `base:allocation`, once agreed.
    pub context: Option<u32>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// The server end over `s`, nothing agreed yet.
    pub fn new(s: S) -> Self {
        Peer {
            s,
            extended: false,
            context: None,
        }
    }

    /// Write `b` (a client that has gone is not an error here).
    pub async fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b).await;
    }

    /// Read exactly `n` bytes.
    pub async fn recv(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut v = vec![0; n];
        self.s.read_exact(&mut v).await.ok()?;
        Some(v)
    }

    /// Send the fixed-newstyle greeting with handshake `flags`.
    pub async fn greeting(&mut self, flags: u16) {
        self.send(&greeting_bytes(flags)).await;
    }

    /// Read the client's flags.
    pub async fn client_flags(&mut self) -> Option<u32> {
        let b = self.recv(4).await?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    /// Read one option: (option, data).
    pub async fn option(&mut self) -> Option<(u32, Vec<u8>)> {
        let h = self.recv(16).await?;
        assert_eq!(
            &h[..8],
            &be64(codec::IHAVEOPT),
            "client sent a bad option magic"
        );
        let o = u32::from_be_bytes(h[8..12].try_into().ok()?);
        let n = u32::from_be_bytes(h[12..16].try_into().ok()?);
        Some((o, self.recv(n as usize).await?))
    }

    /// Send an option reply.
    pub async fn opt_reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        self.send(&opt_reply_bytes(option, reply_type, data)).await;
    }

    /// Greeting (fixed newstyle, no zeroes), client flags, then
    /// [`Peer::options_until_go`].
    pub async fn negotiate_until_go(&mut self, hs: &Hs) -> Option<()> {
        self.greeting(codec::FLAG_FIXED_NEWSTYLE | codec::FLAG_NO_ZEROES)
            .await;
        self.client_flags().await?;
        self.options_until_go(hs).await
    }

    /// Answer options until GO (exclusive): extended headers / structured replies per
    /// `hs`, `base:allocation` as `hs.context`, anything else unsupported. Returns once
    /// GO has been read; `None` when the client went away or ended the negotiation
    /// (NBD_OPT_ABORT, acknowledged; NBD_OPT_EXPORT_NAME).
    pub async fn options_until_go(&mut self, hs: &Hs) -> Option<()> {
        loop {
            let (o, data) = self.option().await?;
            match o {
                opt::EXTENDED_HEADERS if hs.extended => {
                    self.extended = true;
                    self.opt_reply(o, rep::ACK, &[]).await;
                }
                opt::STRUCTURED_REPLY if hs.structured => self.opt_reply(o, rep::ACK, &[]).await,
                opt::SET_META_CONTEXT => {
                    if let Some(ctx) = hs.context {
                        assert!(String::from_utf8_lossy(&data).contains("base:allocation"));
                        let mut p = be32(ctx).to_vec();
                        p.extend(b"base:allocation");
                        self.opt_reply(o, rep::META_CONTEXT, &p).await;
                        self.context = Some(ctx);
                    }
                    self.opt_reply(o, rep::ACK, &[]).await;
                }
                opt::GO => return Some(()),
                opt::ABORT => {
                    self.opt_reply(o, rep::ACK, &[]).await;
                    return None;
                }
                opt::EXPORT_NAME => return None,
                _ => self.opt_reply(o, rep::ERR_UNSUP, b"not here").await,
            }
        }
    }

    /// Answer GO: NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE if `hs` has one, ACK.
    pub async fn go_reply(&mut self, hs: &Hs) {
        self.opt_reply(opt::GO, rep::INFO, &info_export(hs.size, hs.flags))
            .await;
        if let Some((a, b, c)) = hs.block_size {
            let mut p = be16(info::BLOCK_SIZE).to_vec();
            p.extend(be32(a));
            p.extend(be32(b));
            p.extend(be32(c));
            self.opt_reply(opt::GO, rep::INFO, &p).await;
        }
        self.opt_reply(opt::GO, rep::ACK, &[]).await;
    }

    /// The whole correct handshake.
    pub async fn handshake(&mut self, hs: &Hs) -> Option<()> {
        self.negotiate_until_go(hs).await?;
        self.go_reply(hs).await;
        Some(())
    }

    /// Read one request (compact or extended, as agreed).
    pub async fn request(&mut self) -> Option<Req> {
        let n = if self.extended {
            codec::EXTENDED_REQUEST_LEN
        } else {
            codec::REQUEST_LEN
        };
        let h = self.recv(n).await?;
        let magic = u32::from_be_bytes(h[0..4].try_into().ok()?);
        let expected = if self.extended {
            codec::EXTENDED_REQUEST_MAGIC
        } else {
            codec::REQUEST_MAGIC
        };
        if magic != expected {
            return None;
        }
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let kind = u16::from_be_bytes([h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().ok()?);
        let offset = u64::from_be_bytes(h[16..24].try_into().ok()?);
        let len = if self.extended {
            u64::from_be_bytes(h[24..32].try_into().ok()?)
        } else {
            u64::from(u32::from_be_bytes(h[24..28].try_into().ok()?))
        };
        let payload =
            kind == cmd::WRITE && (!self.extended || flags & codec::cmdflag::PAYLOAD_LEN != 0);
        if payload {
            self.recv(len as usize).await?;
        }
        Some(Req {
            kind,
            cookie,
            offset,
            len,
        })
    }

    /// A structured (or, with extended headers, extended) reply chunk header.
    pub fn chunk_header(&self, flags: u16, kind: u16, cookie: u64, len: u64) -> Vec<u8> {
        let mut v;
        if self.extended {
            v = be32(codec::EXTENDED_REPLY_MAGIC).to_vec();
            v.extend(be16(flags));
            v.extend(be16(kind));
            v.extend(be64(cookie));
            v.extend(be64(0));
            v.extend(be64(len));
        } else {
            v = be32(codec::STRUCTURED_REPLY_MAGIC).to_vec();
            v.extend(be16(flags));
            v.extend(be16(kind));
            v.extend(be64(cookie));
            v.extend(be32(len as u32));
        }
        v
    }

    /// Send a chunk: header and `payload`.
    pub async fn chunk(&mut self, flags: u16, kind: u16, cookie: u64, payload: &[u8]) {
        let mut v = self.chunk_header(flags, kind, cookie, payload.len() as u64);
        v.extend(payload);
        self.send(&v).await;
    }

    /// Send a simple reply.
    pub async fn simple(&mut self, cookie: u64, error: u32, data: &[u8]) {
        self.send(&simple_bytes(cookie, error, data)).await;
    }

    /// Send an OFFSET_DATA chunk.
    pub async fn data(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) {
        let mut p = be64(offset).to_vec();
        p.extend(data);
        self.chunk(flags, chunk::OFFSET_DATA, cookie, &p).await;
    }

    /// Send an OFFSET_HOLE chunk.
    pub async fn hole(&mut self, flags: u16, cookie: u64, offset: u64, len: u32) {
        let mut p = be64(offset).to_vec();
        p.extend(be32(len));
        self.chunk(flags, chunk::OFFSET_HOLE, cookie, &p).await;
    }

    /// Send the final NONE chunk.
    pub async fn done(&mut self, cookie: u64) {
        self.chunk(DONE, chunk::NONE, cookie, &[]).await;
    }

    /// Send a BLOCK_STATUS chunk of (length, flags) extents for context `ctx`.
    pub async fn status(&mut self, flags: u16, cookie: u64, ctx: u32, extents: &[(u32, u32)]) {
        let mut p = be32(ctx).to_vec();
        for (l, f) in extents {
            p.extend(be32(*l));
            p.extend(be32(*f));
        }
        self.chunk(flags, chunk::BLOCK_STATUS, cookie, &p).await;
    }

    /// Send an ERROR chunk.
    pub async fn error(&mut self, flags: u16, cookie: u64, err: u32, msg: &str) {
        let mut p = be32(err).to_vec();
        p.extend(be16(msg.len() as u16));
        p.extend(msg.as_bytes());
        self.chunk(flags, chunk::ERROR, cookie, &p).await;
    }

    /// A correct structured reply: data for reads ([`content`]), one extent for block
    /// status, a bare DONE for the rest.
    pub async fn answer(&mut self, r: Req) {
        match r.kind {
            cmd::READ => {
                let d = content(r.offset, r.len);
                self.data(DONE, r.cookie, r.offset, &d).await;
            }
            cmd::BLOCK_STATUS => {
                let ctx = self.context.unwrap_or(0);
                self.status(DONE, r.cookie, ctx, &[(r.len as u32, 0)]).await;
            }
            _ => self.done(r.cookie).await,
        }
    }

    /// Answer every request correctly until the client goes away.
    pub async fn serve(&mut self) {
        while let Some(r) = self.request().await {
            if r.kind == cmd::DISC {
                return;
            }
            self.answer(r).await;
        }
    }

    /// Keep the connection open, reading and ignoring the client, until it goes away.
    pub async fn hold(&mut self) {
        let mut b = [0u8; 4096];
        while let Ok(n) = self.s.read(&mut b).await {
            if n == 0 {
                return;
            }
        }
    }

    /// Keep the connection open without reading, until the server is dropped.
    pub async fn stall(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// The client halves of an in-memory connection whose server end runs `script`
/// (spawned on the current tokio runtime).
#[allow(clippy::type_complexity)]
pub fn duplex<F, Fut>(
    script: F,
) -> (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (c, s) = tokio::io::duplex(1 << 20);
    tokio::spawn(script(Peer::new(s)));
    let (rd, wr) = tokio::io::split(c);
    (Box::new(rd), Box::new(wr))
}

/// The server end of a connection to a [`FakeNbd`].
pub type UnixPeer = Peer<tokio::net::UnixStream>;

/// A fake server on a Unix socket: a thread runs a tokio runtime that accepts
/// connections and runs a script on each; dropping it ends every connection.
#[derive(Debug)]
pub struct FakeNbd {
    /// The socket.
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl FakeNbd {
    /// Listen on `dir/fake-nbd.sock` and run `script(peer, index)` on each connection,
    /// `index` counting from 0.
    pub fn serve<F, Fut>(dir: &Path, script: F) -> FakeNbd
    where
        F: Fn(UnixPeer, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let socket = dir.join("fake-nbd.sock");
        let std_listener =
            std::os::unix::net::UnixListener::bind(&socket).expect("bind fake NBD socket");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake NBD runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::UnixListener::from_std(std_listener).expect("fake NBD listener");
                let accept = async {
                    loop {
                        let Ok((s, _)) = listener.accept().await else {
                            continue;
                        };
                        let index = conns.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(script(Peer::new(s), index));
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = accept => {}
                }
            });
            // Dropping the runtime drops every connection's task, closing its socket.
        });
        FakeNbd {
            socket,
            stop: Some(stop),
            thread: Some(thread),
            connections,
        }
    }

    /// [`FakeNbd::serve`] a correct server of an export of `size` bytes that
    /// misbehaves as `fault` says.
    pub fn start(dir: &Path, size: u64, fault: Fault) -> FakeNbd {
        Self::serve(dir, move |p, index| async move {
            let _ = fault.run(p, size, index).await;
        })
    }

    /// `nbd+unix:///?socket=...`.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }
}

impl Drop for FakeNbd {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How [`FakeNbd::start`]'s server misbehaves. It negotiates simple replies (it refuses
/// EXTENDED_HEADERS, and STRUCTURED_REPLY unless the fault needs structured replies)
/// and offers no meta contexts, so the client reads every byte.
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

impl Fault {
    /// Serve connection number `index` of an export of `size` bytes, misbehaving.
    async fn run(self, mut p: UnixPeer, size: u64, index: usize) -> Option<()> {
        if self == Fault::SilentAfterAccept {
            p.stall().await;
        }
        let mut g = greeting_bytes(codec::FLAG_FIXED_NEWSTYLE | codec::FLAG_NO_ZEROES);
        if self == Fault::BadGreetingMagic {
            g[..8].copy_from_slice(&be64(0x1122_3344_5566_7788));
        }
        p.send(&g).await;
        if self == Fault::CloseAfterGreeting {
            return None;
        }
        p.client_flags().await?;
        let mut flags = tflag::HAS_FLAGS | tflag::READ_ONLY;
        if self == Fault::SizeChangesBetweenConnections {
            flags |= tflag::CAN_MULTI_CONN;
        }
        let hs = Hs {
            extended: false,
            structured: self == Fault::StructuredChunkOutOfRange,
            size: match self {
                Fault::HugeExportSize => 1 << 63,
                Fault::SizeChangesBetweenConnections if index > 0 => size * 2,
                _ => size,
            },
            flags,
            block_size: None,
            context: None,
        };
        p.options_until_go(&hs).await?;
        p.go_reply(&hs).await;

        let mut reads = 0usize;
        loop {
            let r = p.request().await?;
            if r.kind == cmd::DISC {
                return None;
            }
            if r.kind != cmd::READ {
                p.simple(r.cookie, NBD_EINVAL, &[]).await;
                continue;
            }
            reads += 1;
            let data = content(r.offset, r.len);
            match self {
                Fault::ReadReplyBadMagic => {
                    let mut v = simple_bytes(r.cookie, 0, &data);
                    v[..4].copy_from_slice(&be32(0xdead_beef));
                    p.send(&v).await;
                    p.stall().await;
                }
                Fault::ReadReplyUnknownCookie => {
                    p.simple(r.cookie ^ 0x5555_0000, 0, &data).await;
                    p.stall().await;
                }
                Fault::ReadReplyEio => p.simple(r.cookie, NBD_EIO, &[]).await,
                Fault::ReadNoReply => p.stall().await,
                Fault::ReadShortThenClose if reads == 1 => {
                    p.simple(r.cookie, 0, &data[..data.len() / 2]).await;
                    return None;
                }
                Fault::StructuredChunkOutOfRange => {
                    // One OFFSET_DATA chunk, flagged DONE, placed one request-length
                    // past the requested range.
                    p.data(DONE, r.cookie, r.offset + r.len, &data).await;
                }
                _ => p.simple(r.cookie, 0, &data).await,
            }
        }
    }
}
