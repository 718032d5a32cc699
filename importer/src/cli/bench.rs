//! `ferry bench`: the disk-copy benchmark.
//!
//! * No arguments: copy a built-in synthetic disk (generated in process, partly sparse)
//!   to a temporary file, `--runs` times, and report throughput, CPU seconds per GiB and
//!   peak memory; the last target is verified byte for byte against the generator.
//! * `SRC DST`: run `ferry copy` as a child process, and with `--compare` the peers
//!   (nbdcopy, qemu-img) and the floor (source read to nowhere; fio writing the same
//!   data), in alternation on the same source and target, each measured by a helper
//!   process (`ferry __measure`) so wall time, CPU time and peak RSS are the child's own.
//!   `--cpu-limit` runs each alone in a child cgroup with that quota; `--concurrent N`
//!   then runs N of each at once (N pods on one node) and compares their aggregate
//!   throughput with one copy's alone.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ferry::progress::Progress;
use ferry::source::{Source, SyntheticSource, SyntheticSpec};
use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};

use super::Tuning;
use super::copy_cmd::copy_once;

const GIB: f64 = (1u64 << 30) as f64;

/// Arguments of `ferry bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Source (NBD URI or path). Omit both SRC and DST for the built-in synthetic disk.
    pub src: Option<String>,
    /// Target; a regular file here is deleted before every run.
    pub dst: Option<PathBuf>,
    /// Runs per tool.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
    /// Comma-separated peers to run in alternation: nbdcopy, qemu-img, floor.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Size of the synthetic disk in MiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub size_mib: u64,
    /// Percentage of the synthetic disk that holds data.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub data_percent: u8,
    /// Directory for the synthetic run's temporary target.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run Ferry and each peer alone in a child cgroup with this CPU limit (a Kubernetes
    /// quantity: 750m is CDI's default importer limit), made for each run and read for
    /// its throttled periods.
    #[arg(long, value_name = "CPUS", value_parser = ferry::cgroup::parse_cpu_millis)]
    pub cpu_limit: Option<u64>,
    /// After each tool's run alone, run N copies of it at once, as N pods on one node
    /// would (each in its own cgroup under `--cpu-limit`, each into its own target:
    /// DST.1 … DST.N for a file, or `null:`), and report their aggregate throughput
    /// against one copy alone.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=64))]
    pub concurrent: Option<u16>,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Arguments of the hidden `__measure` helper.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Where to write the JSON measurement.
    #[arg(long)]
    pub out: PathBuf,
    /// Join this cgroup before running the command.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Leave the command's stdout on ours (the default discards it).
    #[arg(long)]
    pub keep_stdout: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub cmd: Vec<String>,
}

/// One measured run of one tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Tool name.
    pub tool: String,
    /// Wall seconds.
    pub seconds: f64,
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set, KiB.
    pub max_rss_kib: i64,
    /// Exit code (0 = success).
    pub code: i32,
    /// Throttling under `--cpu-limit`: the run's child cgroup's `cpu.stat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_stat: Option<ferry::cgroup::CpuStat>,
}

impl Sample {
    /// ", throttled T of P periods" under a CPU limit, else nothing.
    fn throttling(&self) -> String {
        self.cpu_stat.map_or(String::new(), |c| {
            format!(
                "  throttled {} of {} periods ({:.2}s)",
                c.throttled_periods,
                c.periods,
                c.throttled_us as f64 / 1e6
            )
        })
    }
}

fn cpu_of(u: &nix::sys::resource::Usage) -> f64 {
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// `ferry __measure --out F -- CMD…`: run CMD (its only child) and record its usage.
pub fn measure(a: MeasureArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.cgroup {
        ferry::cgroup::enter(dir)?;
    }
    let start = Instant::now();
    let status = Command::new(&a.cmd[0])
        .args(&a.cmd[1..])
        .stdin(Stdio::null())
        .stdout(if a.keep_stdout {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .status()
        .with_context(|| format!("running {}", a.cmd[0]))?;
    let seconds = start.elapsed().as_secs_f64();
    let u = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let s = Sample {
        tool: a.cmd[0].clone(),
        seconds,
        cpu_seconds: cpu_of(&u),
        max_rss_kib: u.max_rss(),
        code: status.code().unwrap_or(-1),
        cpu_stat: None,
    };
    std::fs::write(&a.out, serde_json::to_vec(&s)?)?;
    Ok(())
}

/// Run `ferry bench`.
/// Run `ferry bench`; `threads` is the global `--threads`, passed on to the measured
/// ferry.
pub async fn run(a: BenchArgs, threads: Option<u16>) -> anyhow::Result<()> {
    a.tuning.validate()?;
    let threads: Vec<String> = threads
        .map(|n| vec!["--threads".to_string(), n.to_string()])
        .unwrap_or_default();
    match (&a.src, &a.dst) {
        (None, None) => synthetic(&a, &threads).await,
        (Some(src), Some(dst)) => side_by_side(&a, src, dst, &threads).await,
        _ => bail!("give both SRC and DST, or neither for the built-in synthetic disk"),
    }
}

fn settle() {
    // Start every run from the same state: previous runs' dirty pages written back and
    // (as root) the page cache dropped. Failure to drop caches is harmless.
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn remove_if_file(p: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_file() => {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

async fn synthetic(a: &BenchArgs, threads: &[String]) -> anyhow::Result<()> {
    if !a.compare.is_empty() {
        bail!("--compare needs SRC and DST: the peers cannot read the in-process synthetic disk");
    }
    if a.concurrent.is_some() {
        bail!("--concurrent needs SRC and DST: it runs ferry copy (and the peers) as N processes");
    }
    if let Some(millis) = a.cpu_limit {
        return synthetic_limited(a, millis, threads);
    }
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench")
        .tempdir_in(a.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let target = dir.path().join("bench.img");
    let spec = SyntheticSpec {
        size: a.size_mib << 20,
        data_percent: a.data_percent,
        seed: 0x5eed,
    };
    let src = Arc::new(SyntheticSource::new(spec));
    let engine = ferry::engine::select(a.tuning.io_engine, (a.tuning.count() * 2 + 16) as u32)?;
    eprintln!("ferry bench: {} → {}", src.describe(), target.display());
    let mut samples = Vec::new();
    let mut last = None;
    for run in 1..=a.runs {
        remove_if_file(&target)?;
        settle();
        let before = getrusage(UsageWho::RUSAGE_SELF)?;
        let t = Instant::now();
        let stats = copy_once(
            ferry::source::Input::Disk(src.clone()),
            &target,
            &a.tuning,
            engine.clone(),
            Arc::new(Progress::new()),
            Default::default(),
        )
        .await?;
        let seconds = t.elapsed().as_secs_f64();
        let after = getrusage(UsageWho::RUSAGE_SELF)?;
        let s = Sample {
            tool: "ferry".into(),
            seconds,
            cpu_seconds: cpu_of(&after) - cpu_of(&before),
            max_rss_kib: after.max_rss(),
            code: 0,
            cpu_stat: None,
        };
        if !a.json {
            eprintln!(
                "run {run}: {:.2}s, {:.0} MB/s of data, {:.3} CPU s/GiB, peak RSS {} MiB (engine {}, O_DIRECT {})",
                s.seconds,
                stats.bytes_written as f64 / s.seconds / 1e6,
                s.cpu_seconds / (stats.bytes_written as f64 / GIB).max(1e-9),
                s.max_rss_kib / 1024,
                stats.engine,
                stats.direct
            );
        }
        samples.push(s);
        last = Some(stats);
    }
    let stats = last.context("no run")?;
    verify_synthetic(&src, &target)?;
    let med = median_by(samples.iter().cloned(), |s| s.seconds).context("no run")?;
    let data_gib = stats.bytes_written as f64 / GIB;
    let summary = serde_json::json!({
        "source": src.describe(), "target": target, "runs": samples, "verified": true,
        "median_seconds": med.seconds, "data_bytes": stats.bytes_written, "size": stats.size,
        "data_mb_per_s": stats.bytes_written as f64 / med.seconds / 1e6,
        "disk_mb_per_s": stats.size as f64 / med.seconds / 1e6,
        "cpu_seconds_per_gib_data": med.cpu_seconds / data_gib.max(1e-9),
        "peak_rss_mib": med.max_rss_kib / 1024, "engine": stats.engine, "direct": stats.direct,
        "buf_size": stats.buf_size, "buf_count": stats.buf_count,
    });
    if a.json {
        println!("{summary}");
    } else {
        eprintln!(
            "median: {:.2}s for {:.2} GiB of data in a {:.2} GiB disk: {:.0} MB/s of data, {:.0} MB/s of disk, {:.3} CPU s/GiB; target verified byte for byte",
            med.seconds,
            data_gib,
            stats.size as f64 / GIB,
            summary["data_mb_per_s"].as_f64().unwrap_or(0.0),
            summary["disk_mb_per_s"].as_f64().unwrap_or(0.0),
            summary["cpu_seconds_per_gib_data"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// The synthetic benchmark run again as a child in a cgroup with the CPU limit (so its
/// runtime is sized as a pod's would be); its lines and JSON are its own, then the
/// cgroup's throttling follows on stderr.
fn synthetic_limited(a: &BenchArgs, millis: u64, threads: &[String]) -> anyhow::Result<()> {
    let mut cmd = vec![std::env::current_exe()?.display().to_string()];
    cmd.extend_from_slice(threads);
    cmd.extend([
        "bench".into(),
        "--runs".into(),
        a.runs.to_string(),
        "--size-mib".into(),
        a.size_mib.to_string(),
        "--data-percent".into(),
        a.data_percent.to_string(),
    ]);
    if let Some(d) = &a.dir {
        cmd.extend(["--dir".into(), d.display().to_string()]);
    }
    if a.json {
        cmd.push("--json".into());
    }
    cmd.extend(a.tuning.to_args());
    let s = run_measured_with("ferry", cmd, Some(millis), true)?;
    eprintln!(
        "under a CPU limit of {millis}m: {:.2}s wall, {:.2} CPU s for all runs;{}",
        s.seconds,
        s.cpu_seconds,
        s.throttling()
    );
    Ok(())
}

/// Compare the target with the generator, 4 MiB at a time.
fn verify_synthetic(src: &SyntheticSource, target: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(target)?;
    let size = src.size();
    let mut at = 0u64;
    let mut got = vec![0u8; 4 << 20];
    let mut want = vec![0u8; 4 << 20];
    while at < size {
        let n = ((size - at) as usize).min(got.len());
        f.read_exact(&mut got[..n])?;
        src.fill(at, &mut want[..n]);
        if got[..n] != want[..n] {
            let i = got[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bail!(
                "benchmark target differs from the synthetic source at offset {}",
                at + i as u64
            );
        }
        at += n as u64;
    }
    Ok(())
}

/// The middle one of `items` by `key` (the upper of the two middles); none when empty.
fn median_by<T: Clone>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> f64) -> Option<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).cloned()
}

/// Data bytes of a source according to its extents (for the write floor).
async fn data_bytes(src: &str, tuning: &Tuning) -> anyhow::Result<(u64, u64)> {
    // Only the extents are read: the sync engine, without `select`'s "I/O engine
    // selected" line, which would read as the engine of the copies measured.
    let engine: Arc<dyn ferry::engine::IoEngine> = Arc::new(ferry::engine::SyncEngine::new());
    let nbd = tuning.nbd();
    let reach = ferry::source::Reach {
        nbd: &nbd,
        vddk: None,
        engine,
        http: None,
        registry: None,
        checksum: None,
        layering: Default::default(),
    };
    let s = ferry::source::open(src, &reach, false).await?;
    let size = s.size();
    let mut data = 0;
    let mut at = 0;
    while at < size {
        let len = ferry::source::EXTENT_WINDOW.min(size - at);
        data += s.extents(at, len).await?.bytes(ferry_cbt::ExtentKind::Data);
        at += len;
    }
    s.close().await;
    Ok((size, data))
}

fn run_measured(tool: &str, cmd: Vec<String>, cpu_limit: Option<u64>) -> anyhow::Result<Sample> {
    run_measured_with(tool, cmd, cpu_limit, false)
}

/// Run `cmd` under `__measure`, alone in a new child cgroup with `cpu_limit` (thousandths
/// of a CPU) when given.
fn run_measured_with(
    tool: &str,
    cmd: Vec<String>,
    cpu_limit: Option<u64>,
    keep_stdout: bool,
) -> anyhow::Result<Sample> {
    Measured::spawn(tool, cmd, cpu_limit, keep_stdout)?.finish()
}

/// A `__measure` child running one tool (in its own cgroup under a CPU limit).
struct Measured {
    tool: String,
    cmd: Vec<String>,
    child: std::process::Child,
    out: tempfile::NamedTempFile,
    cgroup: Option<ferry::cgroup::CpuLimited>,
}

impl Measured {
    fn spawn(
        tool: &str,
        cmd: Vec<String>,
        cpu_limit: Option<u64>,
        keep_stdout: bool,
    ) -> anyhow::Result<Measured> {
        let out = tempfile::NamedTempFile::new()?;
        let exe = std::env::current_exe()?;
        let cgroup = cpu_limit.map(ferry::cgroup::CpuLimited::new).transpose()?;
        let mut m = Command::new(exe);
        // The measured ferry's info lines would interleave with the table.
        m.env(ferry_contract::env::FERRY_LOG, "warn")
            .arg("__measure")
            .arg("--out")
            .arg(out.path());
        if let Some(c) = &cgroup {
            m.arg("--cgroup").arg(c.dir());
        }
        if keep_stdout {
            m.arg("--keep-stdout");
        }
        let child = m.arg("--").args(&cmd).spawn()?;
        Ok(Measured {
            tool: tool.into(),
            cmd,
            child,
            out,
            cgroup,
        })
    }

    /// Wait for the child; its sample (with the cgroup's throttling), or why it failed.
    fn finish(mut self) -> anyhow::Result<Sample> {
        let tool = &self.tool;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("measuring {tool} failed");
        }
        let mut s: Sample = serde_json::from_slice(&std::fs::read(self.out.path())?)?;
        s.tool.clone_from(tool);
        s.cpu_stat = self.cgroup.as_ref().map(|c| c.stat());
        if s.code != 0 {
            bail!(
                "{tool} exited with code {} ({})",
                s.code,
                self.cmd.join(" ")
            );
        }
        Ok(s)
    }
}

/// One round of `copies` at once: how long until the last finished, and each one's sample.
#[derive(Debug, Clone, Serialize)]
struct Round {
    tool: String,
    makespan_seconds: f64,
    copies: Vec<Sample>,
}

/// Run every command of `cmds` at once (each measured, in its own cgroup under a limit).
fn run_concurrent(
    tool: &str,
    cmds: Vec<Vec<String>>,
    cpu_limit: Option<u64>,
) -> anyhow::Result<Round> {
    let start = Instant::now();
    let running = cmds
        .into_iter()
        .map(|c| Measured::spawn(tool, c, cpu_limit, false))
        .collect::<Vec<_>>();
    // Every child is waited for, even after one failed to start or finish.
    let results: Vec<anyhow::Result<Sample>> = running
        .into_iter()
        .map(|m| m.and_then(Measured::finish))
        .collect();
    let makespan_seconds = start.elapsed().as_secs_f64();
    Ok(Round {
        tool: tool.into(),
        makespan_seconds,
        copies: results.into_iter().collect::<anyhow::Result<_>>()?,
    })
}

fn is_block(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// The commands that copy `src` to `target`: Ferry's and each `--compare` peer's.
fn tool_cmds(
    a: &BenchArgs,
    src: &str,
    target: &str,
    (block, data): (bool, u64),
    threads: &[String],
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut tools: Vec<(String, Vec<String>)> = Vec::new();
    let mut ferry_cmd = vec![std::env::current_exe()?.display().to_string()];
    ferry_cmd.extend_from_slice(threads);
    ferry_cmd.extend([
        "copy".into(),
        src.into(),
        target.to_string(),
        "--json".into(),
        "--no-progress".into(),
    ]);
    ferry_cmd.extend(a.tuning.to_args());
    tools.push(("ferry".into(), ferry_cmd));
    for peer in &a.compare {
        match peer.as_str() {
            "nbdcopy" => tools.push((
                "nbdcopy".into(),
                vec![
                    "nbdcopy".into(),
                    "--flush".into(),
                    src.into(),
                    target.to_string(),
                ],
            )),
            "qemu-img" => {
                let mut c: Vec<String> = [
                    "qemu-img",
                    "convert",
                    "-W",
                    "-m",
                    "16",
                    "-t",
                    "writeback",
                    "-O",
                    "raw",
                ]
                .map(String::from)
                .to_vec();
                if !ferry_nbd::Uri::is_nbd_uri(src) {
                    c.extend(["-f".into(), "raw".into()]);
                }
                if block {
                    c.push("-n".into());
                }
                c.extend([src.to_string(), target.to_string()]);
                tools.push(("qemu-img".into(), c));
            }
            "floor" => {
                tools.push((
                    "floor-read".into(),
                    vec!["nbdcopy".into(), src.into(), "null:".into()],
                ));
                if data > 0 {
                    tools.push((
                        "floor-write".into(),
                        vec![
                            "fio".into(),
                            "--name=floor".into(),
                            format!("--filename={target}"),
                            "--rw=write".into(),
                            "--bs=1M".into(),
                            format!("--size={data}"),
                            "--ioengine=io_uring".into(),
                            "--direct=1".into(),
                            "--iodepth=16".into(),
                            "--end_fsync=1".into(),
                            "--output=/dev/null".into(),
                        ],
                    ));
                }
            }
            other => bail!("unknown --compare entry {other:?} (known: nbdcopy, qemu-img, floor)"),
        }
    }
    Ok(tools)
}

async fn side_by_side(
    a: &BenchArgs,
    src: &str,
    dst: &Path,
    threads: &[String],
) -> anyhow::Result<()> {
    let (size, data) = data_bytes(src, &a.tuning).await?;
    let dst_s = dst.display().to_string();
    let block = is_block(dst);
    let tools = tool_cmds(a, src, &dst_s, (block, data), threads)?;
    // With --concurrent: each tool (the floor aside) again, N at once, N targets.
    let copies = usize::from(a.concurrent.unwrap_or(0));
    let targets: Vec<String> = match copies {
        0 => Vec::new(),
        _ if dst_s == "null:" => vec![dst_s.clone(); copies],
        _ if block => bail!(
            "--concurrent needs a file or null: target (each copy writes its own DST.1 … DST.N)"
        ),
        _ => (1..=copies).map(|i| format!("{dst_s}.{i}")).collect(),
    };
    let mut together: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for (name, _) in tools.iter().filter(|t| !t.0.starts_with("floor")) {
        let mut cmds = Vec::new();
        for t in &targets {
            let all = tool_cmds(a, src, t, (block, data), threads)?;
            cmds.extend(all.into_iter().filter(|c| &c.0 == name).map(|c| c.1));
        }
        if !cmds.is_empty() {
            together.push((name.clone(), cmds));
        }
    }
    eprintln!(
        "ferry bench: {src} → {dst_s}: {size} bytes, {data} of them data; {} runs of {}{}{}",
        a.runs,
        tools
            .iter()
            .map(|t| t.0.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        a.cpu_limit.map_or(String::new(), |m| format!(
            ", each alone under a CPU limit of {m}m"
        )),
        a.concurrent.map_or(String::new(), |n| format!(
            "; then {n} at once of each (the floor aside){}",
            if a.cpu_limit.is_some() {
                ", each in its own cgroup"
            } else {
                ""
            }
        ))
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut rounds: Vec<Round> = Vec::new();
    for run in 1..=a.runs {
        for (name, cmd) in &tools {
            remove_if_file(dst)?;
            settle();
            let s = run_measured(name, cmd.clone(), a.cpu_limit)?;
            if !a.json {
                eprintln!(
                    "run {run} {name:<12} {:>8.2}s  {:>8.3} CPU s/GiB  peak RSS {:>6} MiB{}",
                    s.seconds,
                    s.cpu_seconds / (data as f64 / GIB).max(1e-9),
                    s.max_rss_kib / 1024,
                    s.throttling()
                );
            }
            samples.push(s);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (name, cmds) in &together {
            remove_if_file(dst)?;
            for t in &targets {
                remove_if_file(Path::new(t))?;
            }
            settle();
            let r = run_concurrent(name, cmds.clone(), a.cpu_limit)?;
            if !a.json {
                let cpu: f64 = r.copies.iter().map(|c| c.cpu_seconds).sum();
                eprintln!(
                    "run {run} {:<12} {:>8.2}s until the last of {} finished  {:>8.3} CPU s/GiB",
                    format!("{name} ×{copies}"),
                    r.makespan_seconds,
                    r.copies.len(),
                    cpu / (copies as f64 * data as f64 / GIB).max(1e-9),
                );
            }
            rounds.push(r);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    remove_if_file(dst)?;
    for t in targets.iter().filter(|t| t.as_str() != "null:") {
        remove_if_file(Path::new(t))?;
    }
    let med = |tool: &str| {
        median_by(samples.iter().filter(|s| s.tool == tool).cloned(), |s| {
            s.seconds
        })
    };
    let ferry = med("ferry").context("no ferry runs")?;
    let mut summary = serde_json::json!({
        "source": src, "target": dst_s, "size": size, "data_bytes": data, "runs": samples,
        "ferry": { "median_seconds": ferry.seconds, "cpu_seconds_per_gib": ferry.cpu_seconds / (data as f64 / GIB).max(1e-9), "peak_rss_mib": ferry.max_rss_kib / 1024, "cpu_stat": ferry.cpu_stat },
        "cpu_limit_millis": a.cpu_limit,
    });
    let mut lines = vec![format!(
        "ferry: {:.2}s median ({:.0} MB/s of data), {:.3} CPU s/GiB, peak RSS {} MiB{}",
        ferry.seconds,
        data as f64 / ferry.seconds / 1e6,
        ferry.cpu_seconds / (data as f64 / GIB).max(1e-9),
        ferry.max_rss_kib / 1024,
        ferry.throttling()
    )];
    for peer in ["nbdcopy", "qemu-img"] {
        if let Some(p) = med(peer) {
            summary[peer] = serde_json::json!({ "median_seconds": p.seconds, "ratio_ferry_over_peer": ferry.seconds / p.seconds,
                "cpu_seconds_per_gib": p.cpu_seconds / (data as f64 / GIB).max(1e-9), "peak_rss_mib": p.max_rss_kib / 1024, "cpu_stat": p.cpu_stat });
            lines.push(format!(
                "{peer}: {:.2}s median, {:.3} CPU s/GiB, peak RSS {} MiB; ferry/{peer} time = {:.2}{}",
                p.seconds, p.cpu_seconds / (data as f64 / GIB).max(1e-9), p.max_rss_kib / 1024, ferry.seconds / p.seconds, p.throttling()
            ));
        }
    }
    if let Some(r) = med("floor-read") {
        let w = med("floor-write").map_or(0.0, |w| w.seconds);
        let floor = r.seconds.max(w);
        summary["floor"] = serde_json::json!({ "read_seconds": r.seconds, "write_seconds": w, "floor_seconds": floor, "ratio_ferry_over_floor": ferry.seconds / floor });
        lines.push(format!(
            "floor: read {:.2}s, write {:.2}s → {:.2}s; ferry/floor = {:.2}",
            r.seconds,
            w,
            floor,
            ferry.seconds / floor
        ));
    }
    if copies > 0 {
        summary["concurrent"] = serde_json::json!({ "copies": copies, "rounds": rounds });
        for (name, _) in &together {
            let (Some(one), Some(m)) = (
                med(name),
                median_by(rounds.iter().filter(|r| &r.tool == name).cloned(), |r| {
                    r.makespan_seconds
                }),
            ) else {
                continue;
            };
            // Aggregate throughput of N at once over one copy's alone: 1.0 is perfect
            // sharing of whatever the node has.
            let scaling = copies as f64 * one.seconds / m.makespan_seconds;
            let cpu: f64 = m.copies.iter().map(|c| c.cpu_seconds).sum();
            let per_gib = cpu / (copies as f64 * data as f64 / GIB).max(1e-9);
            summary["concurrent"][name.as_str()] = serde_json::json!({
                "median_makespan_seconds": m.makespan_seconds,
                "aggregate_mb_per_s": copies as f64 * data as f64 / m.makespan_seconds / 1e6,
                "aggregate_over_one": scaling,
                "cpu_seconds_per_gib": per_gib,
            });
            lines.push(format!(
                "{name} ×{copies} at once: {:.2}s median until the last finished, {:.0} MB/s of data in all = {scaling:.2} × one copy alone, {per_gib:.3} CPU s/GiB",
                m.makespan_seconds,
                copies as f64 * data as f64 / m.makespan_seconds / 1e6,
            ));
        }
    }
    if a.json {
        println!("{summary}");
    } else {
        for l in lines {
            eprintln!("{l}");
        }
    }
    Ok(())
}
