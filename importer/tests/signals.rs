//! SIGTERM / SIGINT during a slow copy: a prompt, non-zero exit that says the target
//! is incomplete, and no summary on stdout.

mod common;

use std::time::Duration;

use common::*;

fn signal_cancels_a_slow_copy(sig: &str, name: &str) {
    if !require(&["nbdkit", "kill"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for_each_engine(|engine| {
        // ~100 ms per 256 KiB request, 32 in flight: the 1 GiB copy would take ~13 s.
        let server = Server::nbdkit(
            dir.path(),
            &["--filter=delay", "pattern", "size=1G", "rdelay=100ms"],
        );
        let target = dir.path().join(format!("t-{engine}.img"));
        let c = copy_cmd(
            &server.uri(),
            &target,
            &["--io-engine", engine, "--buf-size-in-64k", "4"],
        );
        let mut ferry = spawn(c);
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            !ferry.has_exited(),
            "[{engine}] the copy ended before the signal"
        );
        ferry.signal(sig);
        let r = ferry.wait(Duration::from_secs(10));
        let ctx = format!("{name}, engine {engine}");
        r.failure(&ctx, &[&format!("cancelled by {name}"), "incomplete"]);
        assert!(
            r.elapsed < Duration::from_secs(10),
            "[{ctx}] took {:?}",
            r.elapsed
        );
    });
}

#[test]
fn sigterm_cancels_a_slow_copy() {
    signal_cancels_a_slow_copy("TERM", "SIGTERM");
}

#[test]
fn sigint_cancels_a_slow_copy() {
    signal_cancels_a_slow_copy("INT", "SIGINT");
}
