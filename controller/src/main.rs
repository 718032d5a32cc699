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
