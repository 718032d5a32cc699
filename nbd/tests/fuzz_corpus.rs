//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/*`) through both fuzz entry
//! points, so every seed is a regression test on stable Rust without cargo-fuzz.
//!
//! The `nbd_client` seeds named `rec-*` are real transcripts: every byte nbdkit or
//! qemu-nbd sent to [`ferry_nbd::fuzzing::run_script`]. They are recorded by the
//! ignored test `regenerate_fuzz_corpus` here
//! (`cargo test -p ferry-nbd --test fuzz_corpus -- --ignored`), which also cuts them
//! into single messages for the `nbd_codec` seeds.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common::{Server, qemu_image, tools};
use ferry_nbd::Client;
use ferry_nbd::codec::{self, ReplyHeader, opt, rep};
use ferry_nbd::fuzzing::{self, SessionOutcome};
use tokio::io::{AsyncRead, ReadBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read seed"))
        })
        .collect();
    v.sort();
    v
}

/// A one-line summary of an outcome, comparable between a live run and a replay.
fn summary(o: &SessionOutcome) -> String {
    fn s<T: std::fmt::Debug>(r: &Option<Result<T, ferry_nbd::Error>>) -> String {
        match r {
            None => "-".into(),
            Some(Ok(v)) => format!("ok({v:?})"),
            Some(Err(e)) => format!("err({e})"),
        }
    }
    format!(
        "handshake={} read={} block_status={} flush={} timed_out={}",
        s(&o.handshake),
        s(&o.read),
        s(&o.block_status),
        s(&o.flush),
        o.timed_out
    )
}

#[test]
fn replay_checked_in_corpus_through_both_entry_points() {
    let mut total = 0;
    for target in ["nbd_codec", "nbd_client"] {
        let seeds = files(target);
        assert!(seeds.len() >= 10, "{target}: only {} seeds", seeds.len());
        for (name, data) in &seeds {
            fuzzing::codec_messages(data);
            let o = fuzzing::client_session_outcome(data);
            assert!(!o.timed_out, "{target}/{name}: session timed out");
            // Real transcripts must replay all the way through.
            if target == "nbd_client" && name.starts_with("rec-") {
                let sum = summary(&o);
                assert!(matches!(o.handshake, Some(Ok(()))), "{name}: {sum}");
                match &o.read {
                    Some(Err(e)) if name.contains("eio") => {
                        assert!(e.to_string().contains("EIO"), "{name}: {sum}")
                    }
                    Some(Ok(())) => {}
                    None if name.contains("empty") => {}
                    _ => panic!("{name}: {sum}"),
                }
                if !name.contains("nosr") && !name.contains("empty") {
                    assert!(o.block_status.is_some(), "{name}: {sum}");
                }
            }
            total += 1;
        }
    }
    eprintln!("replayed {total} seeds");
}

#[test]
fn truncated_transcripts_end_cleanly() {
    // Every prefix of a real transcript is a server that hung up at that byte: the
    // session must end with an error (or success), never a timeout or a panic.
    let seeds = files("nbd_client");
    let (name, data) = seeds
        .iter()
        .find(|(n, _)| n.starts_with("rec-qemu"))
        .or_else(|| seeds.iter().find(|(n, _)| n.starts_with("rec-")))
        .expect("a recorded transcript");
    let step = (data.len() / 300).max(1);
    for cut in (0..data.len()).step_by(step) {
        let o = fuzzing::client_session_outcome(&data[..cut]);
        assert!(!o.timed_out, "{name} cut at {cut}: {}", summary(&o));
    }
}

// ---------------------------------------------------------------------------------------
// Recording real transcripts.

/// An `AsyncRead` that copies everything it reads into a shared buffer.
struct Tee<R> {
    inner: R,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = buf.filled()[before..].to_vec();
            self.log.lock().unwrap().extend(new);
        }
        r
    }
}

/// Run the fuzzing script against a live server and return (server bytes, outcome).
fn record(srv: &Server) -> (Vec<u8>, SessionOutcome) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = tokio::net::UnixStream::connect(srv.socket())
            .await
            .expect("connect");
        let (r, w) = s.into_split();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tee = Tee {
            inner: r,
            log: log.clone(),
        };
        let mut out = SessionOutcome::default();
        let opts = fuzzing::session_options();
        match Client::<Vec<u8>>::handshake_on(
            Box::new(tee),
            Box::new(w),
            fuzzing::SESSION_EXPORT,
            &opts,
        )
        .await
        {
            Ok(c) => {
                out.handshake = Some(Ok(()));
                fuzzing::run_script(&c, &mut out).await;
                // Let the reader see the server's close, so the log is complete.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => out.handshake = Some(Err(e)),
        }
        let bytes = log.lock().unwrap().clone();
        (bytes, out)
    })
}

/// The servers the corpus is recorded from: (seed name, server).
fn recording_servers() -> Vec<(&'static str, Server)> {
    let mut v = Vec::new();
    if tools(&["nbdkit"]) {
        for (name, args) in [
            ("rec-nbdkit-pattern", &["pattern", "size=1M"][..]),
            ("rec-nbdkit-pattern-odd", &["pattern", "size=1000"]),
            ("rec-nbdkit-nosr", &["--no-sr", "pattern", "size=1M"]),
            (
                "rec-nbdkit-data-holes",
                &["data", "data=1 @1048576 2", "size=4M"],
            ),
            ("rec-nbdkit-memory", &["memory", "size=1M"]),
            (
                "rec-nbdkit-eio",
                &[
                    "--filter=error",
                    "pattern",
                    "size=1M",
                    "error-pread=EIO",
                    "error-pread-rate=100%",
                ],
            ),
            (
                "rec-nbdkit-extents-eio",
                &[
                    "--filter=error",
                    "memory",
                    "size=1M",
                    "error-extents=EIO",
                    "error-extents-rate=100%",
                ],
            ),
            (
                "rec-nbdkit-sparse",
                &["sparse-random", "size=32M", "seed=7"],
            ),
            (
                "rec-nbdkit-blocksize",
                &[
                    "--filter=blocksize-policy",
                    "pattern",
                    "size=1M",
                    "blocksize-minimum=512",
                    "blocksize-preferred=4096",
                    "blocksize-maximum=65536",
                ],
            ),
            (
                "rec-nbdkit-noextents",
                &["--filter=noextents", "memory", "size=1M"],
            ),
            ("rec-nbdkit-empty", &["null", "size=0"]),
        ] {
            v.push((name, Server::nbdkit_temp(args)));
        }
    }
    if tools(&["qemu-nbd", "qemu-img", "qemu-io"]) {
        for (name, fmt, writes) in [
            ("rec-qemu-qcow2-hole", "qcow2", "write -P 0xab 1M 64k"),
            ("rec-qemu-qcow2-data", "qcow2", "write -P 0xcd 0 6k"),
            ("rec-qemu-raw", "raw", "write -P 0x11 2k 4k"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let img = dir.path().join("img");
            qemu_image(&img, fmt, "2M", &[writes]);
            let img = img.to_str().expect("utf-8").to_string();
            v.push((
                name,
                Server::qemu_nbd(dir.path(), "", &["-f", fmt, &img]).owning(dir),
            ));
        }
    }
    v
}

#[test]
fn live_transcripts_replay_to_the_same_outcome() {
    for (name, srv) in recording_servers() {
        let (bytes, live) = record(&srv);
        assert!(
            matches!(live.handshake, Some(Ok(()))),
            "{name}: {}",
            summary(&live)
        );
        let replayed = fuzzing::client_session_outcome(&bytes);
        assert_eq!(summary(&live), summary(&replayed), "{name}");
    }
}

/// Cut a transcript into single server messages (codec seeds).
fn split_messages(t: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if t.len() < codec::GREETING_LEN {
        return out;
    }
    out.push(t[..codec::GREETING_LEN].to_vec());
    let mut at = codec::GREETING_LEN;
    let mut size = 0u64;
    // Option replies until GO is acknowledged.
    while at + codec::OPTION_REPLY_HEADER_LEN <= t.len() {
        let Ok(h) = codec::decode_option_reply_header(&t[at..]) else {
            return out;
        };
        let end = at + codec::OPTION_REPLY_HEADER_LEN + h.length as usize;
        let payload = &t[at + codec::OPTION_REPLY_HEADER_LEN..end.min(t.len())];
        out.push(t[at..end.min(t.len())].to_vec());
        if !payload.is_empty() {
            out.push(payload.to_vec());
        }
        if let Ok(codec::Info::Export { size: s, .. }) = codec::decode_info(payload)
            && h.reply_type == rep::INFO
        {
            size = s;
        }
        at = end;
        if h.option == opt::GO && (h.reply_type == rep::ACK || h.is_error()) {
            break;
        }
    }
    // Transmission replies. A simple reply to the read (cookie 1) carries its data.
    let read_len = size.min(4096) as usize;
    while at < t.len() {
        let Ok(Some((h, n))) = codec::decode_reply_header(&t[at..]) else {
            break;
        };
        let len = match h {
            ReplyHeader::Simple { error, cookie } => {
                if error == 0 && cookie == 1 {
                    read_len
                } else {
                    0
                }
            }
            ReplyHeader::Chunk { length, .. } => length as usize,
        };
        let end = (at + n + len).min(t.len());
        out.push(t[at..end].to_vec());
        if let ReplyHeader::Chunk { kind, .. } = h {
            let mut k = kind.to_be_bytes().to_vec();
            k.extend(&t[at + n..end]);
            out.push(k);
        }
        at = end;
    }
    out
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
#[ignore = "rewrites fuzz/corpus from live servers; run by hand"]
fn regenerate_fuzz_corpus() {
    let client_dir = corpus_dir().join("nbd_client");
    let codec_dir = corpus_dir().join("nbd_codec");
    let mut codec_seeds = BTreeMap::new();
    for (name, srv) in recording_servers() {
        let (bytes, live) = record(&srv);
        assert!(
            matches!(live.handshake, Some(Ok(()))),
            "{name}: {}",
            summary(&live)
        );
        std::fs::write(client_dir.join(name), &bytes).expect("write seed");
        for m in split_messages(&bytes) {
            codec_seeds.entry(fnv(&m)).or_insert(m);
        }
        eprintln!("{name}: {} bytes, {}", bytes.len(), summary(&live));
    }
    for (h, m) in &codec_seeds {
        std::fs::write(codec_dir.join(format!("msg-{h:016x}")), m).expect("write seed");
    }
    eprintln!("{} codec seeds", codec_seeds.len());
}
