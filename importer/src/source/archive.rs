//! One member of a tar archive (an OVA's disk) on a random-access source: the archive's
//! headers walked with ranged reads ([`ferry_convert::tar::Walker`]), the member chosen
//! by name or as the only disk ([`ferry_convert::tar::pick`]), and its bytes read in
//! place as a [`Source`] of their own, which the format layer then reads as what it
//! holds (a streamOptimized VMDK through its map, a raw disk as it is). Nothing is
//! unpacked and nothing the archive names is opened.

use std::sync::Arc;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use ferry_convert::tar::{self, Event, Member, TarError, Walker};

use super::Source;
use super::image::read_bytes;
use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::Error;

/// A member's bytes inside the archive source beneath.
#[derive(Debug)]
pub struct MemberSource {
    under: Arc<dyn Source>,
    member: Member,
}

fn err(what: &str, error: TarError) -> Error {
    Error::Archive {
        what: what.to_string(),
        error,
    }
}

/// Every member of the archive `src` holds, in order.
pub async fn members(src: &dyn Source) -> Result<Vec<Member>, Error> {
    let mut walker = Walker::new();
    let mut out = Vec::new();
    loop {
        let (offset, len) = walker.want();
        let got = if offset >= src.size() {
            Vec::new()
        } else {
            read_bytes(src, offset, len).await?
        };
        match walker.feed(&got).map_err(|e| err(&src.describe(), e))? {
            Some(Event::Member(m)) => {
                if m.offset.saturating_add(m.size) > src.size() {
                    return Err(err(
                        &src.describe(),
                        TarError::Truncated {
                            what: format!("member {}", m.name),
                            offset: m.offset,
                            end: src.size(),
                        },
                    ));
                }
                out.push(m);
            }
            Some(Event::End) => return Ok(out),
            None => {}
        }
    }
}

impl MemberSource {
    /// Member `member` of `under`, already chosen (its place checked against the
    /// archive's size by [`members`]).
    pub fn new(under: Arc<dyn Source>, member: Member) -> Self {
        MemberSource { under, member }
    }

    /// The member of `under` named `wanted`, or its only disk.
    pub async fn open(under: Arc<dyn Source>, wanted: Option<&str>) -> Result<Self, Error> {
        let all = members(under.as_ref()).await?;
        let member = tar::pick(&all, wanted)
            .map_err(|e| err(&under.describe(), e))?
            .clone();
        tracing::info!(source = %under.describe(), member = %member.name, size = member.size, "archive member chosen");
        Ok(MemberSource { under, member })
    }
}

impl Source for MemberSource {
    fn describe(&self) -> String {
        format!("{}, member {}", self.under.describe(), self.member.name)
    }

    fn size(&self) -> u64 {
        self.member.size
    }

    fn block_size(&self) -> u64 {
        // Members start on 512-byte blocks: reads stay aligned for sources of up to
        // that; others are read through an aligned copy.
        self.under.block_size().min(tar::BLOCK)
    }

    fn max_read(&self) -> u64 {
        self.under.max_read()
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let mut m = ExtentMap::new();
            let len = len.min(self.member.size.saturating_sub(offset));
            if len > 0 {
                m.push(Extent::new(offset, len, ExtentKind::Data))?;
            }
            Ok(m)
        })
    }

    fn read(&self, offset: u64, mut buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let under = self.under.clone();
        let at = self.member.offset + offset;
        Box::pin(async move {
            if at.is_multiple_of(under.block_size().max(1)) {
                return under.read(at, buf).await;
            }
            let bytes = read_bytes(under.as_ref(), at, buf.len() as u64).await?;
            let n = bytes.len().min(buf.len());
            buf.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
            Ok(buf)
        })
    }

    fn finish(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.under.finish()
    }

    fn local_path(&self) -> Option<&std::path::Path> {
        self.under.local_path()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.under.close()
    }
}
