//! A simulation of many disks through the real planner ([`super::disk::plan_disk`] and
//! [`super::slots::admit`]) on a virtual clock: disks spread over ESXi hosts behind one
//! vCenter, each host's NIC shared by the disks it serves, each disk's stream capped.
//! Its makespan is compared with the bound no scheduler can beat: the larger of all
//! bytes over the aggregate throughput the caps allow, and the busiest host's bytes
//! over what that host can do.
//!
//! The throughput model (from `reference/controller.md` §5.1, MTV's lab figures): a host
//! moves at most ~280 MiB/s whatever the number of streams ("> 10 per host gives little
//! more"); one disk's NFC stream at most ~120 MiB/s. Bandwidth is shared fairly among a
//! host's running disks (max-min: a disk below its share leaves the rest to others).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use super::disk::{Admission, DiskAction, DiskInput, plan_disk};
use super::observe::{Exit, PodPhase, PodView, Scrape};
use super::slots::{Demand, admit_all, limits_of};
use crate::crd::{DiskImportSpec, DiskImportStatus, DiskPhase, PvcTarget};

/// The simulated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Disks.
    pub disks: usize,
    /// ESXi hosts (disk `i` is on host `i % hosts`).
    pub hosts: usize,
    /// Per-host cap.
    pub per_host: u32,
    /// Per-vCenter cap.
    pub per_vcenter: u32,
    /// A host's throughput, bytes/s.
    pub host_rate: f64,
    /// One disk's throughput, bytes/s.
    pub disk_rate: f64,
    /// Seed of the disk sizes.
    pub seed: u64,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            disks: 1000,
            hosts: 20,
            per_host: super::slots::DEFAULT_PER_HOST,
            per_vcenter: super::slots::DEFAULT_PER_VCENTER,
            host_rate: 280.0 * 1_048_576.0,
            disk_rate: 120.0 * 1_048_576.0,
            seed: 1,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Bytes in all.
    pub total_bytes: u64,
    /// Seconds until the last disk succeeded.
    pub makespan: f64,
    /// The lower bound, seconds.
    pub bound: f64,
    /// Most disks in flight on one host at any time.
    pub max_per_host: u32,
    /// Most disks in flight through the vCenter at any time.
    pub max_vcenter: u32,
    /// Planner decisions made.
    pub decisions: u64,
}

impl Report {
    /// Makespan over the bound.
    pub fn ratio(&self) -> f64 {
        self.makespan / self.bound
    }
}

/// Disk sizes: a deterministic mix of 10 GiB to 500 GiB (mostly small, a few large, as
/// VM fleets are), by a xorshift generator.
pub fn sizes(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            // u³ skews toward small disks: 10 GiB + up to 490 GiB.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let gib = 10 + (490.0 * u * u * u) as u64;
            gib << 30
        })
        .collect()
}

/// Max-min fair rates of the disks running on one host.
fn host_rates(n: usize, host_rate: f64, disk_rate: f64) -> f64 {
    if n == 0 {
        0.0
    } else {
        (host_rate / n as f64).min(disk_rate)
    }
}

struct Sim {
    spec: DiskImportSpec,
    status: DiskImportStatus,
    host: usize,
    size: u64,
    done: f64,
    pod: Option<PodView>,
}

/// Run a fleet to the end.
pub fn simulate(f: &Fleet) -> Report {
    let t0 = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let sizes = sizes(f.disks, f.seed);
    let mut disks: Vec<Sim> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let host = i % f.hosts;
            Sim {
                spec: DiskImportSpec {
                    source_key: format!("esx{host:02}"),
                    vcenter_key: Some("vc".into()),
                    per_host_limit: Some(f.per_host),
                    per_vcenter_limit: Some(f.per_vcenter),
                    pvc: PvcTarget {
                        name: format!("disk-{i:04}"),
                        ..Default::default()
                    },
                    capacity: size,
                    ..Default::default()
                },
                status: DiskImportStatus::default(),
                host,
                size,
                done: 0.0,
                pod: None,
            }
        })
        .collect();
    let mut now = 0.0f64;
    let (mut max_host, mut max_vc, mut decisions) = (0u32, 0u32, 0u64);
    loop {
        let ts = t0
            .checked_add(SignedDuration::from_secs_f64(now))
            .unwrap_or(t0);
        // Plan every disk until nothing changes at this instant.
        for _ in 0..8 {
            let demands: Vec<Demand> = disks
                .iter()
                .map(|d| Demand {
                    id: d.spec.pvc.name.clone(),
                    limits: limits_of(&d.spec),
                    holding: !d.status.slots.is_empty(),
                    waiting: d.status.slots.is_empty() && !d.status.phase.is_terminal(),
                    queued_at: d.status.queued_at.as_ref().map_or(t0, |t| t.0),
                    bytes: d.size,
                })
                .collect();
            let mut admitted = admit_all(&demands);
            let mut changed = false;
            for (i, d) in disks.iter_mut().enumerate() {
                if d.status.phase == DiskPhase::Succeeded && d.pod.is_none() {
                    continue;
                }
                let admission = if d.status.slots.is_empty() {
                    admitted
                        .remove(&d.spec.pvc.name)
                        .unwrap_or_else(|| Admission::Refused("not waiting".into()))
                } else {
                    Admission::Admitted
                };
                let pods: Vec<PodView> = d.pod.iter().cloned().collect();
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let scrape = d.pod.as_ref().map(|_| Scrape {
                    covered: d.done as u64,
                    size: d.size,
                });
                let decision = plan_disk(&DiskInput {
                    spec: &d.spec,
                    status: &d.status,
                    pods: &pods,
                    pvc_exists: true,
                    admission,
                    scrape,
                    now: ts,
                });
                decisions += 1;
                for a in &decision.actions {
                    match a {
                        DiskAction::AcquireSlots => {}
                        DiskAction::CreatePod(r) => {
                            d.pod = Some(PodView {
                                name: r.pod_name(&d.spec.pvc.name),
                                uid: format!("uid-{i}"),
                                phase: PodPhase::Running,
                                deleting: false,
                                restarts: 0,
                                running: true,
                                waiting_reason: None,
                                exit: None,
                                last_exit: None,
                                ip: None,
                            });
                            changed = true;
                        }
                        DiskAction::DeletePod(_) => {
                            d.pod = None;
                            changed = true;
                        }
                        _ => {}
                    }
                }
                let mut st = decision.status;
                if decision.actions.contains(&DiskAction::AcquireSlots) {
                    st.slots = vec!["slot".into()];
                }
                if st != d.status {
                    changed = true;
                }
                d.status = st;
            }
            if !changed {
                break;
            }
        }
        // Who runs where.
        let mut per_host: BTreeMap<usize, usize> = BTreeMap::new();
        for d in disks
            .iter()
            .filter(|d| d.pod.as_ref().is_some_and(|p| p.phase == PodPhase::Running))
        {
            *per_host.entry(d.host).or_default() += 1;
        }
        let running: usize = per_host.values().sum();
        max_vc = max_vc.max(u32::try_from(running).unwrap_or(u32::MAX));
        max_host = max_host.max(
            per_host
                .values()
                .copied()
                .max()
                .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        );
        if running == 0 {
            break;
        }
        // Advance to the next completion.
        let rate = |d: &Sim| {
            host_rates(
                per_host.get(&d.host).copied().unwrap_or(0),
                f.host_rate,
                f.disk_rate,
            )
        };
        let dt = disks
            .iter()
            .filter(|d| d.pod.as_ref().is_some_and(|p| p.phase == PodPhase::Running))
            .map(|d| (d.size as f64 - d.done) / rate(d))
            .fold(f64::INFINITY, f64::min)
            .max(0.0);
        let rates: Vec<f64> = disks.iter().map(rate).collect();
        now += dt;
        for (d, r) in disks.iter_mut().zip(rates) {
            if let Some(p) = d.pod.as_mut().filter(|p| p.phase == PodPhase::Running) {
                d.done = (d.done + r * dt).min(d.size as f64);
                if d.size as f64 - d.done < 1.0 {
                    d.done = d.size as f64;
                    p.phase = PodPhase::Succeeded;
                    p.running = false;
                    p.exit = Some(Exit {
                        code: 0,
                        reason: "Completed".into(),
                        message: String::new(),
                    });
                }
            }
        }
    }
    let total: u64 = sizes.iter().sum();
    let per_host_cap_rate = (f64::from(f.per_host) * f.disk_rate).min(f.host_rate);
    let aggregate =
        (per_host_cap_rate * f.hosts as f64).min(f64::from(f.per_vcenter) * f.disk_rate);
    let mut host_bytes = vec![0u64; f.hosts];
    for (i, s) in sizes.iter().enumerate() {
        host_bytes[i % f.hosts] += s;
    }
    let busiest = host_bytes.iter().copied().max().unwrap_or(0) as f64 / per_host_cap_rate;
    let largest = sizes.iter().copied().max().unwrap_or(0) as f64 / f.disk_rate.min(f.host_rate);
    let bound = (total as f64 / aggregate).max(busiest).max(largest);
    Report {
        total_bytes: total,
        makespan: now,
        bound,
        max_per_host: max_host,
        max_vcenter: max_vc,
        decisions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcenter_bound_fleet_never_exceeds_its_caps_and_ends_near_the_bound() {
        let f = Fleet {
            disks: 200,
            hosts: 8,
            per_host: 4,
            per_vcenter: 12,
            disk_rate: 60.0 * 1_048_576.0,
            ..Default::default()
        };
        let r = simulate(&f);
        assert_eq!((r.max_per_host, r.max_vcenter), (4, 12), "{r:?}");
        assert!(r.ratio() >= 1.0 - 1e-9, "the bound is a bound: {r:?}");
        assert!(r.ratio() <= 1.10, "{r:?}");
    }

    #[test]
    fn a_few_big_disks_on_few_hosts_still_end_within_a_fifth_of_the_bound() {
        // 120 disks with caps of 2 per host: the last big disks set the end.
        let f = Fleet {
            disks: 120,
            hosts: 6,
            per_host: 4,
            per_vcenter: 12,
            ..Default::default()
        };
        let r = simulate(&f);
        assert!(r.max_per_host <= 4 && r.max_vcenter <= 12, "{r:?}");
        assert!(r.ratio() >= 1.0 - 1e-9 && r.ratio() <= 1.2, "{r:?}");
    }

    #[test]
    fn sizes_are_deterministic_and_in_range() {
        let a = sizes(1000, 7);
        assert_eq!(a, sizes(1000, 7));
        assert!(a.iter().all(|&s| (10u64 << 30..=500u64 << 30).contains(&s)));
        assert!(
            a.iter().filter(|&&s| s < 100 << 30).count() > 500,
            "mostly small disks"
        );
    }
}
