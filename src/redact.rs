//! Credentials are removed here, before a request or response reaches the store or a
//! log line. What is removed is listed in README.md and SECURITY-relevant: changing
//! this module changes what can leak to disk.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::record::{headers_from_map, Header};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Headers whose values are always replaced.
pub const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Members of form and JSON bodies that carry tokens (OAuth token requests and responses
/// to login.microsoftonline.com and its national-cloud twins). `code` is deliberately
/// absent: Graph's error envelope uses it, and replayed errors must stay intact.
pub const TOKEN_FIELDS: [&str; 7] = [
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "assertion",
    "client_assertion",
    "password",
];

/// Removes credentials; cheap to clone and shared by every request.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra_headers: Vec<String>,
}

impl Redactor {
    /// `extra_headers` are redacted on top of [`CREDENTIAL_HEADERS`].
    pub fn new(extra_headers: &[String]) -> Self {
        Self {
            extra_headers: extra_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    fn is_secret_header(&self, name: &str) -> bool {
        CREDENTIAL_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
            || self
                .extra_headers
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
    }

    /// A copy of `headers` safe to store. The auth scheme is kept (`Bearer [REDACTED]`)
    /// so a reader can still see that a token was sent.
    pub fn headers(&self, headers: &HeaderMap) -> Vec<Header> {
        let mut out = headers_from_map(headers);
        for header in &mut out {
            if self.is_secret_header(&header.name) {
                header.value = redacted_value(&header.name, &header.value_bytes());
                header.binary = false;
            }
        }
        out
    }

    /// The request target with token-bearing query parameters (OAuth fields, SAS `sig`)
    /// replaced; other parameters stay byte-exact.
    pub fn uri(&self, path_and_query: &str) -> String {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return path_and_query.to_owned();
        };
        let parts: Vec<String> = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((name, _)) if is_token_field(name) || name.eq_ignore_ascii_case("sig") => {
                    format!("{name}=%5BREDACTED%5D")
                }
                _ => part.to_owned(),
            })
            .collect();
        format!("{path}?{}", parts.join("&"))
    }

    /// A copy of `body` with token members replaced, or the same bytes when there were none.
    pub fn body(&self, content_type: Option<&str>, body: &Bytes) -> Bytes {
        if body.is_empty() {
            return body.clone();
        }
        let content_type = content_type.unwrap_or("").to_ascii_lowercase();
        if content_type.contains("x-www-form-urlencoded") {
            if let Some(redacted) = redact_form(body) {
                return redacted;
            }
        } else if content_type.contains("json") || body.first() == Some(&b'{') {
            if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
                if redact_json(&mut value) {
                    return Bytes::from(value.to_string());
                }
            }
        }
        body.clone()
    }
}

fn redacted_value(name: &str, value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    if name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("proxy-authorization")
    {
        if let Some((scheme, rest)) = text.split_once(' ') {
            if !rest.trim().is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                return format!("{scheme} {REDACTED}");
            }
        }
    }
    REDACTED.to_owned()
}

fn is_token_field(name: &str) -> bool {
    TOKEN_FIELDS.iter().any(|f| name.eq_ignore_ascii_case(f))
}

fn redact_form(body: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let mut changed = false;
    let parts: Vec<String> = text
        .split('&')
        .map(|part| match part.split_once('=') {
            Some((name, _)) if is_token_field(name) => {
                changed = true;
                format!("{name}=%5BREDACTED%5D")
            }
            _ => part.to_owned(),
        })
        .collect();
    changed.then(|| Bytes::from(parts.join("&")))
}

/// Replaces token members anywhere in the document; returns whether anything changed.
fn redact_json(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            for (name, item) in map.iter_mut() {
                if is_token_field(name) && item.is_string() {
                    *item = Value::String(REDACTED.to_owned());
                    changed = true;
                } else {
                    changed |= redact_json(item);
                }
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |c, item| redact_json(item) | c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credential_headers_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer eyJ.secret.sig"),
        );
        headers.insert("cookie", HeaderValue::from_static("session=abc"));
        headers.insert("x-api-key", HeaderValue::from_static("k-123"));
        headers.insert("accept", HeaderValue::from_static("application/json"));
        let redacted = Redactor::new(&["X-Api-Key".to_owned()]).headers(&headers);
        let text = serde_json::to_string(&redacted).unwrap_or_default();
        for secret in ["eyJ.secret.sig", "session=abc", "k-123"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("Bearer [REDACTED]"));
        assert!(text.contains("application/json"));
    }

    #[test]
    fn token_bodies_are_redacted() {
        let redactor = Redactor::default();
        let form =
            Bytes::from_static(b"grant_type=client_credentials&client_secret=s3cr3t&scope=x");
        let out = redactor.body(Some("application/x-www-form-urlencoded"), &form);
        assert_eq!(
            &out[..],
            b"grant_type=client_credentials&client_secret=%5BREDACTED%5D&scope=x"
        );
        let json = Bytes::from_static(
            br#"{"token_type":"Bearer","access_token":"eyJabc","refresh_token":"r1"}"#,
        );
        let out = redactor.body(Some("application/json"), &json);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("eyJabc") && !text.contains("r1\""), "{text}");
        let plain = Bytes::from_static(br#"{"status":"compliant"}"#);
        assert_eq!(redactor.body(Some("application/json"), &plain), plain);
    }
}
