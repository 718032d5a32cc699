//! x509 certificates made at test time with GnuTLS's certtool, as nbdkit's own tests
//! make them, for the NBD-over-TLS tests (`nbd/tests/tls.rs`, `importer/tests/tls.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A PKI in `dir`: CA certificates and keys (`NAME-cert.pem`, `NAME-key.pem`), client directories as libnbd
/// reads them (`ca-cert.pem`, optionally `client-cert.pem`/`client-key.pem`), server
/// directories as nbdkit and qemu read them (`ca-cert.pem`, `server-cert.pem`,
/// `server-key.pem`).
#[derive(Debug)]
pub struct Pki {
    /// Where the files are.
    pub dir: PathBuf,
}

fn certtool(args: &[&str], template: Option<&str>, dir: &Path) {
    let mut cmd = Command::new("certtool");
    cmd.args(args).current_dir(dir);
    if let Some(t) = template {
        let path = dir.join(format!("t{}.info", crate::next_id()));
        std::fs::write(&path, t).unwrap();
        cmd.arg("--template").arg(&path);
    }
    crate::run_ok(&mut cmd);
}

impl Pki {
    /// An empty PKI directory.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// A self-signed CA named `name`.
    pub fn ca(&self, name: &str) {
        certtool(
            &[
                "--generate-privkey",
                "--outfile",
                &format!("{name}-key.pem"),
            ],
            None,
            &self.dir,
        );
        certtool(
            &[
                "--generate-self-signed",
                "--load-privkey",
                &format!("{name}-key.pem"),
                "--outfile",
                &format!("{name}-cert.pem"),
            ],
            Some(&format!(
                "cn = {name}\nca\ncert_signing_key\nexpiration_days = 30\n"
            )),
            &self.dir,
        );
    }

    /// A certificate `name` signed by CA `ca`, for `role` (`tls_www_server` or
    /// `tls_www_client`), with `extra` template lines (names, dates).
    pub fn cert(&self, name: &str, ca: &str, role: &str, extra: &str) {
        certtool(
            &[
                "--generate-privkey",
                "--outfile",
                &format!("{name}-key.pem"),
            ],
            None,
            &self.dir,
        );
        certtool(
            &[
                "--generate-certificate",
                "--load-ca-certificate",
                &format!("{ca}-cert.pem"),
                "--load-ca-privkey",
                &format!("{ca}-key.pem"),
                "--load-privkey",
                &format!("{name}-key.pem"),
                "--outfile",
                &format!("{name}-cert.pem"),
            ],
            Some(&format!(
                "organization = Ferry tests\ncn = {name}\n{role}\nencryption_key\nsigning_key\n{extra}"
            )),
            &self.dir,
        );
    }

    /// A directory holding `files` as (name in the directory, name in the PKI).
    pub fn bundle(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (to, from) in files {
            std::fs::copy(self.dir.join(from), d.join(to)).unwrap();
        }
        d
    }
}

/// The PKI every test uses: CA `ca` and an unrelated `other-ca`; server certificates
/// for localhost/127.0.0.1 (`good`), expired ones (`old`); a client certificate.
pub fn pki(dir: &Path) -> Pki {
    let p = Pki::new(&dir.join("pki"));
    p.ca("ca");
    p.ca("other-ca");
    let names = "dns_name = localhost\nip_address = 127.0.0.1\nexpiration_days = 30\n";
    p.cert("good", "ca", "tls_www_server", names);
    p.cert(
        "old",
        "ca",
        "tls_www_server",
        "dns_name = localhost\nip_address = 127.0.0.1\nactivation_date = \"2020-01-01 00:00:00 UTC\"\nexpiration_date = \"2020-02-01 00:00:00 UTC\"\n",
    );
    p.cert("client", "ca", "tls_www_client", "expiration_days = 30\n");
    p
}

/// A server directory (nbdkit's and qemu's layout) with certificate `cert`.
pub fn server_dir(p: &Pki, name: &str, cert: &str) -> PathBuf {
    p.bundle(
        name,
        &[
            ("ca-cert.pem", "ca-cert.pem"),
            ("server-cert.pem", &format!("{cert}-cert.pem")),
            ("server-key.pem", &format!("{cert}-key.pem")),
        ],
    )
}
