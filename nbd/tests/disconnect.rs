//! The server hangs up at every point of a session (qemu's iotest 083 cuts a session at
//! 27 named points; here every byte offset of four real transcripts is one: the
//! greeting, each option reply, NBD_INFO, the GO acknowledgement, each reply header,
//! chunk and payload, with simple, structured and extended-header replies). At each cut
//! the client must end promptly (no hang), never panic, and never hand back wrong data:
//! a READ that succeeds returns exactly the uncut session's bytes, a BLOCK_STATUS the
//! same descriptors, and a session cut short never completes every request.

use std::path::PathBuf;

use ferry_nbd::fuzzing::{SessionOutcome, client_session_outcome};

fn transcript(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/nbd_client")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn all_ok(o: &SessionOutcome) -> bool {
    matches!(o.handshake, Some(Ok(())))
        && o.read.as_ref().is_none_or(Result::is_ok)
        && o.block_status.as_ref().is_none_or(Result::is_ok)
        && matches!(o.flush, Some(Ok(())))
}

/// Cut `name` at every byte; returns (cuts, failed in the handshake, failed later).
fn cut_everywhere(name: &str) -> (usize, usize, usize) {
    let data = transcript(name);
    let full = client_session_outcome(&data);
    assert!(
        all_ok(&full) && !full.timed_out,
        "{name}: the whole transcript must replay cleanly: {full:?}"
    );
    let want_read = full.read_data.clone();
    let want_status = full
        .block_status
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .copied();
    let (mut handshake, mut later) = (0, 0);
    for cut in 0..data.len() {
        let o = client_session_outcome(&data[..cut]);
        assert!(!o.timed_out, "{name} cut at {cut}: hung");
        if let Some(d) = &o.read_data {
            assert_eq!(
                Some(d),
                want_read.as_ref(),
                "{name} cut at {cut}: a READ returned other bytes"
            );
        }
        if let Some(Ok(n)) = &o.block_status {
            assert_eq!(
                Some(*n),
                want_status,
                "{name} cut at {cut}: other block status"
            );
        }
        assert!(
            !all_ok(&o),
            "{name} cut at {cut} of {}: every request completed",
            data.len()
        );
        match o.handshake {
            Some(Ok(())) => later += 1,
            _ => handshake += 1,
        }
    }
    (data.len(), handshake, later)
}

#[test]
fn a_server_hanging_up_at_any_byte_never_yields_wrong_data_or_a_hang() {
    let mut total = 0;
    for name in [
        "rec-nbdkit-pattern",    // structured replies, base:allocation
        "rec-nbdkit-nosr",       // simple replies only
        "rec-nbdkit-data-holes", // structured, several extents
        "rec-qemu-raw",          // extended headers
    ] {
        let (cuts, hs, later) = cut_everywhere(name);
        eprintln!(
            "{name}: {cuts} disconnect points: {hs} in the handshake, {later} with requests in flight; no hang, no wrong data"
        );
        assert!(hs > 0 && later > 0, "{name}");
        total += cuts;
    }
    assert!(total >= 27);
}
