//! Keeping the buffer pool inside the pod's memory limit.
//!
//! At start the cgroup's memory limit is read (v2 `memory.max`, v1
//! `memory.limit_in_bytes`, the smallest along the path from the process's cgroup up to
//! the hierarchy's root). When `buf-size × buf-count` (twice that for VDDK sources, whose
//! NFC AIO buffers are as many again inside the library) plus Ferry's own overhead and a
//! safety margin would not fit, the count shrinks (the size stays: VDDK's
//! `nfcAio.Session.BufSizeIn64KB` names it too) and the decision is logged; when even
//! [`MIN_BUF_COUNT`] buffers do not fit, the copy is refused with one line naming the
//! numbers, before anything is allocated. Without this the seed's tuning row (512 × 32:
//! a 1 GiB pool) in CDI's default 600M pod is OOM-killed.

use std::path::Path;

use crate::cgroup;

/// Ferry's memory besides the pool: the runtime and its threads, io_uring rings, TLS,
/// the VDDK library's code and heap (measured with a 1 × 64 KiB pool: 17 MiB RSS for an
/// NBD copy; VDDK's own libraries add tens of MiB), rounded up.
pub const OVERHEAD_BYTES: u64 = 64 << 20;
/// Share of the limit kept free (page cache pressure, allocator slack), in percent.
pub const MARGIN_PERCENT: u64 = 10;
/// Fewest buffers a copy runs with.
pub const MIN_BUF_COUNT: u64 = 2;
/// v1's "no limit" is a page-rounded `i64::MAX`; anything from here up means none.
pub const V1_UNLIMITED: u64 = 1 << 62;

/// Why the pool cannot be made to fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the memory limit of {limit_mib} MiB cannot hold the buffer pool: {MIN_BUF_COUNT} buffers of \
     {buf_mib} MiB{vddk} need {need_mib} MiB with Ferry's {overhead_mib} MiB and a {MARGIN_PERCENT}% \
     margin; lower --buf-size-in-64k or raise the pod's memory limit"
)]
pub struct PoolDoesNotFit {
    /// The limit, MiB.
    pub limit_mib: u64,
    /// One buffer, MiB (rounded up).
    pub buf_mib: u64,
    /// ", twice (VDDK's NFC AIO buffers)" or nothing.
    pub vddk: &'static str,
    /// What the smallest pool needs in all, MiB.
    pub need_mib: u64,
    /// [`OVERHEAD_BYTES`] in MiB.
    pub overhead_mib: u64,
}

/// What [`fit_pool`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// The buffer count to use.
    pub buf_count: u64,
    /// Whether it is smaller than asked.
    pub shrunk: bool,
}

/// Fit a pool of `buf_count` buffers of `buf_size` bytes (`pools` copies of it: 2 for
/// VDDK) into `limit` bytes (`None`: no limit).
pub fn fit_pool(
    limit: Option<u64>,
    buf_size: u64,
    buf_count: u64,
    pools: u64,
) -> Result<Fit, PoolDoesNotFit> {
    let keep = Fit {
        buf_count,
        shrunk: false,
    };
    let Some(limit) = limit else { return Ok(keep) };
    let per_buffer = buf_size.saturating_mul(pools.max(1)).max(1);
    let usable = limit
        .saturating_sub(limit / 100 * MARGIN_PERCENT)
        .saturating_sub(OVERHEAD_BYTES);
    let fits = usable / per_buffer;
    if fits >= buf_count {
        return Ok(keep);
    }
    if fits >= MIN_BUF_COUNT {
        return Ok(Fit {
            buf_count: fits,
            shrunk: true,
        });
    }
    let mib = |b: u64| b.div_ceil(1 << 20);
    let need = per_buffer
        .saturating_mul(MIN_BUF_COUNT)
        .saturating_add(OVERHEAD_BYTES);
    Err(PoolDoesNotFit {
        limit_mib: limit >> 20,
        buf_mib: mib(buf_size),
        vddk: if pools > 1 {
            ", twice (VDDK's NFC AIO buffers)"
        } else {
            ""
        },
        // The limit that would hold it: the need is what is left after the margin.
        need_mib: mib(need.saturating_mul(100) / (100 - MARGIN_PERCENT)),
        overhead_mib: OVERHEAD_BYTES >> 20,
    })
}

/// A limit file's value: bytes, or `None` for "max" / v1's unlimited / unreadable.
fn limit_value(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|v| *v < V1_UNLIMITED)
}

/// The memory limit of the cgroup described by `proc_self_cgroup` (the text of
/// `/proc/self/cgroup`), with the cgroup file systems mounted under `mount` (normally
/// `/sys/fs/cgroup`): v1's `memory` controller (`memory.limit_in_bytes`) or v2's unified
/// hierarchy (`memory.max`); the smallest from the process's cgroup up.
pub fn limit_from(mount: &Path, proc_self_cgroup: &str) -> Option<u64> {
    let place = cgroup::locate(mount, proc_self_cgroup, "memory")?;
    let file = match place.version {
        cgroup::Version::V1 => "memory.limit_in_bytes",
        cgroup::Version::V2 => "memory.max",
    };
    place
        .upward()
        .iter()
        .filter_map(|d| {
            cgroup::read_small(&d.join(file))
                .as_deref()
                .and_then(limit_value)
        })
        .min()
}

/// This process's memory limit, from `/proc/self/cgroup` and `/sys/fs/cgroup`.
pub fn cgroup_memory_limit() -> Option<u64> {
    limit_from(Path::new(cgroup::MOUNT), &cgroup::proc_self_cgroup()?)
}

/// Fit the pool to this process's limit, logging a change; the count to use.
pub fn fit_to_cgroup(buf_size: u64, buf_count: u64, vddk: bool) -> Result<u64, PoolDoesNotFit> {
    let limit = cgroup_memory_limit();
    let fit = fit_pool(limit, buf_size, buf_count, if vddk { 2 } else { 1 })?;
    if fit.shrunk {
        tracing::warn!(
            limit_mib = limit.unwrap_or_default() >> 20,
            buf_size_mib = buf_size >> 20,
            asked = buf_count,
            buf_count = fit.buf_count,
            vddk,
            "the buffer pool would not fit the memory limit; fewer buffers"
        );
    } else if let Some(l) = limit {
        tracing::debug!(
            limit_mib = l >> 20,
            buf_count,
            "the buffer pool fits the memory limit"
        );
    }
    Ok(fit.buf_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_seeds_row_shrinks_to_fit_cdis_default_pod() {
        // 512 × 64 KiB = 32 MiB buffers, 32 of them, in CDI's 600M.
        let limit = 600_000_000;
        let nbd = fit_pool(Some(limit), 32 * MIB, 32, 1).unwrap();
        assert!(nbd.shrunk);
        let usable = limit - limit / 100 * MARGIN_PERCENT - OVERHEAD_BYTES;
        assert_eq!(nbd.buf_count, usable / (32 * MIB));
        assert_eq!(nbd.buf_count, 14);
        let vddk = fit_pool(Some(limit), 32 * MIB, 32, 2).unwrap();
        assert_eq!(vddk.buf_count, 7);
        // What fits stays; no limit changes nothing.
        let small = fit_pool(Some(limit), MIB, 32, 1).unwrap();
        assert_eq!(
            small,
            Fit {
                buf_count: 32,
                shrunk: false
            }
        );
        assert_eq!(fit_pool(None, 32 * MIB, 32, 2).unwrap().buf_count, 32);
    }

    #[test]
    fn a_limit_too_small_for_two_buffers_is_refused_naming_the_numbers() {
        let e = fit_pool(Some(128 * MIB), 32 * MIB, 32, 2).unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("the memory limit of 128 MiB cannot hold the buffer pool: 2 buffers of 32 MiB, twice"), "{m}");
        assert!(
            m.contains("64 MiB") && m.contains("10% margin") && m.contains("--buf-size-in-64k"),
            "{m}"
        );
        assert!(e.need_mib > 128, "{e:?}");
    }

    #[test]
    fn limits_are_read_from_v1_and_v2_hierarchies_taking_the_smallest() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path();
        // v1: the memory controller's own path; a parent with a lower limit wins.
        let v1 = m.join("memory/kubepods/pod1/ctr");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            m.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(
            m.join("memory/kubepods/pod1/memory.limit_in_bytes"),
            "629145600\n",
        )
        .unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        let proc = "9:pids:/kubepods/pod1/ctr\n4:memory:/kubepods/pod1/ctr\n0::/\n";
        assert_eq!(limit_from(m, proc), Some(629_145_600));
        // v2: memory.max, "max" meaning none.
        let d2 = tempfile::tempdir().unwrap();
        let m2 = d2.path();
        let v2 = m2.join("kubepods.slice/pod2.slice/cri.scope");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(
            m2.join("kubepods.slice/pod2.slice/memory.max"),
            "600000000\n",
        )
        .unwrap();
        assert_eq!(
            limit_from(m2, "0::/kubepods.slice/pod2.slice/cri.scope\n"),
            Some(600_000_000)
        );
        // Inside a cgroup namespace ("0::/"), the mount's root is the process's cgroup.
        std::fs::write(m2.join("memory.max"), "300000000\n").unwrap();
        assert_eq!(limit_from(m2, "0::/\n"), Some(300_000_000));
        // No limit anywhere; a path that climbs out is ignored; garbage is no limit.
        assert_eq!(limit_from(m2, "0::/../../etc\n"), None);
        assert_eq!(limit_from(m, "4:memory:/\n"), None);
        assert_eq!(limit_from(m, "not a cgroup file"), None);
    }
}
