//! A small Kubernetes API server for the controller's tests: what kube-runtime's
//! `Controller`, `Api` and finalizer helper need, over plain HTTP on 127.0.0.1.
//!
//! Implemented:
//! - any resource path (`/api/v1/…`, `/apis/GROUP/VERSION/…`, namespaced or cluster-wide
//!   lists), objects kept as JSON; a global, increasing `resourceVersion`; `uid`,
//!   `creationTimestamp`, `generateName`, `generation` (bumped when anything but
//!   `status` and `metadata` changes);
//! - list (label selectors `k=v`, `k!=v`, `k`, `!k`), get, create (409 AlreadyExists),
//!   replace (409 Conflict on a stale `resourceVersion`), delete;
//! - patches: JSON patch (RFC 6902, `test` included), merge patch (RFC 7386, also used
//!   for strategic merge), and server-side apply as a merge (no field ownership);
//! - the `status` subresource for the kinds in [`STATUS_KINDS`]: `/status` writes only
//!   `.status`, the main endpoint (create included) never does;
//! - watch (`?watch=true&resourceVersion=N`): ADDED/MODIFIED/DELETED events after N as
//!   JSON lines, then live ones; `allowWatchBookmarks` bookmarks; `timeoutSeconds`;
//! - finalizers (a delete sets `deletionTimestamp`; the object goes when the last
//!   finalizer is removed) and owner-reference cascade (background) on removal;
//! - `Status` error bodies as kube-rs reads them.
//!
//! Not implemented: admission, schema validation and defaulting, RBAC, field
//! managers and apply conflicts, resource-version expiry (410), paging, field
//! selectors, discovery and tables (so `kubectl` is not a client), pod graceful
//! deletion (pods go at once).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub mod discovery;

/// Kinds whose `status` is a subresource.
pub const STATUS_KINDS: [&str; 4] = [
    "pods",
    "persistentvolumeclaims",
    "diskimports",
    "ferryplans",
];
/// Largest request body accepted.
pub const MAX_BODY: usize = 8 << 20;

/// A collection: the path prefix up to the plural (`/api/v1`, `pods`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Collection {
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    pub prefix: String,
    /// The plural.
    pub plural: String,
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: &'static str,
    /// The collection.
    pub collection: Collection,
    /// The object after the change (before it, for `DELETED`).
    pub object: Value,
    /// Its resourceVersion.
    pub rv: u64,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Collection, String, String), Value>,
    history: Vec<Change>,
}

/// The server.
#[derive(Debug, Clone)]
pub struct Server {
    state: Arc<Mutex<State>>,
    tx: broadcast::Sender<Change>,
    addr: SocketAddr,
}

fn status_error(code: u16, reason: &str, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn respond(code: StatusCode, v: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r =
        Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        "application/json"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    );
    r
}

/// A request path: collection, namespace, name, subresource.
type Route = (Collection, Option<String>, Option<String>, Option<String>);

/// Split a path into its [`Route`].
fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        r => (None, r),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_string()), None),
        [p, n, s] => (*p, Some((*n).to_string()), Some((*s).to_string())),
        _ => return None,
    };
    Some((
        Collection {
            prefix,
            plural: plural.to_string(),
        },
        ns,
        name,
        sub,
    ))
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `obj`'s labels match a selector (`a=b,c!=d,e,!f`).
pub fn matches(selector: &str, obj: &Value) -> bool {
    let labels = obj["metadata"]["labels"].as_object();
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term.trim()).is_some()
        }
    })
}

fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // RFC 3339 in UTC, seconds precision, without a date crate.
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn kind_of_list(c: &Collection, items: &[Value]) -> String {
    let k = items
        .first()
        .and_then(|o| o["kind"].as_str())
        .map(str::to_string);
    format!("{}List", k.unwrap_or_else(|| c.plural.clone()))
}

impl Server {
    /// Start on 127.0.0.1 (a free port), on the current tokio runtime.
    pub async fn start() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, _) = broadcast::channel(65_536);
        let server = Server {
            state: Arc::new(Mutex::new(State::default())),
            tx,
            addr,
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every change so far.
    pub fn history(&self) -> Vec<Change> {
        self.lock().history.clone()
    }

    /// The objects of a collection (`("/api/v1", "pods")`), in every namespace.
    pub fn list(&self, prefix: &str, plural: &str) -> Vec<Value> {
        let c = Collection {
            prefix: prefix.into(),
            plural: plural.into(),
        };
        self.lock()
            .objects
            .iter()
            .filter(|((cc, _, _), _)| *cc == c)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One object.
    pub fn get(&self, prefix: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let c = Collection {
            prefix: prefix.into(),
            plural: plural.into(),
        };
        self.lock()
            .objects
            .get(&(c, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Create or replace an object directly (as a test or a kubelet would), with the
    /// same bookkeeping and events as through HTTP.
    pub fn put(&self, prefix: &str, plural: &str, obj: Value) -> Value {
        let c = Collection {
            prefix: prefix.into(),
            plural: plural.into(),
        };
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut st = self.lock();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let existing = st.objects.get(&(c.clone(), ns.clone(), name)).cloned();
        match existing {
            Some(old) => self.commit(&mut st, &c, obj, Some(&old)),
            None => self.commit(&mut st, &c, obj, None),
        }
    }

    /// Wait until `pred` holds (checked after every change), or `timeout`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Server) -> bool) -> bool {
        let mut rx = self.tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.recv()).await.is_err() {
                return pred(self);
            }
        }
    }

    /// Store `obj` (new, or replacing `old`): stamp metadata, bump rv, record, publish.
    fn commit(&self, st: &mut State, c: &Collection, mut obj: Value, old: Option<&Value>) -> Value {
        st.rv += 1;
        let rv = st.rv;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        match old {
            None => {
                st.uid += 1;
                obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", st.uid));
                obj["metadata"]["creationTimestamp"] = json!(now());
                obj["metadata"]["generation"] = json!(1);
            }
            Some(o) => {
                for k in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    if !o["metadata"][k].is_null() {
                        obj["metadata"][k] = o["metadata"][k].clone();
                    }
                }
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("status");
                        m.remove("metadata");
                    }
                    v
                };
                let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] =
                    json!(if strip(o) != strip(&obj) { g + 1 } else { g });
            }
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        // Deleting, and no finalizer left: gone.
        let finalizers_left = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !obj["metadata"]["deletionTimestamp"].is_null() && !finalizers_left {
            self.remove(st, c, &ns, &name);
            return obj;
        }
        st.objects.insert((c.clone(), ns, name), obj.clone());
        let change = Change {
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            collection: c.clone(),
            object: obj.clone(),
            rv,
        };
        st.history.push(change.clone());
        let _ = self.tx.send(change);
        obj
    }

    /// Remove an object and, in the background, what it owns.
    fn remove(&self, st: &mut State, c: &Collection, ns: &str, name: &str) {
        let Some(mut obj) = st
            .objects
            .remove(&(c.clone(), ns.to_string(), name.to_string()))
        else {
            return;
        };
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let change = Change {
            kind: "DELETED",
            collection: c.clone(),
            object: obj,
            rv: st.rv,
        };
        st.history.push(change.clone());
        let _ = self.tx.send(change);
        let owned: Vec<(Collection, String, String)> = st
            .objects
            .iter()
            .filter(|((_, ons, _), o)| {
                ons == ns
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| {
                            refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str()))
                        })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (oc, ons, oname) in owned {
            self.delete_one(st, &oc, &ons, &oname);
        }
    }

    /// Delete: a deletionTimestamp while finalizers remain, else removal.
    fn delete_one(&self, st: &mut State, c: &Collection, ns: &str, name: &str) -> Option<Value> {
        let obj = st
            .objects
            .get(&(c.clone(), ns.to_string(), name.to_string()))?
            .clone();
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                let mut o = obj.clone();
                o["metadata"]["deletionTimestamp"] = json!(now());
                return Some(self.commit(st, c, o, Some(&obj)));
            }
            return Some(obj);
        }
        self.remove(st, c, ns, name);
        Some(obj)
    }

    /// Every resource discovery lists now (built-ins and stored CRDs).
    fn resources(&self, st: &State) -> Vec<discovery::Resource> {
        let crds: Vec<Value> = st
            .objects
            .iter()
            .filter(|((c, _, _), _)| {
                c.prefix == discovery::CRD_PREFIX && c.plural == "customresourcedefinitions"
            })
            .map(|(_, o)| o.clone())
            .collect();
        discovery::resources(&crds, &STATUS_KINDS)
    }

    /// A discovery answer, when `path` is a discovery path.
    fn discovery(&self, path: &str) -> Option<Response<BoxBody<Bytes, Infallible>>> {
        let path = path.trim_end_matches('/');
        let body = match path.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
            ["version"] => discovery::version(),
            ["api"] => discovery::api_versions(&self.addr.to_string()),
            ["apis"] => discovery::group_list(&self.resources(&self.lock())),
            ["api", _] | ["apis", _, _] => {
                discovery::resource_list(path, &self.resources(&self.lock())).unwrap_or_else(
                    || json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
                )
            }
            _ => return None,
        };
        let code = if body["kind"] == "Status" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        Some(respond(code, &body))
    }

    /// The `Table` of `items` of collection `c`.
    fn table(&self, st: &State, c: &Collection, items: &[Value]) -> Value {
        let columns = self
            .resources(st)
            .into_iter()
            .find(|r| r.prefix == c.prefix && r.plural == c.plural)
            .map(|r| r.columns)
            .unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        discovery::table(items, &columns, st.rv, now)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_string();
        let q = query(req.uri().query());
        let method = req.method().clone();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let accept = req
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if req.method() == Method::GET
            && let Some(r) = self.discovery(&path)
        {
            return r;
        }
        let Some((c, ns, name, sub)) = route(&path) else {
            return status_error(404, "NotFound", &format!("no route {path}"));
        };
        let table = discovery::wants_table(&accept);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status_error(400, "BadRequest", &e.to_string()),
        };
        if body.len() > MAX_BODY {
            return status_error(413, "RequestEntityTooLarge", "body too large");
        }
        let has_status = STATUS_KINDS.contains(&c.plural.as_str());
        let is_status = sub.as_deref() == Some("status");
        let ns_s = ns.clone().unwrap_or_default();
        let is_put = method == Method::PUT;
        match (method, name) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(c, ns, &q)
            }
            (Method::GET, None) => {
                let st = self.lock();
                let sel = q.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((cc, ons, _), o)| {
                        *cc == c && ns.as_ref().is_none_or(|n| n == ons) && matches(&sel, o)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                if table {
                    return respond(StatusCode::OK, &self.table(&st, &c, &items));
                }
                let kind = kind_of_list(&c, &items);
                respond(
                    StatusCode::OK,
                    &json!({"kind": kind, "apiVersion": c.prefix.trim_start_matches("/api/").trim_start_matches("/apis/"),
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            (Method::GET, Some(n)) => {
                let st = self.lock();
                match st.objects.get(&(c.clone(), ns_s, n.clone())) {
                    Some(o) if table => respond(
                        StatusCode::OK,
                        &self.table(&st, &c, std::slice::from_ref(o)),
                    ),
                    Some(o) => respond(StatusCode::OK, o),
                    None => {
                        status_error(404, "NotFound", &format!("{} \"{n}\" not found", c.plural))
                    }
                }
            }
            (Method::POST, None) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return status_error(400, "BadRequest", "the body is not JSON");
                };
                let mut st = self.lock();
                if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
                    match obj["metadata"]["generateName"].as_str() {
                        Some(g) => {
                            st.uid += 1;
                            obj["metadata"]["name"] = json!(format!("{g}{:05x}", st.uid));
                        }
                        None => return status_error(422, "Invalid", "metadata.name is required"),
                    }
                }
                if let Some(n) = &ns {
                    obj["metadata"]["namespace"] = json!(n);
                }
                // As the real server: a create never sets a status subresource.
                if has_status && let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                if st.objects.contains_key(&(c.clone(), ns_s, name.clone())) {
                    return status_error(
                        409,
                        "AlreadyExists",
                        &format!("{} \"{name}\" already exists", c.plural),
                    );
                }
                let o = self.commit(&mut st, &c, obj, None);
                respond(StatusCode::CREATED, &o)
            }
            (Method::PUT, Some(n)) | (Method::PATCH, Some(n)) => {
                let mut st = self.lock();
                let key = (c.clone(), ns_s.clone(), n.clone());
                let old = st.objects.get(&key).cloned();
                let apply = content_type.starts_with("application/apply-patch");
                let base = match (&old, apply) {
                    (Some(o), _) => o.clone(),
                    (None, true) => json!({"metadata": {"name": n, "namespace": ns}}),
                    (None, false) => {
                        return status_error(
                            404,
                            "NotFound",
                            &format!("{} \"{n}\" not found", c.plural),
                        );
                    }
                };
                let new = if is_put {
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(v) => v,
                        Err(_) => return status_error(400, "BadRequest", "the body is not JSON"),
                    }
                } else {
                    let mut v = base.clone();
                    if content_type.starts_with("application/json-patch") {
                        // A `test` of an absent path against null passes, as on the real
                        // server (kube-runtime's finalizer relies on it).
                        let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(&body) else {
                            return status_error(400, "BadRequest", "not a JSON patch");
                        };
                        let ops: Vec<Value> = ops
                            .into_iter()
                            .filter(|op| {
                                !(op["op"] == "test"
                                    && op["value"].is_null()
                                    && op["path"]
                                        .as_str()
                                        .is_some_and(|p| v.pointer(p).is_none_or(Value::is_null)))
                            })
                            .collect();
                        let Ok(p) = serde_json::from_value::<json_patch::Patch>(Value::Array(ops))
                        else {
                            return status_error(400, "BadRequest", "not a JSON patch");
                        };
                        if let Err(e) = json_patch::patch(&mut v, &p) {
                            return status_error(
                                422,
                                "Invalid",
                                &format!("the JSON patch does not apply: {e}"),
                            );
                        }
                    } else {
                        let Ok(p) = serde_json::from_slice::<Value>(&body)
                            .or_else(|_| serde_yaml::from_slice::<Value>(&body))
                        else {
                            return status_error(400, "BadRequest", "not a merge patch");
                        };
                        json_patch::merge(&mut v, &p);
                    }
                    v
                };
                // Optimistic concurrency: a stale resourceVersion is a conflict.
                if let (Some(o), Some(want)) = (&old, new["metadata"]["resourceVersion"].as_str())
                    && o["metadata"]["resourceVersion"].as_str() != Some(want)
                {
                    return status_error(
                        409,
                        "Conflict",
                        &format!(
                            "the object has been modified; please apply your changes to the latest version ({want})"
                        ),
                    );
                }
                let mut new = new;
                if has_status {
                    if is_status {
                        let status = new["status"].clone();
                        new = base.clone();
                        new["status"] = status;
                    } else if let Some(o) = &old {
                        new["status"] = o["status"].clone();
                    }
                }
                new["metadata"]["name"] = json!(n);
                if let Some(n) = &ns {
                    new["metadata"]["namespace"] = json!(n);
                }
                let o = self.commit(&mut st, &c, new, old.as_ref());
                respond(StatusCode::OK, &o)
            }
            (Method::DELETE, Some(n)) => {
                let mut st = self.lock();
                match self.delete_one(&mut st, &c, &ns_s, &n) {
                    Some(o) => respond(StatusCode::OK, &o),
                    None => {
                        status_error(404, "NotFound", &format!("{} \"{n}\" not found", c.plural))
                    }
                }
            }
            _ => status_error(405, "MethodNotAllowed", "not supported"),
        }
    }

    fn watch(
        &self,
        c: Collection,
        ns: Option<String>,
        q: &BTreeMap<String, String>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let sel = q.get("labelSelector").cloned().unwrap_or_default();
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
        let mut live = self.tx.subscribe();
        let (past, latest) = {
            let st = self.lock();
            // From 0: every object now, as ADDED (kube's any_semantic lists first anyway).
            let past: Vec<Change> = if from == 0 {
                st.objects
                    .iter()
                    .filter(|((cc, _, _), _)| *cc == c)
                    .map(|((cc, _, _), o)| Change {
                        kind: "ADDED",
                        collection: cc.clone(),
                        object: o.clone(),
                        rv: st.rv,
                    })
                    .collect()
            } else {
                st.history
                    .iter()
                    .filter(|h| h.rv > from && h.collection == c)
                    .cloned()
                    .collect()
            };
            (past, st.rv)
        };
        let wanted = move |ch: &Change| {
            ch.collection == c
                && ns
                    .as_ref()
                    .is_none_or(|n| ch.object["metadata"]["namespace"].as_str() == Some(n.as_str()))
                && matches(&sel, &ch.object)
        };
        tokio::spawn(async move {
            let line = |ch: &Change| {
                let mut b = serde_json::to_vec(&json!({"type": ch.kind, "object": ch.object}))
                    .unwrap_or_default();
                b.push(b'\n');
                Ok(Frame::data(Bytes::from(b)))
            };
            for ch in past.iter().filter(|ch| wanted(ch)) {
                if tx.send(line(ch)).await.is_err() {
                    return;
                }
            }
            let mut last = latest;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return,
                    _ = tick.tick(), if bookmarks => {
                        let b = json!({"type": "BOOKMARK", "object": {"kind": "Bookmark", "apiVersion": "v1", "metadata": {"resourceVersion": last.to_string()}}});
                        let mut v = serde_json::to_vec(&b).unwrap_or_default();
                        v.push(b'\n');
                        if tx.send(Ok(Frame::data(Bytes::from(v)))).await.is_err() {
                            return;
                        }
                    }
                    ch = live.recv() => match ch {
                        Ok(ch) => {
                            if ch.rv <= latest {
                                continue;
                            }
                            last = ch.rv;
                            if wanted(&ch) && tx.send(line(&ch)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        let stream = tokio_stream_from(rx);
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            "content-type",
            "application/json"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        r
    }
}

/// A receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
