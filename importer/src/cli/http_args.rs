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

/// Where `--registry-user`'s password is read from when no file is given.
pub const REGISTRY_PASSWORD_ENV: &str = "FERRY_REGISTRY_PASSWORD";
/// Longest registry password accepted.
pub const MAX_REGISTRY_PASSWORD_BYTES: usize = 8192;

/// Flags for a `docker://` source (a container image's `/disk/` file). Its TLS trust is
/// `--http-ca-dir`'s.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Registry source (docker://)")]
pub struct RegistryArgs {
    /// The registry user (Basic auth, or the token server's).
    #[arg(long, value_name = "USER")]
    pub registry_user: Option<String>,
    /// A file holding the registry password (first line); otherwise
    /// $FERRY_REGISTRY_PASSWORD.
    #[arg(long, value_name = "FILE", requires = "registry_user")]
    pub registry_password_file: Option<PathBuf>,
    /// Talk to the registry over HTTPS without checking its certificate, or over plain
    /// HTTP when it does not speak TLS (a local registry).
    #[arg(long)]
    pub insecure_registry: bool,
    /// The architecture to take from a multi-architecture image (amd64, arm64, …), which
    /// the image must then say it is; default: this machine's, unchecked.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
}

impl RegistryArgs {
    /// The options these flags give, over the HTTP options `http`.
    pub fn options(
        &self,
        http: &HttpOptions,
    ) -> Result<ferry::source::registry::RegistryOptions, ferry::Error> {
        let password = match (&self.registry_user, &self.registry_password_file) {
            (None, _) => None,
            (Some(_), Some(f)) => {
                let bad = |message: String| UsageError::Http {
                    what: format!("--registry-password-file {}", f.display()),
                    message,
                };
                let meta = std::fs::metadata(f).map_err(|e| bad(e.to_string()))?;
                if meta.len() > MAX_REGISTRY_PASSWORD_BYTES as u64 {
                    return Err(
                        bad(format!("longer than {MAX_REGISTRY_PASSWORD_BYTES} bytes")).into(),
                    );
                }
                let s = std::fs::read_to_string(f).map_err(|e| bad(e.to_string()))?;
                Some(s.lines().next().unwrap_or("").to_string())
            }
            (Some(_), None) => std::env::var(REGISTRY_PASSWORD_ENV).ok(),
        };
        if password
            .as_ref()
            .is_some_and(|p| p.len() > MAX_REGISTRY_PASSWORD_BYTES)
        {
            return Err(UsageError::Http {
                what: format!("${REGISTRY_PASSWORD_ENV}"),
                message: format!("longer than {MAX_REGISTRY_PASSWORD_BYTES} bytes"),
            }
            .into());
        }
        Ok(ferry::source::registry::RegistryOptions {
            http: http.clone(),
            user: self.registry_user.clone(),
            password: password.map(ferry::source::vddk::options::Secret::new),
            insecure: self.insecure_registry,
            architecture: self.arch.clone(),
            labels: Default::default(),
        })
    }
}
