//! HTTPS POST of SOAP envelopes to `/sdk`, through [`ferry_http::Client`] (proxies, trust
//! policy, timeouts, body cap), keeping the `vmware_soap_session` cookie.

use ferry_http::{Bytes, Full, Request, header};

pub use ferry_http::{CALL_TIMEOUT, CONNECT_TIMEOUT, ClientOptions, Endpoint};

use crate::Error;
use crate::tls::TlsPolicy;

/// Parse where the vSphere API is: `https://vc.example/sdk`, `vc.example`,
/// `vc.example:8443`, `[fd00::1]:443`, `https://user@vc.example/anything` (user info and
/// path are dropped: the path is always `/sdk`, as CDI does). `http://` is refused.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, Error> {
    let s = s.trim();
    let (mut ep, _) = Endpoint::parse(s, ferry_http::Scheme::Https)
        .map_err(|why| Error::Config(format!("endpoint {s:?}: {why}")))?;
    if ep.scheme != ferry_http::Scheme::Https {
        return Err(Error::Config(format!(
            "endpoint {s:?}: only https:// is supported"
        )));
    }
    ep.path = "/sdk".into();
    Ok(ep)
}

/// A response: status, the `vmware_soap_session` cookie if set, and the body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub session_cookie: Option<String>,
    pub body: String,
}

#[derive(Debug)]
pub(crate) struct Transport {
    http: ferry_http::Client,
}

impl Transport {
    pub fn new(endpoint: Endpoint, tls: &TlsPolicy, opts: ClientOptions) -> Result<Self, Error> {
        Ok(Transport {
            http: ferry_http::Client::new(endpoint, tls, opts)?,
        })
    }

    /// The server.
    pub fn endpoint(&self) -> &Endpoint {
        self.http.endpoint()
    }

    /// POST one envelope to `/sdk`, bounded by the call timeout and the body cap.
    pub async fn post(
        &self,
        operation: &str,
        soap_action: &str,
        body: &str,
        cookie: Option<&str>,
    ) -> Result<HttpResponse, Error> {
        let mut req = Request::post("/sdk")
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", soap_action)
            .header(
                header::USER_AGENT,
                concat!("ferry-vsphere/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("{}={c}", crate::SESSION_COOKIE));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::Protocol(format!("cannot build request: {e}")))?;
        let resp = self.http.send(operation, req).await?;
        let session_cookie = resp
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?.trim();
                let (name, value) = first.split_once('=')?;
                (name.trim() == crate::SESSION_COOKIE).then(|| value.trim().to_string())
            });
        let body = String::from_utf8(resp.body.to_vec())
            .map_err(|_| Error::Protocol(format!("{operation}: response is not UTF-8")))?;
        Ok(HttpResponse {
            status: resp.status.as_u16(),
            session_cookie,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = parse_endpoint("https://vc.example/sdk").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("vc.example", 443));
        let e = parse_endpoint("vc.example:8443").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("vc.example", 8443, "/sdk")
        );
        let e = parse_endpoint("https://admin@[fd00::1]:444/foo").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("fd00::1", 444, "/sdk")
        );
        assert_eq!(e.authority(), "[fd00::1]:444");
        assert!(parse_endpoint("http://vc.example").is_err());
        assert!(parse_endpoint("https://").is_err());
        assert!(parse_endpoint("vc:0").is_err());
        assert!(parse_endpoint("vc:99999").is_err());
    }
}
