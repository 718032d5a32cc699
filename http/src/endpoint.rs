//! One parser for the URLs and `host:port` forms Ferry is given: a server's URL, a proxy
//! URL, a `no_proxy` entry.

use std::net::IpAddr;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (port 80 by default).
    Http,
    /// HTTP over TLS (port 443 by default).
    Https,
}

impl Scheme {
    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a server is: scheme, host (IPv6 without brackets), port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address.
    pub host: String,
    /// TCP port (the scheme's default unless given).
    pub port: u16,
    /// Path and query, `/` when none was given.
    pub path: String,
}

/// What [`Endpoint::parse`] read besides the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The `user[:password]` before `@`, as written (still percent-encoded).
    pub userinfo: Option<String>,
    /// Whether the port was written out.
    pub explicit_port: bool,
}

impl Endpoint {
    /// Parse `scheme://[userinfo@]host[:port][/path]`, or the same without
    /// `scheme://` (then `default` applies). IPv6 hosts are bracketed (`[fd00::1]:443`);
    /// a bare IPv6 address is taken whole as the host. The reason for a refusal is
    /// returned for the caller to put in context.
    pub fn parse(s: &str, default: Scheme) -> Result<(Endpoint, Parsed), String> {
        let s = s.trim();
        let (scheme, rest) = match s.split_once("://") {
            Some((sch, rest)) => {
                let scheme = match sch.to_ascii_lowercase().as_str() {
                    "http" => Scheme::Http,
                    "https" => Scheme::Https,
                    other => return Err(format!("{other}:// is not supported")),
                };
                (scheme, rest)
            }
            None => (default, s),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = match path.split('#').next().unwrap_or_default() {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err("no host".into());
        }
        let explicit_port = port.is_some();
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port {p:?}"))?,
            None => scheme.default_port(),
        };
        Ok((
            Endpoint {
                scheme,
                host: host.to_string(),
                port,
                path,
            },
            Parsed {
                userinfo,
                explicit_port,
            },
        ))
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Split `host[:port]`: `[v6]:port` and `[v6]` lose their brackets; a bare IPv6 address
/// is all host. An unclosed bracket or junk after `]` is an error.
pub fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or("unclosed '['")?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((h, Some(p))),
            None if tail.is_empty() => Ok((h, None)),
            None => Err("junk after ']'".into()),
        };
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s, None));
    }
    Ok(match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(s, Scheme::Https).unwrap().0
    }

    #[test]
    fn urls_parse() {
        let e = ep("https://vc.example/sdk");
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port, e.path.as_str()),
            (Scheme::Https, "vc.example", 443, "/sdk")
        );
        let e = ep("vc.example:8443");
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("vc.example", 8443, "/")
        );
        let (e, p) = Endpoint::parse("https://admin@[fd00::1]:444/foo?x#f", Scheme::Https).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("fd00::1", 444, "/foo?x")
        );
        assert_eq!(e.authority(), "[fd00::1]:444");
        assert_eq!(p.userinfo.as_deref(), Some("admin"));
        assert!(p.explicit_port);
        let e = ep("http://files.example");
        assert_eq!((e.scheme, e.port), (Scheme::Http, 80));
        let e = ep("fd00::7");
        assert_eq!((e.host.as_str(), e.port), ("fd00::7", 443));
        for bad in [
            "https://",
            "vc:0",
            "vc:99999",
            "socks5://p:1",
            "[fd00::1",
            "[fd00::1]x",
            "vc:x",
        ] {
            assert!(Endpoint::parse(bad, Scheme::Https).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_port_splits() {
        assert_eq!(split_host_port("h:80").unwrap(), ("h", Some("80")));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1", Some("80")));
        assert_eq!(split_host_port("::1").unwrap(), ("::1", None));
        assert_eq!(split_host_port("h").unwrap(), ("h", None));
    }
}
