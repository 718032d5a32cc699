//! Helpers for tests that drive the fake VDDK (`tests/fake-vddk`) through
//! `vddk_sys::Library`: find the built `libvixDiskLib.so`, install it into a temporary
//! libdir under the soname Ferry probes, run a test body in a child process (the fake is
//! one process-global library, so every scenario needs a fresh process), read its call
//! log, and start nbdkit for NBD backings.
//!
//! ```text
//! #[test]
//! fn my_scenario() {
//!     let Some(c) = child() else {                  // parent: set up, run, check
//!         let s = Scenario::new("my-scenario");     // tempdir + libdir with .so.8 + log
//!         write_test_file(&s.backing(), 1 << 20);
//!         s.env("FAKE_VDDK_BACKING", s.backing());
//!         s.run("my_scenario");                     // re-runs this test in a child
//!         assert!(s.log_lines().iter().any(|l| l == "Exit"));
//!         return;
//!     };
//!     let lib = vddk_sys::Library::load(&c.libdir()).unwrap();   // child: the body
//!     ...
//! }
//! ```
#![allow(dead_code)]

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// File name cargo gives the fake's cdylib.
pub const FAKE_LIBRARY: &str = "libvixDiskLib.so";
/// Marks a child process and names its scenario directory.
pub const CHILD_DIR_ENV: &str = "FERRY_FAKE_VDDK_TEST_DIR";

/// The built fake library: `target/<profile>/libvixDiskLib.so`, two directories above
/// the test executable (`target/<profile>/deps/<test>`). Panics when it is missing.
pub fn fake_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let lib = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(FAKE_LIBRARY))
        .expect("test executable has no grandparent directory");
    assert!(
        lib.is_file(),
        "{} is missing: build it first: cargo build -p fake-vddk",
        lib.display()
    );
    lib
}

/// Copy the fake into `<libdir>/lib64/libvixDiskLib.so.<major>`; returns that path.
pub fn install_fake(libdir: &Path, major: u32) -> PathBuf {
    let lib64 = libdir.join("lib64");
    std::fs::create_dir_all(&lib64).expect("create lib64");
    let dst = lib64.join(format!("libvixDiskLib.so.{major}"));
    std::fs::copy(fake_library(), &dst).expect("copy the fake library");
    dst
}

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferry-fake-vddk-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fixed layout of a scenario directory, shared by parent and child.
pub trait Layout {
    fn dir(&self) -> &Path;
    /// The libdir passed to `Library::load` and InitEx (the fake is in `lib64/`).
    fn libdir(&self) -> PathBuf {
        self.dir().join("vddk")
    }
    /// FAKE_VDDK_LOG.
    fn log(&self) -> PathBuf {
        self.dir().join("calls.log")
    }
    /// Where tests put a raw backing file.
    fn backing(&self) -> PathBuf {
        self.dir().join("disk.raw")
    }
    /// Where tests put a VDDK config file.
    fn config(&self) -> PathBuf {
        self.dir().join("vddk.conf")
    }
    /// The call log's lines (empty when there is none yet).
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    /// The call log's VIOLATION lines.
    fn violations(&self) -> Vec<String> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.starts_with("VIOLATION "))
            .collect()
    }
}

/// Parent side: a temp dir with a libdir holding the fake as `.so.8`, the environment
/// for the child, and the child run.
#[derive(Debug)]
pub struct Scenario {
    dir: TempDir,
    env: RefCell<Vec<(String, String)>>,
}

impl Layout for Scenario {
    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Scenario {
    pub fn new(tag: &str) -> Scenario {
        let s = Scenario {
            dir: TempDir::new(tag),
            env: RefCell::new(Vec::new()),
        };
        install_fake(&s.libdir(), 8);
        s.env("FAKE_VDDK_LOG", s.log());
        s
    }

    /// Set a variable for the child (FAKE_VDDK_* from the outer environment are removed).
    pub fn env(&self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> &Self {
        let v = v.as_ref().to_string_lossy().into_owned();
        let mut env = self.env.borrow_mut();
        env.retain(|(n, _)| n != k);
        env.push((k.to_owned(), v));
        self
    }

    /// Run the test named `test` (its full libtest name) alone in a child process of
    /// this test binary, with the scenario's environment. Panics, showing the child's
    /// output, unless it ran exactly that one test and it passed. Returns the child's
    /// stdout and stderr.
    pub fn run(&self, test: &str) -> String {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FAKE_VDDK_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(CHILD_DIR_ENV, self.dir());
        cmd.envs(self.env.borrow().iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null());
        let out = cmd.output().expect("run the test binary as a child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("--- child stdout\n{stdout}\n--- child stderr\n{stderr}");
        // Shown by libtest when the parent test fails.
        println!("{all}");
        assert!(
            out.status.success(),
            "child {test} failed: {}\n{all}",
            out.status
        );
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "child did not run exactly the test {test:?}\n{all}"
        );
        all
    }
}

/// Child side: the scenario directory, when this process is a child.
#[derive(Debug)]
pub struct ChildCtx(PathBuf);

impl Layout for ChildCtx {
    fn dir(&self) -> &Path {
        &self.0
    }
}

/// `Some` in a child started by [`Scenario::run`].
pub fn child() -> Option<ChildCtx> {
    std::env::var_os(CHILD_DIR_ENV).map(|d| ChildCtx(PathBuf::from(d)))
}

/// The byte at `offset` of [`write_test_file`]'s content: a hash of the offset's 8-byte
/// word, so a read from the wrong place shows.
pub fn test_byte(offset: u64) -> u8 {
    let w = (offset / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555_5555_5555_5555;
    w.to_le_bytes()[(offset % 8) as usize]
}

/// Write `size` bytes of [`test_byte`] content.
pub fn write_test_file(path: &Path, size: u64) {
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = test_byte(off + i as u64);
        }
        f.write_all(&buf[..n]).expect("write");
        off += n as u64;
    }
    f.flush().expect("flush");
}

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::{have, pattern_byte};

/// False (after a loud, counted skip) when a tool is missing; with
/// `FERRY_REQUIRE_TOOLS=1` a missing tool fails the test instead.
pub fn require(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("vddk-sys", bins)
}

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::Server;
