//! `ferry-controller`: run the controller, or write its manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-controller",
    version,
    about = "Turns FerryPlans into one ferry import pod per disk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate a fleet through the planner (virtual clock) and compare its makespan
    /// with the lower bound.
    Simulate {
        /// Disks.
        #[arg(long, default_value_t = 1000)]
        disks: usize,
        /// ESXi hosts.
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Disks in flight per host.
        #[arg(long, default_value_t = 10)]
        per_host: u32,
        /// Disks in flight through the vCenter.
        #[arg(long, default_value_t = 48)]
        per_vcenter: u32,
        /// A host's throughput, MiB/s.
        #[arg(long, default_value_t = 280.0)]
        host_mib_s: f64,
        /// One disk's throughput, MiB/s.
        #[arg(long, default_value_t = 120.0)]
        disk_mib_s: f64,
        /// Seed of the disk sizes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write the CRDs, RBAC and Deployment (generated from the Rust types).
    Manifests {
        /// Directory to write them into.
        #[arg(long, default_value = "deploy/controller")]
        out: PathBuf,
        /// Only check that the files there are up to date (exit 1 if not).
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate {
            disks,
            hosts,
            per_host,
            per_vcenter,
            host_mib_s,
            disk_mib_s,
            seed,
        } => {
            use ferry_controller::planner::sim::{Fleet, simulate};
            let f = Fleet {
                disks,
                hosts: hosts.max(1),
                per_host,
                per_vcenter,
                host_rate: host_mib_s * 1_048_576.0,
                disk_rate: disk_mib_s * 1_048_576.0,
                seed,
            };
            let r = simulate(&f);
            println!(
                "{disks} disks, {hosts} hosts, caps {per_host}/host {per_vcenter}/vCenter, {host_mib_s} MiB/s per host, {disk_mib_s} MiB/s per disk: {:.1} TiB, makespan {:.2} h, bound {:.2} h, ratio {:.3}; at most {} per host, {} through the vCenter; {} planner decisions",
                r.total_bytes as f64 / (1u64 << 40) as f64,
                r.makespan / 3600.0,
                r.bound / 3600.0,
                r.ratio(),
                r.max_per_host,
                r.max_vcenter,
                r.decisions
            );
            ExitCode::SUCCESS
        }
        Command::Manifests { out, check } => {
            let mut stale = Vec::new();
            for (name, text) in ferry_controller::manifests::all() {
                let path = out.join(name);
                if check {
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                        stale.push(path.display().to_string());
                    }
                } else if let Err(e) =
                    std::fs::create_dir_all(&out).and_then(|()| std::fs::write(&path, text))
                {
                    eprintln!(
                        "ferry-controller: error: cannot write {}: {e}",
                        path.display()
                    );
                    return ExitCode::from(1);
                }
            }
            if !stale.is_empty() {
                eprintln!(
                    "ferry-controller: error: stale manifests (run `ferry-controller manifests`): {}",
                    stale.join(", ")
                );
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
    }
}
