//! `ferry copy` from NBD over TLS (nbdkit `--tls=require`, certificates made by certtool
//! at test time): the target equals what nbdcopy reads through the same `nbds` URI; the
//! `--tls-*` flags do what the URI parameters do; a plain URI to a TLS-only server, a
//! wrong CA and TLS flags with a plain URI each end with one clear error line.

mod common;

use common::*;
use ferry_test_kit::Server;
use ferry_test_kit::pki::{pki, server_dir};

fn have_tools() -> bool {
    require(&["nbdkit", "nbdcopy", "certtool", "cmp"])
}

#[test]
fn ferry_copy_reads_nbds_as_nbdcopy_does_and_fails_closed() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let srv = server_dir(&p, "srv", "good");
    let cli = p.bundle("cli", &[("ca-cert.pem", "ca-cert.pem")]);
    let wrong = p.bundle("cli-other", &[("ca-cert.pem", "other-ca-cert.pem")]);
    let s = Server::nbdkit(
        dir.path(),
        &[
            "--tls=require",
            &format!("--tls-certificates={}", srv.display()),
            "sparse-random",
            "size=48M",
            "percent=30",
            "runlength=262144",
            "seed=11",
        ],
    );
    let sock = s.socket().display().to_string();
    let uri = format!(
        "nbds+unix:///?socket={sock}&tls-certificates={}",
        cli.display()
    );
    let reference = nbdcopy_reference(&uri, dir.path());

    // The URI's parameters.
    let out = dir.path().join("a.img");
    for_each_engine(|engine| {
        let _ = std::fs::remove_file(&out);
        let v = copy(&uri, &out, engine, &[]).success(&format!("nbds URI, {engine}"));
        assert!(num(&v, "bytes_read") > 0);
        assert_identical(&out, &reference, &format!("nbds URI, {engine}"));
    });

    // The flags, for a URI without parameters.
    let bare = format!("nbds+unix:///?socket={sock}");
    let out2 = dir.path().join("b.img");
    copy(
        &bare,
        &out2,
        "auto",
        &["--tls-certificates", cli.to_str().unwrap()],
    )
    .success("--tls-certificates");
    assert_identical(&out2, &reference, "--tls-certificates");

    // A plain URI to a server that requires TLS.
    let plain = format!("nbd+unix:///?socket={sock}");
    let out3 = dir.path().join("c.img");
    copy(&plain, &out3, "auto", &[]).failure("plain URI", &["requires TLS", "nbds://"]);

    // The wrong CA, by flag.
    copy(
        &bare,
        &out3,
        "auto",
        &["--tls-certificates", wrong.to_str().unwrap()],
    )
    .failure("wrong CA", &["not signed by the CA"]);
    // ... accepted with --tls-verify-peer=false.
    let _ = std::fs::remove_file(&out3);
    copy(
        &bare,
        &out3,
        "auto",
        &[
            "--tls-certificates",
            wrong.to_str().unwrap(),
            "--tls-verify-peer=false",
        ],
    )
    .success("--tls-verify-peer=false");
    assert_identical(&out3, &reference, "--tls-verify-peer=false");

    // TLS flags with a plain URI are a usage error.
    let out4 = dir.path().join("d.img");
    copy(
        &plain,
        &out4,
        "auto",
        &["--tls-certificates", cli.to_str().unwrap()],
    )
    .failure("flags with nbd://", &["--tls-* flags need an nbds://"]);
}
