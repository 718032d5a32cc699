//! Image references: `docker://[HOST[:PORT]/]REPO[:TAG][@DIGEST]`, read as
//! containers/image's `docker` transport and distribution's reference grammar read them.
//!
//! - The first path component is a registry host when it holds a `.` or a `:`, or is
//!   `localhost`; otherwise the image is on Docker Hub (`docker.io`, reached at
//!   [`DOCKER_HUB_API_HOST`]) and a one-component repository is `library/NAME`.
//! - A tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; without tag or digest it is `latest`.
//! - A digest is `sha256:` and 64 lower-case hex digits (or `sha512:` and 128). With both a
//!   tag and a digest, the digest is what is fetched (the tag is kept for messages).
//!
//! Everything is capped ([`MAX_REFERENCE_BYTES`], [`MAX_REPOSITORY_BYTES`]).

use std::fmt;

/// The transport prefix.
pub const SCHEME: &str = "docker://";
/// Longest reference accepted.
pub const MAX_REFERENCE_BYTES: usize = 4096;
/// Longest repository path (distribution's `NameTotalLengthMax`).
pub const MAX_REPOSITORY_BYTES: usize = 255;
/// Longest tag (distribution's grammar).
pub const MAX_TAG_BYTES: usize = 128;
/// The registry name Docker Hub images are given.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path, e.g. `library/alpine`.
    pub repository: String,
    /// The tag, if one was written.
    pub tag: Option<String>,
    /// The manifest digest, if one was written (`sha256:…`).
    pub digest: Option<String>,
}

/// A reference that cannot be read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The reference as given (cut to 256 bytes).
    pub reference: String,
    /// What is wrong.
    pub reason: String,
}

/// Whether `spec` is a `docker://` reference.
pub fn is_registry_ref(spec: &str) -> bool {
    spec.get(..SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
}

fn is_component(s: &str) -> bool {
    // [a-z0-9]+ ( ( [._] | __ | -+ ) [a-z0-9]+ )*
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_BYTES
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Whether `d` is a digest Ferry can verify: `sha256:` + 64 or `sha512:` + 128
/// lower-case hex digits.
pub fn is_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn is_host(s: &str) -> bool {
    // A host name or address with an optional port, or an IPv6 literal in brackets.
    let (host_ok, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let Some((h, rest)) = v6.split_once(']') else {
                return false;
            };
            let port = match rest {
                "" => None,
                r => Some(r.strip_prefix(':').unwrap_or("not a port")),
            };
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
            (ok, port)
        }
        None => {
            let (h, port) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let label = |l: &str| {
                !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            };
            (!h.is_empty() && h.split('.').all(label), port)
        }
    };
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
}

impl Reference {
    /// Parse `docker://…` (the prefix is required).
    pub fn parse(spec: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            reference: spec.chars().take(256).collect(),
            reason: reason.to_string(),
        };
        if spec.len() > MAX_REFERENCE_BYTES {
            return Err(fail(&format!("longer than {MAX_REFERENCE_BYTES} bytes")));
        }
        if !is_registry_ref(spec) {
            return Err(fail(
                "expected docker://[HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]",
            ));
        }
        let rest = &spec[SCHEME.len()..];
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => {
                if !is_digest(d) {
                    return Err(fail(
                        "the digest must be sha256: and 64 lower-case hex digits (or sha512: and 128)",
                    ));
                }
                (n, Some(d.to_string()))
            }
            None => (rest, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = name.rfind('/');
        let (path, tag) = match name.rfind(':') {
            Some(c) if last_slash.is_none_or(|s| c > s) => {
                let t = &name[c + 1..];
                if !is_tag(t) {
                    return Err(fail(&format!(
                        "tag {t:?}: expected up to {MAX_TAG_BYTES} of A-Z a-z 0-9 _ . - (not starting with . or -)"
                    )));
                }
                (&name[..c], Some(t.to_string()))
            }
            _ => (name, None),
        };
        if path.is_empty() {
            return Err(fail("no repository"));
        }
        let (registry, repo) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                if !is_host(first) {
                    return Err(fail(&format!("{first:?} is not a registry host[:port]")));
                }
                (first.to_ascii_lowercase(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        let repo = if registry == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if repo.is_empty() {
            return Err(fail("no repository"));
        }
        if repo.len() > MAX_REPOSITORY_BYTES {
            return Err(fail(&format!(
                "the repository is longer than {MAX_REPOSITORY_BYTES} bytes"
            )));
        }
        if let Some(bad) = repo.split('/').find(|c| !is_component(c)) {
            return Err(fail(&format!(
                "repository component {bad:?}: expected lower-case letters and digits, separated by . _ __ or -"
            )));
        }
        Ok(Reference {
            registry,
            repository: repo,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when there is one, else the tag
    /// (`latest` when neither was written).
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The `host:port` the registry API is reached at (Docker Hub's API host for
    /// `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        if self.tag.is_none() && self.digest.is_none() {
            write!(f, ":latest")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn references_are_read_as_containers_image_reads_them() {
        let r = p("docker://127.0.0.1:5000/disks/cirros:1.0");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "disks/cirros");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.manifest_ref(), "1.0");
        assert_eq!(r.api_host(), "127.0.0.1:5000");

        let r = p("docker://quay.io/containerdisks/fedora:latest");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("quay.io", "containerdisks/fedora")
        );

        let r = p("docker://alpine");
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.manifest_ref(), "latest");
        assert_eq!(r.api_host(), DOCKER_HUB_API_HOST);
        assert_eq!(r.to_string(), "docker://docker.io/library/alpine:latest");

        let r = p("docker://kubevirt/fedora-cloud-container-disk-demo");
        assert_eq!(r.repository, "kubevirt/fedora-cloud-container-disk-demo");
        assert_eq!(r.registry, DOCKER_HUB);

        let r = p(&format!("docker://localhost:5000/a/b/c:t@{D}"));
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.tag.as_deref(), Some("t"));

        let r = p(&format!("docker://localhost/x@{D}"));
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", None));

        let r = p("docker://[::1]:5000/x:y");
        assert_eq!(r.registry, "[::1]:5000");
    }

    #[test]
    fn malformed_references_are_refused_by_reason() {
        for (s, why) in [
            ("docker:/x", "expected docker://"),
            ("http://x/y", "expected docker://"),
            ("docker://", "no repository"),
            ("docker://Upper/x", "repository component"),
            ("docker://h.io/a//b", "repository component"),
            ("docker://h.io/a-/b", "repository component"),
            ("docker://h.io/a:bad tag", "tag"),
            ("docker://h.io/a:.x", "tag"),
            ("docker://h.io/a@sha256:abc", "digest"),
            (
                "docker://h.io/a@md5:0123456789abcdef0123456789abcdef",
                "digest",
            ),
            ("docker://h.io:99999x/a", "not a registry host"),
        ] {
            let e = Reference::parse(s).expect_err(s);
            assert!(e.reason.contains(why), "{s}: {e}");
        }
        let long = format!("docker://h.io/{}", "a".repeat(300));
        assert!(Reference::parse(&long).unwrap_err().reason.contains("255"));
        let huge = format!("docker://h.io/{}", "a/".repeat(3000));
        assert!(Reference::parse(&huge).unwrap_err().reason.contains("4096"));
        let tag = format!("docker://h.io/a:{}", "t".repeat(129));
        assert!(Reference::parse(&tag).unwrap_err().reason.contains("tag"));
    }
}
