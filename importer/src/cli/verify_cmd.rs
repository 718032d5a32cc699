//! `ferry verify SRC DST`: compare two disks by their digests ([`ferry::digest`]),
//! whatever they are (NBD exports, files, block devices, URLs, images read through
//! their maps, compressed streams). Equal: exit 0 and both digests. Different: exit 1
//! naming the first differing range (the first differing 64 MiB group, narrowed to
//! the first differing 64 KiB leaf when both sides are random-access).

use anyhow::Context as _;
use clap::Args;
use ferry::digest::Digest;

use super::Tuning;

/// `ferry verify` arguments.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// One disk: anything `ferry copy` reads.
    pub src: String,
    /// The other disk.
    pub dst: String,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub http: super::http_args::HttpArgs,
    /// Compare the bytes as they are (no decompression, no image maps).
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A difference, as reported.
#[derive(Debug, thiserror::Error)]
#[error(
    "the disks differ: first difference in bytes {offset}..{end} (src {src_digest}, {src_size} bytes; dst {dst_digest}, {dst_size} bytes)"
)]
pub struct Differ {
    /// First byte of the first differing range.
    pub offset: u64,
    /// End of that range.
    pub end: u64,
    /// The source's digest.
    pub src_digest: String,
    /// The target's digest.
    pub dst_digest: String,
    /// Sizes.
    pub src_size: u64,
    /// Sizes.
    pub dst_size: u64,
}

async fn open(
    spec: &str,
    reach: &ferry::source::Reach<'_>,
    raw: bool,
) -> Result<ferry::source::Input, ferry::Error> {
    let input = ferry::source::open_input(spec, reach).await?;
    if raw {
        Ok(input)
    } else {
        ferry::source::layers::layer(input, &reach.layering).await
    }
}

/// The first differing leaf of group range `[start, start+len)`, reading both sides
/// again (random-access only); `None` when either side is a stream or they read equal.
async fn narrow(
    a: &ferry::source::Input,
    b: &ferry::source::Input,
    start: u64,
    len: u64,
) -> Result<Option<(u64, u64)>, ferry::Error> {
    let (ferry::source::Input::Disk(a), ferry::source::Input::Disk(b)) = (a, b) else {
        return Ok(None);
    };
    ferry::digest::first_differing_leaf(a, b, start, len).await
}

/// Run `ferry verify`.
pub async fn run(a: VerifyArgs) -> anyhow::Result<()> {
    a.tuning.validate()?;
    let engine = ferry::engine::select(a.tuning.io_engine, (a.tuning.count() * 2 + 16) as u32)?;
    let nbd = a.tuning.nbd();
    let http = a.http.options()?;
    let reach = ferry::source::Reach {
        nbd: &nbd,
        vddk: None,
        engine: engine.clone(),
        http: Some(&http),
        registry: None,
        checksum: None,
        layering: ferry::source::layers::Layering::default(),
    };
    let (buf_size, count) = (a.tuning.buf_size(), ferry::num::usize_of(a.tuning.count()));
    let start = std::time::Instant::now();
    let digest = |spec: String| {
        let reach = &reach;
        async move {
            let input = open(&spec, reach, a.raw).await?;
            ferry::digest::of_input(input, buf_size, count)
                .await
                .with_context(|| format!("reading {spec}"))
        }
    };
    let (x, y): (Digest, Digest) = tokio::try_join!(digest(a.src.clone()), digest(a.dst.clone()))?;
    let seconds = start.elapsed().as_secs_f64();
    let Some((start_at, len)) = x.first_difference(&y) else {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"identical": true, "digest": x.text(), "size": x.size,
                    "algorithm": ferry::digest::ALGORITHM, "seconds": seconds})
            );
        } else {
            println!("identical: {} ({} bytes)", x.text(), x.size);
        }
        return Ok(());
    };
    // Narrow a differing group to its first differing leaf by reading both again.
    let (mut offset, mut end) = (start_at, start_at + len);
    {
        let (p, q) = tokio::try_join!(open(&a.src, &reach, a.raw), open(&a.dst, &reach, a.raw))?;
        if let Some((o, e)) = narrow(&p, &q, start_at, len).await? {
            (offset, end) = (o, e);
        }
    }
    let d = Differ {
        offset,
        end,
        src_digest: x.text(),
        dst_digest: y.text(),
        src_size: x.size,
        dst_size: y.size,
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"identical": false, "first_difference": {"offset": offset, "length": end - offset},
                "src": {"digest": d.src_digest, "size": d.src_size},
                "dst": {"digest": d.dst_digest, "size": d.dst_size},
                "algorithm": ferry::digest::ALGORITHM, "seconds": seconds})
        );
    }
    Err(ferry::Error::Mismatch(d.to_string()).into())
}
