//! Entry points for fuzzing (`fuzz/fuzz_targets/vsphere_soap.rs`), here so that the
//! stable test suite replays the same code over the checked-in seeds
//! (`vsphere/tests/fuzz_corpus.rs`).

use crate::soap;
use crate::task::{TaskRef, TaskState, base_disk_name};

/// A SOAP response from a server (any bytes): every reader runs on it and never panics,
/// and whatever reads keeps the crate's bounds and invariants.
pub fn soap_response(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines().take(64) {
        let b = base_disk_name(line);
        assert!(b.len() <= line.len());
        let _ = crate::task::datastore_of(line);
    }
    let Ok(el) = soap::parse_response(text) else {
        return;
    };
    let _ = soap::parse_service_content(&el);
    let _ = soap::parse_morefs(&el);
    if let Ok(t) = soap::parse_task_ref(&el) {
        assert!(!t.moref.is_empty());
    }
    if let Ok(p) = soap::parse_disk_change_info(&el) {
        assert!(p.areas.len() <= crate::cbt::MAX_AREAS_PER_PAGE);
    }
    let Ok(r) = soap::parse_retrieve_result(&el) else {
        return;
    };
    let task = TaskRef::new("task-1");
    for o in &r.objects {
        for (_, v) in &o.props {
            if let Ok(d) = soap::parse_disks(v) {
                assert!(d.len() <= crate::MAX_DEVICES);
                assert!(d.iter().all(|d| d.parents.len() <= crate::MAX_PARENT_CHAIN));
            }
            if let Ok(s) = soap::parse_snapshot_tree(v) {
                assert!(s.len() <= crate::MAX_SNAPSHOTS);
                let _ = crate::client::resolve_snapshot(&s, "a/b", "vm-1");
            }
            if let Ok(m) = soap::parse_moref_array(v, "recentTask", crate::MAX_RECENT_TASKS) {
                assert!(m.len() <= crate::MAX_RECENT_TASKS);
            }
            if let Ok(i) = soap::parse_task_info(v, &task) {
                assert!(i.progress.is_none_or(|p| p <= 100));
                assert!(i.state != TaskState::Error || i.error.is_some());
                assert!(i.result.as_ref().is_none_or(|r| !r.value.is_empty()));
            }
        }
    }
}
