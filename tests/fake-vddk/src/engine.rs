//! Async reads: a few worker threads that do the I/O, and one timer thread with a
//! deadline heap that completes reads whose latency/bandwidth deadline lies ahead.
//!
//! ```text
//!  ReadAsync ──job──► worker pool (pread / NBD read into the caller's buffer)
//!                        │ deadline passed ──► callback on the worker
//!                        └ deadline ahead ──► timer heap ──► callback on the timer thread
//! ```
//!
//! No thread per request: N requests waiting for their latency are N heap entries, so
//! their latencies overlap.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use vddk_sys::VixError;

use crate::disk::{Callback, Disk, RawBuf, lock};

/// One queued async read.
#[derive(Debug)]
pub(crate) struct Job {
    pub disk: Arc<Disk>,
    pub start: u64,
    pub buf: RawBuf,
    pub cb: Callback,
    /// When the read may complete (latency, bandwidth, hang).
    pub at: Instant,
    /// An injected error: skip the read and complete with it.
    pub forced: Option<VixError>,
}

#[derive(Debug)]
struct Timed {
    at: Instant,
    seq: u64,
    disk: Arc<Disk>,
    cb: Callback,
    result: VixError,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    /// Reversed: the earliest deadline is the heap's greatest element.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<Job>,
    timers: BinaryHeap<Timed>,
    seq: u64,
    stop_workers: bool,
    stop_timer: bool,
}

#[derive(Debug, Default)]
struct Shared {
    st: Mutex<State>,
    work: Condvar,
    tick: Condvar,
}

/// The worker pool and the timer thread.
#[derive(Debug)]
pub(crate) struct Engine {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    timer: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Start `workers` I/O threads and the timer thread.
    pub fn start(workers: usize) -> std::io::Result<Engine> {
        let shared = Arc::new(Shared::default());
        let mut ws = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = shared.clone();
            ws.push(
                std::thread::Builder::new()
                    .name(format!("fake-vddk-io-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        let s = shared.clone();
        let timer = std::thread::Builder::new()
            .name("fake-vddk-timer".into())
            .spawn(move || timer(&s))?;
        Ok(Engine {
            shared,
            workers: Mutex::new(ws),
            timer: Mutex::new(Some(timer)),
        })
    }

    /// Queue a read for the workers.
    pub fn submit(&self, job: Job) {
        lock(&self.shared.st).jobs.push_back(job);
        self.shared.work.notify_one();
    }

    /// Finish queued work, complete every timed read now (even hung ones), stop threads.
    pub fn shutdown(&self) {
        lock(&self.shared.st).stop_workers = true;
        self.shared.work.notify_all();
        for w in std::mem::take(&mut *lock(&self.workers)) {
            let _ = w.join();
        }
        lock(&self.shared.st).stop_timer = true;
        self.shared.tick.notify_all();
        if let Some(t) = lock(&self.timer).take() {
            let _ = t.join();
        }
    }
}

fn push_timer(s: &Shared, at: Instant, disk: Arc<Disk>, cb: Callback, result: VixError) {
    let mut st = lock(&s.st);
    st.seq += 1;
    let seq = st.seq;
    let earliest = st.timers.peek().is_none_or(|t| at < t.at);
    st.timers.push(Timed {
        at,
        seq,
        disk,
        cb,
        result,
    });
    drop(st);
    if earliest {
        s.tick.notify_one();
    }
}

fn worker(s: &Shared) {
    loop {
        let job = {
            let mut st = lock(&s.st);
            loop {
                if let Some(j) = st.jobs.pop_front() {
                    break j;
                }
                if st.stop_workers {
                    return;
                }
                st = s.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = match job.forced {
            Some(e) => e,
            None => {
                // SAFETY: ReadAsync's contract keeps the buffer valid and untouched by
                // the caller until this read's callback, which runs after this.
                let buf = unsafe { job.buf.as_mut_slice() };
                job.disk.read_into(job.start, buf)
            }
        };
        if job.at > Instant::now() {
            push_timer(s, job.at, job.disk, job.cb, result);
        } else {
            job.cb.complete(&job.disk, result);
        }
    }
}

fn timer(s: &Shared) {
    loop {
        let (due, last) = {
            let mut st = lock(&s.st);
            loop {
                if st.stop_timer {
                    // Ord is reversed, so the sorted vector is latest-first.
                    let mut all = std::mem::take(&mut st.timers).into_sorted_vec();
                    all.reverse();
                    break (all, true);
                }
                let now = Instant::now();
                match st.timers.peek() {
                    Some(t) if t.at <= now => {
                        let mut due = Vec::new();
                        while st.timers.peek().is_some_and(|t| t.at <= now) {
                            due.extend(st.timers.pop());
                        }
                        break (due, false);
                    }
                    Some(t) => {
                        let d = t.at - now;
                        st = s
                            .tick
                            .wait_timeout(st, d)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    None => st = s.tick.wait(st).unwrap_or_else(PoisonError::into_inner),
                }
            }
        };
        for t in due {
            t.cb.complete(&t.disk, t.result);
        }
        if last {
            return;
        }
    }
}
