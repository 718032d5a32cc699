//! Registry authentication, sans-IO: the `WWW-Authenticate` challenge of a `401`
//! (RFC 7235 as distribution writes it: `Bearer realm="…",service="…",scope="…"` or
//! `Basic realm="…"`), and the token server's JSON answer (Docker's token
//! authentication spec: `token` or `access_token`, `expires_in`).
//!
//! Every input is capped: [`MAX_CHALLENGE_BYTES`], [`MAX_CHALLENGE_PARAMS`],
//! [`MAX_TOKEN_RESPONSE_BYTES`], [`MAX_TOKEN_BYTES`].

/// Longest `WWW-Authenticate` value read.
pub const MAX_CHALLENGE_BYTES: usize = 8192;
/// Most parameters of one challenge.
pub const MAX_CHALLENGE_PARAMS: usize = 16;
/// Largest token server answer (containers/image's `maxAuthTokenBodySize`).
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 1 << 20;
/// Longest token accepted (it is sent back in a header).
pub const MAX_TOKEN_BYTES: usize = 64 << 10;
/// Lifetime assumed when the token server gives none (the spec's default).
pub const DEFAULT_TOKEN_SECONDS: u64 = 60;

/// What a registry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic`: the credentials on every request.
    Basic,
    /// `Bearer`: a token from `realm`, asked for `service` and `scope`.
    Bearer {
        /// The token server's URL.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
        /// The `scope` the registry said it needs, if given.
        scope: Option<String>,
    },
}

/// A challenge or token answer that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Split `s` into `name=value` parameters (values quoted or tokens, separated by
/// commas), from the start.
fn params(mut s: &str) -> Result<Vec<(String, String)>, AuthError> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t', ',']);
        if s.is_empty() {
            return Ok(out);
        }
        if out.len() >= MAX_CHALLENGE_PARAMS {
            return Err(AuthError(format!(
                "the challenge has more than {MAX_CHALLENGE_PARAMS} parameters"
            )));
        }
        let eq = s
            .find('=')
            .ok_or_else(|| AuthError(format!("parameter {:?} has no value", cut(s))))?;
        let name = s[..eq].trim().to_ascii_lowercase();
        if name.is_empty()
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(AuthError(format!(
                "{:?} is not a parameter name",
                cut(&name)
            )));
        }
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(q) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e)) => v.push(e),
                        None => break,
                    },
                    c => v.push(c),
                }
            }
            let end = end.ok_or_else(|| AuthError("a quoted value is not closed".into()))?;
            value = v;
            s = &q[end..];
        } else {
            let end = s.find([',', ' ', '\t']).unwrap_or(s.len());
            value = s[..end].to_string();
            s = &s[end..];
        }
        out.push((name, value));
    }
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The challenge Ferry answers among `headers` (the values of every
/// `WWW-Authenticate`): Bearer before Basic; None when none is one of those.
pub fn parse_challenges<'a>(
    headers: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Challenge>, AuthError> {
    let mut basic = false;
    for h in headers {
        if h.len() > MAX_CHALLENGE_BYTES {
            return Err(AuthError(format!(
                "a WWW-Authenticate header longer than {MAX_CHALLENGE_BYTES} bytes"
            )));
        }
        let h = h.trim();
        let (scheme, rest) = h.split_once([' ', '\t']).unwrap_or((h, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let ps = params(rest)?;
            let get = |n: &str| ps.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let realm = get("realm")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| AuthError("a Bearer challenge without a realm".into()))?;
            if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                return Err(AuthError(format!(
                    "the Bearer realm {:?} is not an http(s) URL",
                    cut(&realm)
                )));
            }
            return Ok(Some(Challenge::Bearer {
                realm,
                service: get("service"),
                scope: get("scope"),
            }));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    Ok(basic.then_some(Challenge::Basic))
}

/// A token and how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The bearer token.
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
}

#[derive(serde::Deserialize)]
struct TokenJson {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token in a token server's answer (`token`, or OAuth2's `access_token`).
pub fn parse_token(body: &[u8]) -> Result<Token, AuthError> {
    if body.len() > MAX_TOKEN_RESPONSE_BYTES {
        return Err(AuthError(format!(
            "the token server's answer is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
        )));
    }
    let j: TokenJson = serde_json::from_slice(body)
        .map_err(|e| AuthError(format!("the token server's answer is not token JSON: {e}")))?;
    let token = j
        .token
        .filter(|t| !t.is_empty())
        .or(j.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| AuthError("the token server's answer holds no token".into()))?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError(format!(
            "a token longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    if !token.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(AuthError(
            "the token holds characters a header cannot".into(),
        ));
    }
    Ok(Token {
        token,
        expires_in: j
            .expires_in
            .filter(|&s| s > 0)
            .unwrap_or(DEFAULT_TOKEN_SECONDS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_distribution_writes_them() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ])
        .unwrap();
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#]).unwrap(),
            Some(Challenge::Basic)
        );
        // Bearer wins whatever the order; unknown schemes are passed over.
        let c = parse_challenges([
            "Basic realm=x",
            "Negotiate",
            r#"bearer realm=http://t/token"#,
        ])
        .unwrap();
        assert!(
            matches!(c, Some(Challenge::Bearer { ref realm, .. }) if realm == "http://t/token")
        );
        assert_eq!(parse_challenges(["Negotiate abc"]).unwrap(), None);
        let c = parse_challenges([r#"Bearer realm="http://t/a\"b""#]).unwrap();
        assert!(matches!(c, Some(Challenge::Bearer { ref realm, .. }) if realm == "http://t/a\"b"));
    }

    #[test]
    fn malformed_challenges_are_refused_by_reason() {
        for (h, why) in [
            ("Bearer service=x", "without a realm"),
            (r#"Bearer realm="http://t"#, "not closed"),
            ("Bearer realm=file:///etc/passwd", "not an http(s) URL"),
            ("Bearer realm", "has no value"),
            ("Bearer =x", "not a parameter name"),
        ] {
            let e = parse_challenges([h]).expect_err(h);
            assert!(e.0.contains(why), "{h}: {e}");
        }
        let many = format!("Bearer realm=http://t,{}", "a=b,".repeat(20));
        assert!(
            parse_challenges([many.as_str()])
                .unwrap_err()
                .0
                .contains("parameters")
        );
        let long = format!(
            "Bearer realm=\"http://t/{}\"",
            "a".repeat(MAX_CHALLENGE_BYTES)
        );
        assert!(
            parse_challenges([long.as_str()])
                .unwrap_err()
                .0
                .contains("longer")
        );
    }

    #[test]
    fn tokens_are_read_from_either_field() {
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(
            t,
            Token {
                token: "abc".into(),
                expires_in: 300
            }
        );
        let t = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t.expires_in, DEFAULT_TOKEN_SECONDS);
        assert!(
            parse_token(br#"{"token":""}"#)
                .unwrap_err()
                .0
                .contains("no token")
        );
        assert!(
            parse_token(b"<html>")
                .unwrap_err()
                .0
                .contains("not token JSON")
        );
        assert!(
            parse_token(br#"{"token":"a b"}"#)
                .unwrap_err()
                .0
                .contains("characters")
        );
    }
}
