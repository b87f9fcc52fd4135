//! Microsoft Graph knowledge, kept in one place so the proxy itself stays generic HTTP.
//!
//! The error envelope, the request-id headers and the deviceConfigurationDeviceStatus
//! schema live here; the proxy, the emulator and the schema lint all call into this module.
//!
//! - [`batch`]: JSON batching (`$batch`): split into sub-requests, assemble answers.
//! - [`links`]: `@odata.nextLink` / `@odata.deltaLink` / `Location` rewritten to the proxy.
//! - [`odata`]: OData system query options normalised for matching (pure).
//! - [`chaos`]: the seeded fault, rate-limit and latency layer.
//! - [`lint`]: deviceStatuses bodies checked against the schema, warn only.

pub mod batch;
pub mod chaos;
pub mod links;
pub mod lint;
pub mod odata;

use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};

/// The real Graph, used when no `--upstream` is given.
pub const DEFAULT_UPSTREAM: &str = "https://graph.microsoft.com";
/// Graph's hosts in every national cloud: intercepted by default in forward-proxy mode,
/// and links pointing at any of them are Graph's own (rewritten to the proxy in reverse mode).
pub const GRAPH_HOSTS: [&str; 4] = [
    "graph.microsoft.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
];
/// Graph's per-request id, new on every live call.
pub const REQUEST_ID: &str = "request-id";
/// The client's own correlation id, echoed back by Graph (or set to `request-id`).
pub const CLIENT_REQUEST_ID: &str = "client-request-id";
/// [`REQUEST_ID`] and [`CLIENT_REQUEST_ID`] as header names, parsed once: every
/// exchange looks them up.
pub static REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID);
pub static CLIENT_REQUEST_ID_NAME: http::HeaderName =
    http::HeaderName::from_static(CLIENT_REQUEST_ID);
/// The content type Graph answers JSON with.
pub const JSON_CONTENT_TYPE: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
/// The request body of the Graph docs example for this route: `PATCH
/// /{version}/deviceManagement/deviceConfigurations/{id}/deviceStatuses/{id}` (update a
/// deviceConfigurationDeviceStatus), on one line. The demo records it and the tests send
/// it; recordings of it keep these exact bytes.
pub const SEED_PATCH_BODY: &str = r##"{"@odata.type":"#microsoft.graph.deviceConfigurationDeviceStatus","deviceDisplayName":"Device Display Name value","userName":"User Name value","deviceModel":"Device Model value","complianceGracePeriodExpirationDateTime":"2016-12-31T23:56:34.1389963+03:00","status":"compliant","lastReportedDateTime":"2017-01-01T00:01:57.2065179+03:00","userPrincipalName":"User Principal Name value"}"##;
/// `@odata.type` of the first resource graphvcr emulates.
pub const DEVICE_STATUS_ODATA_TYPE: &str = "#microsoft.graph.deviceConfigurationDeviceStatus";
/// The `status` enum of deviceConfigurationDeviceStatus (complianceStatus).
pub const DEVICE_STATUS_VALUES: [&str; 8] = [
    "unknown",
    "notApplicable",
    "compliant",
    "remediated",
    "nonCompliant",
    "error",
    "conflict",
    "notAssigned",
];

/// A Graph API version segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    Beta,
}

impl ApiVersion {
    pub fn parse(segment: &str) -> Option<Self> {
        match segment {
            "v1.0" => Some(Self::V1),
            "beta" => Some(Self::Beta),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1.0",
            Self::Beta => "beta",
        }
    }
}

/// Builds Graph's error body: `{"error":{"code","message","innerError":{date,request-id,client-request-id}}}`.
pub fn error_body(code: &str, message: &str, request_id: &str, client_request_id: &str) -> Value {
    json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": inner_error_date(SystemTime::now()),
                "request-id": request_id,
                "client-request-id": client_request_id,
            }
        }
    })
}

/// A complete Graph-shaped error response with `request-id` and `client-request-id` headers.
///
/// `client_request_id` is the caller's header when it sent one; Graph echoes it, and
/// otherwise sets it equal to `request-id`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    client_request_id: Option<&str>,
) -> Response<Full<Bytes>> {
    let request_id = new_request_id();
    let client_request_id = client_request_id.unwrap_or(&request_id).to_owned();
    let body = error_body(code, message, &request_id, &client_request_id);
    let mut response = json_response(status, &body);
    let headers = response.headers_mut();
    insert_header(headers, &REQUEST_ID_NAME, &request_id);
    insert_header(headers, &CLIENT_REQUEST_ID_NAME, &client_request_id);
    response
}

/// A JSON response with Graph's content type.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

fn insert_header(headers: &mut http::HeaderMap, name: &http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), value);
    }
}

/// Makes a replayed answer carry what a live one would: the caller's `client-request-id`
/// echoed (Graph always echoes it), and, when configured, a fresh `request-id` and `Date`
/// (both differ on every live call; tests that log or compare them see realistic values).
pub fn refresh_replayed_headers(
    headers: &mut http::HeaderMap,
    client_request_id: Option<&str>,
    regenerate_request_id: bool,
    regenerate_date: bool,
) {
    if regenerate_request_id {
        if let Some(old) = headers.get(&REQUEST_ID_NAME).cloned() {
            let fresh = new_request_id();
            // Without a client id Graph sets client-request-id equal to request-id.
            if headers.get(&CLIENT_REQUEST_ID_NAME) == Some(&old) {
                insert_header(headers, &CLIENT_REQUEST_ID_NAME, &fresh);
            }
            insert_header(headers, &REQUEST_ID_NAME, &fresh);
        }
    }
    if let Some(id) = client_request_id {
        insert_header(headers, &CLIENT_REQUEST_ID_NAME, id);
    }
    if regenerate_date {
        let now = httpdate::fmt_http_date(SystemTime::now());
        if let Ok(value) = HeaderValue::from_str(&now) {
            headers.insert(header::DATE, value);
        }
    }
}

/// A fresh GUID in the form Graph uses for `request-id`.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `innerError.date`: UTC, no zone designator, no fractions (e.g. `2025-01-22T19:17:04`).
pub fn inner_error_date(now: SystemTime) -> String {
    let mut text = humantime::format_rfc3339_seconds(now).to_string();
    if text.ends_with('Z') {
        text.pop();
    }
    text
}

/// The parts of a deviceStatuses item route:
/// `/{version}/deviceManagement/deviceConfigurations/{configId}/deviceStatuses/{statusId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatusRoute {
    pub version: ApiVersion,
    pub configuration_id: String,
    /// `None` for the collection itself.
    pub status_id: Option<String>,
}

/// Parses a request path into a deviceStatuses route. Empty segments (the Python SDK's
/// double slash after the version) are skipped, as Graph itself does.
pub fn parse_device_status_route(path: &str) -> Option<DeviceStatusRoute> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let version = ApiVersion::parse(segments.first()?)?;
    let rest = &segments[1..];
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match rest {
        [dm, dc, config, ds]
            if eq(dm, "deviceManagement")
                && eq(dc, "deviceConfigurations")
                && eq(ds, "deviceStatuses") =>
        {
            Some(DeviceStatusRoute {
                version,
                configuration_id: (*config).to_owned(),
                status_id: None,
            })
        }
        [dm, dc, config, ds, id]
            if eq(dm, "deviceManagement")
                && eq(dc, "deviceConfigurations")
                && eq(ds, "deviceStatuses") =>
        {
            Some(DeviceStatusRoute {
                version,
                configuration_id: (*config).to_owned(),
                status_id: Some((*id).to_owned()),
            })
        }
        _ => None,
    }
}

/// One way a body breaks the deviceConfigurationDeviceStatus schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON Pointer of the offending member (`""` for the body itself).
    pub pointer: String,
    pub problem: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.pointer, self.problem)
        }
    }
}

#[derive(Clone, Copy)]
enum PropertyType {
    String,
    DateTimeOffset,
    Status,
    Int32,
}

fn property_type(name: &str, version: ApiVersion) -> Option<PropertyType> {
    Some(match name {
        "id" | "deviceDisplayName" | "userName" | "deviceModel" | "userPrincipalName" => {
            PropertyType::String
        }
        "complianceGracePeriodExpirationDateTime" | "lastReportedDateTime" => {
            PropertyType::DateTimeOffset
        }
        "status" => PropertyType::Status,
        "platform" if version == ApiVersion::Beta => PropertyType::Int32,
        _ => return None,
    })
}

/// Checks a deviceConfigurationDeviceStatus body (as sent in a PATCH) against the schema:
/// known properties only, strings, RFC 3339 DateTimeOffsets, the `status` enum, and
/// `@odata.type` naming this entity. Returns every violation, not just the first.
pub fn validate_device_status(body: &Value, version: ApiVersion) -> Vec<SchemaViolation> {
    let Some(object) = body.as_object() else {
        return vec![SchemaViolation {
            pointer: String::new(),
            problem: "the body must be a JSON object".to_owned(),
        }];
    };
    let mut violations = Vec::new();
    for (name, value) in object {
        // Built only for a violation: a valid body (the usual case) formats nothing.
        let pointer = || format!("/{}", escape_pointer_token(name));
        if name == "@odata.type" {
            if value.as_str() != Some(DEVICE_STATUS_ODATA_TYPE) {
                violations.push(SchemaViolation {
                    pointer: pointer(),
                    problem: format!("must be \"{DEVICE_STATUS_ODATA_TYPE}\""),
                });
            }
            continue;
        }
        let Some(kind) = property_type(name, version) else {
            violations.push(SchemaViolation {
                pointer: pointer(),
                problem: format!(
                    "unknown property '{name}' on microsoft.graph.deviceConfigurationDeviceStatus"
                ),
            });
            continue;
        };
        if value.is_null() {
            continue;
        }
        let problem = match kind {
            PropertyType::String if !value.is_string() => Some("must be a string".to_owned()),
            PropertyType::DateTimeOffset => match value.as_str() {
                Some(text) if is_date_time_offset(text) => None,
                _ => Some("must be an RFC 3339 DateTimeOffset string".to_owned()),
            },
            PropertyType::Status => match value.as_str() {
                Some(text) if DEVICE_STATUS_VALUES.contains(&text) => None,
                _ => Some(format!(
                    "must be one of {}",
                    DEVICE_STATUS_VALUES.join(", ")
                )),
            },
            PropertyType::Int32 => match value.as_i64() {
                Some(n) if i32::try_from(n).is_ok() => None,
                _ => Some("must be a 32-bit integer".to_owned()),
            },
            _ => None,
        };
        if let Some(problem) = problem {
            violations.push(SchemaViolation {
                pointer: pointer(),
                problem,
            });
        }
    }
    violations
}

/// Escapes one JSON Pointer reference token (RFC 6901).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// RFC 3339 date-time with a mandatory offset and up to 7 fractional digits, as Graph's
/// Edm.DateTimeOffset (`2016-12-31T23:56:34.1389963+03:00`).
pub fn is_date_time_offset(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| bytes.get(i) == Some(&c);
    if !(digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && (at(10, b'T') || at(10, b't'))
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> u32 {
        text.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX)
    };
    let (month, day, hour, minute, second) = (
        number(5..7),
        number(8..10),
        number(11..13),
        number(14..16),
        number(17..19),
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        let start = i + 1;
        i = start;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let fraction = i - start;
        if fraction == 0 || fraction > 7 {
            return false;
        }
    }
    match bytes.get(i) {
        Some(b'Z' | b'z') => i + 1 == bytes.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3)
                && at(i + 3, b':')
                && digits(i + 4..i + 6)
                && i + 6 == bytes.len()
                && number(i + 1..i + 3) <= 23
                && number(i + 4..i + 6) <= 59
        }
        _ => false,
    }
}

/// Applies a PATCH body onto a stored entity (members present in the patch replace
/// the stored ones), keeping `id` and `@odata.type` fixed.
pub fn merge_device_status(entity: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (name, value) in patch {
        if name == "id" || name == "@odata.type" {
            continue;
        }
        entity.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_date(input: &str, expected: bool) {
        assert_eq!(is_date_time_offset(input), expected, "{input}");
    }

    #[test]
    fn date_time_offsets() {
        check_date("2016-12-31T23:56:34.1389963+03:00", true);
        check_date("2017-01-01T00:01:57Z", true);
        check_date("2017-01-01T00:01:57.123456Z", true);
        check_date("2017-01-01T00:01:57.12345678Z", false);
        check_date("2017-01-01T00:01:57", false);
        check_date("2017-13-01T00:01:57Z", false);
        check_date("String", false);
        check_date("", false);
        check_date("2017-01-01T00:01:57+3:00", false);
    }

    #[test]
    fn seed_body_is_valid_once_status_is_real() {
        let body: Value = serde_json::from_str(SEED_PATCH_BODY).expect("seed body is JSON");
        assert!(validate_device_status(&body, ApiVersion::V1).is_empty());
        let mut placeholder = body.clone();
        placeholder["status"] = json!("String");
        let violations = validate_device_status(&placeholder, ApiVersion::V1);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].pointer, "/status");
    }

    #[test]
    fn schema_violations_are_all_reported() {
        let body = json!({"bogus": 1, "userName": 5, "platform": 3});
        let mut pointers: Vec<String> = validate_device_status(&body, ApiVersion::V1)
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        pointers.sort();
        assert_eq!(pointers, vec!["/bogus", "/platform", "/userName"]);
        let beta = validate_device_status(&json!({"platform": 3}), ApiVersion::Beta);
        assert!(beta.is_empty());
    }

    #[test]
    fn routes() {
        let route = parse_device_status_route(
            "/v1.0//deviceManagement/deviceConfigurations/c1/deviceStatuses/s1",
        )
        .expect("route");
        assert_eq!(route.version, ApiVersion::V1);
        assert_eq!(route.configuration_id, "c1");
        assert_eq!(route.status_id.as_deref(), Some("s1"));
        assert!(parse_device_status_route(
            "/localtest/deviceManagement/deviceConfigurations/c/deviceStatuses/s"
        )
        .is_none());
        let collection = parse_device_status_route(
            "/beta/deviceManagement/deviceConfigurations/c/deviceStatuses",
        )
        .expect("collection");
        assert_eq!(collection.status_id, None);
    }

    #[test]
    fn error_envelope_shape() {
        let body = error_body("BadRequest", "nope", "r", "c");
        assert_eq!(body["error"]["code"], "BadRequest");
        assert_eq!(body["error"]["innerError"]["request-id"], "r");
        assert_eq!(body["error"]["innerError"]["client-request-id"], "c");
        let date = body["error"]["innerError"]["date"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(date.len(), 19, "{date}");
    }
}
