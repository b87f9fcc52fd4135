//! Request normalisation and match keys. Pure: no I/O, no sled, no hyper.
//!
//! Two requests match when their normalised forms are equal, and the store indexes
//! interactions by a hash of that form, so a lookup never scans a cassette.
//!
//! Normalisation (the default rules):
//! - method as sent (HTTP methods are case-sensitive);
//! - path byte-exact except percent-encoding: escapes of unreserved characters are
//!   decoded and the remaining escapes upper-cased, so `%7e`, `%7E` and `~` agree.
//!   Double slashes are kept: the Python SDK sends them in record and replay alike;
//! - query as a multiset of `name=value` pairs (order-free), each part normalised like
//!   the path, `+` read as a space;
//! - body: JSON (by `Content-Type`, or when the bytes look and parse like JSON) as a
//!   canonical value: keys sorted, no whitespace, numbers by value (`1.0` = `1` = `1e0`);
//!   anything else byte for byte; an empty body equals no body.

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

/// The parts of a request that take part in matching, borrowed from wherever they live.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The target host in forward-proxy mode; `None` in reverse mode (one upstream).
    pub host: Option<&'a str>,
    /// Path and query as received (`/v1.0/me?$select=id`).
    pub path_and_query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// A request reduced to what matching compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    /// Sorted `(name, value)` pairs.
    pub query: Vec<(String, String)>,
    pub body: NormalBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NormalBody {
    Empty,
    Json(Value),
    Bytes(Bytes),
}

/// The index key of a normalised request: a 32-byte BLAKE3 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchKey(pub [u8; 32]);

impl MatchKey {
    pub fn to_hex(&self) -> String {
        self.0.iter().fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }
}

/// Normalises a stored (already redacted) request. The live request is redacted the
/// same way first, so both sides are compared in the same form.
pub fn normalize_recorded(request: &crate::record::RecordedRequest) -> Normalized {
    normalize(&RequestView {
        method: &request.method,
        host: request.host.as_deref(),
        path_and_query: &request.uri,
        content_type: crate::record::header_value(&request.headers, "content-type"),
        body: &request.body,
    })
}

/// Normalises a request under the default rules.
pub fn normalize(request: &RequestView<'_>) -> Normalized {
    let (path, query) = match request.path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path_and_query, None),
    };
    Normalized {
        method: request.method.to_owned(),
        host: request.host.map(|h| h.to_ascii_lowercase()),
        path: normalize_percent(path, false),
        query: query.map(normalize_query).unwrap_or_default(),
        body: normalize_body(request.content_type, request.body),
    }
}

impl Normalized {
    /// The store's index key. Fields are framed with separators that cannot occur in
    /// them, so two different requests cannot produce the same pre-image.
    pub fn key(&self) -> MatchKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.method.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.host.as_deref().unwrap_or("").as_bytes());
        hasher.update(b"\0");
        hasher.update(self.path.as_bytes());
        hasher.update(b"\0");
        for (name, value) in &self.query {
            hasher.update(name.as_bytes());
            hasher.update(b"=");
            hasher.update(value.as_bytes());
            hasher.update(b"&");
        }
        hasher.update(b"\0");
        match &self.body {
            NormalBody::Empty => {
                hasher.update(b"e");
            }
            NormalBody::Json(value) => {
                hasher.update(b"j");
                let mut text = String::new();
                canonical_json(value, &mut text);
                hasher.update(text.as_bytes());
            }
            NormalBody::Bytes(bytes) => {
                hasher.update(b"b");
                hasher.update(bytes);
            }
        }
        MatchKey(*hasher.finalize().as_bytes())
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters and upper-cases the rest; a `%` not followed
/// by two hex digits is kept literally (it cannot be decoded, so it is compared as sent).
pub fn normalize_percent(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            if let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                let decoded = high * 16 + low;
                if is_unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    let _ = write!(out, "%{decoded:02X}");
                }
                i += 3;
                continue;
            }
        }
        if plus_is_space && byte == b'+' {
            out.push_str("%20");
            i += 1;
            continue;
        }
        // `text` is a &str, so copying whole chars keeps it valid UTF-8.
        let width = utf8_width(byte);
        out.push_str(&text[i..(i + width).min(text.len())]);
        i += width;
    }
    out
}

fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn normalize_query(query: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (
                normalize_percent(name, true),
                normalize_percent(value, true),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

fn normalize_body(content_type: Option<&str>, body: &[u8]) -> NormalBody {
    if body.is_empty() {
        return NormalBody::Empty;
    }
    if is_json_candidate(content_type, body) {
        // serde_json bounds nesting (128 levels): deeper input fails to parse and falls
        // back to exact bytes instead of recursing without limit.
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            return NormalBody::Json(value);
        }
    }
    NormalBody::Bytes(Bytes::copy_from_slice(body))
}

fn is_json_candidate(content_type: Option<&str>, body: &[u8]) -> bool {
    if content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("json")) {
        return true;
    }
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// Writes `value` in canonical form: object keys sorted, no insignificant whitespace,
/// numbers that are whole and exactly representable written as integers.
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            let _ = write!(out, "{value}");
        }
        Value::Number(number) => write_number(number, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", Value::String(name.clone()));
                out.push(':');
                canonical_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_number(number: &serde_json::Number, out: &mut String) {
    if let Some(n) = number.as_i64() {
        let _ = write!(out, "{n}");
    } else if let Some(n) = number.as_u64() {
        let _ = write!(out, "{n}");
    } else if let Some(f) = number.as_f64() {
        // 2^53: beyond it not every integer is representable, so keep the float spelling.
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            let _ = write!(out, "{}", f as i64);
        } else {
            let _ = write!(out, "{number}");
        }
    }
}

/// One field that differs between a recorded request and a received one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// `method`, `path`, `path segment N`, `query NAME`, `body`, or `body POINTER`.
    pub field: String,
    pub recorded: String,
    pub received: String,
}

/// At most this many differences are reported for one pair.
const MAX_DIFFERENCES: usize = 20;

/// Lists how `received` differs from `recorded`, field by field.
pub fn differences(recorded: &Normalized, received: &Normalized) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut push = |field: String, recorded: String, received: String| {
        if out.len() < MAX_DIFFERENCES {
            out.push(Difference {
                field,
                recorded,
                received,
            });
        }
    };
    if recorded.method != received.method {
        push(
            "method".into(),
            recorded.method.clone(),
            received.method.clone(),
        );
    }
    if recorded.host != received.host {
        push(
            "host".into(),
            recorded.host.clone().unwrap_or_default(),
            received.host.clone().unwrap_or_default(),
        );
    }
    if recorded.path != received.path {
        let a: Vec<&str> = recorded.path.split('/').collect();
        let b: Vec<&str> = received.path.split('/').collect();
        if a.len() == b.len() {
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                if x != y {
                    push(format!("path segment {i}"), (*x).into(), (*y).into());
                }
            }
        } else {
            push("path".into(), recorded.path.clone(), received.path.clone());
        }
    }
    if recorded.query != received.query {
        let mut names: Vec<&String> = recorded
            .query
            .iter()
            .chain(&received.query)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names.dedup();
        let values = |query: &[(String, String)], name: &str| -> String {
            let found: Vec<&str> = query
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if found.is_empty() {
                "(absent)".to_owned()
            } else {
                found.join(", ")
            }
        };
        for name in names {
            let (a, b) = (values(&recorded.query, name), values(&received.query, name));
            if a != b {
                push(format!("query {name}"), a, b);
            }
        }
    }
    match (&recorded.body, &received.body) {
        (NormalBody::Json(a), NormalBody::Json(b)) => {
            let mut found = Vec::new();
            json_differences(a, b, &mut String::new(), &mut found);
            for (pointer, x, y) in found {
                push(format!("body {pointer}"), x, y);
            }
        }
        (a, b) if a != b => push("body".into(), describe_body(a), describe_body(b)),
        _ => {}
    }
    out
}

fn describe_body(body: &NormalBody) -> String {
    match body {
        NormalBody::Empty => "(empty)".to_owned(),
        NormalBody::Json(value) => truncate(&value.to_string()),
        NormalBody::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => truncate(text),
            Err(_) => format!("({} bytes, not UTF-8)", bytes.len()),
        },
    }
}

fn truncate(text: &str) -> String {
    const LIMIT: usize = 120;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn json_differences(
    a: &Value,
    b: &Value,
    pointer: &mut String,
    out: &mut Vec<(String, String, String)>,
) {
    if out.len() >= MAX_DIFFERENCES || json_equal(a, b) {
        return;
    }
    let shown = |v: Option<&Value>| v.map_or("(absent)".to_owned(), |v| truncate(&v.to_string()));
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&crate::graph::escape_pointer_token(name));
                match (x.get(name), y.get(name)) {
                    (Some(p), Some(q)) => json_differences(p, q, pointer, out),
                    (p, q) => out.push((pointer.clone(), shown(p), shown(q))),
                }
                pointer.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let len = pointer.len();
                let _ = write!(pointer, "/{i}");
                json_differences(p, q, pointer, out);
                pointer.truncate(len);
            }
        }
        _ => {
            let at = if pointer.is_empty() { "/" } else { pointer };
            out.push((at.to_owned(), shown(Some(a)), shown(Some(b))));
        }
    }
}

/// JSON equality with numbers compared by value, as the key does.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => {
            let (mut x, mut y) = (String::new(), String::new());
            canonical_json(a, &mut x);
            canonical_json(b, &mut y);
            x == y
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        method: &'a str,
        uri: &'a str,
        ct: Option<&'a str>,
        body: &'a [u8],
    ) -> RequestView<'a> {
        RequestView {
            method,
            host: None,
            path_and_query: uri,
            content_type: ct,
            body,
        }
    }

    fn key(method: &str, uri: &str, ct: Option<&str>, body: &str) -> MatchKey {
        normalize(&view(method, uri, ct, body.as_bytes())).key()
    }

    /// `(method, uri, content type, body)`.
    type Req<'a> = (&'a str, &'a str, Option<&'a str>, &'a str);

    /// `(a, b, should_match)` table.
    fn check(cases: &[(Req<'_>, Req<'_>, bool)]) {
        for (a, b, expected) in cases {
            let (ka, kb) = (key(a.0, a.1, a.2, a.3), key(b.0, b.1, b.2, b.3));
            assert_eq!(ka == kb, *expected, "{a:?} vs {b:?}");
        }
    }

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn matching_table() {
        check(&[
            (
                ("PATCH", "/v1.0/x", JSON, r#"{"a":1,"b":"c"}"#),
                ("PATCH", "/v1.0/x", JSON, "{ \"b\": \"c\",\n \"a\": 1.0 }"),
                true,
            ),
            (
                ("PATCH", "/v1.0/x", JSON, r#"{"a":1}"#),
                ("PATCH", "/v1.0/x", JSON, r#"{"a":2}"#),
                false,
            ),
            (
                ("PATCH", "/v1.0/x", None, r#"{"a":1e2}"#),
                ("PATCH", "/v1.0/x", None, r#"{"a":100}"#),
                true,
            ),
            (
                ("PATCH", "/v1.0/x", None, ""),
                ("PATCH", "/v1.0/x", JSON, ""),
                true,
            ),
            (
                ("GET", "/v1.0/x?b=2&a=1", None, ""),
                ("GET", "/v1.0/x?a=1&b=2", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/x?a=1&a=2", None, ""),
                ("GET", "/v1.0/x?a=2&a=1", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/x?a=1&a=1", None, ""),
                ("GET", "/v1.0/x?a=1", None, ""),
                false,
            ),
            (
                ("GET", "/v1.0/x?q=a+b", None, ""),
                ("GET", "/v1.0/x?q=a%20b", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/%7euser", None, ""),
                ("GET", "/v1.0/~user", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/a%2fb", None, ""),
                ("GET", "/v1.0/a%2Fb", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/a%2fb", None, ""),
                ("GET", "/v1.0/a/b", None, ""),
                false,
            ),
            (
                ("GET", "/v1.0//x", None, ""),
                ("GET", "/v1.0/x", None, ""),
                false,
            ),
            (
                ("GET", "/v1.0/x", None, ""),
                ("PATCH", "/v1.0/x", None, ""),
                false,
            ),
            (
                ("POST", "/x", Some("text/plain"), "a b"),
                ("POST", "/x", Some("text/plain"), "a  b"),
                false,
            ),
            (
                ("POST", "/x", Some("text/plain"), "{\"a\":1}"),
                ("POST", "/x", None, "{ \"a\" : 1 }"),
                true,
            ),
            (("GET", "/x?a", None, ""), ("GET", "/x?a=", None, ""), true),
            (
                ("GET", "/x?%zz", None, ""),
                ("GET", "/x?%ZZ", None, ""),
                false,
            ),
        ]);
    }

    #[test]
    fn deep_and_odd_json_falls_back_to_bytes() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let normalized = normalize(&view("POST", "/x", JSON, deep.as_bytes()));
        assert!(matches!(normalized.body, NormalBody::Bytes(_)));
        let huge = normalize(&view("POST", "/x", JSON, b"{\"n\":1e400}"));
        assert!(matches!(huge.body, NormalBody::Bytes(_)));
        let invalid_utf8 = normalize(&view("POST", "/x", JSON, b"{\"n\":\"\xff\"}"));
        assert!(matches!(invalid_utf8.body, NormalBody::Bytes(_)));
        // Duplicate keys: the last one wins, as in most JSON readers; it must not panic.
        let duplicate = normalize(&view("POST", "/x", JSON, b"{\"n\":1,\"n\":2}"));
        assert_eq!(
            duplicate.body,
            NormalBody::Json(serde_json::json!({"n": 2}))
        );
    }

    #[test]
    fn differences_name_the_pointer() {
        let a = normalize(&view(
            "PATCH",
            "/v1.0/d/1?x=1",
            JSON,
            br#"{"status":"compliant","n":{"m":[1,2]}}"#,
        ));
        let b = normalize(&view(
            "PATCH",
            "/v1.0/d/2?x=2",
            JSON,
            br#"{"status":"error","n":{"m":[1,3]}}"#,
        ));
        let fields: Vec<String> = differences(&a, &b).into_iter().map(|d| d.field).collect();
        assert_eq!(
            fields,
            vec!["path segment 3", "query x", "body /n/m/1", "body /status"]
        );
        assert!(differences(&a, &a).is_empty());
    }

    #[test]
    fn canonical_numbers() {
        let mut out = String::new();
        canonical_json(
            &serde_json::json!({"b": 1.5, "a": [1.0, -0.0, 1e300]}),
            &mut out,
        );
        assert_eq!(out, r#"{"a":[1,0,1e+300],"b":1.5}"#);
    }
}
