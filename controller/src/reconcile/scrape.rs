//! Progress from a running import pod's `/metrics`, as CDI's controller reads it:
//! HTTPS on the port named `metrics`, the certificate not checked (the importer's is
//! self-signed), 2 s per try; "connection refused" only means no data yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_http::{Client, ClientOptions, TlsPolicy};
use k8s_openapi::api::core::v1::Pod;

use crate::planner::observe::{MAX_METRICS_BYTES, Scrape, parse_metrics};

/// Time allowed for one scrape (CDI's).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients kept (one per pod address; the map is emptied when it grows past this).
pub const MAX_CLIENTS: usize = 4096;
/// An annotation that overrides `podIP:8443` (for node agents that map the port).
pub const METRICS_ADDRESS_ANNOTATION: &str = "ferry.dev/metrics-address";

/// Kept-alive clients by address.
#[derive(Debug, Default)]
pub struct Scraper {
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

/// Where a pod's metrics are served.
pub fn metrics_address(pod: &Pod) -> Option<String> {
    if let Some(a) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(METRICS_ADDRESS_ANNOTATION))
    {
        return Some(a.clone());
    }
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    let port = ferry_contract::metrics::METRICS_PORT;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

impl Scraper {
    fn client(&self, addr: &str) -> Option<Arc<Client>> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Some(c.clone());
        }
        if map.len() >= MAX_CLIENTS {
            map.clear();
        }
        let (endpoint, _) = ferry_http::Endpoint::parse(
            &format!("https://{addr}/metrics"),
            ferry_http::Scheme::Https,
        )
        .ok()?;
        let opts = ClientOptions {
            connect_timeout: SCRAPE_TIMEOUT,
            call_timeout: SCRAPE_TIMEOUT,
            max_body_bytes: MAX_METRICS_BYTES,
            ..Default::default()
        };
        let c = Arc::new(
            Client::new(
                endpoint,
                &TlsPolicy {
                    insecure: true,
                    ..Default::default()
                },
                opts,
            )
            .ok()?,
        );
        map.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// Forget a pod's client (it ended).
    pub fn forget(&self, addr: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
    }

    /// Scrape `https://addr/metrics`; `None` when there is nothing (yet).
    pub async fn scrape(&self, addr: &str) -> Option<Scrape> {
        let c = self.client(addr)?;
        match c.get("scrape /metrics", "/metrics", None).await {
            Ok(r) if r.status.is_success() => parse_metrics(&String::from_utf8_lossy(&r.body)),
            Ok(r) => {
                tracing::debug!(addr, status = %r.status, "metrics answered with an error");
                None
            }
            Err(e) => {
                tracing::debug!(addr, error = %e, "no metrics");
                None
            }
        }
    }
}
