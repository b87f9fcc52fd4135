//! JSON batching: `POST /{v1.0|beta}/$batch` carrying up to 20 sub-requests
//! (`{"requests":[{"id","method","url","headers","body","dependsOn"}]}`).
//!
//! A batch recorded as one opaque exchange would replay only when sent again with the
//! same sub-requests in the same order; SDKs batch whatever is pending, so order and
//! membership vary run to run. The proxy therefore also keeps every sub-request as an
//! interaction of its own (path `/{version}{url}`), and answers a replayed batch one
//! sub-request at a time. This module parses and assembles; the proxy looks things up.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::ApiVersion;

/// Graph refuses batches of more than 20 requests.
pub const MAX_REQUESTS: usize = 20;

/// Whether `method path` is a JSON batch, and for which version. Empty segments (the
/// Python SDK's double slash) are skipped; `%24batch` is `$batch`.
pub fn detect(method: &str, path: &str) -> Option<ApiVersion> {
    if method != "POST" {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [version, last]
            if last.eq_ignore_ascii_case("$batch") || last.eq_ignore_ascii_case("%24batch") =>
        {
            ApiVersion::parse(version)
        }
        _ => None,
    }
}

/// Why a batch body is not one the proxy splits (it is then handled as one request).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("the batch body is not JSON with a `requests` array: {0}")]
    Shape(String),
    #[error("the batch holds {0} requests; Graph allows at most {MAX_REQUESTS}")]
    TooMany(usize),
    #[error("the batch holds no requests")]
    Empty,
    #[error("the batch uses the id {0:?} twice")]
    DuplicateId(String),
    #[error("sub-request {id:?} has the url {url:?}; a batch url is relative, like \"/me\"")]
    AbsoluteUrl { id: String, url: String },
}

#[derive(Deserialize)]
struct WireBatch {
    requests: Vec<WireRequest>,
}

#[derive(Deserialize)]
struct WireRequest {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default, rename = "dependsOn")]
    depends_on: Vec<String>,
}

/// One sub-request, in the form of a request of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub id: String,
    /// Upper-case, as HTTP methods are sent.
    pub method: String,
    /// `/{version}{url}`: the path and query the sub-request would have on its own.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub depends_on: Vec<String>,
}

/// Splits a batch body into its sub-requests.
pub fn parse(version: ApiVersion, body: &[u8]) -> Result<Vec<Part>, BatchError> {
    let wire: WireBatch =
        serde_json::from_slice(body).map_err(|e| BatchError::Shape(e.to_string()))?;
    if wire.requests.is_empty() {
        return Err(BatchError::Empty);
    }
    if wire.requests.len() > MAX_REQUESTS {
        return Err(BatchError::TooMany(wire.requests.len()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut parts = Vec::with_capacity(wire.requests.len());
    for request in wire.requests {
        if !seen.insert(request.id.clone()) {
            return Err(BatchError::DuplicateId(request.id));
        }
        if request.url.contains("://") {
            return Err(BatchError::AbsoluteUrl {
                id: request.id,
                url: request.url,
            });
        }
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(name, value)| {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                (name.to_ascii_lowercase(), text)
            })
            .collect();
        let content_type = headers
            .iter()
            .find(|(name, _)| name == "content-type")
            .map(|(_, value)| value.as_str());
        let body = match &request.body {
            None | Some(Value::Null) => Bytes::new(),
            Some(value) => body_bytes(value, content_type),
        };
        let separator = if request.url.starts_with('/') {
            ""
        } else {
            "/"
        };
        parts.push(Part {
            id: request.id,
            method: request.method.to_ascii_uppercase(),
            uri: format!("/{}{separator}{}", version.as_str(), request.url),
            headers,
            body,
            depends_on: request.depends_on,
        });
    }
    Ok(parts)
}

/// A JSON body is sent as a JSON value; any other body as a base64 string (Graph's rule).
fn body_bytes(value: &Value, content_type: Option<&str>) -> Bytes {
    let json = content_type.is_none_or(|ct| ct.to_ascii_lowercase().contains("json"));
    match value {
        Value::String(text) if !json => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_or_else(|_| Bytes::from(text.clone()), Bytes::from),
        other => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// One sub-response, in the form of a response of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct SubAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl SubAnswer {
    /// The entry of `responses[]` for sub-request `id`.
    pub fn to_json(&self, id: &str) -> Value {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(value.clone())))
            .collect();
        let mut entry = json!({"id": id, "status": self.status, "headers": headers});
        if !self.body.is_empty() {
            entry["body"] = match serde_json::from_slice::<Value>(&self.body) {
                Ok(value) => value,
                Err(_) => {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&self.body))
                }
            };
        }
        entry
    }
}

/// The sub-responses of a batch response, by id. Entries that are not well formed are
/// left out (their sub-requests are then simply not recorded on their own).
pub fn responses(body: &[u8]) -> HashMap<String, SubAnswer> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return HashMap::new();
    };
    let Some(items) = value.get("responses").and_then(Value::as_array) else {
        return HashMap::new();
    };
    let mut answers = HashMap::new();
    for item in items {
        let (Some(id), Some(status)) = (
            item.get("id").and_then(Value::as_str),
            item.get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
        ) else {
            continue;
        };
        let headers: Vec<(String, String)> = item
            .get("headers")
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .map(|(name, value)| {
                        let text = value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned);
                        (name.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let content_type = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.as_str());
        let body = match item.get("body") {
            None | Some(Value::Null) => Bytes::new(),
            Some(value) => body_bytes(value, content_type),
        };
        answers.insert(
            id.to_owned(),
            SubAnswer {
                status,
                headers,
                body,
            },
        );
    }
    answers
}

/// The first dependency of `part` that did not succeed, given the statuses answered so far.
/// Graph answers such a sub-request 424 without running it.
pub fn failed_dependency<'a>(part: &'a Part, answered: &HashMap<String, u16>) -> Option<&'a str> {
    part.depends_on
        .iter()
        .find(|dep| {
            answered
                .get(dep.as_str())
                .is_none_or(|status| *status >= 400)
        })
        .map(String::as_str)
}

/// The batch response body: `{"responses":[…]}` in request order.
pub fn assemble(responses: Vec<Value>) -> Bytes {
    Bytes::from(json!({ "responses": responses }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect("POST", "/v1.0/$batch"), Some(ApiVersion::V1));
        assert_eq!(detect("POST", "/beta//$BATCH"), Some(ApiVersion::Beta));
        assert_eq!(detect("POST", "/v1.0/%24batch"), Some(ApiVersion::V1));
        assert_eq!(detect("GET", "/v1.0/$batch"), None);
        assert_eq!(detect("POST", "/v2.0/$batch"), None);
        assert_eq!(detect("POST", "/v1.0/me/$batch"), None);
    }

    #[test]
    fn parsing() {
        let body = br#"{"requests":[
            {"id":"1","method":"patch","url":"/deviceManagement/x","headers":{"Content-Type":"application/json"},"body":{"status":"compliant"}},
            {"id":"2","method":"GET","url":"me?$select=id","dependsOn":["1"]},
            {"id":"3","method":"PUT","url":"/x/content","headers":{"content-type":"text/plain"},"body":"aGVsbG8="}
        ]}"#;
        let parts = parse(ApiVersion::Beta, body).expect("parts");
        assert_eq!(parts[0].method, "PATCH");
        assert_eq!(parts[0].uri, "/beta/deviceManagement/x");
        assert_eq!(
            parts[0].headers,
            vec![("content-type".into(), "application/json".into())]
        );
        assert_eq!(&parts[0].body[..], br#"{"status":"compliant"}"#);
        assert_eq!(parts[1].uri, "/beta/me?$select=id");
        assert_eq!(parts[1].depends_on, vec!["1"]);
        assert_eq!(&parts[2].body[..], b"hello");
        let check = |body: &str, expected: BatchError| {
            assert_eq!(parse(ApiVersion::V1, body.as_bytes()), Err(expected));
        };
        check(r#"{"requests":[]}"#, BatchError::Empty);
        let twice = r#"{"requests":[{"id":"a","method":"GET","url":"/me"},{"id":"a","method":"GET","url":"/me"}]}"#;
        check(twice, BatchError::DuplicateId("a".into()));
        let many: Vec<String> = (0..21)
            .map(|i| format!(r#"{{"id":"{i}","method":"GET","url":"/me"}}"#))
            .collect();
        check(
            &format!(r#"{{"requests":[{}]}}"#, many.join(",")),
            BatchError::TooMany(21),
        );
        assert!(matches!(
            parse(ApiVersion::V1, b"[1]"),
            Err(BatchError::Shape(_))
        ));
    }

    #[test]
    fn responses_round_trip() {
        let answer = SubAnswer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(br#"{"id":"s1"}"#),
        };
        let empty = SubAnswer {
            status: 204,
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let body = assemble(vec![answer.to_json("1"), empty.to_json("2")]);
        let parsed = responses(&body);
        assert_eq!(parsed.get("1"), Some(&answer));
        assert_eq!(parsed.get("2"), Some(&empty));
        let mut answered = HashMap::new();
        answered.insert("1".to_owned(), 200);
        answered.insert("2".to_owned(), 599);
        let part = |deps: &[&str]| Part {
            id: "3".into(),
            method: "GET".into(),
            uri: "/v1.0/me".into(),
            headers: Vec::new(),
            body: Bytes::new(),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
        };
        assert_eq!(failed_dependency(&part(&["1"]), &answered), None);
        assert_eq!(failed_dependency(&part(&["1", "2"]), &answered), Some("2"));
    }
}
