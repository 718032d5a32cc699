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
    /// Run the controller (in the cluster, or against `--server`).
    Run(RunArgs),
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

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The image with `ferry` the import pods run.
    #[arg(long, env = "FERRY_IMPORTER_IMAGE")]
    importer_image: String,
    /// Watch only this namespace (default: every namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// Namespace of the leader and slot Leases (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferry-system")]
    lease_namespace: String,
    /// This replica's name (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The API server (default: in-cluster, or $KUBECONFIG).
    #[arg(long)]
    server: Option<String>,
    /// Where `/healthz` is served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: std::net::SocketAddr,
    /// The import pods' `-v=N`.
    #[arg(long, default_value_t = 1)]
    verbosity: u8,
    /// The import pods' image pull policy.
    #[arg(long, default_value = "IfNotPresent")]
    pull_policy: String,
    /// Run without leader election (one replica only).
    #[arg(long)]
    no_leader_election: bool,
}

async fn healthz(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n").await;
        });
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let client = match &a.server {
        Some(url) => kube::Client::try_from(kube::Config::new(url.parse()?))?,
        None => kube::Client::try_default().await?,
    };
    let identity = a.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "ferry-controller".into(), |h| h.trim().to_string())
    });
    let health = tokio::spawn(healthz(a.http));
    if !a.no_leader_election {
        ferry_controller::reconcile::leader::acquire(&client, &a.lease_namespace, &identity).await;
    }
    let defaults = ferry_controller::pod::PodDefaults {
        image: a.importer_image.clone(),
        verbosity: a.verbosity,
        pull_policy: a.pull_policy.clone(),
    };
    let hold_client = client.clone();
    let (lease_ns, id) = (a.lease_namespace.clone(), identity.clone());
    let leader = a.no_leader_election;
    let shutdown = async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let lost = async {
            if leader {
                futures::future::pending::<()>().await;
            } else {
                ferry_controller::reconcile::leader::hold(&hold_client, &lease_ns, &id).await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
            () = lost => tracing::warn!("leadership lost; stopping"),
        }
    };
    let (release_client, release_id) = (client.clone(), identity.clone());
    ferry_controller::reconcile::run(
        client,
        a.namespace.clone(),
        defaults,
        a.lease_namespace.clone(),
        identity,
        std::sync::Arc::new(ferry_controller::vsphere::Vcenter::default()),
        shutdown,
    )
    .await;
    if !a.no_leader_election
        && let Err(e) = ferry_controller::reconcile::leader::release(
            &release_client,
            &a.lease_namespace,
            &release_id,
        )
        .await
    {
        tracing::warn!(error = %e, "cannot give the leader Lease up; a standby takes over when it expires");
    }
    health.abort();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .json()
                .with_writer(std::io::stderr)
                .try_init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ferry-controller: error: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(run(a)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferry-controller: error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
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
