//! Logging to stderr: one JSON object per line when stderr is not a terminal (a pod:
//! `timestamp`, `level`, `target`, `message` and the event's fields at the top level),
//! human text on a terminal. `FERRY_LOG` (an env-filter string such as
//! `ferry=debug,ferry_nbd=trace`) overrides the level set by `-v`.

use std::io::IsTerminal;

use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use super::ReportError;

/// The environment variable holding a filter that overrides `-v`.
pub const LOG_ENV: &str = ferry_contract::env::FERRY_LOG;

/// The filter for `-v` given `verbose` times (info by default, -v debug, -vv trace).
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "ferry=info,ferry_nbd=info,ferry_cbt=info,ferry_vsphere=info,warn",
        1 => "debug",
        _ => "trace",
    }
}

/// The filter in effect: `FERRY_LOG` if set and valid, else [`default_filter`]. The
/// second value is the error of an invalid `FERRY_LOG`, to be logged once logging works.
fn filter(verbose: u8, env: Option<&str>) -> (EnvFilter, Option<String>) {
    match env.filter(|s| !s.trim().is_empty()) {
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(default_filter(verbose)),
                Some(format!("ignoring {LOG_ENV}={spec:?}: {e}")),
            ),
        },
        None => (EnvFilter::new(default_filter(verbose)), None),
    }
}

/// The subscriber writing to `writer`: JSON lines, or text (with colours if `ansi`).
pub fn dispatch<W>(filter: EnvFilter, json: bool, ansi: bool, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        Dispatch::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        )
    } else {
        Dispatch::new(builder.with_ansi(ansi).finish())
    }
}

/// Install the global subscriber on stderr. `json`: `Some(true)` JSON lines,
/// `Some(false)` text, `None` JSON unless stderr is a terminal. Also routes the `log`
/// crate's records (rustls) into it. Fails only if a subscriber is already installed.
pub fn init(verbose: u8, json: Option<bool>) -> Result<(), ReportError> {
    let terminal = std::io::stderr().is_terminal();
    let json = json.unwrap_or(!terminal);
    let env = std::env::var(LOG_ENV).ok();
    let (filter, bad_env) = filter(verbose, env.as_deref());
    dispatch(filter, json, terminal && !json, std::io::stderr)
        .try_init()
        .map_err(ReportError::Logging)?;
    if let Some(why) = bad_env {
        tracing::warn!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn json_lines_have_the_fields_at_top_level() {
        let buf = Buf::default();
        let d = dispatch(EnvFilter::new("info"), true, false, buf.clone());
        tracing::dispatcher::with_default(&d, || {
            tracing::info!(target: "ferry::test", done = 5u64, "Transferred 5/10 bytes (50%)");
            tracing::debug!(target: "ferry::test", "filtered out");
            tracing::warn!(target: "ferry::test", error = "a\nb", "two\nlines");
        });
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "ferry::test");
        assert_eq!(v["message"], "Transferred 5/10 bytes (50%)");
        assert_eq!(v["done"], 5);
        assert!(v["timestamp"].as_str().is_some_and(|t| !t.is_empty()));
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "two\nlines");
        assert_eq!(v["error"], "a\nb");
    }

    #[test]
    fn progress_line_fields_in_json() {
        let buf = Buf::default();
        let d = dispatch(EnvFilter::new("info"), true, false, buf.clone());
        tracing::dispatcher::with_default(&d, || {
            super::super::progress_log::log_line(&super::super::ProgressLine {
                done: 10,
                total: 1000,
                percent: 1,
                overall_rate: Some(5),
                last_bytes: 10,
                last_rate: None,
            });
        });
        let v: serde_json::Value = serde_json::from_str(buf.text().trim()).unwrap();
        assert_eq!(
            v["message"],
            "Transferred 10/1000 bytes (1%) at 5 bytes/second overall"
        );
        assert_eq!(v["target"], "ferry::report::progress_log");
        assert_eq!(v["percent"], 1);
        assert_eq!(v["overall_rate"], 5);
        assert!(v.get("last_rate").is_none());
    }

    #[test]
    fn text_without_ansi() {
        let buf = Buf::default();
        let d = dispatch(EnvFilter::new("info"), false, false, buf.clone());
        tracing::dispatcher::with_default(&d, || {
            tracing::info!(target: "ferry::test", n = 3, "hello");
        });
        let text = buf.text();
        assert!(text.contains("INFO ferry::test: hello n=3"), "{text}");
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn filter_from_env_or_verbosity() {
        let (f, bad) = filter(0, None);
        assert!(bad.is_none());
        assert_eq!(f.to_string(), EnvFilter::new(default_filter(0)).to_string());
        let (f, bad) = filter(0, Some("ferry=trace"));
        assert!(bad.is_none());
        assert_eq!(f.to_string(), "ferry=trace");
        let (f, bad) = filter(2, Some("  "));
        assert!(bad.is_none());
        assert_eq!(f.to_string(), "trace");
        let (f, bad) = filter(1, Some("ferry=notalevel"));
        assert!(bad.unwrap().contains(ferry_contract::env::FERRY_LOG));
        assert_eq!(f.to_string(), "debug");
    }
}
