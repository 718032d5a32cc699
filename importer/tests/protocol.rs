//! A misbehaving NBD server (scripted in-process, see common/fake_nbd.rs): each case
//! must end in the error contract, within a bound, and never create a target when the
//! handshake itself fails (reliability.md 5.1).

mod common;

use std::time::Duration;

use common::fake_nbd::{FakeNbd, Fault};
use common::*;

const SIZE: u64 = 4 * 1024 * 1024;
/// A bound well above `--timeout 2` but far below the default 120 s.
const LIMIT: Duration = Duration::from_secs(10);

/// Copy from a fake server with `fault`, with each engine; check the error contract
/// and return the error lines. Retries are off (each case is one faulty exchange; the
/// fake answers every connection with the same fault), unless `extra` sets them.
fn copy_from_faulty_server(fault: Fault, extra: &[&str], phrases: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeNbd::start(dir.path(), SIZE, fault);
    let mut lines = Vec::new();
    for_each_engine(|engine| {
        let target = dir.path().join(format!("t-{engine}.img"));
        let mut c = copy_cmd(
            &fake.uri(),
            &target,
            &["--io-engine", engine, "--timeout", "2"],
        );
        if !extra.contains(&"--retries") {
            c.args(["--retries", "0"]);
        }
        c.args(extra);
        let ctx = format!("{fault:?}, engine {engine}");
        lines.push(run(c, LIMIT).failure(&ctx, phrases));
    });
    lines
}

/// Faults during the handshake: nothing may be created.
fn handshake_fault(fault: Fault, phrases: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeNbd::start(dir.path(), SIZE, fault);
    let target = dir.path().join("t.img");
    let c = copy_cmd(&fake.uri(), &target, &["--timeout", "2"]);
    run(c, LIMIT).failure(&format!("{fault:?}"), phrases);
    assert!(
        !target.exists(),
        "[{fault:?}] a target was created before the source was open"
    );
}

#[test]
fn silent_server_times_out_in_the_handshake() {
    handshake_fault(Fault::SilentAfterAccept, &["timed out"]);
}

#[test]
fn server_hanging_up_after_the_greeting_is_reported() {
    // EOF, EPIPE or ECONNRESET depending on timing; each names the connection.
    handshake_fault(Fault::CloseAfterGreeting, &["connection"]);
}

#[test]
fn bad_greeting_magic_is_a_protocol_error() {
    handshake_fault(Fault::BadGreetingMagic, &["protocol error", "magic"]);
}

#[test]
fn export_size_beyond_2_pow_63_is_refused() {
    handshake_fault(Fault::HugeExportSize, &["protocol error", "2^63"]);
}

#[test]
fn export_size_changing_between_connections_is_refused() {
    handshake_fault(
        Fault::SizeChangesBetweenConnections,
        &["size changed between connections"],
    );
}

#[test]
fn read_reply_with_bad_magic_is_a_protocol_error() {
    copy_from_faulty_server(Fault::ReadReplyBadMagic, &[], &["protocol error", "magic"]);
}

#[test]
fn read_reply_for_an_unknown_cookie_fails_the_copy() {
    copy_from_faulty_server(Fault::ReadReplyUnknownCookie, &[], &["reading the source"]);
}

#[test]
fn read_error_reply_fails_the_copy() {
    copy_from_faulty_server(Fault::ReadReplyEio, &[], &["reading the source", "EIO"]);
}

#[test]
fn a_server_that_keeps_failing_reads_fails_after_the_retries() {
    // Retries on: every read again gets EIO; after --retries attempts the copy ends in
    // the same error contract, within the bound.
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeNbd::start(dir.path(), SIZE, Fault::ReadReplyEio);
    let target = dir.path().join("t.img");
    let c = copy_cmd(&fake.uri(), &target, &["--timeout", "2", "--retries", "2"]);
    let r = run(c, LIMIT);
    r.failure("EIO with retries", &["reading the source", "EIO"]);
    assert!(
        r.stderr.contains("read failed; reading again"),
        "{}",
        r.stderr
    );
}

#[test]
fn read_without_reply_times_out() {
    copy_from_faulty_server(Fault::ReadNoReply, &[], &["timed out"]);
}

#[test]
fn short_read_reply_then_hang_up_fails_the_copy() {
    // The server hangs up with requests unread, so the client may see EOF or a reset.
    copy_from_faulty_server(
        Fault::ReadShortThenClose,
        &[],
        &["reading the source", "connection"],
    );
}

#[test]
fn structured_data_chunk_outside_the_request_is_a_protocol_error() {
    copy_from_faulty_server(
        Fault::StructuredChunkOutOfRange,
        &["--no-extents"],
        &["reading the source", "protocol error"],
    );
}

// -- real servers with old or reduced handshakes ------------------------------------------

/// Copy from `nbdkit ARGS pattern size=4M`; returns the run.
fn copy_from_nbdkit(server_args: &[&str]) -> Option<Run> {
    if !require(&["nbdkit"]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = server_args.to_vec();
    args.extend_from_slice(&["pattern", "size=4M"]);
    let server = Server::nbdkit(dir.path(), &args);
    let target = dir.path().join("t.img");
    let c = copy_cmd(&server.uri(), &target, &["--timeout", "5"]);
    let r = run(c, LIMIT);
    if !r.status.success() {
        assert!(
            !target.exists(),
            "{server_args:?}: target created after a failed handshake"
        );
    }
    Some(r)
}

#[test]
fn oldstyle_server_is_refused_clearly() {
    if let Some(r) = copy_from_nbdkit(&["-o"]) {
        r.failure("nbdkit -o", &["oldstyle"]);
    }
}

#[test]
fn server_without_fixed_newstyle_is_refused_clearly() {
    if let Some(r) = copy_from_nbdkit(&["--mask-handshake=0"]) {
        r.failure("nbdkit --mask-handshake=0", &["fixed newstyle"]);
    }
}

#[test]
fn server_without_the_no_zeroes_flag_is_copied() {
    // Fixed newstyle but no NBD_FLAG_NO_ZEROES: the handshake differs in 124 bytes.
    if let Some(r) = copy_from_nbdkit(&["--mask-handshake=1"]) {
        let v = r.success("nbdkit --mask-handshake=1");
        assert_eq!(num(&v, "size"), 4 * 1024 * 1024, "{v}");
    }
}

#[test]
fn protocol_error_detail_is_reported_once() {
    if let Some(r) = copy_from_nbdkit(&["-o"]) {
        let line = r.failure("nbdkit -o", &["oldstyle"]);
        assert_eq!(
            line.matches("oldstyle").count(),
            1,
            "detail repeated: {line}"
        );
    }
}
