//! NBD URIs (the NBD project's `doc/uri.md`).
//!
//! `nbd://host[:port][/export]` and `nbd+unix:///[export]?socket=PATH`, plus the TLS
//! forms `nbds://` and `nbds+unix://` with libnbd's parameters (`tls-certificates`,
//! `tls-verify-peer`, `tls-hostname`, `tls-psk-file`; [`crate::tls`]). A plain `nbd://`
//! never uses TLS. Unknown query parameters are errors (the spec says they should be
//! diagnosed), except experimental `x-` ones.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use crate::codec::MAX_EXPORT_NAME_LEN;
use crate::error::Error;
use crate::tls::TlsSettings;

/// Default NBD TCP port.
pub const DEFAULT_PORT: u16 = 10809;
/// Cap on the length of a URI we parse.
pub const MAX_URI_LEN: usize = 8192;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// TCP host and port.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// Unix domain socket path.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Server address.
    pub address: Address,
    /// Export name (empty = default export).
    pub export: String,
    /// Whether the scheme requires TLS.
    pub tls: bool,
    /// The TLS parameters (`tls-certificates`, `tls-verify-peer`, `tls-hostname`,
    /// `tls-psk-file`); only on `nbds` URIs.
    pub tls_settings: TlsSettings,
}

impl Uri {
    /// Whether a string looks like an NBD URI (by scheme).
    pub fn is_nbd_uri(s: &str) -> bool {
        ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
            .iter()
            .any(|p| s.starts_with(p))
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "s" } else { "" };
        match &self.address {
            Address::Tcp { .. } => write!(f, "nbd{s}://{}/{}", self.address, self.export),
            Address::Unix(p) => {
                write!(f, "nbd{s}+unix:///{}?socket={}", self.export, p.display())
            }
        }
    }
}

impl FromStr for Uri {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        parse(s)
    }
}

fn bad(uri: &str, reason: impl Into<String>) -> Error {
    let shown: String = uri.chars().take(200).collect();
    Error::Uri {
        uri: shown,
        reason: reason.into(),
    }
}

fn decode(uri: &str, part: &str, what: &str) -> Result<String, Error> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            bad(
                uri,
                format!("{what} is not valid UTF-8 after percent-decoding"),
            )
        })
}

/// Parse an NBD URI.
pub fn parse(uri: &str) -> Result<Uri, Error> {
    if uri.len() > MAX_URI_LEN {
        return Err(bad(uri, format!("longer than {MAX_URI_LEN} bytes")));
    }
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad(uri, "missing scheme (nbd:// or nbd+unix://)"))?;
    let (tls, unix) = match scheme {
        "nbd" => (false, false),
        "nbds" => (true, false),
        "nbd+unix" => (false, true),
        "nbds+unix" => (true, true),
        other => return Err(bad(uri, format!("unsupported scheme {other:?}"))),
    };
    if rest.contains('#') {
        return Err(bad(uri, "fragments are not allowed"));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    let export = decode(uri, path.strip_prefix('/').unwrap_or(path), "export name")?;
    if export.len() > MAX_EXPORT_NAME_LEN {
        return Err(bad(uri, "export name too long"));
    }
    let mut socket = None;
    let mut tls_settings = TlsSettings::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.starts_with("tls-") && !tls {
            return Err(bad(uri, format!("{k} needs an nbds:// scheme")));
        }
        match k {
            "socket" => socket = Some(decode(uri, v, "socket path")?),
            "tls-certificates" => {
                tls_settings.certificates = Some(PathBuf::from(decode(uri, v, k)?));
            }
            "tls-verify-peer" => {
                tls_settings.verify_peer = Some(match decode(uri, v, k)?.as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    other => {
                        return Err(bad(
                            uri,
                            format!("tls-verify-peer={other:?} is not a boolean"),
                        ));
                    }
                });
            }
            "tls-hostname" => tls_settings.hostname = Some(decode(uri, v, k)?),
            "tls-psk-file" => tls_settings.psk_file = Some(PathBuf::from(decode(uri, v, k)?)),
            "tls-username" | "tls-type" => {}
            k if k.starts_with("x-") => {}
            other => return Err(bad(uri, format!("unknown parameter {other:?}"))),
        }
    }
    let address = if unix {
        if !authority.is_empty() {
            return Err(bad(
                uri,
                "nbd+unix URIs take no host (use nbd+unix:///export?socket=PATH)",
            ));
        }
        let path = socket.ok_or_else(|| bad(uri, "nbd+unix URI needs ?socket=PATH"))?;
        if path.is_empty() {
            return Err(bad(uri, "empty socket path"));
        }
        Address::Unix(PathBuf::from(path))
    } else {
        if socket.is_some() {
            return Err(bad(uri, "socket= is only valid with nbd+unix://"));
        }
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(uri, hostport)?;
        Address::Tcp { host, port }
    };
    Ok(Uri {
        address,
        export,
        tls,
        tls_settings,
    })
}

fn split_host_port(uri: &str, hp: &str) -> Result<(String, u16), Error> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(uri, "unclosed '[' in host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad(uri, "junk after ']'"))?,
            ),
        };
        (h.to_string(), port)
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hp.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad(uri, "missing host"));
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad(uri, format!("invalid port {p:?}")))?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn tcp_uri_with_port_and_export() {
        let u = parse("nbd://example.com:10810/disk0").unwrap();
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "example.com".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "disk0");
        assert!(!u.tls);
    }

    #[test]
    fn tcp_uri_defaults_port_and_export() {
        let u = parse("nbd://localhost").unwrap();
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "localhost".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "");
    }

    #[test]
    fn double_slash_export_keeps_leading_slash() {
        assert_eq!(parse("nbd://h//disk").unwrap().export, "/disk");
    }

    #[test]
    fn ipv6_host_in_brackets() {
        let u = parse("nbd://[::1]:7000/").unwrap();
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "::1".into(),
                port: 7000
            }
        );
    }

    #[test]
    fn unix_uri_with_percent_encoded_socket() {
        let u = parse("nbd+unix:///exp%20a?socket=/tmp/a%20b.sock").unwrap();
        assert_eq!(u.address, Address::Unix("/tmp/a b.sock".into()));
        assert_eq!(u.export, "exp a");
    }

    #[test]
    fn unix_uri_without_socket_is_rejected() {
        let e = parse("nbd+unix:///").unwrap_err();
        assert!(e.to_string().contains("socket=PATH"), "{e}");
    }

    #[test]
    fn unknown_scheme_is_rejected() {
        assert!(
            parse("http://x/")
                .unwrap_err()
                .to_string()
                .contains("unsupported scheme")
        );
    }

    #[test]
    fn unknown_parameter_is_rejected() {
        let e = parse("nbd://h/?bogus=1").unwrap_err();
        assert!(e.to_string().contains("unknown parameter"), "{e}");
    }

    #[test]
    fn bad_port_is_rejected() {
        assert!(
            parse("nbd://h:99999/")
                .unwrap_err()
                .to_string()
                .contains("invalid port")
        );
    }

    #[test]
    fn tls_scheme_is_flagged() {
        assert!(parse("nbds://h/").unwrap().tls);
    }

    #[test]
    fn tls_parameters_are_read_as_libnbd_reads_them() {
        let u = parse(
            "nbds+unix:///disk?socket=/run/s.sock&tls-certificates=/etc/pki/x%20y\
             &tls-verify-peer=false&tls-hostname=nbd.example.com",
        )
        .unwrap();
        assert_eq!(
            u.tls_settings.certificates.as_deref(),
            Some(Path::new("/etc/pki/x y"))
        );
        assert_eq!(u.tls_settings.verify_peer, Some(false));
        assert!(!u.tls_settings.verifies_peer());
        assert_eq!(u.tls_settings.hostname.as_deref(), Some("nbd.example.com"));
        assert!(parse("nbds://h/").unwrap().tls_settings.verifies_peer());
        let e = parse("nbds://h/?tls-verify-peer=maybe")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls-verify-peer=\"maybe\" is not a boolean"),
            "{e}"
        );
        let e = parse("nbd://h/?tls-certificates=/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tls-certificates needs an nbds:// scheme"),
            "{e}"
        );
        let e = parse("nbds://h/?tls-bogus=1").unwrap_err().to_string();
        assert!(e.contains("unknown parameter \"tls-bogus\""), "{e}");
    }

    #[test]
    fn display_round_trips_unix() {
        let u = parse("nbd+unix:///e?socket=/s").unwrap();
        assert_eq!(parse(&u.to_string()).unwrap(), u);
    }
}
