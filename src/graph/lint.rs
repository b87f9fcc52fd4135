//! Schema lint for recorded deviceStatuses traffic: a cassette recorded against a tenant
//! (or a stand-in) that answers with unknown properties or bad enum or date values would
//! make tests pass against data Graph never sends. Problems are reported, never blocked.

use serde_json::Value;

use super::{parse_device_status_route, validate_device_status, SchemaViolation};

/// One problem found in an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `request` or `response`.
    pub side: &'static str,
    pub violation: SchemaViolation,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} body {}", self.side, self.violation)
    }
}

/// A request body to check: its bytes, or the caller's parse of them (matching has
/// usually parsed it already, and a parse is most of the lint's cost).
#[derive(Debug, Clone, Copy)]
pub enum RequestBody<'a> {
    Bytes(&'a [u8]),
    Parsed(&'a Value),
}

/// Checks a deviceStatuses exchange: the request body of a PATCH or POST, and a
/// successful JSON response (an entity, or each member of a collection's `value`).
/// Other routes, and bodies that are not JSON, give no findings.
pub fn exchange(
    method: &str,
    path: &str,
    request_body: RequestBody<'_>,
    status: u16,
    response_body: &[u8],
) -> Vec<Finding> {
    let Some(route) = parse_device_status_route(path) else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    if matches!(method, "PATCH" | "POST") {
        let parsed;
        let body = match request_body {
            RequestBody::Parsed(value) => Some(value),
            RequestBody::Bytes([]) => None,
            RequestBody::Bytes(bytes) => {
                parsed = serde_json::from_slice::<Value>(bytes).ok();
                parsed.as_ref()
            }
        };
        if let Some(body) = body {
            findings.extend(validate_device_status(body, route.version).into_iter().map(
                |violation| Finding {
                    side: "request",
                    violation,
                },
            ));
        }
    }
    if !(200..300).contains(&status) || response_body.is_empty() {
        return findings;
    }
    let Ok(mut body) = serde_json::from_slice::<Value>(response_body) else {
        return findings;
    };
    let entities: Vec<(String, &mut Value)> = match (&route.status_id, &mut body) {
        (None, Value::Object(map)) => match map.get_mut("value") {
            Some(Value::Array(items)) => items
                .iter_mut()
                .enumerate()
                .map(|(i, item)| (format!("/value/{i}"), item))
                .collect(),
            _ => Vec::new(),
        },
        (Some(_), body) => vec![(String::new(), body)],
        _ => Vec::new(),
    };
    for (prefix, entity) in entities {
        strip_annotations(entity);
        for violation in validate_device_status(entity, route.version) {
            findings.push(Finding {
                side: "response",
                violation: SchemaViolation {
                    pointer: format!("{prefix}{}", violation.pointer),
                    problem: violation.problem,
                },
            });
        }
    }
    findings
}

/// Instance annotations (`@odata.context`, `@odata.etag`, …) are not properties; the
/// schema check sees everything else, including `@odata.type`. Removed in place: the
/// parsed body is the lint's own.
fn strip_annotations(entity: &mut Value) {
    if let Value::Object(map) = entity {
        map.retain(|name, _| !name.starts_with("@odata.") || name == "@odata.type");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: &str = "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses/s";
    const LIST: &str = "/beta/deviceManagement/deviceConfigurations/c/deviceStatuses";

    fn pointers(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .map(|f| format!("{} {}", f.side, f.violation.pointer))
            .collect()
    }

    #[test]
    fn findings() {
        let ok = exchange(
            "PATCH",
            ITEM,
            RequestBody::Bytes(br#"{"status":"compliant"}"#),
            200,
            br#"{"@odata.context":"x","id":"s","status":"compliant"}"#,
        );
        assert!(ok.is_empty(), "{ok:?}");
        let bad = exchange(
            "PATCH",
            ITEM,
            RequestBody::Bytes(br#"{"status":"String"}"#),
            200,
            br#"{"id":"s","extra":1}"#,
        );
        assert_eq!(pointers(&bad), ["request /status", "response /extra"]);
        let list = exchange(
            "GET",
            LIST,
            RequestBody::Bytes(b""),
            200,
            br#"{"value":[{"id":"a"},{"id":"b","lastReportedDateTime":"yesterday"}]}"#,
        );
        assert_eq!(pointers(&list), ["response /value/1/lastReportedDateTime"]);
        let none = RequestBody::Bytes(b"");
        assert!(exchange("GET", "/v1.0/me", none, 200, br#"{"x":1}"#).is_empty());
        assert!(exchange("GET", ITEM, none, 404, br#"{"error":{}}"#).is_empty());
    }

    #[test]
    fn a_parsed_request_body_gives_the_findings_of_its_bytes() {
        let bytes = br#"{"status":"String","bogus":1,"lastReportedDateTime":"later"}"#;
        let parsed: Value = serde_json::from_slice(bytes).expect("json");
        let from_bytes = exchange("PATCH", ITEM, RequestBody::Bytes(bytes), 204, b"");
        let from_value = exchange("PATCH", ITEM, RequestBody::Parsed(&parsed), 204, b"");
        assert_eq!(from_bytes.len(), 3, "{from_bytes:?}");
        assert_eq!(from_value, from_bytes);
        // Not JSON: nothing to check on the request side.
        assert!(exchange("PATCH", ITEM, RequestBody::Bytes(b"{"), 204, b"").is_empty());
    }
}
