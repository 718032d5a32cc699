//! Schema helpers for the CRDs.

use schemars::{Schema, SchemaGenerator};

/// A `[]Condition` that server-side apply merges per condition (`x-kubernetes-list-type:
/// map` keyed by `type`), as Kubernetes' own condition lists are.
pub fn condition_list(generator: &mut SchemaGenerator) -> Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
