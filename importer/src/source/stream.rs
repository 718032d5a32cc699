//! Sources that can only be read in order: a raw disk on stdin, a compressed file, (next)
//! an HTTP body without Range support or a streamOptimized VMDK. A [`StreamSource`]
//! yields the disk from offset 0 as pieces — bytes in a pool buffer, or a run of zeroes
//! it knows without bytes — and the copy ([`crate::copy::copy_stream`]) writes each
//! piece while the next is read, through the same pool as every other copy.
//!
//! [`ReadStream`] turns any blocking [`std::io::Read`] (stdin, a decompressor) into
//! one, reading on the blocking pool; [`SourceReader`] is the other way round, a
//! random-access [`Source`] read front to back as bytes, so a format layer (a
//! decompressor) can sit on any transport.

use std::io::Read;
use std::sync::Arc;

use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::{Error, Retry};
use crate::source::Source;

/// The most a stream may hold: a disk the stream says nothing about ends where its bytes
/// end, and is refused past this (VMDK's own limit is 62 TiB).
pub const MAX_STREAM_BYTES: u64 = 64 << 40;

/// The next part of a stream, right after the previous one.
#[derive(Debug)]
pub enum Piece {
    /// These bytes (the buffer's length; shorter than its capacity only at the end).
    Data(Buf),
    /// This many bytes of zeroes, known without reading them; the buffer comes back unused.
    Zero {
        /// Bytes.
        len: u64,
        /// The buffer that was offered.
        buf: Buf,
    },
    /// The end of the disk; the buffer comes back unused.
    End(Buf),
}

/// A disk read from its start to its end, once.
pub trait StreamSource: Send + std::fmt::Debug {
    /// For logs and errors.
    fn describe(&self) -> String;
    /// The disk's size, when the stream says it up front (a stream whose bytes end
    /// elsewhere fails).
    fn size(&self) -> Option<u64>;
    /// The next piece, read into `buf` (up to its capacity).
    fn next(&mut self, buf: Buf) -> BoxFuture<'_, Result<Piece, Error>>;
    /// Release what the stream reads from; called once after the copy, on every path.
    fn close(&mut self) -> BoxFuture<'_, ()>;
    /// A stream of plain bytes not yet read from, as its parts (description, reader,
    /// what it reads from), so a format layer can look at them; any other stream
    /// comes back as it is.
    fn into_bytes(self: Box<Self>) -> Result<ByteParts, Box<dyn StreamSource>>;
}

/// A byte stream's parts: its description, its reader, and what that reads from.
pub type ByteParts = (
    String,
    Box<dyn Read + Send>,
    Option<Arc<dyn Source>>,
    Option<Arc<crate::checksum::ChecksumState>>,
);

/// A blocking reader as a [`StreamSource`]: every piece is read on tokio's blocking
/// pool, so a slow pipe or a decompressor never stalls the writes in flight.
pub struct ReadStream {
    what: String,
    size: Option<u64>,
    reader: Option<Box<dyn Read + Send>>,
    /// Bytes handed out so far.
    at: u64,
    /// What the reader reads from, closed with the stream.
    under: Option<Arc<dyn Source>>,
    /// The checksum of the bytes under the reader, checked at the end.
    check: Option<Arc<crate::checksum::ChecksumState>>,
}

impl std::fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream")
            .field("what", &self.what)
            .field("size", &self.size)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl ReadStream {
    /// `reader`'s bytes are the disk; `under` is closed with the stream.
    pub fn new(
        what: String,
        size: Option<u64>,
        reader: Box<dyn Read + Send>,
        under: Option<Arc<dyn Source>>,
    ) -> ReadStream {
        ReadStream {
            what,
            size,
            reader: Some(reader),
            at: 0,
            under,
            check: None,
        }
    }

    /// The same stream, its end checked against `check` (which the reader's bytes feed).
    pub fn checked(mut self, check: Arc<crate::checksum::ChecksumState>) -> ReadStream {
        self.check = Some(check);
        self
    }
}

/// Read into `buf` until it is full or the reader ends; the bytes read.
pub(crate) fn fill(reader: &mut dyn Read, buf: &mut Buf) -> std::io::Result<usize> {
    let want = buf.capacity();
    buf.set_len(want);
    let slice = buf.as_mut_slice();
    let mut n = 0;
    while n < want {
        match reader.read(&mut slice[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl StreamSource for ReadStream {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn size(&self) -> Option<u64> {
        self.size
    }

    fn next(&mut self, mut buf: Buf) -> BoxFuture<'_, Result<Piece, Error>> {
        Box::pin(async move {
            let at = self.at;
            let read_error = |message: String| Error::Read {
                offset: at,
                message,
                retry: Retry::Never,
            };
            let Some(mut reader) = self.reader.take() else {
                return Err(read_error(format!("{}: read after a failure", self.what)));
            };
            let (reader, buf, n) = tokio::task::spawn_blocking(move || {
                let n = fill(reader.as_mut(), &mut buf);
                (reader, buf, n)
            })
            .await
            .map_err(|e| read_error(format!("the reading thread failed: {e}")))?;
            let n = n.map_err(|e| match Error::from_io(e) {
                Ok(typed) => typed,
                Err(e) => read_error(format!("{}: {e}", self.what)),
            })?;
            self.reader = Some(reader);
            let mut buf = buf;
            if n == 0 {
                // A random-access source under a decoder finishes its own checks (its
                // checksum reads what the decoder left); a stream's is checked here.
                if let Some(u) = &self.under {
                    u.finish().await?;
                }
                if let Some(c) = &self.check {
                    c.check()?;
                }
                return Ok(Piece::End(buf));
            }
            buf.set_len(n);
            self.at += n as u64;
            Ok(Piece::Data(buf))
        })
    }

    fn into_bytes(self: Box<Self>) -> Result<ByteParts, Box<dyn StreamSource>> {
        match (self.at, self.reader) {
            (0, Some(reader)) => Ok((self.what, reader, self.under, self.check)),
            (at, reader) => Err(Box::new(ReadStream {
                at,
                reader,
                ..*self
            })),
        }
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.reader = None;
            if let Some(s) = self.under.take() {
                s.close().await;
            }
        })
    }
}

/// Bytes [`SourceReader`] asks its source for at once.
pub const SOURCE_READ_BYTES: usize = 1 << 20;

/// A random-access [`Source`] read front to back through [`std::io::Read`], for a format
/// layer above it. Used only on tokio's blocking pool (it waits for each read there).
#[derive(Debug)]
pub struct SourceReader {
    src: Arc<dyn Source>,
    rt: tokio::runtime::Handle,
    at: u64,
    buf: Option<Buf>,
    /// Unconsumed bytes of `buf`: `[pos, buf.len())`.
    pos: usize,
}

impl SourceReader {
    /// Read `src` from its start; must be created inside the runtime.
    pub fn new(src: Arc<dyn Source>) -> SourceReader {
        let align = crate::num::usize_of(src.block_size().max(crate::buf::BUF_ALIGN as u64));
        let max = crate::num::usize_of(src.max_read().max(align as u64));
        let chunk = SOURCE_READ_BYTES.min(max).div_ceil(align) * align;
        let mut buf = Buf::new(chunk);
        buf.set_len(0);
        SourceReader {
            src,
            rt: tokio::runtime::Handle::current(),
            at: 0,
            buf: Some(buf),
            pos: 0,
        }
    }
}

impl Read for SourceReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let Some(mut buf) = self.buf.take() else {
            return Err(std::io::Error::other("read after a failure"));
        };
        if self.pos == buf.len() {
            let size = self.src.size();
            if self.at >= size {
                self.buf = Some(buf);
                return Ok(0);
            }
            let len = (buf.capacity() as u64).min(size - self.at);
            buf.set_len(crate::num::usize_of(len));
            let read = self.src.read(self.at, buf);
            buf = self.rt.block_on(read).map_err(std::io::Error::other)?;
            self.at += len;
            self.pos = 0;
        }
        let n = out.len().min(buf.len() - self.pos);
        out[..n].copy_from_slice(&buf.as_slice()[self.pos..self.pos + n]);
        self.pos += n;
        self.buf = Some(buf);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_is_yielded_in_full_buffers_then_a_short_one_then_the_end() {
        let rt = crate::test_support::rt();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = ReadStream::new(
            "test".into(),
            None,
            Box::new(std::io::Cursor::new(data.clone())),
            None,
        );
        let got = rt.block_on(async {
            let mut got = Vec::new();
            loop {
                match s.next(Buf::new(4096)).await.expect("piece") {
                    Piece::Data(b) => got.extend_from_slice(b.as_slice()),
                    Piece::End(_) => break,
                    Piece::Zero { .. } => panic!("a reader has no zero pieces"),
                }
            }
            got
        });
        assert_eq!(got, data);
    }

    #[test]
    fn a_failing_reader_is_a_read_error_at_the_offset_reached() {
        struct Fails(usize);
        impl Read for Fails {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("corrupt input"));
                }
                let n = out.len().min(self.0);
                out[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let rt = crate::test_support::rt();
        let mut s = ReadStream::new("test".into(), None, Box::new(Fails(4096)), None);
        let e = rt.block_on(async {
            assert!(matches!(s.next(Buf::new(4096)).await, Ok(Piece::Data(_))));
            s.next(Buf::new(4096)).await.expect_err("fails")
        });
        assert!(matches!(e, Error::Read { offset: 4096, .. }), "{e:?}");
        assert!(e.to_string().contains("corrupt input"), "{e}");
    }
}
