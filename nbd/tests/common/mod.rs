//! Helpers shared by the integration tests; the NBD servers (`Server`), running
//! helper commands and the known content of `nbdkit pattern` are the test kit's.
#![allow(dead_code)]

use std::time::Duration;

use ferry_nbd::ConnectOptions;

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::{Server, check_pattern, have, nbdcopy, pattern_byte, qemu_image};

/// Returns false (after a loud, counted skip) when one of `bins` is missing; with
/// `FERRY_REQUIRE_TOOLS=1` a missing tool fails the test instead.
pub fn tools(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("ferry-nbd", bins)
}

/// Options with short, test-sized timeouts.
pub fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(20),
        ..ConnectOptions::default()
    }
}

/// Checks the block-status rules of the spec for a reply to a request of `len`
/// bytes: at least one extent, no zero lengths, the first N-1 inside the request.
pub fn check_extent_rules(d: &[ferry_nbd::BlockDescriptor], len: u64) {
    assert!(!d.is_empty(), "no extents");
    assert!(
        d.iter().all(|e| e.length > 0),
        "zero-length extent in {d:?}"
    );
    let head: u64 = d[..d.len() - 1].iter().map(|e| e.length).sum();
    assert!(
        head < len,
        "first N-1 extents ({head}) reach the end of the request ({len})"
    );
}

/// Clamp extents to `[0, len)` and return (relative start, length, flags) ranges.
pub fn clamp_extents(d: &[ferry_nbd::BlockDescriptor], len: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for e in d {
        if at >= len {
            break;
        }
        let n = e.length.min(len - at);
        out.push((at, n, e.flags));
        at += n;
    }
    out
}
