//! ferry-controller: the thin controller that turns a [`crd::FerryPlan`] into one
//! [`crd::DiskImport`] per disk and one `ferry import` pod per disk and round.
//!
//! All decisions are made by the sans-IO [`planner`]: given what is observed (the
//! plan, its disks, their pods, the slots in use, the time), it returns the actions to
//! take. The reconcilers only observe and act.

pub mod crd;
pub mod fuzzing;
pub mod manifests;
pub mod names;
pub mod planner;
pub mod pod;
pub mod reconcile;
pub mod schema;
pub mod vsphere;
