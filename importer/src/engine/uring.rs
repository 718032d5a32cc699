//! The io_uring engine: one ring on a dedicated thread.
//!
//! Callers send requests over a channel and poke an eventfd; the ring thread turns them
//! into SQEs, and a read of that eventfd is always in flight so new work wakes it from
//! `submit_and_wait`. Each in-flight op lives in a slab slot (its index is the SQE's
//! `user_data`) and **owns its buffer and file until the kernel's completion is reaped**:
//! nothing the kernel may still touch is ever dropped or moved (the `Vec` behind a
//! [`Buf`] never reallocates, so moving the `Buf` value does not move its bytes). Short
//! transfers are resubmitted for the remainder.
//!
//! A copy may register its pool (io_uring fixed buffers): the kernel pins the pages once,
//! and requests from a registered buffer are READ_FIXED / WRITE_FIXED naming its index,
//! instead of pinning the pages of every O_DIRECT request again. The ring thread keeps
//! which registration is active; a buffer tagged with another (or none) goes as a plain
//! READ / WRITE, so ending a registration never strands a request.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use io_uring::{IoUring, Probe, opcode, squeue, types};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::oneshot;

use super::{BoxFuture, Fallocate, IoEngine};
use crate::buf::Buf;

/// `user_data` of the eventfd read that wakes the ring thread.
const WAKE: u64 = u64::MAX;
/// Most buffers one registration holds (the kernel's IORING_MAX_REG_BUFFERS).
pub const MAX_FIXED_BUFFERS: usize = 16 * 1024;
/// Largest registered buffer (the kernel's limit per iovec).
pub const MAX_FIXED_BUFFER_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

struct BufOp {
    dir: Dir,
    file: Arc<File>,
    buf: Buf,
    offset: u64,
    done: usize,
    tx: oneshot::Sender<(Buf, io::Result<()>)>,
}

enum PlainKind {
    Fallocate {
        mode: Fallocate,
        offset: u64,
        len: u64,
    },
    Fdatasync,
}

struct PlainOp {
    kind: PlainKind,
    file: Arc<File>,
    tx: oneshot::Sender<io::Result<()>>,
}

struct RegisterOp {
    windows: Vec<(usize, usize)>,
    tx: oneshot::Sender<io::Result<u64>>,
}

enum Op {
    Buf(BufOp),
    Plain(PlainOp),
    /// Handled by the ring thread as it is received, never in the slab.
    Register(RegisterOp),
    /// The same.
    Unregister(u64),
}

/// The ring thread's fixed buffers.
struct FixedState {
    /// The kernel has READ_FIXED and WRITE_FIXED.
    supported: bool,
    /// The registration in force.
    active: Option<u64>,
    /// The last registration's number.
    last: u64,
    /// An Unregister received while fixed SQEs of the active registration may still sit
    /// unsubmitted in the SQ: applied once the SQ is empty.
    ending: Option<u64>,
    /// Requests submitted with a registered buffer.
    used: Arc<AtomicU64>,
}

/// io_uring-backed engine. Dropping it lets in-flight ops finish, then stops the thread.
pub struct UringEngine {
    tx: Option<mpsc::Sender<Op>>,
    wake: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    fixed_used: Arc<AtomicU64>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UringEngine")
    }
}

impl UringEngine {
    /// Set up a ring of `entries` and probe every opcode we use. The error string says
    /// why io_uring is unusable (e.g. "io_uring_setup: Operation not permitted").
    pub fn new(entries: u32) -> Result<UringEngine, String> {
        let entries = entries.clamp(8, 4096).next_power_of_two();
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .map_err(|e| format!("eventfd: {e}"))?,
        );
        let (tx, rx) = mpsc::channel::<Op>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let w = wake.clone();
        let fixed_used = Arc::new(AtomicU64::new(0));
        let used = fixed_used.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-uring".into())
            .spawn(move || ring_thread(entries, rx, w, ready_tx, used))
            .map_err(|e| format!("spawning the ring thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(UringEngine {
                tx: Some(tx),
                wake,
                thread: Some(thread),
                fixed_used,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("ring thread exited during set-up".into()),
        }
    }

    fn send(&self, op: Op) -> Result<(), Op> {
        let Some(tx) = &self.tx else { return Err(op) };
        tx.send(op).map_err(|e| e.0)?;
        // A failed wake only delays the op until the next wake; it cannot be lost
        // because the channel holds it. eventfd writes fail only on counter overflow.
        let _ = self.wake.write(1);
        Ok(())
    }

    fn buf_op(
        &self,
        dir: Dir,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Buf(BufOp {
            dir,
            file,
            buf,
            offset,
            done: 0,
            tx,
        }));
        Box::pin(async move {
            if let Err(Op::Buf(op)) = sent {
                return (op.buf, Err(stopped()));
            }
            rx.await.unwrap_or_else(|_| (Buf::new(0), Err(stopped())))
        })
    }

    fn plain_op(&self, kind: PlainKind, file: Arc<File>) -> BoxFuture<'static, io::Result<()>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Plain(PlainOp { kind, file, tx }));
        Box::pin(async move {
            if sent.is_err() {
                return Err(stopped());
            }
            rx.await.unwrap_or_else(|_| Err(stopped()))
        })
    }
}

fn stopped() -> io::Error {
    io::Error::other("the io_uring thread stopped")
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.tx.take();
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn write(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)> {
        self.buf_op(Dir::Write, file, buf, offset)
    }

    fn read(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)> {
        self.buf_op(Dir::Read, file, buf, offset)
    }

    fn fallocate(
        &self,
        file: Arc<File>,
        mode: Fallocate,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'static, io::Result<()>> {
        self.plain_op(PlainKind::Fallocate { mode, offset, len }, file)
    }

    fn fdatasync(&self, file: Arc<File>) -> BoxFuture<'static, io::Result<()>> {
        self.plain_op(PlainKind::Fdatasync, file)
    }

    fn register_buffers(
        &self,
        windows: Vec<(usize, usize)>,
    ) -> BoxFuture<'static, io::Result<u64>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Register(RegisterOp { windows, tx }));
        Box::pin(async move {
            if sent.is_err() {
                return Err(stopped());
            }
            rx.await.unwrap_or_else(|_| Err(stopped()))
        })
    }

    fn unregister_buffers(&self, registration: u64) {
        // A stopped ring has no registration left to end.
        let _ = self.send(Op::Unregister(registration));
    }

    fn fixed_requests(&self) -> u64 {
        self.fixed_used.load(Ordering::Relaxed)
    }
}

fn setup(entries: u32) -> Result<(IoUring, bool), String> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))
        .map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe: {e}"))?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("kernel io_uring lacks IORING_OP_{name}"));
        }
    }
    let fixed =
        probe.is_supported(opcode::ReadFixed::CODE) && probe.is_supported(opcode::WriteFixed::CODE);
    Ok((ring, fixed))
}

/// Register `windows` as the ring's fixed buffers (see [`IoEngine::register_buffers`]).
fn register(ring: &IoUring, st: &mut FixedState, windows: &[(usize, usize)]) -> io::Result<u64> {
    if !st.supported {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring lacks READ_FIXED/WRITE_FIXED",
        ));
    }
    if st.active.is_some() {
        return Err(io::Error::other("another registration is active"));
    }
    if windows.is_empty()
        || windows.len() > MAX_FIXED_BUFFERS
        || windows
            .iter()
            .any(|&(_, l)| l == 0 || l > MAX_FIXED_BUFFER_BYTES)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} buffers: registered buffers are 1 to {MAX_FIXED_BUFFERS} of at most {MAX_FIXED_BUFFER_BYTES} bytes",
                windows.len()
            ),
        ));
    }
    let iovecs: Vec<libc::iovec> = windows
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: each iovec is the aligned window of a live pool buffer (Buf::window). The
    // kernel pins those pages while registered, so memory we free meanwhile is never
    // written through them as ours: an index is only submitted from the buffer that
    // carries it (Buf::fixed), in this registration, while the op owns that buffer.
    unsafe { ring.submitter().register_buffers(&iovecs) }?;
    st.last += 1;
    st.active = Some(st.last);
    Ok(st.last)
}

/// End registration `registration` if it is the one in force — once no SQE built for
/// it waits unsubmitted (until then it is `ending`, and still in force).
fn unregister(ring: &mut IoUring, st: &mut FixedState, registration: u64) {
    if st.active != Some(registration) {
        return;
    }
    if !ring.submission().is_empty() {
        st.ending = Some(registration);
        return;
    }
    st.ending = None;
    // Requests in flight keep their buffers' pages until they complete (the kernel
    // refcounts the registration, or quiesces the ring before 5.13); anything queued
    // after this goes plain.
    if let Err(e) = ring.submitter().unregister_buffers() {
        tracing::debug!(error = %e, "unregistering the fixed buffers");
    }
    st.active = None;
}

/// Slab of in-flight ops keyed by `user_data`.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    live: usize,
}

impl Slab {
    fn insert(&mut self, op: Op) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(op);
                i
            }
            None => {
                self.slots.push(Some(op));
                self.slots.len() - 1
            }
        }
    }
    fn remove(&mut self, i: usize) -> Option<Op> {
        let op = self.slots.get_mut(i)?.take()?;
        self.live -= 1;
        self.free.push(i);
        Some(op)
    }
}

/// The SQE of `op` in `slot`, and whether it is a fixed request (a buffer of the
/// `active` registration).
fn build_sqe(slot: usize, op: &mut Op, active: Option<u64>) -> (squeue::Entry, bool) {
    let mut is_fixed = false;
    let sqe = match op {
        Op::Buf(b) => {
            let fd = types::Fd(b.file.as_raw_fd());
            let remaining = b.buf.len() - b.done;
            // Buffers are at most a few MiB (capped by the pool), so this never truncates.
            let len = u32::try_from(remaining).unwrap_or(u32::MAX);
            let offset = b.offset + b.done as u64;
            let fixed = b.buf.fixed().filter(|f| Some(f.registration) == active);
            is_fixed = fixed.is_some();
            match (b.dir, fixed) {
                (Dir::Write, None) => {
                    let ptr = b.buf.as_slice()[b.done..].as_ptr();
                    opcode::Write::new(fd, ptr, len).offset(offset).build()
                }
                (Dir::Write, Some(f)) => {
                    let ptr = b.buf.as_slice()[b.done..].as_ptr();
                    opcode::WriteFixed::new(fd, ptr, len, f.index)
                        .offset(offset)
                        .build()
                }
                (Dir::Read, None) => {
                    let ptr = b.buf.as_mut_slice()[b.done..].as_mut_ptr();
                    opcode::Read::new(fd, ptr, len).offset(offset).build()
                }
                (Dir::Read, Some(f)) => {
                    let ptr = b.buf.as_mut_slice()[b.done..].as_mut_ptr();
                    opcode::ReadFixed::new(fd, ptr, len, f.index)
                        .offset(offset)
                        .build()
                }
            }
        }
        // Never in the slab: handled as received.
        Op::Register(_) | Op::Unregister(_) => opcode::Nop::new().build(),
        Op::Plain(p) => {
            let fd = types::Fd(p.file.as_raw_fd());
            match p.kind {
                PlainKind::Fallocate { mode, offset, len } => opcode::Fallocate::new(fd, len)
                    .offset(offset)
                    .mode(mode.mode())
                    .build(),
                PlainKind::Fdatasync => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
        }
    };
    (sqe.user_data(slot as u64), is_fixed)
}

/// Handle one completion; returns the slot if the op must be resubmitted.
fn complete(slab: &mut Slab, slot: usize, res: i32) -> Option<usize> {
    let op = slab.remove(slot)?;
    match op {
        Op::Register(_) | Op::Unregister(_) => None,
        Op::Plain(p) => {
            let r = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(())
            };
            let _ = p.tx.send(r);
            None
        }
        Op::Buf(mut b) => {
            let remaining = b.buf.len() - b.done;
            let err = if res < 0 {
                Some(io::Error::from_raw_os_error(-res))
            } else if res == 0 && remaining > 0 {
                Some(match b.dir {
                    Dir::Write => io::Error::from(io::ErrorKind::WriteZero),
                    Dir::Read => io::Error::from(io::ErrorKind::UnexpectedEof),
                })
            } else {
                None
            };
            if let Some(e) = err {
                let _ = b.tx.send((b.buf, Err(e)));
                return None;
            }
            // A negative result was an error above; this one is a byte count.
            b.done += usize::try_from(res).unwrap_or(0);
            if b.done < b.buf.len() {
                return Some(slab.insert(Op::Buf(b)));
            }
            let _ = b.tx.send((b.buf, Ok(())));
            None
        }
    }
}

fn ring_thread(
    entries: u32,
    rx: mpsc::Receiver<Op>,
    wake: Arc<EventFd>,
    ready: mpsc::Sender<Result<(), String>>,
    used: Arc<AtomicU64>,
) {
    // Leaked (8 bytes per engine): ring teardown is asynchronous in the kernel, so the
    // wake read's target must stay valid for the life of the process.
    let wake_buf: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let (mut ring, supported) = match setup(entries) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let wake_fd = types::Fd(wake.as_raw_fd());
    let wake_sqe = |buf: &mut [u8; 8]| {
        opcode::Read::new(wake_fd, buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE)
    };
    let mut fixed = FixedState {
        supported,
        active: None,
        last: 0,
        ending: None,
        used,
    };
    let mut slab = Slab::default();
    let mut pending: VecDeque<usize> = VecDeque::new();
    let mut wake_armed = false;
    let mut closing = false;
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(entries as usize);
    loop {
        loop {
            match rx.try_recv() {
                Ok(Op::Register(r)) => {
                    if let Some(g) = fixed.ending {
                        unregister(&mut ring, &mut fixed, g);
                    }
                    let res = register(&ring, &mut fixed, &r.windows);
                    let _ = r.tx.send(res);
                }
                Ok(Op::Unregister(g)) => unregister(&mut ring, &mut fixed, g),
                Ok(op) => pending.push_back(slab.insert(op)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        if !wake_armed && !closing {
            let sqe = wake_sqe(wake_buf);
            // SAFETY: wake_buf is leaked, so valid for as long as the kernel may write
            // it, and only this one read targets it at a time (wake_armed).
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                wake_armed = true;
            }
        }
        while let Some(&slot) = pending.front() {
            let Some(op) = slab.slots.get_mut(slot).and_then(Option::as_mut) else {
                pending.pop_front();
                continue;
            };
            let (sqe, is_fixed) = build_sqe(slot, op, fixed.active);
            // SAFETY: the SQE points into the op's buffer (or at nothing, for fallocate
            // and fsync) and at its file's fd. The op — buffer and Arc<File> — stays in
            // the slab, unmoved in memory, until its CQE is reaped in `complete`. A fixed
            // request names the active registration's index of this very buffer, whose
            // window holds the range (build_sqe checks the registration).
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                break;
            }
            if is_fixed {
                fixed.used.fetch_add(1, Ordering::Relaxed);
            }
            pending.pop_front();
        }
        let in_flight = slab.live - pending.len();
        if closing && slab.live == 0 {
            break;
        }
        let want = usize::from(in_flight > 0 || wake_armed);
        match ring.submit_and_wait(want) {
            Ok(_) => {
                if let Some(g) = fixed.ending {
                    unregister(&mut ring, &mut fixed, g);
                }
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                tracing::error!(error = %e, "io_uring_enter failed; failing all in-flight I/O");
                fail_all(&mut slab, &e);
                return;
            }
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            if ud == WAKE {
                wake_armed = false;
                continue;
            }
            if let Some(again) = complete(&mut slab, crate::num::usize_of(ud), res) {
                pending.push_back(again);
            }
        }
    }
}

/// Fail every op after the ring broke. Buffers the kernel may still own are leaked, not
/// freed: a broken ring gives no guarantee that their I/O has ended.
fn fail_all(slab: &mut Slab, e: &io::Error) {
    for i in 0..slab.slots.len() {
        match slab.remove(i) {
            Some(Op::Buf(b)) => {
                std::mem::forget(b.buf);
                drop(b.tx.send((Buf::new(0), Err(io::Error::new(e.kind(), e.to_string())))));
            }
            Some(Op::Plain(p)) => drop(p.tx.send(Err(io::Error::new(e.kind(), e.to_string())))),
            Some(Op::Register(_) | Op::Unregister(_)) | None => {}
        }
    }
}
