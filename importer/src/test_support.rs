//! Helpers shared by the library's unit tests.

use std::sync::Arc;

use crate::engine::{IoEngine, SyncEngine};

/// A current-thread runtime for one test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The plain-syscall engine (works everywhere, no io_uring needed).
pub fn engine() -> Arc<dyn IoEngine> {
    Arc::new(SyncEngine::new())
}
