//! The fake's configuration: environment variables read once, at InitEx.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the environment can set (see the crate documentation for each variable).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub backing: Option<String>,
    pub server: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub thumbprint: Option<String>,
    pub vm: Option<String>,
    pub disk: Option<String>,
    pub snapshot: Option<String>,
    pub log: Option<PathBuf>,
    pub sync_complete_percent: u64,
    pub latency: Duration,
    pub bandwidth: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub fail_read: Option<u64>,
    /// Reads failed from `fail_read` on (FAKE_VDDK_FAIL_COUNT, default 1): a passing
    /// fault that then recovers.
    pub fail_count: u64,
    pub fail_code: u64,
    pub hang_read: Option<u64>,
    pub hang: Duration,
    pub workers: usize,
}

/// Default share of ReadAsync calls completed before ReadAsync returns.
const DEFAULT_SYNC_COMPLETE_PERCENT: u64 = 10;
/// Default error of the read chosen by FAKE_VDDK_FAIL_READ: VIX_E_OUT_OF_MEMORY.
const DEFAULT_FAIL_CODE: u64 = 2;
/// Default delay of the read chosen by FAKE_VDDK_HANG_READ (10 minutes).
const DEFAULT_HANG_MS: u64 = 600_000;
/// Default number of I/O worker threads.
const DEFAULT_WORKERS: usize = 4;
/// Most worker threads accepted.
const MAX_WORKERS: usize = 64;

impl Config {
    /// Whether read number `n` (1-based, per process) is one the fail dial fails.
    pub fn fails(&self, n: u64) -> bool {
        self.fail_read
            .is_some_and(|first| n >= first && n - first < self.fail_count)
    }

    /// Read the process environment.
    pub fn from_env() -> Result<Config, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read from any lookup (unit tests). Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let s = |k: &str| get(k).filter(|v| !v.is_empty());
        let num = |k: &str| -> Result<Option<u64>, String> {
            s(k).map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{k}={v:?} is not a non-negative integer"))
            })
            .transpose()
        };
        let sync_complete_percent =
            num("FAKE_VDDK_SYNC_COMPLETE_PERCENT")?.unwrap_or(DEFAULT_SYNC_COMPLETE_PERCENT);
        if sync_complete_percent > 100 {
            return Err(format!(
                "FAKE_VDDK_SYNC_COMPLETE_PERCENT={sync_complete_percent} is above 100"
            ));
        }
        let bandwidth = s("FAKE_VDDK_BANDWIDTH")
            .map(|v| {
                parse_bytes(&v).ok_or(format!(
                    "FAKE_VDDK_BANDWIDTH={v:?} is not a byte rate (e.g. 104857600 or 100M)"
                ))
            })
            .transpose()?;
        if bandwidth == Some(0) {
            return Err("FAKE_VDDK_BANDWIDTH=0: unset it for no cap".into());
        }
        let max_in_flight = num("FAKE_VDDK_MAX_IN_FLIGHT")?;
        if max_in_flight == Some(0) {
            return Err("FAKE_VDDK_MAX_IN_FLIGHT=0: unset it for no bound".into());
        }
        let fail_code = num("FAKE_VDDK_FAIL_CODE")?.unwrap_or(DEFAULT_FAIL_CODE);
        if fail_code == 0 {
            return Err("FAKE_VDDK_FAIL_CODE=0 is VIX_OK, not an error".into());
        }
        let workers = num("FAKE_VDDK_WORKERS")?
            .map_or(DEFAULT_WORKERS, |w| w as usize)
            .clamp(1, MAX_WORKERS);
        Ok(Config {
            backing: s("FAKE_VDDK_BACKING"),
            server: s("FAKE_VDDK_SERVER"),
            user: s("FAKE_VDDK_USER"),
            password: s("FAKE_VDDK_PASSWORD"),
            thumbprint: s("FAKE_VDDK_THUMBPRINT"),
            vm: s("FAKE_VDDK_VM"),
            disk: s("FAKE_VDDK_DISK"),
            snapshot: s("FAKE_VDDK_SNAPSHOT"),
            log: s("FAKE_VDDK_LOG").map(PathBuf::from),
            sync_complete_percent,
            latency: Duration::from_millis(num("FAKE_VDDK_LATENCY_MS")?.unwrap_or(0)),
            bandwidth,
            max_in_flight,
            fail_read: num("FAKE_VDDK_FAIL_READ")?,
            fail_count: num("FAKE_VDDK_FAIL_COUNT")?.unwrap_or(1),
            fail_code,
            hang_read: num("FAKE_VDDK_HANG_READ")?,
            hang: Duration::from_millis(num("FAKE_VDDK_HANG_MS")?.unwrap_or(DEFAULT_HANG_MS)),
            workers,
        })
    }
}

/// `1048576`, `64K`, `100M`, `1G` (binary multiples; an optional trailing `B`/`iB`).
fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v
        .strip_suffix("iB")
        .or_else(|| v.strip_suffix('B'))
        .unwrap_or(v);
    let (digits, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1u64 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.sync_complete_percent, 10);
        assert_eq!(c.fail_code, 2);
        assert_eq!(c.hang, Duration::from_secs(600));
        assert_eq!(c.latency, Duration::ZERO);
        assert!(c.backing.is_none() && c.bandwidth.is_none() && c.max_in_flight.is_none());
    }

    #[test]
    fn byte_rates() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("64K"), Some(64 << 10));
        assert_eq!(parse_bytes("100M"), Some(100 << 20));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("fast"), None);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(cfg(&[("FAKE_VDDK_LATENCY_MS", "soon")]).is_err());
        assert!(cfg(&[("FAKE_VDDK_SYNC_COMPLETE_PERCENT", "101")]).is_err());
        assert!(cfg(&[("FAKE_VDDK_FAIL_CODE", "0")]).is_err());
        assert!(cfg(&[("FAKE_VDDK_MAX_IN_FLIGHT", "0")]).is_err());
        let c = cfg(&[("FAKE_VDDK_BACKING", "")]).expect("empty is unset");
        assert!(c.backing.is_none());
    }
}
