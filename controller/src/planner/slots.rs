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
///
/// Holders are counted first; then waiting disks are considered oldest first (ties by
/// id) and each is granted if every one of its limits has room, which then counts it.
/// A disk held back by one full limit does not hold back disks behind it on other
/// hosts, but on its own host nobody passes it.
pub fn admit(demands: &[Demand], id: &str) -> super::disk::Admission {
    use super::disk::Admission;
    use std::collections::BTreeMap;
    let mut in_use: BTreeMap<&str, u32> = BTreeMap::new();
    for d in demands.iter().filter(|d| d.holding) {
        for l in &d.limits {
            *in_use.entry(l.key.as_str()).or_default() += 1;
        }
    }
    let mut queue: Vec<&Demand> = demands.iter().filter(|d| d.waiting && !d.holding).collect();
    queue.sort_by(|a, b| a.queued_at.cmp(&b.queued_at).then_with(|| a.id.cmp(&b.id)));
    // A key once refused to an earlier disk stays closed for later ones (FIFO per key).
    let mut closed: BTreeMap<&str, ()> = BTreeMap::new();
    for d in queue {
        let blocked = d.limits.iter().find(|l| {
            closed.contains_key(l.key.as_str())
                || in_use.get(l.key.as_str()).copied().unwrap_or(0) >= l.cap
        });
        match blocked {
            None => {
                if d.id == id {
                    return Admission::Admitted;
                }
                for l in &d.limits {
                    *in_use.entry(l.key.as_str()).or_default() += 1;
                }
            }
            Some(l) => {
                if d.id == id {
                    let used = in_use.get(l.key.as_str()).copied().unwrap_or(0);
                    let why = if used >= l.cap {
                        format!("{}: {used} of {} disks in flight", l.key, l.cap)
                    } else {
                        format!("{}: earlier disks wait for it first", l.key)
                    };
                    return Admission::Refused(why);
                }
                for l in &d.limits {
                    closed.insert(l.key.as_str(), ());
                }
            }
        }
    }
    Admission::Refused("not waiting for a slot".into())
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
