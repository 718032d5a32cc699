//! Who may copy now: disks in flight per ESXi host (default 10, at most 50) and per
//! vCenter (default 48 of its 52 NFC connections), counted across every plan sharing
//! the source, first come first served.
//!
//! A disk counts while it holds slots: from before its pod is created until the pod
//! has ended (a warm disk paused between rounds holds none, as in Forklift's
//! scheduler). [`admit`] is a pure function of every disk's demand; the reconciler
//! makes the grant real by taking Lease slots (one Lease per slot, created, so two
//! controllers racing for the last slot cannot both win).

use jiff::Timestamp;

/// Default disks in flight per ESXi host.
pub const DEFAULT_PER_HOST: u32 = 10;
/// Most disks in flight per ESXi host a plan may ask for (VMware's guidance).
pub const MAX_PER_HOST: u32 = 50;
/// Default disks in flight through one vCenter (4 of its 52 connections left spare).
pub const DEFAULT_PER_VCENTER: u32 = 48;
/// vCenter's NFC connection limit.
pub const MAX_PER_VCENTER: u32 = 52;

/// The limit key of an ESXi host (or NBD server).
pub fn host_key(source_key: &str) -> String {
    format!("host:{source_key}")
}

/// The limit key of a vCenter.
pub fn vcenter_key(vcenter: &str) -> String {
    format!("vcenter:{vcenter}")
}

/// One limit a disk is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// `host:…` or `vcenter:…`.
    pub key: String,
    /// Its cap, as this disk's plan asks (clamped).
    pub cap: u32,
}

/// One disk's claim on the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// `namespace/name` of the DiskImport (the tie-break, and how [`admit`] is asked).
    pub id: String,
    /// Its limits.
    pub limits: Vec<Limit>,
    /// It holds its slots now.
    pub holding: bool,
    /// It wants slots (has a round to start and holds none).
    pub waiting: bool,
    /// Since when it waits (FIFO order).
    pub queued_at: Timestamp,
    /// Its size: among disks that queued at the same time, the largest goes first
    /// (longest processing time first keeps the end of a plan from waiting on one
    /// big disk started last).
    pub bytes: u64,
}

/// The limits of a disk, from its spec (defaults and clamps applied).
pub fn limits_of(spec: &crate::crd::DiskImportSpec) -> Vec<Limit> {
    let mut v = vec![Limit {
        key: host_key(&spec.source_key),
        cap: spec
            .per_host_limit
            .unwrap_or(DEFAULT_PER_HOST)
            .clamp(1, MAX_PER_HOST),
    }];
    if let Some(vc) = &spec.vcenter_key {
        v.push(Limit {
            key: vcenter_key(vc),
            cap: spec
                .per_vcenter_limit
                .unwrap_or(DEFAULT_PER_VCENTER)
                .clamp(1, MAX_PER_VCENTER),
        });
    }
    v
}

/// Whether a waiting disk may take its slots now, and if not, why.
pub fn admit(demands: &[Demand], id: &str) -> super::disk::Admission {
    admit_all(demands)
        .remove(id)
        .unwrap_or_else(|| super::disk::Admission::Refused("not waiting for a slot".into()))
}

/// The answer for every waiting disk.
///
/// Holders are counted first. Waiting disks queue per host (their first limit), oldest
/// first (ties: the largest, then by id): nobody passes the head of its host's queue. Then, grant by
/// grant, the head of the least busy host whose every limit has room goes next (ties
/// by age, size, id); a grant counts against all its limits. So a full host holds back
/// only its own disks, and the vCenter's slots spread over the hosts instead of
/// piling onto whichever host queued first; among equally busy hosts, the one with
/// the most bytes queued goes first.
pub fn admit_all(demands: &[Demand]) -> std::collections::BTreeMap<String, super::disk::Admission> {
    use super::disk::Admission;
    use std::collections::{BTreeMap, VecDeque};
    let mut in_use: BTreeMap<&str, u32> = BTreeMap::new();
    for d in demands.iter().filter(|d| d.holding) {
        for l in &d.limits {
            *in_use.entry(l.key.as_str()).or_default() += 1;
        }
    }
    let mut waiting: Vec<&Demand> = demands
        .iter()
        .filter(|d| d.waiting && !d.holding && !d.limits.is_empty())
        .collect();
    let order = |a: &Demand, b: &Demand| {
        a.queued_at
            .cmp(&b.queued_at)
            .then_with(|| b.bytes.cmp(&a.bytes))
            .then_with(|| a.id.cmp(&b.id))
    };
    waiting.sort_by(|a, b| order(a, b));
    let mut queues: BTreeMap<&str, VecDeque<&Demand>> = BTreeMap::new();
    for d in &waiting {
        queues
            .entry(d.limits[0].key.as_str())
            .or_default()
            .push_back(d);
    }
    // Bytes still queued per host: among equally busy hosts, the one with the most work
    // left goes first, so no host is left with a long tail.
    let mut backlog: BTreeMap<&str, u64> = queues
        .iter()
        .map(|(h, q)| (*h, q.iter().map(|d| d.bytes).sum()))
        .collect();
    let fits = |d: &Demand, in_use: &BTreeMap<&str, u32>| {
        d.limits
            .iter()
            .all(|l| in_use.get(l.key.as_str()).copied().unwrap_or(0) < l.cap)
    };
    let mut out = BTreeMap::new();
    loop {
        let next = queues
            .iter()
            .filter_map(|(host, q)| q.front().map(|d| (*host, *d)))
            .filter(|(_, d)| fits(d, &in_use))
            .min_by(|(ha, a), (hb, b)| {
                let (ua, ub) = (
                    in_use.get(ha).copied().unwrap_or(0),
                    in_use.get(hb).copied().unwrap_or(0),
                );
                let (ba, bb) = (
                    backlog.get(ha).copied().unwrap_or(0),
                    backlog.get(hb).copied().unwrap_or(0),
                );
                ua.cmp(&ub)
                    .then_with(|| bb.cmp(&ba))
                    .then_with(|| order(a, b))
            });
        let Some((host, d)) = next else { break };
        for l in &d.limits {
            *in_use.entry(l.key.as_str()).or_default() += 1;
        }
        out.insert(d.id.clone(), Admission::Admitted);
        if let Some(b) = backlog.get_mut(host) {
            *b = b.saturating_sub(d.bytes);
        }
        if let Some(q) = queues.get_mut(host) {
            q.pop_front();
        }
    }
    for q in queues.values() {
        for (pos, d) in q.iter().enumerate() {
            let full = d
                .limits
                .iter()
                .find(|l| in_use.get(l.key.as_str()).copied().unwrap_or(0) >= l.cap);
            let why = match (full, pos) {
                (Some(l), _) => format!(
                    "{}: {} of {} disks in flight",
                    l.key,
                    in_use.get(l.key.as_str()).copied().unwrap_or(0),
                    l.cap
                ),
                (None, _) => format!("{}: earlier disks wait for it first", d.limits[0].key),
            };
            out.insert(d.id.clone(), Admission::Refused(why));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::disk::Admission;
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn d(id: &str, host: &str, cap: u32, holding: bool, at: i64) -> Demand {
        Demand {
            id: id.into(),
            limits: vec![Limit {
                key: host_key(host),
                cap,
            }],
            holding,
            waiting: !holding,
            queued_at: t(at),
            bytes: 0,
        }
    }

    #[test]
    fn holders_fill_the_cap_and_the_oldest_waiter_goes_first() {
        let mut all = vec![
            d("a", "esx1", 2, true, 0),
            d("b", "esx1", 2, false, 5),
            d("c", "esx1", 2, false, 3),
        ];
        assert_eq!(admit(&all, "c"), Admission::Admitted);
        // c (older) is counted before b: the host is then full.
        assert_eq!(
            admit(&all, "b"),
            Admission::Refused("host:esx1: 2 of 2 disks in flight".into())
        );
        all[2].holding = true;
        all[2].waiting = false;
        assert_eq!(
            admit(&all, "b"),
            Admission::Refused("host:esx1: 2 of 2 disks in flight".into())
        );
    }

    #[test]
    fn a_full_host_does_not_hold_back_other_hosts() {
        let all = vec![
            d("a", "esx1", 1, true, 0),
            d("b", "esx1", 1, false, 1),
            d("c", "esx2", 1, false, 2),
        ];
        assert!(matches!(admit(&all, "b"), Admission::Refused(_)));
        assert_eq!(admit(&all, "c"), Admission::Admitted);
    }

    #[test]
    fn the_vcenter_cap_counts_across_hosts() {
        let mk = |id: &str, host: &str, holding: bool, at: i64| Demand {
            id: id.into(),
            limits: vec![
                Limit {
                    key: host_key(host),
                    cap: 10,
                },
                Limit {
                    key: vcenter_key("vc"),
                    cap: 2,
                },
            ],
            holding,
            waiting: !holding,
            queued_at: t(at),
            bytes: 0,
        };
        let all = vec![
            mk("a", "esx1", true, 0),
            mk("b", "esx2", true, 0),
            mk("c", "esx3", false, 1),
        ];
        assert_eq!(
            admit(&all, "c"),
            Admission::Refused("vcenter:vc: 2 of 2 disks in flight".into())
        );
    }

    #[test]
    fn ties_go_by_name_and_paused_disks_hold_nothing() {
        let all = vec![
            d("b", "esx1", 1, false, 0),
            d("a", "esx1", 1, false, 0),
            Demand {
                waiting: false,
                holding: false,
                ..d("p", "esx1", 1, false, 0)
            },
        ];
        assert_eq!(admit(&all, "a"), Admission::Admitted);
        assert!(matches!(admit(&all, "b"), Admission::Refused(_)));
        assert_eq!(
            admit(&all, "p"),
            Admission::Refused("not waiting for a slot".into())
        );
    }

    #[test]
    fn caps_are_clamped_to_the_hard_limits() {
        let spec = crate::crd::DiskImportSpec {
            source_key: "esx1".into(),
            vcenter_key: Some("vc".into()),
            per_host_limit: Some(500),
            per_vcenter_limit: Some(0),
            ..Default::default()
        };
        assert_eq!(
            limits_of(&spec),
            vec![
                Limit {
                    key: "host:esx1".into(),
                    cap: MAX_PER_HOST
                },
                Limit {
                    key: "vcenter:vc".into(),
                    cap: 1
                }
            ]
        );
    }
}
