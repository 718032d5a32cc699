//! A scripted fake NBD server (the test kit's `fake_nbd::Peer`) that answers the
//! handshake correctly (structured replies or extended headers, `base:allocation`, GO
//! with NBD_INFO_EXPORT) and then misbehaves in exactly one named way per test. Test names carry the row of the bad-input
//! catalogue (reliability.md 5.1) they cover: `r01_...` is row 1, and so on.
//!
//! Every test runs under a hard timeout, so a hang is a failure, never a stuck CI.

use std::future::Future;
use std::time::{Duration, Instant};

use ferry_nbd::codec::{self, chunk, cmd, info, opt, rep, tflag};
use ferry_nbd::{Client, ConnectOptions, Error, ProtocolError};
use ferry_test_kit::fake_nbd::{
    FakeNbd, Hs, Peer, be16, be32, be64, content, duplex, info_export, opt_reply_bytes,
};

/// Context id the fake server gives `base:allocation` (not 0, to catch id mix-ups).
const CTX: u32 = 7;
const SIZE: u64 = 1 << 20;
const FLAGS: u16 = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_WRITE_ZEROES;
const DONE: u16 = codec::REPLY_FLAG_DONE;

/// Fail the test instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test hung: the client did not return within 10 s")
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    }
}

/// What the standard handshake agrees to: structured replies, `base:allocation` as
/// [`CTX`], an export of [`SIZE`] bytes with [`FLAGS`].
fn hs() -> Hs {
    Hs {
        extended: false,
        structured: true,
        size: SIZE,
        flags: FLAGS,
        block_size: None,
        context: Some(CTX),
    }
}

/// Handshake against a fake server running `script`; returns the handshake's result.
async fn try_connect<F, Fut>(script: F, o: &ConnectOptions) -> ferry_nbd::Result<Client>
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (rd, wr) = duplex(script);
    Client::<Vec<u8>>::handshake_on(rd, wr, "", o).await
}

async fn connect<F, Fut>(script: F) -> Client
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    try_connect(script, &opts()).await.expect("handshake")
}

async fn handshake_err<F, Fut>(script: F) -> Error
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match try_connect(script, &opts()).await {
        Ok(c) => panic!("handshake succeeded: {:?}", c.info()),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_protocol(e: &Error, needle: &str) {
    assert!(
        matches!(e, Error::Protocol(_)),
        "expected a protocol error, got {e:?}"
    );
    assert!(
        e.to_string().contains(needle),
        "{e:?} does not mention {needle:?}"
    );
}

#[track_caller]
fn assert_disconnected(e: &Error) {
    assert!(
        matches!(e, Error::Disconnected(_)),
        "expected Disconnected, got {e:?}"
    );
}

/// The connection must be dead: a new request fails at once.
async fn assert_dead(c: &Client) {
    let e = c
        .read(0, vec![0; 512])
        .await
        .expect_err("connection should be dead");
    let _ = e;
}

/// The connection must still work: a read is answered with the right bytes.
async fn assert_alive(c: &Client) {
    let b = c
        .read(4096, vec![0; 4096])
        .await
        .expect("connection should be usable");
    assert_eq!(b, content(4096, 4096));
}

// ---------------------------------------------------------------------------------------
// Sanity: the fake server itself is correct.

/// A write side that holds what it is given until flushed, as a TLS stream does when its
/// socket would block (tokio-rustls returns from `poll_write` with the record still in
/// rustls' buffer): every request must be flushed, or the server never sees it and the
/// client waits out its request timeout (this hung `ferry copy` from nbdkit over TLS).
#[tokio::test]
async fn every_request_is_flushed_through_a_buffering_writer() {
    bounded(async {
        let (rd, wr) = duplex(|mut f| async move {
            f.handshake(&hs()).await;
            f.serve().await;
        });
        let held = Box::new(tokio::io::BufWriter::with_capacity(1 << 20, wr));
        let c = Client::<Vec<u8>>::handshake_on(rd, held, "", &opts())
            .await
            .expect("handshake");
        assert_alive(&c).await;
        c.write(0, &content(0, 8192)).await.expect("write");
        c.flush().await.expect("flush");
        c.disconnect().await;
    })
    .await;
}

#[tokio::test]
async fn fake_server_happy_path() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            f.serve().await;
        })
        .await;
        let i = c.info();
        assert!(i.structured && !i.extended);
        assert_eq!(i.contexts, vec![(CTX, "base:allocation".to_string())]);
        assert_alive(&c).await;
        let d = c.block_status(0, 65536, CTX).await.expect("bs");
        assert_eq!(d.len(), 1);
        c.flush().await.expect("flush");
        c.disconnect().await;
    })
    .await;
}

#[tokio::test]
async fn holes_and_interleaved_out_of_order_chunks_assemble_correctly() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let a = f.request().await.unwrap();
            let b = f.request().await.unwrap();
            // b first, then a's chunks interleaved with b's, in reverse order.
            f.hole(0, b.cookie, b.offset + 1024, 1024).await;
            f.data(
                0,
                a.cookie,
                a.offset + 2048,
                &content(a.offset + 2048, 2048),
            )
            .await;
            f.data(0, b.cookie, b.offset, &content(b.offset, 1024))
                .await;
            f.hole(0, a.cookie, a.offset, 2048).await;
            f.done(b.cookie).await;
            f.done(a.cookie).await;
            f.serve().await;
        })
        .await;
        let (ra, rb) = tokio::join!(
            c.read(8192, vec![0xff; 4096]),
            c.read(65536, vec![0xff; 2048])
        );
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert!(ra[..2048].iter().all(|x| *x == 0), "hole zero-filled");
        assert_eq!(ra[2048..], content(8192 + 2048, 2048)[..]);
        assert_eq!(rb[..1024], content(65536, 1024)[..]);
        assert!(rb[1024..].iter().all(|x| *x == 0));
        assert_alive(&c).await;
    })
    .await;
}

#[tokio::test]
async fn go_unsupported_falls_back_to_export_name() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            f.opt_reply(opt::GO, rep::ERR_UNSUP, &[]).await;
            let (o, name) = f.option().await.unwrap();
            assert_eq!((o, name.len()), (opt::EXPORT_NAME, 0));
            let mut v = be64(SIZE).to_vec();
            v.extend(be16(FLAGS));
            f.send(&v).await; // NO_ZEROES was agreed: no padding
            f.serve().await;
        })
        .await;
        assert_eq!(c.size(), SIZE);
        assert_alive(&c).await;
    })
    .await;
}

#[tokio::test]
async fn export_name_fallback_closed_by_server_is_refused() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            f.opt_reply(opt::GO, rep::ERR_UNSUP, &[]).await;
            let _ = f.option().await;
        })
        .await;
        assert!(
            matches!(
                e,
                Error::Refused {
                    option: "NBD_OPT_EXPORT_NAME",
                    ..
                }
            ),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn meta_context_refused_leaves_no_contexts() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.client_flags().await;
            loop {
                let (o, _) = f.option().await.unwrap();
                match o {
                    opt::STRUCTURED_REPLY => f.opt_reply(o, rep::ACK, &[]).await,
                    opt::GO => break,
                    _ => f.opt_reply(o, rep::ERR_POLICY, b"no").await,
                }
            }
            f.opt_reply(opt::GO, rep::INFO, &info_export(SIZE, FLAGS))
                .await;
            f.opt_reply(opt::GO, rep::ACK, &[]).await;
            f.serve().await;
        })
        .await;
        assert!(c.info().structured && c.info().contexts.is_empty());
        assert_alive(&c).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Row 1: bad magic.

#[tokio::test]
async fn r01_bad_greeting_magic() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.send(b"HTTP/1.1 400 Bad Request\r\n").await;
            f.hold().await;
        })
        .await;
        assert!(
            matches!(
                e,
                Error::Protocol(ProtocolError::BadMagic {
                    what: "greeting",
                    ..
                })
            ),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn r01_bad_option_reply_magic() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.client_flags().await;
            f.option().await;
            let mut r = opt_reply_bytes(opt::EXTENDED_HEADERS, rep::ACK, &[]);
            r[0] ^= 0xff;
            f.send(&r).await;
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "invalid option reply magic");
    })
    .await;
}

#[tokio::test]
async fn r01_bad_reply_magic_kills_the_connection() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            let mut v = be32(0xdead_beef).to_vec();
            v.extend([0; 16]);
            v.extend(be64(r.cookie));
            f.send(&v).await;
            f.hold().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "invalid reply magic 0xdeadbeef");
        assert_dead(&c).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Row 2: lengths over the caps, refused before allocating.

#[tokio::test]
async fn r02_block_status_chunk_over_the_cap() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            // Announce 4 GiB - 16 of payload and send none of it.
            let h = f.chunk_header(DONE, chunk::BLOCK_STATUS, r.cookie, 0xffff_fff0);
            f.send(&h).await;
            f.hold().await;
        })
        .await;
        let e = c.block_status(0, 4096, CTX).await.unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::TooLong { .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r02_extended_chunk_length_near_2_64() {
    bounded(async {
        let hs = Hs {
            extended: true,
            ..hs()
        };
        let c = connect(move |mut f| async move {
            f.handshake(&hs).await;
            let r = f.request().await.unwrap();
            let h = f.chunk_header(DONE, chunk::ERROR, r.cookie, u64::MAX - 7);
            f.send(&h).await;
            f.hold().await;
        })
        .await;
        assert!(c.info().extended);
        let e = c.block_status(0, 4096, CTX).await.unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::TooLong { .. })),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn r02_data_chunk_longer_than_the_read() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            let h = f.chunk_header(DONE, chunk::OFFSET_DATA, r.cookie, 1 << 30);
            f.send(&h).await;
            f.hold().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "for a read of 4096");
        assert_dead(&c).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Rows 3-4: unknown cookies and duplicate replies.

#[tokio::test]
async fn r03_reply_with_unknown_cookie() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.done(r.cookie + 1000).await;
            f.hold().await;
        })
        .await;
        let e = c.flush().await.unwrap_err();
        assert_protocol(&e, "unknown cookie");
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r04_second_done_for_a_retired_cookie() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.answer(r).await;
            f.done(r.cookie).await; // again
            f.hold().await;
        })
        .await;
        let b = c.read(0, vec![0; 4096]).await.expect("first reply is fine");
        assert_eq!(b, content(0, 4096));
        // The duplicate kills the connection: the next request fails, never completes twice.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "unknown cookie");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Rows 5-6: chunks outside the request, overlapping, or not covering it.

#[tokio::test]
async fn r05_data_chunk_past_the_end_of_the_request() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.data(DONE, r.cookie, r.offset + 4096, &[1; 512]).await;
            f.hold().await;
        })
        .await;
        let e = c.read(4096, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "outside the request");
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r05_data_chunk_before_the_request_offset() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.data(DONE, r.cookie, r.offset - 512, &[1; 4096]).await;
            f.hold().await;
        })
        .await;
        let e = c.read(8192, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "before the request offset");
    })
    .await;
}

#[tokio::test]
async fn r05_hole_chunk_outside_the_request() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.hole(DONE, r.cookie, r.offset, 8192).await;
            f.hold().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "outside the request");
    })
    .await;
}

#[tokio::test]
async fn r06_overlapping_data_chunks() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.data(0, r.cookie, r.offset, &[1; 2048]).await;
            f.data(DONE, r.cookie, r.offset + 1024, &[2; 2048]).await;
            f.hold().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "overlap");
    })
    .await;
}

#[tokio::test]
async fn r06_done_before_the_range_is_covered_fails_only_that_read() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.data(0, r.cookie, r.offset, &content(r.offset, 2048))
                .await;
            f.done(r.cookie).await;
            f.serve().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "covering 2048 of 4096 bytes");
        assert_alive(&c).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Rows 7-8: error chunks.

#[tokio::test]
async fn r07_error_chunk_with_error_zero() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.error(DONE, r.cookie, 0, "all is well?").await;
            f.hold().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "error value 0");
    })
    .await;
}

#[tokio::test]
async fn r08_error_offset_outside_the_request_keeps_the_error() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            let mut p = be32(5).to_vec();
            p.extend(be16(4));
            p.extend(b"oops");
            p.extend(be64(u64::MAX - 3));
            f.chunk(DONE, chunk::ERROR_OFFSET, r.cookie, &p).await;
            f.serve().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Request {
                    command: "read",
                    offset: 0,
                    errno: "EIO",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("oops"), "{e}");
        assert_alive(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r16_error_chunk_fails_the_request_with_errno_and_message() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.error(0, r.cookie, 5, "disk on fire").await;
            f.done(r.cookie).await;
            let r = f.request().await.unwrap();
            f.error(DONE, r.cookie, 9999, "").await;
            f.serve().await;
        })
        .await;
        let e = c.read(512, vec![0; 4096]).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Request {
                    errno: "EIO",
                    offset: 512,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().ends_with("EIO: disk on fire"), "{e}");
        let e = c.flush().await.unwrap_err();
        assert!(e.to_string().contains("EINVAL (unknown"), "{e}");
        assert_alive(&c).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Row 9: reply forms that do not match what was negotiated.

#[tokio::test]
async fn r09_simple_reply_to_a_read_after_structured_replies() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.simple(r.cookie, 0, &content(r.offset, r.len)).await;
            f.hold().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "simple reply to a read after structured");
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r09_structured_chunk_without_structured_replies() {
    bounded(async {
        let hs = Hs {
            structured: false,
            ..hs()
        };
        let c = connect(move |mut f| async move {
            f.handshake(&hs).await;
            let r = f.request().await.unwrap();
            f.answer(r).await; // a structured chunk the client never agreed to
            f.hold().await;
        })
        .await;
        assert!(!c.info().structured && c.info().contexts.is_empty());
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "not valid in the negotiated mode");
    })
    .await;
}

#[tokio::test]
async fn r09_compact_chunk_after_extended_headers() {
    bounded(async {
        let hs = Hs {
            extended: true,
            ..hs()
        };
        let c = connect(move |mut f| async move {
            f.handshake(&hs).await;
            let r = f.request().await.unwrap();
            f.extended = false; // reply with a 20-byte structured header
            f.answer(r).await;
            f.hold().await;
        })
        .await;
        assert!(c.info().extended);
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "not valid in the negotiated mode");
    })
    .await;
}

#[tokio::test]
async fn r09_data_chunk_in_reply_to_block_status() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.data(DONE, r.cookie, 0, &[0; 16]).await;
            f.hold().await;
        })
        .await;
        let e = c.block_status(0, 4096, CTX).await.unwrap_err();
        assert_protocol(&e, "data chunk in reply to block status");
    })
    .await;
}

#[tokio::test]
async fn extended_headers_happy_path_with_64_bit_extents() {
    bounded(async {
        let hs = Hs {
            extended: true,
            size: 1 << 40,
            ..hs()
        };
        let c = connect(move |mut f| async move {
            f.handshake(&hs).await;
            let r = f.request().await.unwrap();
            assert_eq!((r.kind, r.len), (cmd::BLOCK_STATUS, 1 << 40));
            let mut p = be32(CTX).to_vec();
            p.extend(be32(2));
            p.extend(be64(1 << 39));
            p.extend(be64(3));
            p.extend(be64(1 << 39));
            p.extend(be64(0));
            f.chunk(DONE, chunk::BLOCK_STATUS_EXT, r.cookie, &p).await;
            f.serve().await;
        })
        .await;
        let d = c.block_status(0, 1 << 40, CTX).await.expect("bs");
        assert_eq!(
            d.iter().map(|e| e.length).collect::<Vec<_>>(),
            [1 << 39, 1 << 39]
        );
        assert_alive(&c).await;
        c.write(0, &[1; 1000])
            .await
            .expect("extended write with PAYLOAD_LEN");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Rows 10, 11, 13: block status content.

#[tokio::test]
async fn r10_block_status_zero_length_extent() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.status(DONE, r.cookie, CTX, &[(4096, 0), (0, 3)]).await;
            f.hold().await;
        })
        .await;
        let e = c.block_status(0, 65536, CTX).await.unwrap_err();
        assert_protocol(&e, "zero length");
    })
    .await;
}

#[tokio::test]
async fn r11_extent_longer_than_the_request_is_passed_on_for_the_caller_to_clamp() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.status(DONE, r.cookie, CTX, &[(r.len as u32 * 4, 3)])
                .await;
            f.serve().await;
        })
        .await;
        let d = c.block_status(0, 4096, CTX).await.expect("bs");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].length, 16384);
        assert_alive(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r13_block_status_only_for_an_unselected_context() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.status(DONE, r.cookie, CTX + 1, &[(4096, 0)]).await;
            f.serve().await;
        })
        .await;
        let e = c.block_status(0, 4096, CTX).await.unwrap_err();
        assert_protocol(&e, "without the selected context");
        assert_alive(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r13_two_block_status_chunks_for_one_context() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.status(0, r.cookie, CTX, &[(4096, 0)]).await;
            f.status(DONE, r.cookie, CTX, &[(4096, 3)]).await;
            f.hold().await;
        })
        .await;
        let e = c.block_status(0, 4096, CTX).await.unwrap_err();
        assert_protocol(&e, "two block status chunks");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Unknown chunk types (spec: error bit set => fail the request only; else disconnect).

#[tokio::test]
async fn unknown_non_error_chunk_type_kills_the_connection() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.chunk(DONE, 100, r.cookie, &[0; 12]).await;
            f.serve().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "unknown reply chunk type 100");
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn unknown_error_chunk_type_fails_the_request_only() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            f.chunk(DONE, chunk::ERROR_BIT | 77, r.cookie, &[9; 40])
                .await;
            f.serve().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_protocol(&e, "unknown error chunk type");
        assert_alive(&c).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Row 17: the server disappears at every phase. Always a clean error, never a hang.

#[tokio::test]
async fn r17_eof_before_greeting() {
    bounded(async {
        let e = handshake_err(|f| async move { drop(f) }).await;
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_mid_greeting() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.send(&be64(codec::NBD_MAGIC)).await;
        })
        .await;
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_after_greeting() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.client_flags().await;
        })
        .await;
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_mid_option_reply() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.client_flags().await;
            f.option().await;
            let r = opt_reply_bytes(opt::EXTENDED_HEADERS, rep::ERR_UNSUP, b"message");
            f.send(&r[..24]).await;
        })
        .await;
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_after_go_info_before_ack() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            f.opt_reply(opt::GO, rep::INFO, &info_export(SIZE, FLAGS))
                .await;
        })
        .await;
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_with_a_request_pending() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            f.request().await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_disconnected(&e);
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r17_eof_mid_reply_header() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            let h = f.chunk_header(DONE, chunk::OFFSET_DATA, r.cookie, 4096 + 8);
            f.send(&h[..10]).await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_mid_read_data() {
    bounded(async {
        let c = connect(|mut f| async move {
            f.handshake(&hs()).await;
            let r = f.request().await.unwrap();
            let mut v = f.chunk_header(DONE, chunk::OFFSET_DATA, r.cookie, 4096 + 8);
            v.extend(be64(r.offset));
            v.extend([7; 100]);
            f.send(&v).await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_disconnected(&e);
    })
    .await;
}

#[tokio::test]
async fn r17_eof_mid_simple_read_data() {
    bounded(async {
        let hs = Hs {
            structured: false,
            ..hs()
        };
        let c = connect(move |mut f| async move {
            f.handshake(&hs).await;
            let r = f.request().await.unwrap();
            f.simple(r.cookie, 0, &[1; 1000]).await;
        })
        .await;
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert_disconnected(&e);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Row 19: a server that stalls.

#[tokio::test]
async fn r19_stall_after_a_request_fires_the_request_timeout() {
    bounded(async {
        let o = ConnectOptions {
            request_timeout: Duration::from_millis(300),
            ..opts()
        };
        let c = try_connect(
            |mut f| async move {
                f.handshake(&hs()).await;
                f.hold().await;
            },
            &o,
        )
        .await
        .expect("handshake");
        let t = Instant::now();
        let e = c.read(0, vec![0; 4096]).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { what: "read", .. }), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_dead(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r19_stall_during_handshake_fires_the_connect_timeout() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        // Greeting, then nothing at all.
        let server = FakeNbd::serve(dir.path(), |mut f, _| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.stall().await;
        });
        let uri = ferry_nbd::Uri {
            address: ferry_nbd::Address::Unix(server.socket.clone()),
            export: String::new(),
            tls: false,
            tls_settings: Default::default(),
        };
        let o = ConnectOptions {
            connect_timeout: Duration::from_millis(300),
            ..opts()
        };
        let e = Client::<Vec<u8>>::connect(&uri, &o).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Timeout {
                    what: "connect and handshake",
                    ..
                }
            ),
            "{e:?}"
        );
        drop(server);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Rows 20-30: negotiation.

#[tokio::test]
async fn r20_oversize_option_reply() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.client_flags().await;
            f.option().await;
            let mut h = be64(codec::OPTION_REPLY_MAGIC).to_vec();
            h.extend(be32(opt::EXTENDED_HEADERS));
            h.extend(be32(rep::ERR_UNSUP));
            h.extend(be32(0x7fff_ffff));
            f.send(&h).await;
            f.hold().await;
        })
        .await;
        assert!(
            matches!(
                e,
                Error::Protocol(ProtocolError::TooLong {
                    what: "option reply",
                    ..
                })
            ),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn r21_export_size_of_2_63_is_rejected() {
    bounded(async {
        let hs = Hs {
            size: 1 << 63,
            ..hs()
        };
        let e = handshake_err(move |mut f| async move {
            f.handshake(&hs).await;
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "beyond 2^63");
    })
    .await;
}

#[tokio::test]
async fn r24_impossible_block_sizes_are_rejected() {
    for (bs, why) in [
        ((3, 4096, 65536), "minimum not a power of two"),
        ((4096, 4096, 512), "maximum below minimum"),
        ((4096, 512, 1 << 20), "preferred below minimum"),
        ((1 << 17, 1 << 17, 1 << 20), "minimum above 64 KiB"),
    ] {
        bounded(async {
            let hs = Hs {
                block_size: Some(bs),
                ..hs()
            };
            let e = handshake_err(move |mut f| async move {
                f.handshake(&hs).await;
                f.hold().await;
            })
            .await;
            assert!(
                e.to_string().contains("impossible block sizes"),
                "{why}: {e}"
            );
        })
        .await;
    }
}

#[tokio::test]
async fn r24_advertised_block_sizes_are_respected_locally() {
    bounded(async {
        let hs = Hs {
            block_size: Some((512, 4096, 65536)),
            ..hs()
        };
        let c = connect(move |mut f| async move {
            f.handshake(&hs).await;
            f.serve().await;
        })
        .await;
        assert_eq!(c.info().max_payload(), 65536);
        let e = c.read(0, vec![0; 131072]).await.unwrap_err();
        assert!(e.to_string().contains("exceeds the limit of 65536"), "{e}");
        let e = c.read(100, vec![0; 512]).await.unwrap_err();
        assert!(e.to_string().contains("not aligned"), "{e}");
        assert_alive(&c).await;
    })
    .await;
}

#[tokio::test]
async fn r28_go_acked_without_info_export() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            f.opt_reply(opt::GO, rep::ACK, &[]).await;
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "without NBD_INFO_EXPORT");
    })
    .await;
}

#[tokio::test]
async fn r28_endless_go_info_replies() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            let one = opt_reply_bytes(opt::GO, rep::INFO, &info_export(SIZE, FLAGS));
            for _ in 0..2000 {
                f.send(&one).await;
            }
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "too many NBD_OPT_GO replies");
    })
    .await;
}

#[tokio::test]
async fn r28_reply_for_another_option() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.greeting(codec::FLAG_FIXED_NEWSTYLE).await;
            f.client_flags().await;
            f.option().await;
            f.opt_reply(opt::GO, rep::ACK, &[]).await;
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "while waiting for option");
    })
    .await;
}

#[tokio::test]
async fn r29_export_name_over_4096_bytes() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            let mut p = be16(info::NAME).to_vec();
            p.extend(vec![b'n'; 5000]);
            f.opt_reply(opt::GO, rep::INFO, &p).await;
            f.opt_reply(opt::GO, rep::INFO, &info_export(SIZE, FLAGS))
                .await;
            f.opt_reply(opt::GO, rep::ACK, &[]).await;
            f.hold().await;
        })
        .await;
        assert!(
            matches!(
                e,
                Error::Protocol(ProtocolError::TooLong { what: "string", .. })
            ),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn r29_description_not_utf8() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            let mut p = be16(info::DESCRIPTION).to_vec();
            p.extend([0xff, 0xfe, 0x80]);
            f.opt_reply(opt::GO, rep::INFO, &p).await;
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "not UTF-8");
    })
    .await;
}

#[tokio::test]
async fn r30_greeting_without_fixed_newstyle() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.greeting(codec::FLAG_NO_ZEROES).await;
            f.hold().await;
        })
        .await;
        assert!(
            matches!(e, Error::Protocol(ProtocolError::Unsupported(_))),
            "{e:?}"
        );
        assert!(e.to_string().contains("fixed newstyle"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn r30_oldstyle_greeting() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            let mut g = be64(codec::NBD_MAGIC).to_vec();
            g.extend(be64(codec::CLISERV_MAGIC));
            g.extend(be64(SIZE));
            g.extend(be32(u32::from(FLAGS)));
            g.extend([0; 124]);
            f.send(&g).await;
            f.hold().await;
        })
        .await;
        assert!(e.to_string().contains("oldstyle"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn transmission_flags_without_has_flags_are_rejected() {
    bounded(async {
        let hs = Hs {
            flags: tflag::SEND_FLUSH,
            ..hs()
        };
        let e = handshake_err(move |mut f| async move {
            f.handshake(&hs).await;
            f.hold().await;
        })
        .await;
        assert_protocol(&e, "without HAS_FLAGS");
    })
    .await;
}

#[tokio::test]
async fn refused_go_is_a_refused_error_with_the_servers_message() {
    bounded(async {
        let e = handshake_err(|mut f| async move {
            f.negotiate_until_go(&hs()).await;
            f.opt_reply(opt::GO, rep::ERR_UNKNOWN, b"no such export").await;
            f.hold().await;
        })
        .await;
        assert!(
            matches!(&e, Error::Refused { reason: "unknown export", message, .. } if message == ": no such export"),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn r19_server_that_stops_reading_cannot_hang_a_write() {
    bounded(async {
        let hs = Hs {
            size: 64 << 20,
            ..hs()
        };
        let o = ConnectOptions {
            request_timeout: Duration::from_millis(300),
            ..opts()
        };
        let c = try_connect(
            move |mut f| async move {
                f.handshake(&hs).await;
                // Never read again, but keep the connection open.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(f);
            },
            &o,
        )
        .await
        .expect("handshake");
        let t = Instant::now();
        // 8 MiB cannot fit in the 1 MiB pipe: the write itself stalls.
        let e = c.write(0, &vec![1; 8 << 20]).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { what: "write", .. }), "{e:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        assert_dead(&c).await;
        // Disconnecting from such a server is bounded too.
        tokio::time::timeout(Duration::from_secs(2), c.disconnect())
            .await
            .expect("disconnect hung");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r19_writes_queued_behind_a_slow_but_live_server_do_not_time_out() {
    bounded(async {
        let hs = Hs {
            size: 64 << 20,
            ..hs()
        };
        let o = ConnectOptions {
            request_timeout: Duration::from_millis(1500),
            ..opts()
        };
        let c = try_connect(
            move |mut f| async move {
                f.handshake(&hs).await;
                // Drain each 1 MiB payload at about 2.5 MiB/s, then acknowledge it.
                while let Some(h) = f.recv(28).await {
                    let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
                    let len = u32::from_be_bytes(h[24..28].try_into().unwrap()) as usize;
                    for _ in 0..len / 65536 {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        if f.recv(65536).await.is_none() {
                            return;
                        }
                    }
                    f.done(cookie).await;
                }
            },
            &o,
        )
        .await
        .expect("handshake");
        // 8 writes of 1 MiB take ~3.2 s in total, twice the request timeout; each one's
        // own send and reply take well under it.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..8u64 {
            let c = c.clone();
            set.spawn(async move { c.write(i << 20, &vec![i as u8; 1 << 20]).await });
        }
        while let Some(r) = set.join_next().await {
            r.expect("task")
                .expect("a write queued behind live writes must not time out");
        }
    })
    .await;
}
