//! `ferry upload-server`: the upload pod's entrypoint, as CDI's `cdi-uploadserver`
//! (its environment read, each variable also a flag; flags win). Serves one upload
//! over HTTPS ([`ferry::upload`]), writes the termination message and exits: 0 once
//! the disk is durable, 1 when the upload failed (the target is incomplete).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use ferry::progress::Progress;
use ferry::report::termination::{self, TerminationMessage};
use ferry_contract::upload as env;

use super::Tuning;

/// Arguments of `ferry upload-server`.
#[derive(Debug, Args)]
pub struct UploadServerArgs {
    /// Where the disk is written: a file (created, or truncated, as `ferry copy` does),
    /// a block device, or a directory (the image is DIR/disk.img) [default: /data/disk.img].
    #[arg(env = env::DESTINATION)]
    pub target: Option<PathBuf>,
    /// Address to listen on, `HOST:PORT` [default: LISTEN_ADDRESS:LISTEN_PORT, else
    /// [::]:8443, which takes IPv6 and IPv4].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// PEM certificate chain the server presents.
    #[arg(long, value_name = "FILE", env = env::TLS_CERT_FILE)]
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, value_name = "FILE", env = env::TLS_KEY_FILE)]
    pub key: Option<PathBuf>,
    /// The secret a client presents: `Authorization: Bearer TOKEN`, or the URL
    /// `…/upload/TOKEN`.
    #[arg(long, env = env::FERRY_UPLOAD_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// Serve plain HTTP, without TLS (tests, or behind a TLS-terminating proxy on the
    /// same host).
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    pub insecure_plain_http: bool,
    /// A directory where an image that needs random access (qcow2, …) is staged before
    /// it is written (room for the whole image) [default: /scratch when it exists, where
    /// CDI mounts its scratch volume].
    #[arg(long, value_name = "DIR", env = ferry_contract::env::FERRY_SCRATCH_DIR)]
    pub scratch: Option<PathBuf>,
    /// Requested size of the volume (bytes or a quantity like 10Gi): a file target is
    /// grown to the volume's usable size within it, as CDI does.
    #[arg(long, env = env::UPLOAD_IMAGE_SIZE)]
    pub image_size: Option<String>,
    /// Fraction of a filesystem volume kept for the filesystem (e.g. 0.055).
    #[arg(long, env = ferry_contract::env::FILESYSTEM_OVERHEAD)]
    pub filesystem_overhead: Option<String>,
    /// Preallocate the target (true/false).
    #[arg(long, env = ferry_contract::env::PREALLOCATION)]
    pub preallocation: Option<String>,
    /// The DataVolume's UID: the label of the progress metric.
    #[arg(long, env = ferry_contract::env::OWNER_UID, default_value = "")]
    pub owner_uid: String,
    /// Where to write the termination message.
    #[arg(long, env = ferry_contract::env::TERMINATION_LOG, default_value = ferry_contract::env::DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// Seconds to wait for the next bytes of an upload before it fails.
    #[arg(long, default_value_t = ferry::upload::BODY_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub body_timeout: u64,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// The listen address: `--listen`, else CDI's LISTEN_ADDRESS and LISTEN_PORT.
fn listen_addr(a: &UploadServerArgs) -> Result<SocketAddr, String> {
    if let Some(l) = &a.listen {
        return l.parse().map_err(|_| {
            format!("--listen {l:?}: expected HOST:PORT, e.g. [::]:8443 or 127.0.0.1:8443")
        });
    }
    let host = std::env::var(env::LISTEN_ADDRESS).unwrap_or_default();
    let port = match std::env::var(env::LISTEN_PORT) {
        Ok(p) if !p.is_empty() => p
            .parse::<u16>()
            .map_err(|_| format!("{}={p:?}: expected a port number", env::LISTEN_PORT))?,
        _ => env::DEFAULT_LISTEN_PORT,
    };
    let ip: IpAddr = match host.trim() {
        "" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{}={h:?}: expected an IP address", env::LISTEN_ADDRESS))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// The settings, checked before anything listens.
fn settings(a: &UploadServerArgs) -> Result<ferry::upload::Settings, String> {
    let token = a
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ferry::upload::UploadError::NoToken.to_string())?;
    if token.len() > ferry::upload::MAX_TOKEN_BYTES {
        return Err(format!(
            "the upload token is longer than {} bytes",
            ferry::upload::MAX_TOKEN_BYTES
        ));
    }
    let mut target = a
        .target
        .clone()
        .unwrap_or_else(|| PathBuf::from(env::DEFAULT_DESTINATION));
    if target.is_dir() {
        target = target.join(ferry_contract::env::DISK_IMG);
    }
    let image_size = match a.image_size.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(ferry_contract::env::parse_quantity(s).ok_or_else(|| {
            format!(
                "{} (--image-size) {s:?}: expected bytes or a quantity like 10Gi",
                env::UPLOAD_IMAGE_SIZE
            )
        })?),
    };
    let filesystem_overhead = match a.filesystem_overhead.as_deref().filter(|s| !s.is_empty()) {
        None => 0.0,
        Some(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| (0.0..1.0).contains(f))
            .ok_or_else(|| {
                format!(
                    "{} (--filesystem-overhead) {s:?}: expected a fraction from 0 to below 1",
                    ferry_contract::env::FILESYSTEM_OVERHEAD
                )
            })?,
    };
    let preallocation = match a.preallocation.as_deref().filter(|s| !s.is_empty()) {
        None => false,
        Some(s) => ferry_contract::env::parse_bool(s).ok_or_else(|| {
            format!(
                "{} (--preallocation) {s:?}: expected true or false",
                ferry_contract::env::PREALLOCATION
            )
        })?,
    };
    let scratch = match &a.scratch {
        Some(d) if !d.is_dir() => {
            return Err(format!("--scratch {}: not a directory", d.display()));
        }
        Some(d) => Some(d.clone()),
        None => {
            let d = PathBuf::from(ferry_contract::env::DEFAULT_SCRATCH_DIR);
            d.is_dir().then_some(d)
        }
    };
    a.tuning.validate().map_err(|e| e.to_string())?;
    Ok(ferry::upload::Settings {
        target,
        token,
        scratch,
        image_size,
        filesystem_overhead,
        preallocation,
        tuning: ferry::job::Tuning {
            buf_size: a.tuning.buf_size(),
            buf_count: ferry::num::usize_of(a.tuning.count()),
            use_extents: true,
            detect_zeroes: !a.tuning.no_zero_detect,
            direct: a.tuning.direct,
            retry: a.tuning.retry(),
            digest: false,
        },
        body_idle: std::time::Duration::from_secs(a.body_timeout),
    })
}

/// Run `ferry upload-server`. SIGTERM/SIGINT end it (the target is then incomplete),
/// with the termination message written.
pub async fn run(a: UploadServerArgs) -> anyhow::Result<()> {
    let log = a.termination_log.clone();
    let fail = |e: anyhow::Error| {
        super::import_cmd::fail(&log, &format!("{e:#}"));
        e
    };
    let (addr, settings) = match listen_addr(&a).and_then(|addr| Ok((addr, settings(&a)?))) {
        Ok(x) => x,
        Err(e) => {
            return Err(fail(
                ferry::Error::from(ferry::error::UsageError::Upload { message: e }).into(),
            ));
        }
    };
    let tls = if a.insecure_plain_http {
        tracing::warn!("serving uploads over plain HTTP (--insecure-plain-http)");
        None
    } else {
        let (Some(cert), Some(key)) = (&a.cert, &a.key) else {
            return Err(fail(
                ferry::Error::from(ferry::error::UsageError::Upload {
                    message: format!(
                        "a certificate and key are required (--cert/{} and --key/{}), or --insecure-plain-http",
                        env::TLS_CERT_FILE,
                        env::TLS_KEY_FILE
                    ),
                })
                .into(),
            ));
        };
        Some(ferry::upload::tls_from_pem(cert, key).map_err(|e| fail(e.into()))?)
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| ferry::Error::Signals {
            signal: "SIGTERM",
            error,
        })?;
    let engine = ferry::engine::select(a.tuning.io_engine, (a.tuning.count() * 2 + 16) as u32)
        .map_err(|e| fail(e.into()))?;
    let progress = Arc::new(Progress::new());
    let metrics = ferry::report::metrics::Metrics::new(&a.owner_uid);
    let samplers = ferry::report::spawn_samplers(progress.clone(), metrics.clone());
    let mut server = ferry::upload::UploadServer::start(
        addr,
        tls,
        settings,
        engine,
        progress.clone(),
        metrics.clone(),
    )
    .map_err(|e| fail(e.into()))?;
    let result: anyhow::Result<ferry::job::Outcome> = tokio::select! {
        f = server.serve_one() => f.result.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => Err(ferry::Error::Cancelled("SIGINT").into()),
        _ = term.recv() => Err(ferry::Error::Cancelled("SIGTERM").into()),
    };
    samplers.finish(&progress, result.is_ok());
    // The last answer goes out before the server stops.
    server.shutdown().await;
    match result {
        Ok(o) => {
            metrics.finish(&o.stats);
            let msg = TerminationMessage {
                preallocation_applied: o.preallocation_applied,
                message: env::UPLOAD_COMPLETE.into(),
                ..TerminationMessage::default()
            };
            termination::write_success(&a.termination_log, &msg)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}
