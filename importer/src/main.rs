//! The `ferry` binary: argument parsing, logging, signals, and the one-line error edge.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;
use ferry_contract::exit;

fn main() -> ExitCode {
    // CDI's controller starts the importer image with klog's `-v=N` appended.
    let (argv, klog) = match cli::take_klog_verbosity(std::env::args_os()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ferry: error: {e} (see ferry --help)");
            return ExitCode::from(exit::USAGE);
        }
    };
    let args = match cli::Cli::try_parse_from(argv) {
        Ok(mut a) => {
            a.verbose = a.verbose.max(klog.unwrap_or(0));
            a
        }
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other failure; `ferry COMMAND --help` has the rest.
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let line = line.join(" ");
            eprintln!(
                "ferry: error: {} (see ferry --help)",
                line.trim_start_matches("error: ")
            );
            return ExitCode::from(exit::USAGE);
        }
    };
    // The import pod logs JSON lines when not on a terminal (as CDI's controller and log
    // collectors expect); copy and bench keep human-readable lines.
    let import = matches!(
        args.command,
        cli::Command::Import(_) | cli::Command::UploadServer(_)
    );
    let json = if import { None } else { Some(false) };
    if let Err(e) = ferry::report::logging::init(args.verbose, json) {
        eprintln!("ferry: warning: {e}");
    }
    let mut args = args;
    let result = cli::prepare(&mut args).and_then(|()| run(args));
    // After the runtime is gone every VDDK disk is closed (or given up on): Exit the
    // library last — before the error line, so that line stays the last one.
    ferry::source::vddk::shutdown();
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(e) => {
            let mut line = format!("{e:#}").replace('\n', " ");
            if import {
                // Go's wording of ENOSPC/EDQUOT, as in the termination message (CDI's
                // controller and UIs key on it).
                line = ferry::import::messages::with_go_errno_text(&line);
            }
            let ferry_error = e.downcast_ref::<ferry::Error>();
            let kind = match ferry_error {
                Some(fe) => fe.kind(),
                None if e.is::<ferry::import::config::ConfigError>() => exit::ErrorKind::Usage,
                None => exit::ErrorKind::Internal,
            };
            // 128 + signal number, as a shell reports a process ended by that signal;
            // `ferry import` exits 1 for every other failure, as CDI's importer does;
            // `ferry copy` and `ferry bench` exit with the kind's status.
            let code = match ferry_error {
                Some(ferry::Error::Cancelled("SIGINT")) => exit::CANCELLED_SIGINT,
                Some(ferry::Error::Cancelled(_)) => exit::CANCELLED_SIGTERM,
                _ if import && !kind_exit_codes() => exit::FAILURE,
                _ => kind.exit_code(),
            };
            tracing::warn!(kind = %kind, transient = kind.is_transient(), exit = code, "the job failed");
            eprintln!("ferry: error: {line}");
            ExitCode::from(code)
        }
    }
}

/// ferry-controller asks `ferry import` for the kinds' exit statuses
/// (`FERRY_EXIT_CODES=kinds`); CDI's controller does not.
fn kind_exit_codes() -> bool {
    std::env::var(ferry_contract::env::FERRY_EXIT_CODES)
        .is_ok_and(|v| v == ferry_contract::env::EXIT_CODES_KINDS)
}

fn run(args: cli::Cli) -> anyhow::Result<()> {
    // Sized to the pod's CPU quota (ferry::cpu): more workers than the quota holds only
    // get the copy throttled in bursts.
    let sizing = ferry::cpu::size_for_this_process(args.threads.map(usize::from));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sizing.workers)
        .thread_name("ferry-worker")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(cli::run(args))
}
