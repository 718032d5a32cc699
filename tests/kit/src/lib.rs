//! What every crate's tests share, each once: finding tools on PATH, loud skips that
//! `scripts/test.sh` counts (`$FERRY_SKIP_LOG`) or turns into failures
//! (`FERRY_REQUIRE_TOOLS=1`, set after it installed everything), the root and
//! loop-device checks, running helper commands, the bytes of `nbdkit pattern`, real NBD
//! servers ([`Server`]: nbdkit, qemu-nbd) and, with the `nbd` feature, a fake one
//! ([`fake_nbd`], on ferry-nbd's codec).
//!
//! A dev-dependency only.

#![forbid(unsafe_code)]

#[cfg(feature = "nbd")]
pub mod fake_nbd;
pub mod pki;
mod server;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

pub use server::{Listen, SERVER_WAIT, Server, free_port, next_id};

/// Whether `bin` is a file on PATH.
pub fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// Whether a missing tool must fail the test (`FERRY_REQUIRE_TOOLS=1`).
pub fn tools_required() -> bool {
    std::env::var_os("FERRY_REQUIRE_TOOLS").is_some_and(|v| v == "1")
}

/// Print a loud skip for the current test, and record it in `$FERRY_SKIP_LOG` (tagged
/// with `crate_tag`) so `scripts/test.sh` can say how many tests skipped. Written to the
/// stderr handle directly: libtest captures `eprintln!`, which would hide the skip.
pub fn skip_in(crate_tag: &str, reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
    if let Some(log) = std::env::var_os("FERRY_SKIP_LOG") {
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{crate_tag} {test}: {reason}"));
    }
}

/// False (after a loud skip) when one of `bins` is not on PATH; with
/// `FERRY_REQUIRE_TOOLS=1` a missing tool fails the test instead.
pub fn require_in(crate_tag: &str, bins: &[&str]) -> bool {
    for b in bins {
        if !have(b) {
            if tools_required() {
                panic!("{b} is not installed, and FERRY_REQUIRE_TOOLS=1");
            }
            skip_in(crate_tag, &format!("{b} is not installed"));
            return false;
        }
    }
    true
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Whether the kernel offers loop devices.
pub fn have_loop_devices() -> bool {
    Path::new("/dev/loop-control").exists()
}

/// The byte at `offset` of `nbdkit pattern`: each 8-byte word holds its own offset,
/// big-endian.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset & !7).to_be_bytes()[usize::from((offset & 7) as u8)]
}

/// Panics with the first mismatch against the pattern.
pub fn check_pattern(offset: u64, buf: &[u8]) {
    for (i, b) in buf.iter().enumerate() {
        let o = offset + i as u64;
        assert_eq!(*b, pattern_byte(o), "pattern mismatch at offset {o}");
    }
}

/// Run a helper command (stdin closed) that must succeed, panicking with its stderr
/// otherwise; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// [`run_ok`] for `prog ARGS...`.
pub fn sh(prog: &str, args: &[&str]) -> String {
    run_ok(Command::new(prog).args(args))
}

/// Copy a whole export to `dst` with nbdcopy (an independent reader).
pub fn nbdcopy(uri: &str, dst: &Path) {
    run_ok(Command::new("nbdcopy").arg(uri).arg(dst));
}

/// `qemu-img create -q -f FMT IMG SIZE`, then (with `writes`) `qemu-io -f FMT -c W...
/// IMG`: an image of known content for qemu-nbd to serve.
pub fn qemu_image(img: &Path, fmt: &str, size: &str, writes: &[&str]) {
    qemu_image_with(img, fmt, "", size, writes);
}

/// [`qemu_image`] with creation options (`-o OPTS`, e.g. `compat=0.10,cluster_size=4096`;
/// empty: none).
pub fn qemu_image_with(img: &Path, fmt: &str, opts: &str, size: &str, writes: &[&str]) {
    let mut create = Command::new("qemu-img");
    create.args(["create", "-q", "-f", fmt]);
    if !opts.is_empty() {
        create.args(["-o", opts]);
    }
    run_ok(create.arg(img).arg(size));
    if !writes.is_empty() {
        let mut io = Command::new("qemu-io");
        io.args(["-f", fmt]);
        for w in writes {
            io.args(["-c", w]);
        }
        run_ok(io.arg(img));
    }
}

/// A disk image's worth of bytes in the shapes images store differently: `text` bytes of
/// compressible text, then `random` bytes that do not compress (xorshift, fixed seed),
/// zeroes up to `len`, and a 4000-byte tail (so the size is not a multiple of any
/// cluster or sector).
pub fn mixed_disk(text: usize, random: usize, len: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(len + 4000);
    while d.len() < text {
        d.extend_from_slice(b"ferry moves virtual disks into kubernetes volumes ");
    }
    d.truncate(text);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..random {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push(x.to_le_bytes()[0]);
    }
    d.resize(len.max(d.len()), 0);
    d.extend(b"tail".repeat(1000));
    d
}

/// Whether something listens on 127.0.0.1:`port`. A connection whose local and peer
/// address are the same is not a listener: connecting to a free port in the ephemeral
/// range can pick that very port as the local one and connect to itself (TCP
/// simultaneous open), which once let a test start before its server listened.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

/// The named seeds of fuzz target `target`: the files in `fuzz/corpus/<target>` made on
/// purpose (by qemu-img, a converter, a server transcript) and named for what they are.
/// A fuzzing campaign merges its finds beside them under libFuzzer's names (40 hex
/// digits, the input's SHA-1); those are replayed for panics, but are neither valid
/// images nor a format's reference, so tests that compare with qemu or mutate "good"
/// images take only these. Sorted.
pub fn fuzz_seeds(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !(name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_words_hold_their_offsets() {
        let word: Vec<u8> = (4096..4104).map(pattern_byte).collect();
        assert_eq!(word, 4096u64.to_be_bytes());
        assert_eq!(pattern_byte(7), 0);
        assert!(have("sh"));
        assert!(!have("no-such-tool-ferry"));
    }
}
