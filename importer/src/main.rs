//! The `ferry` binary: argument parsing, logging, signals, and the one-line error edge.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("ferry: error: {line}");
            // 128 + signal number, as a shell reports a process ended by that signal.
            let code = match e.downcast_ref::<ferry::Error>() {
                Some(ferry::Error::Cancelled("SIGINT")) => 130,
                Some(ferry::Error::Cancelled("SIGTERM")) => 143,
                _ => 1,
            };
            ExitCode::from(code)
        }
    }
}
