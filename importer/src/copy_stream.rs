//! The pipeline for a disk that arrives in order ([`StreamSource`]): one piece at a time
//! into a free pool buffer, each written while the next is read.
//!
//! ```text
//!  stream ──piece──► dispatch ─┬─ bytes, not all zero: sink.write (buffer in flight)
//!    ▲                         └─ zero bytes or a Zero piece: buffer back, sink.zero()
//!    └──── free buffer ◄──── completions ◄──┘
//! ```
//!
//! The pool bounds what is held exactly as in [`super::copy`]: a piece needs a free
//! buffer, so at most `buf_count` pieces are being read or written. The disk ends where
//! the stream ends; a file target is then cut or grown to that length, a block device
//! must hold it. Done only after every completion was checked and the flush returned.

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};

use super::{
    CopyOptions, CopyStats, Done, InFlight, MAX_ZERO_IN_FLIGHT, Request, Settle, Watermark,
    pool_of, settle, zero_request,
};
use crate::buf::{BUF_ALIGN, Buf};
use crate::error::{Error, Retry, TargetProblem};
use crate::progress::Progress;
use crate::sink::Sink;
use crate::source::stream::{MAX_STREAM_BYTES, Piece, StreamSource};

/// Copy `stream` onto `sink` from offset 0 to the stream's end. The caller closes the
/// stream.
pub async fn copy_stream(
    stream: &mut dyn StreamSource,
    sink: Arc<Sink>,
    opts: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyStats, Error> {
    let start = Instant::now();
    let (_, buf_size, mut free) = pool_of(BUF_ALIGN as u64, u64::MAX, opts);
    let known = stream.size();
    progress.set_total(known.unwrap_or(0));
    progress.set_engine(sink.engine_name());
    progress.set_durable(0);
    let mut stats = CopyStats::start(&sink, buf_size, free.len());
    let mut d = Dispatch {
        sink: &sink,
        progress: &progress,
        known,
        at: 0,
        marks: Watermark::new(0),
        in_flight: FuturesUnordered::new(),
        zeros: 0,
        zero_bytes_read: 0,
        digest: opts.digest.then(crate::digest::Sequential::new),
    };
    let ctx = Settle {
        progress: &progress,
        journal: None,
        sample_len: 0,
    };
    let mut ended = false;
    loop {
        // Read the next piece while the writes in flight go on.
        let want = !ended && d.zeros < MAX_ZERO_IN_FLIGHT && !free.is_empty();
        if want {
            let Some(buf) = free.pop() else {
                unreachable!("checked above")
            };
            let mut next = stream.next(buf);
            let piece = loop {
                tokio::select! {
                    p = &mut next => break p?,
                    Some((idx, done)) = d.in_flight.next(), if !d.in_flight.is_empty() => {
                        settle(done, idx, &mut d.marks, &mut free, &mut d.zeros, &mut stats, &ctx)?;
                    }
                }
            };
            drop(next);
            ended = d.dispatch(piece, &mut free)?;
        } else if let Some((idx, done)) = d.in_flight.next().await {
            settle(
                done,
                idx,
                &mut d.marks,
                &mut free,
                &mut d.zeros,
                &mut stats,
                &ctx,
            )?;
        } else if ended {
            break;
        } else {
            return Err(Error::Internal("copy pipeline stalled"));
        }
        progress.set_in_flight(d.in_flight.len() as u64);
    }
    let size = d.at;
    stats.bytes_read += d.zero_bytes_read;
    progress.set_phase("flushing");
    sink.set_stream_size(size).await?;
    sink.flush().await?;
    progress.set_total(size);
    progress.set_durable(size);
    stats.size = size;
    if let Some(g) = d.digest.take() {
        let full = Arc::new(g.finish());
        stats.digest = Some(full.text());
        stats.digest_full = Some(full);
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.bytes_downloaded = progress.downloaded();
    Ok(stats)
}

/// The dispatcher's books.
struct Dispatch<'a> {
    sink: &'a Arc<Sink>,
    progress: &'a Progress,
    /// The size the stream declared, if any.
    known: Option<u64>,
    /// Bytes of the disk dispatched so far.
    at: u64,
    marks: Watermark,
    in_flight: FuturesUnordered<InFlight>,
    zeros: usize,
    /// Bytes read that turned out to be zeroes (not written, so not counted on completion).
    zero_bytes_read: u64,
    /// The digest, built in the stream's order, when asked for.
    digest: Option<crate::digest::Sequential>,
}

impl Dispatch<'_> {
    /// Start the work of one piece; true at the stream's end.
    fn dispatch(&mut self, piece: Piece, free: &mut Vec<Buf>) -> Result<bool, Error> {
        let (offset, len) = match &piece {
            Piece::Data(b) => (self.at, b.len() as u64),
            Piece::Zero { len, .. } => (self.at, *len),
            Piece::End(_) => (self.at, 0),
        };
        if let Piece::End(buf) = piece {
            free.push(buf);
            if let Some(k) = self.known.filter(|k| *k != offset) {
                return Err(Error::Read {
                    offset,
                    message: format!("the stream ended after {offset} bytes but said it holds {k}"),
                    retry: Retry::Never,
                });
            }
            return Ok(true);
        }
        let end = self.fits(offset, len)?;
        if let Some(g) = self.digest.as_mut() {
            match &piece {
                Piece::Data(b) => g.data(b.as_slice()),
                Piece::Zero { len, .. } => g.zero(*len),
                Piece::End(_) => {}
            }
        }
        if self.known.is_none() {
            self.progress.set_total(end);
        }
        let work: Request = match piece {
            Piece::Data(buf) if !buf.is_zero() => {
                let snk = self.sink.clone();
                Box::pin(async move {
                    let (buf, r) = snk.write(buf, offset).await;
                    r?;
                    Ok(Done::Data {
                        buf,
                        offset,
                        len,
                        written: true,
                    })
                })
            }
            // Zeroes: the buffer goes back now; the target is made to read as zeroes
            // (nothing to do on a new file).
            Piece::Data(buf) => {
                self.zero_bytes_read += len;
                free.push(buf);
                self.zeros += 1;
                zero_request(offset, len, self.sink)
            }
            Piece::Zero { buf, .. } => {
                free.push(buf);
                self.zeros += 1;
                zero_request(offset, len, self.sink)
            }
            Piece::End(_) => unreachable!("handled above"),
        };
        let idx = self.marks.dispatch(end);
        self.in_flight
            .push(Box::pin(async move { (idx, work.await) }));
        self.at = end;
        Ok(false)
    }

    /// `[offset, offset+len)` is within what a stream may hold, what it declared and
    /// what the target can take; its end.
    fn fits(&self, offset: u64, len: u64) -> Result<u64, Error> {
        let end = offset.saturating_add(len);
        let limit = self.known.unwrap_or(MAX_STREAM_BYTES);
        if end > limit {
            return Err(Error::Read {
                offset,
                message: match self.known {
                    Some(k) => format!("the stream holds more than the {k} bytes it said"),
                    None => format!(
                        "the stream holds more than {MAX_STREAM_BYTES} bytes, the most a disk stream may hold"
                    ),
                },
                retry: Retry::Never,
            });
        }
        if let Some(cap) = self.sink.capacity().filter(|c| end > *c) {
            return Err(TargetProblem::StreamTooLarge {
                path: self.sink.path().to_owned(),
                size: cap,
            }
            .into());
        }
        Ok(end)
    }
}
