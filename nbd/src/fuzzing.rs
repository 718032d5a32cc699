//! Fuzz entry points, shared by `fuzz/` (cargo-fuzz) and the corpus-replay test.
//! Each asserts "never panics, bounded allocation" on bytes from a hostile server.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Client, ConnectOptions};
use crate::codec;
use crate::error::Error;

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

/// Bound on one whole fuzzed session (handshake plus script). The played bytes end
/// with EOF, so a correct client never gets near it.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The options every fuzzed (and recorded) session connects with: extended headers
/// tried first, `base:allocation` requested, short timeouts.
pub fn session_options() -> ConnectOptions {
    ConnectOptions {
        meta_contexts: vec!["base:allocation".into()],
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        extended_headers: true,
    }
}

/// The export name every fuzzed (and recorded) session asks for.
pub const SESSION_EXPORT: &str = "";

/// What one session did; `None` for a step that was not reached or not applicable.
#[derive(Debug, Default)]
pub struct SessionOutcome {
    /// Result of the handshake (`None` if the session timed out during it).
    pub handshake: Option<Result<(), Error>>,
    /// Result of READ of up to 4096 bytes at 0.
    pub read: Option<Result<(), Error>>,
    /// The bytes that READ returned, when it succeeded.
    pub read_data: Option<Vec<u8>>,
    /// Result of BLOCK_STATUS on the first selected context: the descriptor count.
    pub block_status: Option<Result<usize, Error>>,
    /// Result of FLUSH.
    pub flush: Option<Result<(), Error>>,
    /// Whether [`SESSION_TIMEOUT`] expired.
    pub timed_out: bool,
}

/// The fixed request script: READ (4096 at 0, or the whole export if smaller),
/// BLOCK_STATUS on the first selected context, FLUSH, all in flight at once (so every
/// cookie is known before the first reply is read, whatever order the played bytes
/// answer in), then DISC.
pub async fn run_script(client: &Client, out: &mut SessionOutcome) {
    let info = client.info().clone();
    let read_len = info.size.min(4096);
    let read = async {
        if read_len == 0 {
            return None;
        }
        Some(client.read(0, vec![0u8; read_len as usize]).await)
    };
    let status = async {
        let (id, _) = info.contexts.first()?;
        let len = info.size.min(1 << 30);
        if len == 0 {
            return None;
        }
        Some(client.block_status(0, len, *id).await.map(|d| d.len()))
    };
    let flush = async { Some(client.flush().await) };
    let (r, s, f) = tokio::join!(read, status, flush);
    out.read = r.map(|r| match r {
        Ok(data) => {
            out.read_data = Some(data);
            Ok(())
        }
        Err(e) => Err(e),
    });
    out.block_status = s;
    out.flush = f;
    client.disconnect().await;
}

/// Play `data` as everything the server sends, over an in-memory duplex stream, and run
/// the handshake then [`run_script`]. The client's writes are drained and discarded;
/// after `data` the server side closes, so the session always ends.
pub fn client_session_outcome(data: &[u8]) -> SessionOutcome {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return SessionOutcome::default(),
    };
    let data = data.to_vec();
    rt.block_on(async move {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let (mut srv_rd, mut srv_wr) = tokio::io::split(server_end);
        tokio::spawn(async move {
            let _ = srv_wr.write_all(&data).await;
            let _ = srv_wr.shutdown().await;
        });
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while let Ok(n) = srv_rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        let (rd, wr) = tokio::io::split(client_end);
        let mut out = SessionOutcome::default();
        let session = async {
            let opts = session_options();
            match Client::handshake_on(Box::new(rd), Box::new(wr), SESSION_EXPORT, &opts).await {
                Ok(client) => {
                    out.handshake = Some(Ok(()));
                    run_script(&client, &mut out).await;
                }
                Err(e) => out.handshake = Some(Err(e)),
            }
        };
        if tokio::time::timeout(SESSION_TIMEOUT, session)
            .await
            .is_err()
        {
            out.timed_out = true;
        }
        out
    })
}

/// Fuzz entry point: [`client_session_outcome`], result discarded. Must never panic.
pub fn client_session(data: &[u8]) {
    let _ = client_session_outcome(data);
}
