//! `ferry upload FILE URL`: send a disk image to an upload server (`ferry upload-server`,
//! CDI's upload server behind its proxy, Deckhouse's uploader) with a progress bar, and
//! print the server's answer.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use ferry_http::{Client, ClientOptions, Endpoint, Request, Scheme, TlsPolicy, header};
use http_body_util::StreamBody;
use hyper::body::Frame;
use std::io::Read;

/// Bytes read from the file per chunk of the request body.
pub const UPLOAD_CHUNK: usize = 1 << 20;
/// Largest answer read from the server.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Arguments of `ferry upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The image to send (raw, qcow2, compressed, …: the server reads what it holds).
    pub file: PathBuf,
    /// The upload URL: `https://HOST/upload/TOKEN` (the token in the path),
    /// `https://HOST/upload` or CDI's `https://HOST/v1beta1/upload` with --token.
    pub url: String,
    /// The token, sent as `Authorization: Bearer TOKEN` (not needed when the URL ends
    /// in /upload/TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// A PEM CA certificate (or a directory of them) to verify the server with, instead
    /// of the system roots.
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (logged as a warning).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

fn usage(message: String) -> anyhow::Error {
    ferry::Error::from(ferry::error::UsageError::Upload { message }).into()
}

/// Run `ferry upload`.
pub async fn run(a: UploadArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&a.file).map_err(|error| ferry::Error::SourceIo {
        op: "open",
        path: a.file.clone(),
        error,
    })?;
    let size = file
        .metadata()
        .map_err(|error| ferry::Error::SourceIo {
            op: "inspect",
            path: a.file.clone(),
            error,
        })?
        .len();
    let url = ferry::source::http::redact(&a.url);
    let (ep, _) = Endpoint::parse(&a.url, Scheme::Https)
        .map_err(|m| usage(format!("invalid URL {url:?}: {m}")))?;
    let path = ep.path.clone();
    // A CA file is trusted alone, from a directory of its own.
    let ca_dir = match &a.ca {
        Some(p) if p.is_file() => {
            let d = tempfile::tempdir()?;
            std::fs::copy(p, d.path().join("ca.pem"))
                .map_err(|e| usage(format!("--ca {}: {e}", p.display())))?;
            Some(d)
        }
        Some(p) if !p.is_dir() => {
            return Err(usage(format!(
                "--ca {}: no such file or directory",
                p.display()
            )));
        }
        _ => None,
    };
    let tls = TlsPolicy {
        thumbprint: None,
        ca_dir: ca_dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .or_else(|| a.ca.clone()),
        insecure: a.insecure,
        system_roots: a.ca.is_none(),
    };
    let copts = ClientOptions {
        max_body_bytes: MAX_ANSWER_BYTES,
        ..ClientOptions::from_env()
    };
    let client = Client::new(ep, &tls, copts).map_err(|error| ferry::Error::Http {
        url: url.clone(),
        error,
    })?;
    let sent = Arc::new(AtomicU64::new(0));
    // Each chunk is read on the blocking pool while the previous one is sent.
    let chunks = futures::stream::try_unfold((file, sent.clone()), |(f, sent)| async move {
        let (f, buf) = tokio::task::spawn_blocking(move || {
            let mut f = f;
            let mut buf = BytesMut::zeroed(UPLOAD_CHUNK);
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(n);
            Ok((f, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        if buf.is_empty() {
            return Ok::<_, std::io::Error>(None);
        }
        sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(Some((Frame::data(Bytes::from(buf)), (f, sent))))
    });
    let mut req = Request::post(path.as_str())
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(t) = &a.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(StreamBody::new(chunks))
        .map_err(|e| usage(format!("the request cannot be built: {e}")))?;
    let bar = (!a.no_progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(size.max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let sent = sent.clone();
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let n = sent.load(Ordering::Relaxed);
                b.set_position(n);
                if n >= size {
                    b.set_message("waiting for the server to write the disk");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (bar, task)
    });
    let started = std::time::Instant::now();
    let result = client.send_streaming("upload", req).await;
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    let resp = result.map_err(|error| ferry::Error::Http {
        url: url.clone(),
        error,
    })?;
    let answer = String::from_utf8_lossy(&resp.body).trim().to_string();
    if !resp.status.is_success() {
        return Err(ferry::Error::HttpStatus {
            url,
            status: resp.status.as_u16(),
            message: format!(
                "{}{}",
                resp.status.canonical_reason().unwrap_or(""),
                if answer.is_empty() {
                    String::new()
                } else {
                    format!(": {}", answer.replace('\n', " "))
                }
            ),
        }
        .into());
    }
    let secs = started.elapsed().as_secs_f64();
    if !answer.is_empty() {
        println!("{answer}");
    }
    eprintln!(
        "sent {} bytes in {secs:.2}s ({:.0} MB/s): {} {}",
        sent.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed) as f64 / secs.max(1e-9) / 1e6,
        resp.status.as_u16(),
        resp.status.canonical_reason().unwrap_or("")
    );
    Ok(())
}
