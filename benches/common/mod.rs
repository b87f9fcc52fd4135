//! Shared fixtures: the same deviceStatuses PATCH interactions the load benchmark
//! (examples/loadbench.rs) records, about 500 bytes of response each.

#![allow(dead_code)]

use bytes::Bytes;
use graphvcr::record::{Header, Interaction, RecordedRequest, RecordedResponse, SCHEMA_VERSION};
use serde_json::{json, Map, Value};

pub fn status_path(index: usize) -> String {
    format!(
        "/v1.0/deviceManagement/deviceConfigurations/bench-configuration/deviceStatuses/{index:08x}-0000-4000-8000-{:012x}",
        index * 7919
    )
}

/// The PATCH body of interaction `index`, keys in the recorded order.
pub fn patch_body(index: usize) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert(
        "@odata.type".into(),
        json!("#microsoft.graph.deviceConfigurationDeviceStatus"),
    );
    body.insert("deviceDisplayName".into(), json!(format!("Device {index}")));
    body.insert("userName".into(), json!(format!("User {index}")));
    body.insert("deviceModel".into(), json!(format!("Model {}", index % 97)));
    body.insert(
        "complianceGracePeriodExpirationDateTime".into(),
        json!("2026-12-01T10:00:00Z"),
    );
    body.insert("status".into(), json!("compliant"));
    body.insert("lastReportedDateTime".into(), json!("2026-11-01T08:00:00Z"));
    body.insert(
        "userPrincipalName".into(),
        json!(format!("user{index}@contoso.example")),
    );
    body
}

/// The body as a client sends it at replay: the same members in the reverse order.
pub fn reordered_body(index: usize) -> Vec<u8> {
    let mut out = Map::new();
    for (name, value) in patch_body(index).into_iter().rev() {
        out.insert(name, value);
    }
    Value::Object(out).to_string().into_bytes()
}

pub fn header(name: &str, value: &str) -> Header {
    Header::new(name, value.as_bytes())
}

/// A stored interaction as recording it would leave it.
pub fn interaction(cassette: &str, index: usize) -> Interaction {
    let patch = patch_body(index);
    let mut entity = Map::new();
    entity.insert(
        "@odata.context".into(),
        json!("https://graph.microsoft.com/v1.0/$metadata#deviceManagement/deviceConfigurations('bench-configuration')/deviceStatuses/$entity"),
    );
    entity.insert("id".into(), json!(format!("{index:08x}")));
    entity.extend(patch.clone());
    Interaction {
        schema: SCHEMA_VERSION,
        id: 0,
        cassette: cassette.to_owned(),
        recorded_at: "2026-11-29T00:00:00.000Z".to_owned(),
        upstream_latency_ms: 1.0,
        request: RecordedRequest {
            method: "PATCH".into(),
            uri: status_path(index),
            host: None,
            headers: vec![
                header("content-type", "application/json"),
                header("authorization", "Bearer [REDACTED]"),
            ],
            body: Bytes::from(Value::Object(patch).to_string()),
        },
        response: RecordedResponse {
            status: 200,
            headers: vec![
                header("content-type", graphvcr::graph::JSON_CONTENT_TYPE),
                header("request-id", "7b5c0f35-6c52-4f0a-9e4c-2f2e1c3f9d10"),
            ],
            body: Bytes::from(Value::Object(entity).to_string()),
        },
    }
}
