//! The async NBD client: a thin tokio driver over [`crate::codec`].
//!
//! ```text
//!  callers ──submit──► pending map (cookie → waiter) ◄──── reader task
//!     │                     ▲                                 │ reads headers, then
//!     └──► writer (mutex) ──┘ request headers                 │ payloads straight into
//!                                                             ▼ the waiter's buffer
//! ```
//!
//! Many requests are in flight on one connection; replies may come in any order and
//! interleave. Read data is read from the socket directly into the caller's buffer (no
//! intermediate copy). When the connection dies, every pending request fails with the
//! same error; a request that waits longer than the request timeout kills the
//! connection, so nothing hangs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::codec::{self, BlockDescriptor, BlockSize, ReplyHeader, chunk, cmd, opt, rep, tflag};
use crate::error::{Error, ProtocolError, Result};
use crate::uri::{Address, Uri};

/// Cap on the number of chunks one read reply may be split into.
pub const MAX_CHUNKS_PER_REPLY: usize = 65536;
/// Cap on block-status length asked in one compact request (below 4 GiB, block aligned).
pub const MAX_BLOCK_STATUS_REQUEST: u64 = 1 << 31;

/// A buffer the client can read into. The client reads exactly `as_mut_bytes().len()`
/// bytes; the buffer is moved into the client while the request is in flight and given
/// back on success.
pub trait ReadBuf: Send + 'static {
    /// The bytes to fill.
    fn as_mut_bytes(&mut self) -> &mut [u8];
}

impl ReadBuf for Vec<u8> {
    fn as_mut_bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Meta contexts to select (e.g. `base:allocation`). Empty selects none.
    pub meta_contexts: Vec<String>,
    /// Bound on connecting plus the whole handshake.
    pub connect_timeout: Duration,
    /// Bound on waiting for any one reply.
    pub request_timeout: Duration,
    /// Try extended headers (64-bit lengths) before structured replies.
    pub extended_headers: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            meta_contexts: vec!["base:allocation".into()],
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            extended_headers: true,
        }
    }
}

/// What negotiation established about the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Block size constraints (protocol defaults when not advertised).
    pub block_size: BlockSize,
    /// Whether the server advertised block sizes.
    pub block_size_advertised: bool,
    /// Structured replies in use.
    pub structured: bool,
    /// Extended headers in use.
    pub extended: bool,
    /// Selected meta contexts: (id, name).
    pub contexts: Vec<(u32, String)>,
}

impl ExportInfo {
    /// Whether the server says several connections may share the export.
    pub fn can_multi_conn(&self) -> bool {
        self.flags & tflag::CAN_MULTI_CONN != 0
    }
    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.flags & tflag::READ_ONLY != 0
    }
    /// The id of a selected meta context.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }
    /// Largest read/write payload this client will send.
    pub fn max_payload(&self) -> u64 {
        let advertised = if self.block_size_advertised {
            u64::from(self.block_size.maximum)
        } else {
            u64::from(BlockSize::default().maximum)
        };
        advertised.min(codec::MAX_READ_LEN)
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

enum Waiter<B> {
    Read {
        buf: B,
        offset: u64,
        len: u64,
        /// Covered ranges relative to `offset`, sorted, non-overlapping.
        got: Vec<(u64, u64)>,
        tx: oneshot::Sender<Result<B>>,
    },
    Status {
        context: u32,
        descriptors: Vec<BlockDescriptor>,
        tx: oneshot::Sender<Result<Vec<BlockDescriptor>>>,
    },
    Plain {
        tx: oneshot::Sender<Result<()>>,
    },
}

struct Pending<B> {
    command: &'static str,
    offset: u64,
    waiter: Waiter<B>,
    error: Option<Error>,
}

impl<B> Pending<B> {
    fn fail(self, e: Error) {
        match self.waiter {
            Waiter::Read { tx, .. } => drop(tx.send(Err(e))),
            Waiter::Status { tx, .. } => drop(tx.send(Err(e))),
            Waiter::Plain { tx } => drop(tx.send(Err(e))),
        }
    }
}

struct Table<B> {
    map: HashMap<u64, Pending<B>>,
    dead: Option<Error>,
}

struct Shared<B> {
    table: Mutex<Table<B>>,
    info: ExportInfo,
}

impl<B> Shared<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table<B>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/remove), so recover from poisoning.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark the connection dead and fail every pending request.
    fn kill(&self, e: Error) {
        let drained: Vec<Pending<B>> = {
            let mut t = self.lock();
            if t.dead.is_none() {
                t.dead = Some(e.clone());
            }
            t.map.drain().map(|(_, p)| p).collect()
        };
        for p in drained {
            p.fail(e.clone());
        }
    }
}

struct Inner<B> {
    shared: Arc<Shared<B>>,
    writer: tokio::sync::Mutex<Option<BoxWrite>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    cookie: AtomicU64,
    request_timeout: Duration,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

/// A connected NBD client. Cheap to clone; clones share the connection.
pub struct Client<B: ReadBuf = Vec<u8>> {
    inner: Arc<Inner<B>>,
}

impl<B: ReadBuf> Clone for Client<B> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
        }
    }
}

impl<B: ReadBuf> std::fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.inner.shared.info)
            .finish()
    }
}

impl<B: ReadBuf> Client<B> {
    /// Connect to the server named by `uri` and negotiate.
    pub async fn connect(uri: &Uri, opts: &ConnectOptions) -> Result<Self> {
        let what = "connect and handshake";
        let fut = async {
            // TLS settings are checked before anything is sent.
            let tls = match uri.tls {
                true => Some(tls_setup(uri)?),
                false => None,
            };
            let conn = open(&uri.address).await?;
            match tls {
                None => {
                    let (rd, wr) = conn.split();
                    Self::handshake_on(rd, wr, &uri.export, opts).await
                }
                Some(setup) => Self::connect_tls(uri, conn, setup, opts).await,
            }
        };
        tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                what,
                after: opts.connect_timeout,
            })?
    }

    /// STARTTLS on a fresh connection, the TLS handshake, then negotiation inside TLS.
    /// Fails closed: nothing but the greeting and STARTTLS goes in the clear.
    async fn connect_tls(
        uri: &Uri,
        conn: Conn,
        (config, name): TlsSetup,
        opts: &ConnectOptions,
    ) -> Result<Self> {
        let target = uri.address.to_string();
        let mut stream = conn.into_stream();
        let no_zeroes = {
            let (mut rd, mut wr) = tokio::io::split(&mut stream);
            let no_zeroes = prelude(&mut rd, &mut wr, true).await.map_err(|e| match e {
                Error::Protocol(ProtocolError::Unsupported(what)) => Error::Tls {
                    target: target.clone(),
                    message: format!("the server does not offer TLS ({what})"),
                },
                e => e,
            })?;
            send_option(&mut rd, &mut wr, opt::STARTTLS, &[]).await?;
            let (h, p) = read_option_reply(&mut rd, opt::STARTTLS).await?;
            if h.reply_type != rep::ACK {
                let m = codec::decode_option_error_message(&p);
                return Err(Error::Tls {
                    target,
                    message: format!(
                        "the server does not offer TLS (NBD_OPT_STARTTLS: {}{}); an nbds:// URI \
                         never falls back to plain text",
                        codec::option_error_name(h.reply_type),
                        if m.is_empty() {
                            String::new()
                        } else {
                            format!(": {m}")
                        }
                    ),
                });
            }
            no_zeroes
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| Error::Tls {
                target: target.clone(),
                message: crate::tls::explain(&e),
            })?;
        tracing::debug!(target, "NBD TLS session established");
        let (rd, wr) = tokio::io::split(tls);
        Self::start(
            Box::new(rd),
            Box::new(wr),
            Some(no_zeroes),
            &uri.export,
            opts,
        )
        .await
    }

    /// Negotiate over an already-open stream pair (used by tests and the fuzzer).
    pub async fn handshake_on(
        rd: BoxRead,
        wr: BoxWrite,
        export: &str,
        opts: &ConnectOptions,
    ) -> Result<Self> {
        Self::start(rd, wr, None, export, opts).await
    }

    /// Negotiate (after the greeting when `greeted` gives its no-zeroes flag), then start
    /// the reader.
    async fn start(
        rd: BoxRead,
        wr: BoxWrite,
        greeted: Option<bool>,
        export: &str,
        opts: &ConnectOptions,
    ) -> Result<Self> {
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let mut wr = wr;
        let no_zeroes = match greeted {
            Some(z) => z,
            None => prelude(&mut rd, &mut wr, false).await?,
        };
        let info = negotiate(&mut rd, &mut wr, no_zeroes, export, opts).await?;
        tracing::debug!(?info, "NBD negotiation done");
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                map: HashMap::new(),
                dead: None,
            }),
            info,
        });
        let reader = tokio::spawn(reader_task(rd, shared.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(Some(wr)),
                reader: Mutex::new(Some(reader)),
                cookie: AtomicU64::new(1),
                request_timeout: opts.request_timeout,
            }),
        })
    }

    /// What negotiation established.
    pub fn info(&self) -> &ExportInfo {
        &self.inner.shared.info
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.info().size
    }

    /// Read `buf.as_mut_bytes().len()` bytes at `offset` into `buf`. Holes in the reply
    /// are zero-filled. The buffer comes back on success; on failure it is dropped.
    pub async fn read(&self, offset: u64, mut buf: B) -> Result<B> {
        let len = buf.as_mut_bytes().len() as u64;
        self.check_range("read", offset, len, self.info().max_payload())?;
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter::Read {
            buf,
            offset,
            len,
            got: Vec::new(),
            tx,
        };
        self.submit("read", cmd::READ, 0, offset, len, None, waiter)
            .await?;
        self.wait("read", rx).await
    }

    /// Block status of one selected context from `offset`, for up to `len` bytes (a hint:
    /// the server may return less, and the last extent may run past; callers clamp).
    pub async fn block_status(
        &self,
        offset: u64,
        len: u64,
        context: u32,
    ) -> Result<Vec<BlockDescriptor>> {
        let info = self.info();
        let len = if info.extended {
            len
        } else {
            len.min(MAX_BLOCK_STATUS_REQUEST)
        };
        self.check_range("block status", offset, len, u64::MAX)?;
        if !info.contexts.iter().any(|(id, _)| *id == context) {
            return Err(Error::InvalidRequest(format!(
                "meta context {context} was not selected"
            )));
        }
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter::Status {
            context,
            descriptors: Vec::new(),
            tx,
        };
        self.submit(
            "block status",
            cmd::BLOCK_STATUS,
            0,
            offset,
            len,
            None,
            waiter,
        )
        .await?;
        self.wait("block status", rx).await
    }

    /// Write `data` at `offset`.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.info().read_only() {
            return Err(Error::InvalidRequest("export is read-only".into()));
        }
        self.check_range(
            "write",
            offset,
            data.len() as u64,
            self.info().max_payload(),
        )?;
        let flags = if self.info().extended {
            codec::cmdflag::PAYLOAD_LEN
        } else {
            0
        };
        self.plain(
            "write",
            cmd::WRITE,
            flags,
            offset,
            data.len() as u64,
            Some(data),
        )
        .await
    }

    /// Write zeroes over `[offset, offset+len)`.
    pub async fn write_zeroes(&self, offset: u64, len: u64, no_hole: bool) -> Result<()> {
        if self.info().flags & tflag::SEND_WRITE_ZEROES == 0 {
            return Err(Error::Unsupported(
                "server does not support WRITE_ZEROES".into(),
            ));
        }
        let limit = if self.info().extended {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        self.check_range("write zeroes", offset, len, limit)?;
        let flags = if no_hole { codec::cmdflag::NO_HOLE } else { 0 };
        self.plain("write zeroes", cmd::WRITE_ZEROES, flags, offset, len, None)
            .await
    }

    /// Flush everything already acknowledged to stable storage.
    pub async fn flush(&self) -> Result<()> {
        if self.info().flags & tflag::SEND_FLUSH == 0 {
            return Ok(());
        }
        self.plain("flush", cmd::FLUSH, 0, 0, 0, None).await
    }

    /// Send NBD_CMD_DISC and close the write side. Pending requests still complete.
    pub async fn disconnect(&self) {
        let wr = self.inner.writer.lock().await.take();
        if let Some(mut wr) = wr {
            let mut out = Vec::with_capacity(32);
            let req = codec::Request {
                flags: 0,
                command: cmd::DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            };
            // Bounded like every send: a server that stopped reading cannot hang it.
            let send = async {
                if codec::encode_request(&req, self.info().extended, &mut out).is_ok() {
                    let _ = wr.write_all(&out).await;
                }
                let _ = wr.shutdown().await;
            };
            let _ = tokio::time::timeout(self.inner.request_timeout, send).await;
        }
    }

    async fn plain(
        &self,
        name: &'static str,
        command: u16,
        flags: u16,
        offset: u64,
        len: u64,
        payload: Option<&[u8]>,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            name,
            command,
            flags,
            offset,
            len,
            payload,
            Waiter::Plain { tx },
        )
        .await?;
        self.wait(name, rx).await
    }

    fn check_range(&self, what: &str, offset: u64, len: u64, max: u64) -> Result<()> {
        let info = self.info();
        let end = offset.checked_add(len).ok_or_else(|| {
            Error::InvalidRequest(format!("{what} at {offset} of {len} bytes overflows"))
        })?;
        if len == 0 || end > info.size {
            return Err(Error::InvalidRequest(format!(
                "{what} of {len} bytes at {offset} is outside the export of {} bytes",
                info.size
            )));
        }
        if len > max {
            return Err(Error::InvalidRequest(format!(
                "{what} of {len} bytes exceeds the limit of {max}"
            )));
        }
        let min = u64::from(info.block_size.minimum);
        if !offset.is_multiple_of(min) || (!len.is_multiple_of(min) && end != info.size) {
            return Err(Error::InvalidRequest(format!(
                "{what} at {offset} of {len} bytes is not aligned to the server's {min}-byte blocks"
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        name: &'static str,
        command: u16,
        flags: u16,
        offset: u64,
        length: u64,
        payload: Option<&[u8]>,
        waiter: Waiter<B>,
    ) -> Result<()> {
        let cookie = self.inner.cookie.fetch_add(1, Ordering::Relaxed);
        let mut header = Vec::with_capacity(codec::EXTENDED_REQUEST_LEN);
        let req = codec::Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        codec::encode_request(&req, self.info().extended, &mut header)?;
        {
            let mut t = self.inner.shared.lock();
            if let Some(e) = &t.dead {
                return Err(e.clone());
            }
            t.map.insert(
                cookie,
                Pending {
                    command: name,
                    offset,
                    waiter,
                    error: None,
                },
            );
        }
        let mut w = self.inner.writer.lock().await;
        // Queued behind a send that failed or timed out: the connection is gone (and
        // this request was failed with it).
        if let Some(e) = self.inner.shared.lock().dead.clone() {
            return Err(e);
        }
        let send = async {
            match w.as_mut() {
                None => Err(Error::Disconnected(" (client disconnected)".into())),
                Some(wr) => {
                    let r = wr.write_all(&header).await;
                    let r = match (r, payload) {
                        (Ok(()), Some(p)) => wr.write_all(p).await,
                        (r, _) => r,
                    };
                    // A TLS stream's write may return with the record still buffered
                    // in rustls (the socket would have blocked); only a flush drives it
                    // out. A plain socket's flush is a no-op.
                    let r = match r {
                        Ok(()) => wr.flush().await,
                        r => r,
                    };
                    r.map_err(Error::from)
                }
            }
        };
        // A server that stops reading must not hang the sender: bound this request's own
        // send (not the wait for the writer, whose holder is bounded the same way). A
        // timed-out send leaves a partial request on the wire, so the connection dies.
        let after = self.inner.request_timeout;
        let res = match tokio::time::timeout(after, send).await {
            Ok(r) => r,
            Err(_) => {
                self.abort_reader();
                Err(Error::Timeout { what: name, after })
            }
        };
        if let Err(e) = res {
            // Still holding the writer: senders queued behind see the connection dead.
            self.inner.shared.kill(e.clone());
            return Err(e);
        }
        drop(w);
        Ok(())
    }

    fn abort_reader(&self) {
        if let Some(h) = self
            .inner
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }

    async fn wait<T>(&self, what: &'static str, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        let after = self.inner.request_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Disconnected(" while a request was pending".into())),
            Err(_) => {
                let e = Error::Timeout { what, after };
                // A server that stops answering one request is not trusted with the others.
                self.inner.shared.kill(e.clone());
                self.abort_reader();
                Err(e)
            }
        }
    }
}

/// The client configuration and the name to verify, for an `nbds` URI.
type TlsSetup = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

fn tls_setup(uri: &Uri) -> Result<TlsSetup> {
    let target = uri.address.to_string();
    let config = crate::tls::client_config(&target, &uri.tls_settings)?;
    let host = match &uri.address {
        Address::Tcp { host, .. } => Some(host.as_str()),
        Address::Unix(_) => None,
    };
    let name = crate::tls::server_name(&target, &uri.tls_settings, host)?;
    Ok((config, name))
}

/// A byte stream TLS can run over.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A new connection.
enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Conn {
    /// Owned halves without a lock between them (the plain-text path).
    fn split(self) -> (BoxRead, BoxWrite) {
        match self {
            Conn::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Conn::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }

    /// The whole stream (for TLS).
    fn into_stream(self) -> Box<dyn Stream> {
        match self {
            Conn::Unix(s) => Box::new(s),
            Conn::Tcp(s) => Box::new(s),
        }
    }
}

async fn open(addr: &Address) -> Result<Conn> {
    let target = addr.to_string();
    let conn_err = |e: std::io::Error| Error::Connect {
        target: target.clone(),
        message: e.to_string(),
        kind: e.kind(),
    };
    match addr {
        Address::Unix(p) => Ok(Conn::Unix(
            tokio::net::UnixStream::connect(p).await.map_err(conn_err)?,
        )),
        Address::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(conn_err)?;
            s.set_nodelay(true).map_err(conn_err)?;
            Ok(Conn::Tcp(s))
        }
    }
}

/// Send an option and read its reply header, checking the echoed option.
async fn send_option<R, W>(rd: &mut R, wr: &mut W, option: u32, data: &[u8]) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = rd;
    let mut out = Vec::with_capacity(16 + data.len());
    codec::encode_option(option, data, &mut out);
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(())
}

async fn read_option_reply<R: AsyncRead + Unpin>(
    rd: &mut R,
    option: u32,
) -> Result<(codec::OptionReplyHeader, Vec<u8>)> {
    let mut h = [0u8; codec::OPTION_REPLY_HEADER_LEN];
    rd.read_exact(&mut h).await?;
    let h = codec::decode_option_reply_header(&h)?;
    if h.option != option {
        return Err(ProtocolError::Invalid(format!(
            "option reply for option {} while waiting for option {option}",
            h.option
        ))
        .into());
    }
    let mut payload = vec![0u8; h.length as usize];
    rd.read_exact(&mut payload).await?;
    Ok((h, payload))
}

/// Send an option that expects only an ACK. `Ok(Err(reply_type))` is a refusal.
async fn simple_option<R, W>(
    rd: &mut R,
    wr: &mut W,
    option: u32,
) -> Result<std::result::Result<(), u32>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    send_option(rd, wr, option, &[]).await?;
    for _ in 0..codec::MAX_OPTION_REPLIES {
        let (h, _) = read_option_reply(rd, option).await?;
        if h.reply_type == rep::ERR_TLS_REQD {
            return Err(Error::TlsRequired);
        }
        if h.is_error() {
            return Ok(Err(h.reply_type));
        }
        if h.reply_type == rep::ACK {
            return Ok(Ok(()));
        }
    }
    Err(ProtocolError::Invalid("too many option replies".into()).into())
}

fn refused(option: &'static str, reply_type: u32, payload: &[u8]) -> Error {
    let m = codec::decode_option_error_message(payload);
    Error::Refused {
        option,
        reason: codec::option_error_name(reply_type),
        message: if m.is_empty() {
            String::new()
        } else {
            format!(": {m}")
        },
    }
}

/// The server's greeting and the client's flags; whether the server omits the zeroes
/// after EXPORT_NAME. `need_fixed`: STARTTLS follows, which needs fixed newstyle.
async fn prelude<R, W>(rd: &mut R, wr: &mut W, need_fixed: bool) -> Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut g = [0u8; codec::GREETING_LEN];
    rd.read_exact(&mut g).await?;
    let greeting = codec::decode_greeting(&g)?;
    if need_fixed && greeting.flags & codec::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(
            ProtocolError::Unsupported("no fixed newstyle negotiation, so no STARTTLS").into(),
        );
    }
    let no_zeroes = greeting.flags & codec::FLAG_NO_ZEROES != 0;
    let cflags = codec::FLAG_C_FIXED_NEWSTYLE
        | if no_zeroes {
            codec::FLAG_C_NO_ZEROES
        } else {
            0
        };
    wr.write_all(&cflags.to_be_bytes()).await?;
    wr.flush().await?;
    Ok(no_zeroes)
}

/// Everything after the greeting: extended headers or structured replies, meta
/// contexts, GO (or EXPORT_NAME).
async fn negotiate<R, W>(
    rd: &mut R,
    wr: &mut W,
    no_zeroes: bool,
    export: &str,
    opts: &ConnectOptions,
) -> Result<ExportInfo>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut extended = false;
    if opts.extended_headers {
        extended = simple_option(rd, wr, opt::EXTENDED_HEADERS).await?.is_ok();
    }
    let structured = extended || simple_option(rd, wr, opt::STRUCTURED_REPLY).await?.is_ok();

    let mut contexts = Vec::new();
    if structured && !opts.meta_contexts.is_empty() {
        let queries: Vec<&str> = opts.meta_contexts.iter().map(String::as_str).collect();
        let data = codec::meta_context_payload(export, &queries)?;
        send_option(rd, wr, opt::SET_META_CONTEXT, &data).await?;
        let mut done = false;
        for _ in 0..codec::MAX_OPTION_REPLIES {
            let (h, p) = read_option_reply(rd, opt::SET_META_CONTEXT).await?;
            if h.is_error() {
                tracing::warn!(
                    error = codec::option_error_name(h.reply_type),
                    "server refused meta contexts"
                );
                done = true;
                break;
            }
            match h.reply_type {
                rep::META_CONTEXT => contexts.push(codec::decode_meta_context(&p)?),
                rep::ACK => {
                    done = true;
                    break;
                }
                _ => {}
            }
        }
        if !done {
            return Err(ProtocolError::Invalid("too many meta context replies".into()).into());
        }
    }

    let data = codec::go_payload(export, &[codec::info::BLOCK_SIZE])?;
    send_option(rd, wr, opt::GO, &data).await?;
    let mut export_info = None;
    let mut block_size = None;
    for _ in 0..codec::MAX_OPTION_REPLIES {
        let (h, p) = read_option_reply(rd, opt::GO).await?;
        if h.reply_type == rep::ERR_TLS_REQD {
            return Err(Error::TlsRequired);
        }
        if h.is_error() {
            if h.reply_type == rep::ERR_UNSUP && !extended {
                return export_name_fallback(rd, wr, export, no_zeroes, structured, contexts).await;
            }
            // End negotiation politely (the server may log a bare hang-up as an error);
            // best effort, since we are giving up on this connection anyway.
            let _ = send_option(rd, wr, opt::ABORT, &[]).await;
            return Err(refused("NBD_OPT_GO (select export)", h.reply_type, &p));
        }
        match h.reply_type {
            rep::INFO => match codec::decode_info(&p)? {
                codec::Info::Export { size, flags } => export_info = Some((size, flags)),
                codec::Info::BlockSize(bs) => block_size = Some(bs),
                _ => {}
            },
            rep::ACK => {
                let (size, flags) = export_info.ok_or_else(|| {
                    ProtocolError::Invalid("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT".into())
                })?;
                return finish_info(size, flags, block_size, structured, extended, contexts);
            }
            _ => {}
        }
    }
    Err(ProtocolError::Invalid("too many NBD_OPT_GO replies".into()).into())
}

async fn export_name_fallback<R, W>(
    rd: &mut R,
    wr: &mut W,
    export: &str,
    no_zeroes: bool,
    structured: bool,
    contexts: Vec<(u32, String)>,
) -> Result<ExportInfo>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    send_option(rd, wr, opt::EXPORT_NAME, export.as_bytes()).await?;
    let mut b = [0u8; 10];
    rd.read_exact(&mut b).await.map_err(|_| Error::Refused {
        option: "NBD_OPT_EXPORT_NAME",
        reason: "unknown export",
        message: String::new(),
    })?;
    let (size, flags) = codec::decode_export_name_reply(&b)?;
    if !no_zeroes {
        let mut z = [0u8; 124];
        rd.read_exact(&mut z).await?;
    }
    finish_info(size, flags, None, structured, false, contexts)
}

fn finish_info(
    size: u64,
    flags: u16,
    block_size: Option<BlockSize>,
    structured: bool,
    extended: bool,
    contexts: Vec<(u32, String)>,
) -> Result<ExportInfo> {
    if size > i64::MAX as u64 {
        return Err(ProtocolError::Invalid(format!("export size {size} is beyond 2^63")).into());
    }
    if flags & tflag::HAS_FLAGS == 0 {
        return Err(ProtocolError::Invalid("transmission flags without HAS_FLAGS".into()).into());
    }
    Ok(ExportInfo {
        size,
        flags,
        block_size: block_size.unwrap_or_default(),
        block_size_advertised: block_size.is_some(),
        structured,
        extended,
        contexts,
    })
}

async fn reader_task<B: ReadBuf>(mut rd: BufReader<BoxRead>, shared: Arc<Shared<B>>) {
    let err = loop {
        if let Err(e) = read_one_reply(&mut rd, &shared).await {
            break e;
        }
    };
    tracing::debug!(error = %err, "NBD reader stopped");
    shared.kill(err);
}

fn take_pending<B>(shared: &Shared<B>, cookie: u64) -> Result<Pending<B>> {
    shared
        .lock()
        .map
        .remove(&cookie)
        .ok_or_else(|| ProtocolError::Invalid(format!("reply for unknown cookie {cookie}")).into())
}

async fn read_one_reply<B: ReadBuf>(rd: &mut BufReader<BoxRead>, shared: &Shared<B>) -> Result<()> {
    let mut hdr = [0u8; codec::EXTENDED_REPLY_LEN];
    match rd.read_exact(&mut hdr[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Error::Disconnected(String::new()));
        }
        Err(e) => return Err(e.into()),
    }
    let magic = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let need = codec::reply_header_len(magic)?;
    let info = &shared.info;
    let expected = if info.extended {
        codec::EXTENDED_REPLY_MAGIC
    } else {
        magic
    };
    if magic != expected
        || (magic == codec::EXTENDED_REPLY_MAGIC && !info.extended)
        || (magic == codec::STRUCTURED_REPLY_MAGIC && !info.structured)
    {
        return Err(ProtocolError::Invalid(format!(
            "reply magic 0x{magic:x} not valid in the negotiated mode"
        ))
        .into());
    }
    rd.read_exact(&mut hdr[4..need]).await?;
    let (h, _) = codec::decode_reply_header(&hdr[..need])?.ok_or(ProtocolError::Truncated)?;
    let mut p = take_pending(shared, h.cookie())?;
    // A broken reply kills the connection; the request it answered was already taken
    // out of the table, so fail it here with the real cause (not a generic disconnect).
    match h {
        ReplyHeader::Simple { error, .. } => {
            if let Err(e) = simple_reply(rd, &mut p, error, info.structured).await {
                p.fail(e.clone());
                return Err(e);
            }
            complete(p);
        }
        ReplyHeader::Chunk {
            flags,
            kind,
            length,
            cookie,
            ..
        } => {
            if let Err(e) = chunk_reply(rd, &mut p, kind, length).await {
                p.fail(e.clone());
                return Err(e);
            }
            if flags & codec::REPLY_FLAG_DONE != 0 {
                complete(p);
            } else {
                shared.lock().map.insert(cookie, p);
            }
        }
    }
    Ok(())
}

async fn simple_reply<B: ReadBuf>(
    rd: &mut BufReader<BoxRead>,
    p: &mut Pending<B>,
    error: u32,
    structured: bool,
) -> Result<()> {
    if error != 0 {
        p.error = Some(request_error(p, error, String::new()));
        return Ok(());
    }
    match &mut p.waiter {
        Waiter::Read { buf, len, got, .. } => {
            if structured {
                return Err(ProtocolError::Invalid(
                    "simple reply to a read after structured replies were negotiated".into(),
                )
                .into());
            }
            rd.read_exact(buf.as_mut_bytes()).await?;
            got.push((0, *len));
        }
        Waiter::Status { .. } => {
            return Err(
                ProtocolError::Invalid("simple reply to a block status request".into()).into(),
            );
        }
        Waiter::Plain { .. } => {}
    }
    Ok(())
}

fn request_error<B>(p: &Pending<B>, error: u32, message: String) -> Error {
    Error::Request {
        command: p.command,
        offset: p.offset,
        errno: codec::errno_name(error),
        message: if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        },
    }
}

async fn read_payload(rd: &mut BufReader<BoxRead>, length: u64) -> Result<Vec<u8>> {
    if length > codec::MAX_CHUNK_PAYLOAD {
        return Err(ProtocolError::TooLong {
            what: "reply chunk",
            len: length,
            max: codec::MAX_CHUNK_PAYLOAD,
        }
        .into());
    }
    let mut v = vec![0u8; index(length)?];
    rd.read_exact(&mut v).await?;
    Ok(v)
}

/// Record that `[rel, rel+n)` of a read was covered; rejects overlaps and out-of-range.
fn cover(got: &mut Vec<(u64, u64)>, len: u64, rel: u64, n: u64) -> Result<()> {
    let end = rel.checked_add(n).filter(|e| *e <= len).ok_or_else(|| {
        ProtocolError::Invalid(format!(
            "read reply chunk [{rel}, +{n}) is outside the request of {len} bytes"
        ))
    })?;
    if got.len() >= MAX_CHUNKS_PER_REPLY {
        return Err(ProtocolError::TooLong {
            what: "read reply chunks",
            len: got.len() as u64,
            max: MAX_CHUNKS_PER_REPLY as u64,
        }
        .into());
    }
    let i = got.partition_point(|(s, _)| *s < rel);
    let overlaps_prev = i > 0 && got[i - 1].0 + got[i - 1].1 > rel;
    let overlaps_next = i < got.len() && got[i].0 < end;
    if overlaps_prev || overlaps_next {
        return Err(ProtocolError::Invalid(format!(
            "read reply chunks overlap at request offset {rel}"
        ))
        .into());
    }
    got.insert(i, (rel, n));
    Ok(())
}

async fn chunk_reply<B: ReadBuf>(
    rd: &mut BufReader<BoxRead>,
    p: &mut Pending<B>,
    kind: u16,
    length: u64,
) -> Result<()> {
    match kind {
        chunk::OFFSET_DATA => {
            let Waiter::Read {
                buf,
                offset,
                len,
                got,
                ..
            } = &mut p.waiter
            else {
                return Err(ProtocolError::Invalid(format!(
                    "data chunk in reply to {}",
                    p.command
                ))
                .into());
            };
            if length < 8 || length - 8 > *len {
                return Err(ProtocolError::Invalid(format!(
                    "data chunk of {length} bytes for a read of {len}"
                ))
                .into());
            }
            let mut o = [0u8; 8];
            rd.read_exact(&mut o).await?;
            let at = u64::from_be_bytes(o);
            let n = length - 8;
            let rel = at.checked_sub(*offset).ok_or_else(|| {
                ProtocolError::Invalid(format!(
                    "data chunk at {at} before the request offset {offset}"
                ))
            })?;
            cover(got, *len, rel, n)?;
            let (s, e) = (index(rel)?, index(rel + n)?);
            rd.read_exact(&mut buf.as_mut_bytes()[s..e]).await?;
        }
        chunk::OFFSET_HOLE => {
            let Waiter::Read {
                buf,
                offset,
                len,
                got,
                ..
            } = &mut p.waiter
            else {
                return Err(ProtocolError::Invalid(format!(
                    "hole chunk in reply to {}",
                    p.command
                ))
                .into());
            };
            if length != 12 && length != 16 {
                return Err(ProtocolError::Invalid(format!("hole chunk of {length} bytes")).into());
            }
            let payload = read_payload(rd, length).await?;
            let (at, n) = codec::decode_offset_hole(&payload)?;
            let rel = at.checked_sub(*offset).ok_or_else(|| {
                ProtocolError::Invalid(format!(
                    "hole chunk at {at} before the request offset {offset}"
                ))
            })?;
            cover(got, *len, rel, n)?;
            buf.as_mut_bytes()[index(rel)?..index(rel + n)?].fill(0);
        }
        chunk::NONE => {
            if length != 0 {
                return Err(ProtocolError::Invalid("NONE chunk with a payload".into()).into());
            }
        }
        chunk::BLOCK_STATUS | chunk::BLOCK_STATUS_EXT => {
            let payload = read_payload(rd, length).await?;
            let (id, d) = codec::decode_block_status(kind, &payload)?;
            let Waiter::Status {
                context,
                descriptors,
                ..
            } = &mut p.waiter
            else {
                return Err(ProtocolError::Invalid(format!(
                    "block status chunk in reply to {}",
                    p.command
                ))
                .into());
            };
            if id == *context {
                if !descriptors.is_empty() {
                    return Err(ProtocolError::Invalid(
                        "two block status chunks for one context".into(),
                    )
                    .into());
                }
                *descriptors = d;
            }
        }
        chunk::ERROR | chunk::ERROR_OFFSET => {
            let payload = read_payload(rd, length).await?;
            let ec = codec::decode_error_chunk(kind, &payload)?;
            if p.error.is_none() {
                p.error = Some(request_error(p, ec.error, ec.message));
            }
        }
        k if k & chunk::ERROR_BIT != 0 => {
            let _ = read_payload(rd, length).await?;
            if p.error.is_none() {
                p.error = Some(Error::Protocol(ProtocolError::Invalid(format!(
                    "unknown error chunk type {k}"
                ))));
            }
        }
        k => return Err(ProtocolError::Invalid(format!("unknown reply chunk type {k}")).into()),
    }
    Ok(())
}

fn complete<B>(p: Pending<B>) {
    let Pending { waiter, error, .. } = p;
    match waiter {
        Waiter::Read {
            buf, len, got, tx, ..
        } => {
            let covered: u64 = got.iter().map(|(_, n)| n).sum();
            let r = match error {
                Some(e) => Err(e),
                None if covered != len => Err(ProtocolError::Invalid(format!(
                    "read reply ended after covering {covered} of {len} bytes"
                ))
                .into()),
                None => Ok(buf),
            };
            let _ = tx.send(r);
        }
        Waiter::Status {
            descriptors, tx, ..
        } => {
            let r = match error {
                Some(e) => Err(e),
                None if descriptors.is_empty() => Err(ProtocolError::Invalid(
                    "block status reply without the selected context".into(),
                )
                .into()),
                None => Ok(descriptors),
            };
            let _ = tx.send(r);
        }
        Waiter::Plain { tx } => {
            let _ = tx.send(error.map_or(Ok(()), Err));
        }
    }
}

/// An offset or length inside a request's buffer (already checked against it) as an
/// index.
fn index(n: u64) -> Result<usize, ProtocolError> {
    usize::try_from(n).map_err(|_| ProtocolError::Invalid(format!("{n} does not fit in memory")))
}
