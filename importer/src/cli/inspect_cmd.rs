//! `ferry inspect`: preflight of a migration (see [`ferry::inspect`]). Three forms:
//!
//! - `ferry inspect SRC [--target PATH]`: any source `ferry copy` reads (NBD, files,
//!   images, URLs): reachable, size, allocation, a sample read rate, the target's fit;
//! - `ferry inspect` with `ferry import`'s `IMPORTER_*` environment (or its flags): the
//!   import as a pod would run it, for vSphere the distribution, the endpoint, the
//!   thumbprint, the credentials, the VM, the disk, CBT, the checkpoint and the disk
//!   through VDDK, then the volume's fit;
//! - `ferry inspect --vddk-libdir DIR` alone: a VDDK distribution (mounted, or an
//!   unpacked tarball).
//!
//! Human output or `--json`; exit 0 when the migration would work, else the first
//! failing step's kind (`ferry copy`'s exit statuses).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::import_cmd::ImportArgs;

/// Arguments of `ferry inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The source: anything `ferry copy` reads. Without it, the import configured by
    /// the IMPORTER_* environment (and `ferry import`'s flags) is inspected.
    pub src: Option<String>,
    /// With SRC: the block device or file (or directory, for its disk.img) the disk
    /// would be copied onto; its fit is checked.
    #[arg(long, value_name = "PATH")]
    pub target: Option<PathBuf>,
    /// Seconds of sample reads for the read rate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub seconds: u64,
    /// A warm migration is planned: the disk must have changed block tracking on.
    #[arg(long)]
    pub warm: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub import: ImportArgs,
    /// How VDDK's initialisation went (set by `prepare` on the main thread).
    #[arg(skip)]
    pub vddk_init: Option<Result<(), String>>,
}

impl InspectArgs {
    /// Only a VDDK distribution is inspected: `--vddk-libdir` (or VDDK_LIBDIR) with no
    /// SRC and no IMPORTER_SOURCE.
    pub fn libdir_only(&self) -> Option<PathBuf> {
        match (&self.src, &self.import.source, &self.import.vddk_libdir) {
            (None, None, Some(d)) => Some(PathBuf::from(d)),
            _ => None,
        }
    }

    /// The environment form.
    pub fn env_form(&self) -> bool {
        self.src.is_none() && self.libdir_only().is_none()
    }
}

fn print(r: &ferry::inspect::Report, json: bool) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["ready"] = serde_json::Value::Bool(!r.fails());
        println!("{v}");
    } else {
        print!("{}", r.text());
    }
    match r.first_failure() {
        None => Ok(()),
        Some(c) => Err(ferry::Error::Preflight {
            kind: c.kind.unwrap_or(ferry_contract::exit::ErrorKind::Internal),
            message: format!("inspect: a migration would fail: {}: {}", c.name, c.detail),
        }
        .into()),
    }
}

/// A flag group at its defaults (the SRC form takes the source's settings from its URI).
fn defaults<T: clap::Args + clap::FromArgMatches>() -> anyhow::Result<T> {
    let m = T::augment_args(clap::Command::new("inspect")).try_get_matches_from(["inspect"])?;
    Ok(T::from_arg_matches(&m)?)
}

/// Run `ferry inspect`.
pub async fn run(mut a: InspectArgs) -> anyhow::Result<()> {
    let sample = Duration::from_secs(a.seconds);
    if let Some(dir) = a.libdir_only() {
        let mut r = ferry::inspect::Report::new(dir.display().to_string());
        ferry::inspect::vddk_libdir(&mut r, &dir);
        return print(&r, a.json);
    }
    if a.env_form() {
        let cfg = match a.import.resolved.take() {
            Some(c) => c,
            None => a.import.config().map_err(ferry::Error::Config)?,
        };
        let t = a.import.tuning(&cfg);
        let engine = ferry::engine::select(a.import.io_engine, (t.buf_count * 2 + 16) as u32)?;
        let o = ferry::import::run::InspectOptions {
            sample,
            warm: a.warm,
            vddk_init: a.vddk_init.take(),
        };
        let r = ferry::import::run::inspect(&cfg, &t, engine, &o).await;
        return print(&r, a.json);
    }
    let src = a.src.clone().unwrap_or_default();
    let tuning: super::Tuning = defaults()?;
    let engine = ferry::engine::select(tuning.io_engine, (tuning.count() * 2 + 16) as u32)?;
    let nbd = tuning.nbd();
    let http = defaults::<super::http_args::HttpArgs>()?.options()?;
    let reach = ferry::source::Reach {
        nbd: &nbd,
        vddk: None,
        engine: engine.clone(),
        http: Some(&http),
        registry: None,
        checksum: None,
        layering: ferry::source::layers::Layering::default(),
    };
    let mut r = ferry::inspect::Report::new(ferry::source::http::redact(&src));
    let opened = match ferry::source::open_input(&src, &reach).await {
        Ok(i) => ferry::source::layers::layer(i, &reach.layering).await,
        Err(e) => Err(e),
    };
    let (buf_size, count) = (tuning.buf_size(), ferry::num::usize_of(tuning.count()));
    ferry::inspect::input(&mut r, opened, sample, buf_size, count).await;
    if let (Some(t), Some(size)) = (&a.target, r.size) {
        ferry::inspect::target_fit(&mut r, t, size, engine);
    }
    print(&r, a.json)
}
