//! `ferry import`: the per-disk pod entrypoint, a drop-in for KubeVirt CDI's VDDK
//! importer (reference/cdi-contract.md §b, §d, §g): the same environment, mounts,
//! progress metric and termination message.

pub mod config;
pub mod messages;
pub mod run;
pub mod unpack;
