//! What `kubectl` needs besides CRUD: legacy discovery (`/api`, `/apis`, each group
//! version's `APIResourceList`, `/version`), built-in kinds plus every
//! CustomResourceDefinition stored in the server, and server-side printing (`Table`,
//! `meta.k8s.io/v1`) with a CRD's `additionalPrinterColumns` evaluated as the real
//! server's table convertor does (simple JSON paths; `date` columns as a human age).

use serde_json::{Value, json};

/// A built-in resource: (group version prefix, plural, kind, namespaced, short names).
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
);

/// The built-in resources the controller and its tests use.
pub const BUILTIN: &[Builtin] = &[
    ("/api/v1", "namespaces", "Namespace", false, &["ns"]),
    ("/api/v1", "pods", "Pod", true, &["po"]),
    (
        "/api/v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
    ),
    ("/api/v1", "secrets", "Secret", true, &[]),
    ("/api/v1", "configmaps", "ConfigMap", true, &["cm"]),
    ("/api/v1", "events", "Event", true, &["ev"]),
    ("/apis/coordination.k8s.io/v1", "leases", "Lease", true, &[]),
    ("/apis/events.k8s.io/v1", "events", "Event", true, &["ev"]),
    (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
    ),
];

/// Where the server keeps CRDs.
pub const CRD_PREFIX: &str = "/apis/apiextensions.k8s.io/v1";

/// The verbs every resource here answers.
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "get",
    "list",
    "patch",
    "update",
    "watch",
    "deletecollection",
];

/// A resource as discovery lists it.
#[derive(Debug, Clone)]
pub struct Resource {
    pub prefix: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub status: bool,
    /// The CRD's printer columns for this version (empty: built-in).
    pub columns: Vec<Value>,
}

/// Every resource: the built-ins, then each served version of each stored CRD.
pub fn resources(crds: &[Value], status_kinds: &[&str]) -> Vec<Resource> {
    let mut out: Vec<Resource> = BUILTIN
        .iter()
        .map(|(prefix, plural, kind, namespaced, short)| Resource {
            prefix: (*prefix).into(),
            plural: (*plural).into(),
            singular: kind.to_lowercase(),
            kind: (*kind).into(),
            namespaced: *namespaced,
            short_names: short.iter().map(|s| (*s).to_string()).collect(),
            status: status_kinds.contains(plural),
            columns: Vec::new(),
        })
        .collect();
    for crd in crds {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        ) else {
            continue;
        };
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"] == false {
                continue;
            }
            let Some(name) = v["name"].as_str() else {
                continue;
            };
            out.push(Resource {
                prefix: format!("/apis/{group}/{name}"),
                plural: plural.into(),
                singular: spec["names"]["singular"]
                    .as_str()
                    .map_or_else(|| kind.to_lowercase(), str::to_string),
                kind: kind.into(),
                namespaced: spec["scope"] != "Cluster",
                short_names: spec["names"]["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
                status: v["subresources"]["status"].is_object(),
                columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// `GET /api`.
pub fn api_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

/// `GET /apis`.
pub fn group_list(resources: &[Resource]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources {
        let Some(gv) = r.prefix.strip_prefix("/apis/") else {
            continue;
        };
        let (g, v) = gv.split_once('/').unwrap_or((gv, ""));
        match groups.iter_mut().find(|(name, _)| name == g) {
            Some((_, vs)) if !vs.iter().any(|x| x == v) => vs.push(v.to_string()),
            Some(_) => {}
            None => groups.push((g.to_string(), vec![v.to_string()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `/apis/GROUP/VERSION`: `None` when nothing is served there.
pub fn resource_list(prefix: &str, resources: &[Resource]) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources.iter().filter(|r| r.prefix == prefix) {
        list.push(
            json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS, "shortNames": r.short_names}),
        );
        if r.status {
            list.push(
                json!({"name": format!("{}/status", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = prefix
        .trim_start_matches("/apis/")
        .trim_start_matches("/api/");
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// `GET /version`.
pub fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-fake-apiserver",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-12-01T00:00:00Z",
        "goVersion": "", "compiler": "", "platform": "linux/amd64"})
}

/// Whether a request asks for a `Table`.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// A simple JSON path (`.status.phase`, `.spec.items[0].name`) on `obj`.
fn eval(path: &str, obj: &Value) -> Option<Value> {
    let mut cur = obj;
    for part in path.trim_start_matches('.').split('.') {
        if part.is_empty() {
            continue;
        }
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    (!cur.is_null()).then(|| cur.clone())
}

/// One cell, as the real server's CRD table convertor makes it.
fn cell(kind: &str, v: Option<Value>, now: i64) -> Value {
    let Some(v) = v else { return Value::Null };
    match kind {
        "string" => match v {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
        "integer" => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
        "date" => match v.as_str().and_then(parse_rfc3339) {
            Some(t) => json!(human_duration(now - t)),
            None => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

/// The server's `Table` for `items` (a list or one object). CRDs: NAME then the
/// printer columns; built-ins: NAME and AGE.
pub fn table(items: &[Value], columns: &[Value], rv: u64, now: i64) -> Value {
    let columns: Vec<Value> = if columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        columns.to_vec()
    };
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    for c in &columns {
        defs.push(json!({"name": c["name"], "type": c["type"], "format": c["format"].as_str().unwrap_or(""),
            "description": c["description"].as_str().map_or_else(
                || format!("Custom resource definition column (in JSONPath format): {}", c["jsonPath"].as_str().unwrap_or("")),
                str::to_string),
            "priority": c["priority"].as_i64().unwrap_or(0)}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &columns {
                cells.push(cell(
                    c["type"].as_str().unwrap_or("string"),
                    eval(c["jsonPath"].as_str().unwrap_or(""), o),
                    now,
                ));
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": defs, "rows": rows})
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-12-03T10:00:00Z`, fractions
/// ignored).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// apimachinery's `duration.HumanDuration`, for whole seconds.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = hours / 24 % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_shows_them() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(
            parse_rfc3339("2026-12-03T15:00:00.123Z"),
            Some(1_796_310_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn printer_columns_follow_the_crd_table_convertor() {
        let cols = vec![
            json!({"name": "Status", "type": "string", "jsonPath": ".status.phase"}),
            json!({"name": "Round", "type": "integer", "jsonPath": ".status.round"}),
            json!({"name": "Ready", "type": "boolean", "jsonPath": ".status.ready"}),
            json!({"name": "First", "type": "string", "jsonPath": ".spec.vms[0].name"}),
        ];
        let obj = json!({"metadata": {"name": "p"}, "spec": {"vms": [{"name": "a"}]},
            "status": {"phase": "Started", "round": 2.0, "ready": "yes"}});
        let t = table(&[obj], &cols, 7, 0);
        assert_eq!(t["rows"][0]["cells"], json!(["p", "Started", 2, null, "a"]));
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }
}
