//! `fake-vcenter --inventory INV.json --listen 127.0.0.1:0 --ready-file PATH [--call-log FILE]`
//!
//! Starts a fake vCenter (see the library docs), writes its self-signed certificate as
//! `fake-vcenter-cert.pem` next to the ready file, then one JSON line to the ready file:
//! `{"port":N,"thumbprint":"AA:…","cert_pem_path":"…"}`, and serves until killed.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use fake_vcenter::{FakeVcenter, Inventory, Options};

const USAGE: &str = "usage: fake-vcenter --inventory INV.json [--listen 127.0.0.1:0] \
                     --ready-file PATH [--call-log FILE] [--quiet]";

struct Args {
    inventory: PathBuf,
    listen: String,
    ready_file: PathBuf,
    call_log: Option<PathBuf>,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut inventory = None;
    let mut listen = "127.0.0.1:0".to_string();
    let mut ready_file = None;
    let mut call_log = None;
    let mut quiet = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--inventory" => inventory = Some(PathBuf::from(val("--inventory")?)),
            "--listen" => listen = val("--listen")?,
            "--ready-file" => ready_file = Some(PathBuf::from(val("--ready-file")?)),
            "--call-log" => call_log = Some(PathBuf::from(val("--call-log")?)),
            "--quiet" => quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        inventory: inventory.ok_or("--inventory is required")?,
        listen,
        ready_file: ready_file.ok_or("--ready-file is required")?,
        call_log,
        quiet,
    })
}

async fn run(args: Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.inventory)
        .map_err(|e| format!("cannot read {}: {e}", args.inventory.display()))?;
    let inv: Inventory = serde_json::from_str(&text)
        .map_err(|e| format!("bad inventory {}: {e}", args.inventory.display()))?;
    let opts = Options {
        call_log: args.call_log,
        quiet: args.quiet,
        ..Default::default()
    };
    let server = FakeVcenter::start(inv, &args.listen, opts)
        .await
        .map_err(|e| format!("cannot start on {}: {e}", args.listen))?;
    let dir = args
        .ready_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let pem_path = dir.join("fake-vcenter-cert.pem");
    std::fs::write(&pem_path, server.cert_pem())
        .map_err(|e| format!("cannot write {}: {e}", pem_path.display()))?;
    let pem_abs = std::fs::canonicalize(&pem_path).unwrap_or(pem_path);
    let line = serde_json::json!({
        "port": server.port(),
        "thumbprint": server.thumbprint(),
        "cert_pem_path": pem_abs,
    })
    .to_string();
    // Write then rename, so a reader never sees a half-written line.
    let tmp = args.ready_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{line}\n"))
        .and_then(|()| std::fs::rename(&tmp, &args.ready_file))
        .map_err(|e| format!("cannot write {}: {e}", args.ready_file.display()))?;
    eprintln!(
        "fake-vcenter: listening on {} ({})",
        server.addr(),
        server.thumbprint()
    );
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fake-vcenter: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-vcenter: {e}");
            ExitCode::FAILURE
        }
    }
}
