//! The metric names a controller scrapes from the importer's `/metrics` (HTTPS, port
//! 8443). Counters are exposed with the `_total` suffix (OpenMetrics).

/// Name CDI's progress counter is registered under (exposed with the `_total` suffix).
pub const PROGRESS_METRIC: &str = "kubevirt_cdi_import_progress";
/// The exposed name of CDI's progress series: 0–100, the whole disk's share done
/// (`pkg/importer/vddk-datasource_amd64.go`); CDI's controller scrapes it with
/// `pkg/controller/common/util.go`'s regex.
pub const PROGRESS_SERIES: &str = "kubevirt_cdi_import_progress_total";
/// Its one label.
pub const OWNER_UID_LABEL: &str = "ownerUID";
/// The port CDI's controller scrapes.
pub const METRICS_PORT: u16 = 8443;
/// The phases exported as `ferry_import_phase{phase=…}`, always all present. `done`
/// comes only after the target's final flush and the round marker.
pub const PHASES: [&str; 5] = ["connecting", "copying", "flushing", "done", "failed"];

/// Bytes read from the source (counter).
pub const FERRY_READ_BYTES: &str = "ferry_import_read_bytes";
/// Bytes written as data (counter).
pub const FERRY_WRITTEN_BYTES: &str = "ferry_import_written_bytes";
/// Bytes zeroed on the target (counter).
pub const FERRY_ZEROED_BYTES: &str = "ferry_import_zeroed_bytes";
/// Bytes left alone: holes on a new target (counter).
pub const FERRY_SKIPPED_BYTES: &str = "ferry_import_skipped_bytes";
/// Bytes of the disk done, any way (counter).
pub const FERRY_COVERED_BYTES: &str = "ferry_import_covered_bytes";
/// Source failures retried (counter).
pub const FERRY_RETRIES: &str = "ferry_import_retries";
/// Bytes received from an HTTP source: the file as downloaded (counter).
pub const FERRY_DOWNLOADED_BYTES: &str = "ferry_import_downloaded_bytes";
/// The HTTP source's size as downloaded, when known (gauge).
pub const FERRY_DOWNLOAD_SIZE_BYTES: &str = "ferry_import_download_size_bytes";
/// The disk size (gauge).
pub const FERRY_SIZE_BYTES: &str = "ferry_import_size_bytes";
/// Bytes per second over the last window (gauge).
pub const FERRY_THROUGHPUT_BYTES_PER_SECOND: &str = "ferry_import_throughput_bytes_per_second";
/// Requests in flight (gauge).
pub const FERRY_REQUESTS_IN_FLIGHT: &str = "ferry_import_requests_in_flight";
/// The I/O engine, as a label (gauge, 1).
pub const FERRY_ENGINE: &str = "ferry_import_engine";
/// The phase, as a label (gauge, 1 for the current one).
pub const FERRY_PHASE: &str = "ferry_import_phase";
