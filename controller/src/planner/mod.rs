//! The sans-IO planner: every decision the controller makes, as pure functions of
//! what it observed and the time, so that each is a unit test.
//!
//! - [`disk`]: one disk's rounds, pods, restart budget and progress.
//! - [`slots`]: the per-host and per-vCenter caps, first come first served.
//! - [`plan`]: a plan's VMs through their itinerary (snapshots, rounds, cutover,
//!   cancel, archive) and the plan's status.

pub mod build;
pub mod disk;
pub mod observe;
pub mod plan;
pub mod sim;
pub mod slots;
