//! An upload's request body as a blocking [`Read`] for the format layer (as
//! [`crate::source::http`]'s stream does for a download): the raw body, or the file
//! part of a `multipart/form-data` body ([`super::multipart`]). Every byte received is
//! counted ([`Downloaded`]); a body that ends short of its Content-Length, breaks off,
//! or stays silent for longer than the idle bound is a read error, so the copy fails
//! and the target is never reported complete.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::multipart::Multipart;
use crate::progress::Downloaded;

/// Most bytes of a body read and dropped after its upload failed or was refused.
pub const DRAIN_LIMIT_BYTES: u64 = 64 << 20;
/// Longest such a body is read and dropped.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Read and drop what is left of `body` (at most [`DRAIN_LIMIT_BYTES`], for at most
/// [`DRAIN_TIME`]), so that the answer to a refused or failed upload reaches a client
/// still sending: closing a connection with unread bytes resets it, and the answer with
/// it (Go's server does the same).
pub async fn drain<B>(mut body: B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut left = DRAIN_LIMIT_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(f)) = body.frame().await {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            if n >= left {
                break;
            }
            left -= n;
        }
    })
    .await;
}

/// A request body read in order on a blocking thread.
pub struct UploadBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    /// The body (taken by [`Drop`] to drain what is left).
    body: Option<B>,
    handle: tokio::runtime::Handle,
    /// The Content-Length, when the client sent one.
    len: Option<u64>,
    /// Body bytes received.
    got: u64,
    /// Bytes received and not yet read (the raw body's, or the file part's).
    chunk: Bytes,
    multipart: Option<Multipart>,
    idle: Duration,
    downloaded: Downloaded,
    /// Told once every byte of the image has arrived (the async paths answer then).
    received: Option<oneshot::Sender<()>>,
    /// Told once what is left of the body after this reader is dropped has been read.
    drained: Option<oneshot::Sender<()>>,
    ended: bool,
}

impl<B> Drop for UploadBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        // Also after the image's end: a form's epilogue may still be on its way.
        if let Some(b) = self.body.take() {
            let drained = self.drained.take();
            self.handle.spawn(async move {
                drain(b).await;
                if let Some(tx) = drained {
                    let _ = tx.send(());
                }
            });
        }
    }
}

impl<B> std::fmt::Debug for UploadBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadBody")
            .field("len", &self.len)
            .field("got", &self.got)
            .field("multipart", &self.multipart.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> UploadBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    /// Read `body` (of `len` bytes when given); `multipart` takes the file part out of
    /// a form; `received` is told when the image's last byte has arrived. Must be made
    /// inside the runtime.
    pub fn new(
        body: B,
        len: Option<u64>,
        multipart: Option<Multipart>,
        idle: Duration,
        downloaded: Downloaded,
        received: oneshot::Sender<()>,
    ) -> Self {
        if let Some(n) = len {
            downloaded.set_size(n);
        }
        UploadBody {
            body: Some(body),
            handle: tokio::runtime::Handle::current(),
            len,
            got: 0,
            chunk: Bytes::new(),
            multipart,
            idle,
            downloaded,
            received: Some(received),
            drained: None,
            ended: false,
        }
    }

    /// `tx` is told once the rest of the body has been read after this reader is
    /// dropped (an answer to a failed upload waits for it).
    pub fn drained(mut self, tx: oneshot::Sender<()>) -> Self {
        self.drained = Some(tx);
        self
    }

    fn fail(&self, what: String) -> std::io::Error {
        let of = self.len.map(|n| format!(" of {n}")).unwrap_or_default();
        std::io::Error::other(format!("the upload {what} after {}{of} bytes", self.got))
    }

    /// The end of the image: checked, then announced.
    fn end(&mut self) -> std::io::Result<()> {
        if let Some(n) = self.len
            && self.got != n
        {
            return Err(self.fail("ended".into()));
        }
        if let Some(m) = &self.multipart {
            m.finish().map_err(|e| self.fail(format!("failed ({e})")))?;
        }
        self.ended = true;
        if let Some(tx) = self.received.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    /// Wait for the next frame and take its bytes.
    fn pull(&mut self) -> std::io::Result<()> {
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        let idle = self.idle;
        let frame = self
            .handle
            .block_on(async { tokio::time::timeout(idle, body.frame()).await });
        let frame = match frame {
            Err(_) => {
                return Err(self.fail(format!("stalled for {}s", self.idle.as_secs())));
            }
            Ok(None) => return self.end(),
            Ok(Some(Err(e))) => return Err(self.fail(format!("broke off ({e})"))),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        self.got += data.len() as u64;
        self.downloaded.add(data.len() as u64);
        if let Some(n) = self.len
            && self.got > n
        {
            return Err(self.fail("sent more than its Content-Length".into()));
        }
        match &mut self.multipart {
            None => self.chunk = data,
            Some(m) => {
                let mut out = Vec::with_capacity(data.len());
                let r = m.feed(&data, &mut out);
                let done = m.is_done();
                r.map_err(|e| self.fail(format!("failed ({e})")))?;
                self.chunk = Bytes::from(out);
                if done {
                    // The rest of the form (later parts) is not the image.
                    self.ended = true;
                    if let Some(tx) = self.received.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        Ok(())
    }
}

impl<B> Read for UploadBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            if self.ended {
                return Ok(0);
            }
            self.pull()?;
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    type TestBody =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    fn body(chunks: &[&[u8]], fail: bool) -> TestBody {
        let mut v: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        if fail {
            v.push(Err(std::io::Error::other("connection reset")));
        }
        StreamBody::new(futures::stream::iter(v))
    }

    fn read_all(
        b: TestBody,
        len: Option<u64>,
        multipart: Option<Multipart>,
    ) -> (std::io::Result<Vec<u8>>, bool, u64) {
        let rt = crate::test_support::rt();
        let downloaded = Downloaded::default();
        let (tx, mut rx) = oneshot::channel();
        let d = downloaded.clone();
        let r = rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                let mut r = UploadBody::new(b, len, multipart, Duration::from_secs(5), d, tx);
                let mut v = Vec::new();
                r.read_to_end(&mut v).map(|_| v)
            })
            .await
            .expect("join")
        });
        (r, rx.try_recv().is_ok(), downloaded.get())
    }

    #[test]
    fn the_raw_body_is_the_image() {
        let (r, received, n) = read_all(body(&[b"abc", b"", b"defg"], false), Some(7), None);
        assert_eq!(r.unwrap(), b"abcdefg");
        assert!(received);
        assert_eq!(n, 7);
    }

    #[test]
    fn a_short_or_broken_body_is_an_error_and_never_received() {
        let (r, received, _) = read_all(body(&[b"abc"], false), Some(7), None);
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "the upload ended after 3 of 7 bytes");
        assert!(!received);
        let (r, received, _) = read_all(body(&[b"abc"], true), None, None);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("broke off (connection reset) after 3 bytes"),
            "{e}"
        );
        assert!(!received);
        let (r, _, _) = read_all(body(&[b"abcdefgh"], false), Some(7), None);
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("more than its Content-Length")
        );
    }

    #[test]
    fn a_form_gives_its_file_part() {
        let form = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d\"\r\n\r\nhello\r\n--XX--\r\n";
        let (head, tail) = form.split_at(68);
        let (r, received, n) = read_all(
            body(&[head, tail], false),
            Some(form.len() as u64),
            Some(Multipart::new("XX")),
        );
        assert_eq!(r.unwrap(), b"hello");
        assert!(received);
        assert_eq!(n, form.len() as u64);
        let (r, received, _) = read_all(body(&[head], false), None, Some(Multipart::new("XX")));
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("the body ended inside the file part")
        );
        assert!(!received);
    }
}
