//! Flags for an `http://` or `https://` source.

use std::path::PathBuf;

use clap::Args;
use ferry::error::UsageError;
use ferry::source::http::{DEFAULT_HTTP_CONNECTIONS, HttpOptions};

/// Most `--http-header` flags accepted.
pub const MAX_HTTP_HEADERS: usize = 64;

/// Flags for an HTTP(S) source (`ferry copy https://host/disk.qcow2 DST`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP(S) source")]
pub struct HttpArgs {
    /// A directory of PEM certificates trusted besides the system roots.
    #[arg(long, value_name = "DIR")]
    pub http_ca_dir: Option<PathBuf>,
    /// Accept any server certificate (logged as a warning).
    #[arg(long)]
    pub http_insecure: bool,
    /// A header sent with every request, as `Name: value` (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    pub http_header: Vec<String>,
    /// Ranged requests in flight at once (servers that answer Range requests).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HTTP_CONNECTIONS as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub http_connections: u16,
}

impl HttpArgs {
    /// The options these flags give (the proxy from the environment).
    pub fn options(&self) -> Result<HttpOptions, ferry::Error> {
        let mut o = HttpOptions::default();
        o.tls.ca_dir = self.http_ca_dir.clone();
        o.tls.insecure = self.http_insecure;
        o.connections = usize::from(self.http_connections);
        if self.http_header.len() > MAX_HTTP_HEADERS {
            return Err(UsageError::Http {
                what: "--http-header".into(),
                message: format!("at most {MAX_HTTP_HEADERS} are accepted"),
            }
            .into());
        }
        for h in &self.http_header {
            let (name, value) =
                ferry::source::http::parse_header(h).map_err(|message| UsageError::Http {
                    what: format!("--http-header {h:?}"),
                    message,
                })?;
            o.client.headers.push((name, value));
        }
        if let Some(d) = &o.tls.ca_dir
            && !d.is_dir()
        {
            return Err(UsageError::Http {
                what: format!("--http-ca-dir {}", d.display()),
                message: "not a directory".into(),
            }
            .into());
        }
        Ok(o)
    }
}
