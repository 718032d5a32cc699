//! Which proxy a connection goes through, chosen as Go's `http.ProxyFromEnvironment`
//! chooses it (golang.org/x/net/http/httpproxy), because that is what CDI's importer and
//! govmomi do with the `http_proxy`, `https_proxy` and `no_proxy` variables CDI's
//! controller puts in the pod:
//!
//! - `HTTPS_PROXY`/`https_proxy` for `https://` targets, `HTTP_PROXY`/`http_proxy` for
//!   `http://` ones (the upper-case name first, empty means unset); neither falls back
//!   to the other.
//! - A proxy without a scheme is `http://`. `http://` and `https://` proxies are
//!   supported; the default proxy port is 80 and 443. `user:password@` (percent-decoded)
//!   becomes `Proxy-Authorization: Basic`.
//! - `localhost` and loopback addresses are never proxied.
//! - `no_proxy` is a comma-separated list of `*`, IP addresses, CIDR ranges, and domain
//!   names, each optionally with `:port`. `example.com` matches it and its subdomains,
//!   `.example.com` and `*.example.com` only the subdomains.
//!
//! Where Ferry differs on purpose: Go ignores a proxy value it cannot parse and connects
//! directly, and supports `socks5://`; Ferry refuses both with a one-line error, since a
//! copy that silently bypasses the operator's proxy is worse than one that stops.

use std::fmt;
use std::net::IpAddr;

use crate::Error;
use crate::endpoint::{Endpoint, Scheme, authority, split_host_port};

/// Longest proxy or `no_proxy` value read from the environment.
pub const MAX_PROXY_ENV_BYTES: usize = 64 * 1024;
/// Most `no_proxy` entries considered.
pub const MAX_NO_PROXY_ENTRIES: usize = 4096;

/// How the connection to the proxy itself is made: plain TCP (`http://`), or TLS
/// verified against the system roots and the proxy CA directories (`https://`).
pub type ProxyScheme = Scheme;

/// A proxy reached with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `http://` or `https://`.
    pub scheme: ProxyScheme,
    /// Proxy host (IPv6 without brackets).
    pub host: String,
    /// Proxy port (80 or 443 by scheme when not given, as Go does).
    pub port: u16,
    /// `user:password`, percent-decoded, for `Proxy-Authorization: Basic`.
    pub credentials: Option<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Proxy {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// The proxy variables, as read from the environment or given by a caller.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy for `http://` targets.
    pub http_proxy: Option<String>,
    /// Proxy for `https://` targets, e.g. `http://user:pw@proxy:3128` or `proxy:3128`.
    pub https_proxy: Option<String>,
    /// Hosts reached directly (see the module documentation).
    pub no_proxy: Option<String>,
}

fn redact(url: &Option<String>) -> Option<String> {
    url.as_ref().map(|p| match p.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => p.clone(),
    })
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("http_proxy", &redact(&self.http_proxy))
            .field("https_proxy", &redact(&self.https_proxy))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyConfig {
    /// Read `HTTP_PROXY`/`http_proxy`, `HTTPS_PROXY`/`https_proxy` and
    /// `NO_PROXY`/`no_proxy`, upper case first and empty as unset, as Go does.
    pub fn from_env() -> ProxyConfig {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`ProxyConfig::from_env`] over any lookup (tests, fuzzing).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> ProxyConfig {
        let any = |upper: &str, lower: &str| {
            [upper, lower]
                .into_iter()
                .find_map(|n| get(n).filter(|v| !v.is_empty()))
        };
        ProxyConfig {
            http_proxy: any("HTTP_PROXY", "http_proxy"),
            https_proxy: any("HTTPS_PROXY", "https_proxy"),
            no_proxy: any("NO_PROXY", "no_proxy"),
        }
    }

    /// The proxy for a connection to `host:port` made for a `scheme` (`"https"` or
    /// `"http"`) URL, or `None` to connect directly.
    pub fn proxy_for(&self, scheme: &str, host: &str, port: u16) -> Result<Option<Proxy>, Error> {
        let (name, value) = match scheme {
            "https" => ("https_proxy", &self.https_proxy),
            "http" => ("http_proxy", &self.http_proxy),
            _ => return Ok(None),
        };
        let Some(value) = value else {
            return Ok(None);
        };
        if !self.use_proxy(host, port)? {
            return Ok(None);
        }
        parse_proxy(name, value).map(Some)
    }

    /// Go's `useProxy`: false for localhost, loopback and `no_proxy` matches.
    fn use_proxy(&self, host: &str, port: u16) -> Result<bool, Error> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host == "localhost" {
            return Ok(false);
        }
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_some_and(|ip| ip.is_loopback()) {
            return Ok(false);
        }
        let Some(list) = &self.no_proxy else {
            return Ok(true);
        };
        if list.len() > MAX_PROXY_ENV_BYTES {
            return Err(Error::Config(format!(
                "no_proxy is {} bytes, more than the {MAX_PROXY_ENV_BYTES}-byte limit",
                list.len()
            )));
        }
        let port = port.to_string();
        for (i, entry) in list.split(',').enumerate() {
            if i >= MAX_NO_PROXY_ENTRIES {
                return Err(Error::Config(format!(
                    "no_proxy has more than {MAX_NO_PROXY_ENTRIES} entries"
                )));
            }
            match NoProxyEntry::parse(entry) {
                Some(NoProxyEntry::All) => return Ok(false),
                Some(e) if e.matches(&host, ip, &port) => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    }
}

/// One `no_proxy` entry, as Go's `httpproxy` config `init` reads it.
#[derive(Debug, PartialEq, Eq)]
enum NoProxyEntry {
    All,
    Cidr {
        net: IpAddr,
        bits: u8,
    },
    Ip {
        ip: IpAddr,
        port: Option<String>,
    },
    /// `suffix` starts with '.'; `exact` also matches the name without the dot.
    Domain {
        suffix: String,
        exact: bool,
        port: Option<String>,
    },
}

impl NoProxyEntry {
    fn parse(entry: &str) -> Option<NoProxyEntry> {
        let e = entry.trim().to_ascii_lowercase();
        if e.is_empty() {
            return None;
        }
        if e == "*" {
            return Some(NoProxyEntry::All);
        }
        if let Some((net, bits)) = e.split_once('/') {
            let net = net.parse::<IpAddr>().ok()?;
            let bits = bits.parse::<u8>().ok()?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            return (bits <= max).then_some(NoProxyEntry::Cidr { net, bits });
        }
        // Go's `net.SplitHostPort` failing leaves the whole entry as the host.
        let (host, port) = match split_host_port(&e) {
            Ok((h, p)) => (h, p.map(str::to_string)),
            Err(_) => (e.as_str(), None),
        };
        if host.is_empty() {
            return None;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(NoProxyEntry::Ip { ip, port });
        }
        let host = host.strip_prefix('*').unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        let (suffix, exact) = match host.strip_prefix('.') {
            Some(_) => (host.to_string(), false),
            None => (format!(".{host}"), true),
        };
        Some(NoProxyEntry::Domain {
            suffix,
            exact,
            port,
        })
    }

    fn matches(&self, host: &str, ip: Option<IpAddr>, port: &str) -> bool {
        let port_ok = |p: &Option<String>| p.as_deref().is_none_or(|p| p == port);
        match self {
            NoProxyEntry::All => true,
            NoProxyEntry::Cidr { net, bits } => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
            NoProxyEntry::Ip { ip: want, port: p } => ip == Some(*want) && port_ok(p),
            NoProxyEntry::Domain {
                suffix,
                exact,
                port: p,
            } => {
                (host.ends_with(suffix.as_str()) || (*exact && host == &suffix[1..])) && port_ok(p)
            }
        }
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (
            u128::from(u32::from(a)) << 96,
            u128::from(u32::from(b)) << 96,
            32,
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let bits = u32::from(bits.min(width));
    if bits == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - bits);
    a & mask == b & mask
}

/// Go's `parseProxy`, restricted to the schemes Ferry can tunnel through.
fn parse_proxy(name: &str, value: &str) -> Result<Proxy, Error> {
    if value.len() > MAX_PROXY_ENV_BYTES {
        return Err(Error::Config(format!(
            "{name} is {} bytes, more than the {MAX_PROXY_ENV_BYTES}-byte limit",
            value.len()
        )));
    }
    let bad = |why: &str| Error::Config(format!("{name}: {why}"));
    let v = value.trim();
    if let Some((scheme, _)) = v.split_once("://")
        && !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
    {
        return Err(bad(&format!(
            "{scheme}:// proxies are not supported (only http:// and https://)"
        )));
    }
    // Go's parseProxy: a value without a scheme is an http:// proxy.
    let (ep, parsed) = Endpoint::parse(v, Scheme::Http).map_err(|why| bad(&why))?;
    let credentials = parsed
        .userinfo
        .map(|c| {
            let (user, password) = c.split_once(':').unwrap_or((&c, ""));
            match (percent_decode(user), percent_decode(password)) {
                (Some(u), Some(p)) if c.contains(':') => Ok(format!("{u}:{p}")),
                (Some(u), Some(_)) => Ok(format!("{u}:")),
                _ => Err(bad("the user or password is not valid percent-encoding")),
            }
        })
        .transpose()?;
    Ok(Proxy {
        scheme: ep.scheme,
        host: ep.host,
        port: ep.port,
        credentials,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(https: &str, no: &str) -> ProxyConfig {
        ProxyConfig {
            http_proxy: None,
            https_proxy: Some(https.into()),
            no_proxy: (!no.is_empty()).then(|| no.into()),
        }
    }

    fn proxied(c: &ProxyConfig, host: &str, port: u16) -> bool {
        c.proxy_for("https", host, port).unwrap().is_some()
    }

    #[test]
    fn environment_is_read_upper_case_first_and_empty_is_unset() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = ProxyConfig::from_lookup(env(&[("HTTPS_PROXY", "up:1"), ("https_proxy", "lo:1")]));
        assert_eq!(c.https_proxy.as_deref(), Some("up:1"));
        let c = ProxyConfig::from_lookup(env(&[("HTTPS_PROXY", ""), ("https_proxy", "lo:1")]));
        assert_eq!(c.https_proxy.as_deref(), Some("lo:1"));
        // CDI's controller sets the lower-case names, empty when unset.
        let c = ProxyConfig::from_lookup(env(&[
            ("http_proxy", ""),
            ("https_proxy", ""),
            ("no_proxy", ""),
        ]));
        assert_eq!(c, ProxyConfig::default());
    }

    #[test]
    fn https_targets_use_only_https_proxy() {
        let c = ProxyConfig {
            http_proxy: Some("http://p:3128".into()),
            https_proxy: None,
            no_proxy: None,
        };
        assert!(c.proxy_for("https", "vc", 443).unwrap().is_none());
        assert!(c.proxy_for("http", "vc", 80).unwrap().is_some());
    }

    #[test]
    fn loopback_and_localhost_are_never_proxied() {
        let c = cfg("http://p:3128", "");
        assert!(!proxied(&c, "localhost", 443));
        assert!(!proxied(&c, "LOCALHOST", 443));
        assert!(!proxied(&c, "127.0.0.1", 443));
        assert!(!proxied(&c, "127.1.2.3", 443));
        assert!(!proxied(&c, "::1", 443));
        assert!(!proxied(&c, "[::1]", 443));
        assert!(proxied(&c, "vc.example", 443));
        assert!(proxied(&c, "10.0.0.1", 443));
    }

    #[test]
    fn no_proxy_matches_as_go_does() {
        let c = cfg("p:3128", "example.com");
        assert!(!proxied(&c, "example.com", 443));
        assert!(!proxied(&c, "vc.example.com", 443));
        assert!(proxied(&c, "vcexample.com", 443));
        let c = cfg("p:3128", ".example.com");
        assert!(proxied(&c, "example.com", 443));
        assert!(!proxied(&c, "vc.example.com", 443));
        let c = cfg("p:3128", "*.example.com");
        assert!(proxied(&c, "example.com", 443));
        assert!(!proxied(&c, "vc.example.com", 443));
        let c = cfg(
            "p:3128",
            " vc.example.com:8443 , 10.1.0.0/16,fd00::/8, 192.0.2.7",
        );
        assert!(proxied(&c, "vc.example.com", 443));
        assert!(!proxied(&c, "vc.example.com", 8443));
        assert!(!proxied(&c, "10.1.200.3", 443));
        assert!(proxied(&c, "10.2.0.1", 443));
        assert!(!proxied(&c, "fd00::1", 443));
        assert!(!proxied(&c, "192.0.2.7", 443));
        let c = cfg("p:3128", "[fd00::9]:443,192.0.2.8:444");
        assert!(!proxied(&c, "fd00::9", 443));
        assert!(proxied(&c, "192.0.2.8", 443));
        assert!(!proxied(&c, "192.0.2.8", 444));
        assert!(!proxied(&cfg("p:3128", "a, *"), "vc", 443));
        assert!(proxied(&cfg("p:3128", ",,:443, ,"), "vc", 443));
        assert!(!proxied(&cfg("p:3128", "0.0.0.0/0"), "10.9.9.9", 443));
    }

    #[test]
    fn proxy_urls_parse_as_go_does() {
        let p = cfg("http://u%40corp:p%3Ass@proxy.local:3128/", "")
            .proxy_for("https", "vc", 443)
            .unwrap()
            .unwrap();
        assert_eq!(p.scheme, ProxyScheme::Http);
        assert_eq!(p.authority(), "proxy.local:3128");
        assert_eq!(p.credentials.as_deref(), Some("u@corp:p:ss"));
        let get = |v: &str| cfg(v, "").proxy_for("https", "vc", 443);
        let p = get("proxy.local").unwrap().unwrap();
        assert_eq!((p.scheme, p.port), (ProxyScheme::Http, 80));
        let p = get("HTTPS://[fd00::3]").unwrap().unwrap();
        assert_eq!(
            (p.scheme, p.authority()),
            (ProxyScheme::Https, "[fd00::3]:443".into())
        );
        let p = get("https://u@p:8443").unwrap().unwrap();
        assert_eq!((p.port, p.credentials.as_deref()), (8443, Some("u:")));
        for bad in [
            "socks5://p:1080",
            "http://p:0",
            "http://p:x",
            "http://",
            "http://[fd00::1",
        ] {
            let e = get(bad).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e}");
            assert!(e.to_string().contains(": https_proxy: "), "{e}");
        }
        assert!(get("http://u:%zz@p").is_err());
    }

    #[test]
    fn debug_redacts_credentials() {
        let c = cfg("http://u:secret@proxy:3128", "");
        let p = c.proxy_for("https", "vc", 443).unwrap().unwrap();
        let s = format!("{c:?} {p:?}");
        assert!(!s.contains("secret"), "{s}");
        assert!(s.contains("proxy:3128"), "{s}");
    }

    #[test]
    fn oversized_values_are_refused() {
        let long = "a,".repeat(MAX_NO_PROXY_ENTRIES + 1);
        let e = cfg("p:1", &long).proxy_for("https", "vc", 443).unwrap_err();
        assert!(e.to_string().contains("no_proxy"), "{e}");
        let huge = "x".repeat(MAX_PROXY_ENV_BYTES + 1);
        assert!(cfg(&huge, "").proxy_for("https", "vc", 443).is_err());
    }
}
