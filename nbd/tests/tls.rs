//! NBD over TLS against nbdkit and qemu-nbd with `--tls=require`, with x509 certificates
//! made at test time by GnuTLS's certtool (as nbdkit's own tests make them): data read
//! through TLS, and each way it must fail closed (a wrong CA, an expired certificate, a
//! host name mismatch, a server without TLS, a plain URI to a server requiring TLS, a
//! missing client certificate, TLS-PSK), each by kind and message.

use std::path::Path;

use ferry_nbd::{Client, ConnectOptions, Error, Uri};
use ferry_test_kit::Server;

use ferry_test_kit::pki::{pki, server_dir};

fn have_tools() -> bool {
    ferry_test_kit::require_in(
        "nbd",
        &["nbdkit", "qemu-nbd", "qemu-img", "certtool", "nbdcopy"],
    )
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    }
}

/// `nbds+unix` with the query `q` for `server`'s socket.
fn tls_unix(server: &Server, q: &str) -> Uri {
    format!("nbds+unix:///?socket={}&{q}", server.socket().display())
        .parse()
        .unwrap()
}

async fn read_pattern(uri: &Uri) -> Result<(), Error> {
    let c: Client = Client::connect(uri, &opts()).await?;
    assert_eq!(c.size(), 4 << 20);
    let buf = c.read(1 << 20, vec![0u8; 64 * 1024]).await?;
    ferry_test_kit::check_pattern(1 << 20, &buf);
    c.disconnect().await;
    Ok(())
}

fn tls_message(e: Error) -> String {
    match e {
        Error::Tls { message, .. } => message,
        other => panic!("not a TLS error: {other:?} ({other})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdkit_with_tls_required_is_read_through_tls_and_refuses_what_it_must() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let good = server_dir(&p, "srv-good", "good");
    let old = server_dir(&p, "srv-old", "old");
    let client = p.bundle("cli", &[("ca-cert.pem", "ca-cert.pem")]);
    let wrong_ca = p.bundle("cli-other", &[("ca-cert.pem", "other-ca-cert.pem")]);
    let tls = |d: &Path| format!("--tls-certificates={}", d.display());
    let s = Server::nbdkit(
        dir.path(),
        &["--tls=require", &tls(&good), "pattern", "size=4M"],
    );
    let certs = format!("tls-certificates={}", client.display());

    // Through TLS, over a Unix socket (name: localhost) and over TCP (name: 127.0.0.1).
    read_pattern(&tls_unix(&s, &certs)).await.unwrap();
    let (t, port) = Server::nbdkit_tcp(
        dir.path(),
        &["--tls=require", &tls(&good), "pattern", "size=4M"],
    );
    let tcp: Uri = format!("nbds://127.0.0.1:{port}/?{certs}").parse().unwrap();
    read_pattern(&tcp).await.unwrap();
    drop(t);

    // A plain URI to a server that requires TLS.
    let plain: Uri = s.uri().parse().unwrap();
    let e = Client::<Vec<u8>>::connect(&plain, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TlsRequired), "{e:?}");
    assert!(e.to_string().contains("nbds://"), "{e}");

    // A CA that did not sign the server's certificate.
    let e = read_pattern(&tls_unix(
        &s,
        &format!("tls-certificates={}", wrong_ca.display()),
    ))
    .await
    .unwrap_err();
    let m = tls_message(e);
    assert!(m.contains("not signed by the CA"), "{m}");
    // ... accepted with tls-verify-peer=false (the data is still read through TLS).
    read_pattern(&tls_unix(
        &s,
        &format!(
            "tls-certificates={}&tls-verify-peer=false",
            wrong_ca.display()
        ),
    ))
    .await
    .unwrap();

    // A name the certificate does not carry.
    let e = read_pattern(&tls_unix(
        &s,
        &format!("{certs}&tls-hostname=nbd.example.com"),
    ))
    .await
    .unwrap_err();
    let m = tls_message(e);
    assert!(m.contains("not valid for this host name"), "{m}");

    // An expired server certificate.
    let s_old = Server::nbdkit(
        dir.path(),
        &["--tls=require", &tls(&old), "pattern", "size=4M"],
    );
    let e = read_pattern(&tls_unix(&s_old, &certs)).await.unwrap_err();
    let m = tls_message(e);
    assert!(m.contains("expired"), "{m}");

    // An nbds URI to a server without TLS: refused before any option goes in the clear.
    let s_plain = Server::nbdkit(dir.path(), &["--tls=off", "pattern", "size=4M"]);
    let e = read_pattern(&tls_unix(&s_plain, &certs)).await.unwrap_err();
    let m = tls_message(e);
    assert!(m.contains("does not offer TLS"), "{m}");

    // TLS-PSK is named as unsupported.
    let e = read_pattern(&tls_unix(&s, "tls-psk-file=/tmp/keys.psk"))
        .await
        .unwrap_err();
    let m = tls_message(e);
    assert!(
        m.contains("TLS-PSK is not supported") && m.contains("rustls"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_verifies_clients_needs_the_client_certificate() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let good = server_dir(&p, "srv-good", "good");
    let with_cert = p.bundle(
        "cli-cert",
        &[
            ("ca-cert.pem", "ca-cert.pem"),
            ("client-cert.pem", "client-cert.pem"),
            ("client-key.pem", "client-key.pem"),
        ],
    );
    let without = p.bundle("cli", &[("ca-cert.pem", "ca-cert.pem")]);
    let s = Server::nbdkit(
        dir.path(),
        &[
            "--tls=require",
            &format!("--tls-certificates={}", good.display()),
            "--tls-verify-peer",
            "pattern",
            "size=4M",
        ],
    );
    read_pattern(&tls_unix(
        &s,
        &format!("tls-certificates={}", with_cert.display()),
    ))
    .await
    .unwrap();
    let e = read_pattern(&tls_unix(
        &s,
        &format!("tls-certificates={}", without.display()),
    ))
    .await
    .unwrap_err();
    // The server hangs up after the handshake; what the client sees depends on timing,
    // but it never gets the export.
    assert!(
        matches!(
            e,
            Error::Tls { .. } | Error::Disconnected(_) | Error::Io { .. }
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_nbd_with_x509_credentials_is_read_through_tls_as_nbdcopy_reads_it() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let good = server_dir(&p, "srv-good", "good");
    // qemu's x509 credentials verify clients by default (verify-peer=on).
    let client = p.bundle(
        "cli-cert",
        &[
            ("ca-cert.pem", "ca-cert.pem"),
            ("client-cert.pem", "client-cert.pem"),
            ("client-key.pem", "client-key.pem"),
        ],
    );
    let img = dir.path().join("disk.qcow2");
    ferry_test_kit::qemu_image(
        &img,
        "qcow2",
        "4M",
        &["write -P 0x5a 0 1M", "write -P 0xa5 2M 512k"],
    );
    let creds = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server",
        good.display()
    );
    let s = Server::qemu_nbd(
        dir.path(),
        "",
        &[
            "--object",
            &creds,
            "--tls-creds=tls0",
            "-f",
            "qcow2",
            img.to_str().unwrap(),
        ],
    );
    let text = format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        s.socket().display(),
        client.display()
    );
    let uri: Uri = text.parse().unwrap();
    let c: Client = Client::connect(&uri, &opts()).await.unwrap();
    assert!(c.info().extended || c.info().structured);
    let mut ours = Vec::new();
    for off in (0..4u64 << 20).step_by(1 << 20) {
        ours.extend(c.read(off, vec![0u8; 1 << 20]).await.unwrap());
    }
    c.disconnect().await;
    // nbdcopy (libnbd) reads the same URI: the parameters mean the same to both.
    let theirs = dir.path().join("nbdcopy.raw");
    ferry_test_kit::nbdcopy(&text, &theirs);
    assert_eq!(std::fs::read(&theirs).unwrap(), ours);
    assert!(ours[..1 << 20].iter().all(|b| *b == 0x5a));
    assert!(
        ours[2 << 20..(2 << 20) + 512 * 1024]
            .iter()
            .all(|b| *b == 0xa5)
    );
    // A plain URI to it is refused with the TLS message.
    let plain: Uri = format!("nbd+unix:///?socket={}", s.socket().display())
        .parse()
        .unwrap();
    let e = Client::<Vec<u8>>::connect(&plain, &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TlsRequired), "{e:?}");
}
