//! The one bounded HTTP/1.1 server under Ferry's endpoints (the `/metrics` endpoint,
//! the upload server): hyper over TLS (rustls) or, when asked, plain TCP.
//!
//! Every connection is bounded: at most [`Limits::max_connections`] at once (more are
//! closed at once), the TLS handshake and each request's headers must arrive within
//! their timeouts, request heads are capped at [`Limits::max_header_bytes`], and a
//! connection lives at most [`Limits::connection_lifetime`] when one is set. Stopping
//! lets requests being answered finish for [`Limits::shutdown_grace`], then closes
//! every connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::engine::BoxFuture;

/// Backlog of a listener on the IPv6 wildcard.
pub const LISTEN_BACKLOG: i32 = 128;

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers to arrive.
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// hyper's read buffer (at least 8 KiB and the head): what one read of a request
    /// body takes at most.
    pub read_buffer_bytes: usize,
    /// Longest a connection is served (None: as long as its requests take, for
    /// uploads).
    pub connection_lifetime: Option<Duration>,
    /// How long stopping waits for requests being answered.
    pub shutdown_grace: Duration,
}

/// What answers every request.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// Listen on `addr`. The IPv6 wildcard (`[::]:PORT`, the pod default, as a Go listener
/// on `:PORT`) takes IPv4 too (IPV6_V6ONLY off, whatever the host's default); on a host
/// without IPv6 it falls back to `0.0.0.0:PORT` and says so.
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
        sockopt,
    };
    let SocketAddr::V6(v6) = addr else {
        return std::net::TcpListener::bind(addr);
    };
    if !v6.ip().is_unspecified() {
        return std::net::TcpListener::bind(addr);
    }
    let dual = (|| -> nix::Result<std::net::TcpListener> {
        let fd = socket(
            AddressFamily::Inet6,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?;
        listen(&fd, Backlog::new(LISTEN_BACKLOG)?)?;
        Ok(std::net::TcpListener::from(fd))
    })();
    match dual {
        Ok(l) => Ok(l),
        Err(e @ (nix::Error::EAFNOSUPPORT | nix::Error::EADDRNOTAVAIL)) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], v6.port()));
            tracing::info!(error = %e, "no IPv6 on this host; listening on IPv4 only ({v4})");
            std::net::TcpListener::bind(v4)
        }
        Err(e) => Err(e.into()),
    }
}

/// [`listen`], as a Tokio listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = listen(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// A TLS server configuration presenting `chain` (leaf first) and `key`, HTTP/1.1 only.
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A running server. Dropping it stops accepting connections; call
/// [`Running::shutdown`] to also wait for requests being answered.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let requests being answered finish (at most the grace), then
    /// close every connection.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Serve `handler` on `listener`, over TLS when `tls` is given. `name` prefixes the
/// debug lines. Needs a Tokio runtime.
pub fn spawn(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: Handler,
    name: &'static str,
) -> std::io::Result<Running> {
    let local_addr = listener.local_addr()?;
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, tls, limits, handler, name, stop_rx));
    Ok(Running {
        local_addr,
        stop: Some(stop),
        task: Some(task),
    })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: Handler,
    name: &'static str,
    mut stop: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, "{name}: too many connections; closing");
                        continue;
                    };
                    conns.spawn(serve_connection(
                        tcp,
                        tls.clone(),
                        limits,
                        handler.clone(),
                        graceful.watcher(),
                        slot,
                        name,
                    ));
                }
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::debug!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
    conns.shutdown().await;
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn serve_connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: Handler,
    watcher: Watcher,
    _slot: OwnedSemaphorePermit,
    name: &'static str,
) {
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(acceptor) => {
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "{name}: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    let service = service_fn(move |req: Request<Incoming>| {
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(
            limits
                .read_buffer_bytes
                .max(limits.max_header_bytes)
                .max(8192),
        )
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
    let ended = match limits.connection_lifetime {
        Some(life) => tokio::time::timeout(life, conn).await.ok(),
        None => Some(conn.await),
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(error = %e, "{name}: connection ended");
    }
}
