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
//!   anything else byte for byte; an empty body equals no body;
//! - with the `odata` rule (on by default), OData system query options as Graph reads
//!   them: see [`crate::graph::odata`].

use std::borrow::Cow;
use std::fmt::Write as _;

mod canonical;
mod diff;
pub mod rules;

pub use diff::{differences, Difference};
pub use rules::{BodyMatch, Exhausted, MatchRules, ReplayOrder, RuleSet};

use bytes::Bytes;
use serde_json::Value;

use crate::record::{decode_body, header_value, Header, RecordedRequest};

/// The parts of a request that take part in matching, borrowed from wherever they live.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The target host in forward-proxy mode; `None` in reverse mode (one upstream).
    pub host: Option<&'a str>,
    /// Path and query as received (`/v1.0/me?$select=id`).
    pub path_and_query: &'a str,
    pub content_type: Option<&'a str>,
    /// `Content-Encoding` of the body: gzip, deflate and br bodies are decoded for matching.
    pub content_encoding: Option<&'a str>,
    /// Request headers (after redaction); only those the rules name take part.
    pub headers: &'a [Header],
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
    /// The headers the rules name: sorted `(lower-case name, value)` pairs.
    pub headers: Vec<(String, String)>,
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

/// Normalises a stored (already sanitized) request under `rules`. The live request is
/// sanitized the same way first, so both sides are compared in the same form.
pub fn normalize_recorded(request: &RecordedRequest, rules: &MatchRules) -> Normalized {
    normalize(&view_of(request), rules)
}

/// A stored request seen as a [`RequestView`].
pub fn view_of(request: &RecordedRequest) -> RequestView<'_> {
    RequestView {
        method: &request.method,
        host: request.host.as_deref(),
        path_and_query: &request.uri,
        content_type: header_value(&request.headers, "content-type"),
        content_encoding: header_value(&request.headers, "content-encoding"),
        headers: &request.headers,
        body: &request.body,
    }
}

/// The path part of a request target.
pub fn path_of(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

/// Normalises a request under `rules`.
pub fn normalize(request: &RequestView<'_>, rules: &MatchRules) -> Normalized {
    let (path, query) = match request.path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path_and_query, None),
    };
    let mut path = if rules.path {
        normalize_percent(path, false)
    } else {
        String::new()
    };
    if rules.path_case_insensitive {
        path = path.to_lowercase();
    }
    let mut query = if rules.query {
        query.map(normalize_query).unwrap_or_default()
    } else {
        Vec::new()
    };
    if rules.odata {
        crate::graph::odata::normalize_query(&mut query);
    }
    if !rules.ignore_query.is_empty() {
        // With `odata` on, `$` option names are lower-cased, so compare those the same way.
        let ignored = |name: &str| {
            rules.ignore_query.iter().any(|ignored| {
                ignored == name
                    || (rules.odata && name.starts_with('$') && ignored.eq_ignore_ascii_case(name))
            })
        };
        query.retain(|(name, _)| !ignored(name));
    }
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .filter(|h| {
            rules
                .headers
                .iter()
                .any(|name| h.name.eq_ignore_ascii_case(name))
        })
        .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
        .collect();
    headers.sort();
    let body = plain_body(request);
    Normalized {
        method: if rules.method {
            request.method.to_owned()
        } else {
            String::new()
        },
        host: request.host.map(|h| h.to_ascii_lowercase()),
        path,
        query,
        headers,
        body: normalize_body(request.content_type, &body, rules),
    }
}

/// Decoded request bodies larger than this are matched as received (a decompression
/// bomb must not take the proxy's memory).
const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

impl Normalized {
    /// The store's index key. Fields are framed with separators that cannot occur in
    /// them, so two different requests cannot produce the same pre-image.
    pub fn key(&self) -> MatchKey {
        self.key_with_body(|image| match &self.body {
            NormalBody::Empty => image.push(b'e'),
            NormalBody::Json(value) => {
                image.push(b'j');
                write_canonical(value, image);
            }
            NormalBody::Bytes(bytes) => {
                image.push(b'b');
                image.extend_from_slice(bytes);
            }
        })
    }

    /// The key with the body's part of the pre-image written by `write_body`.
    fn key_with_body(&self, write_body: impl FnOnce(&mut Vec<u8>)) -> MatchKey {
        // The pre-image is gathered first and hashed in one call: blake3's per-call cost
        // dominates for fragments this small. Same bytes, so the same key as hashing
        // fragment by fragment.
        let mut image = Vec::with_capacity(512);
        image.extend_from_slice(self.method.as_bytes());
        image.push(0);
        image.extend_from_slice(self.host.as_deref().unwrap_or("").as_bytes());
        image.push(0);
        image.extend_from_slice(self.path.as_bytes());
        image.push(0);
        for (name, value) in &self.query {
            image.extend_from_slice(name.as_bytes());
            image.push(b'=');
            image.extend_from_slice(value.as_bytes());
            image.push(b'&');
        }
        image.push(0);
        for (name, value) in &self.headers {
            image.extend_from_slice(name.as_bytes());
            image.push(b':');
            image.extend_from_slice(value.as_bytes());
            image.push(b'\n');
        }
        image.push(0);
        write_body(&mut image);
        MatchKey(*blake3::hash(&image).as_bytes())
    }
}

/// The match key of a stored (already sanitized) request, as
/// `normalize_recorded(request, rules).key()` computes it.
pub fn key_of_recorded(request: &RecordedRequest, rules: &MatchRules) -> MatchKey {
    key_only(&view_of(request), rules)
}

/// `normalize(request, rules).key()`, without keeping what it was computed from: under
/// rules that leave a JSON body's members alone (the default), the body is read into
/// strings borrowed from it rather than into a `serde_json::Value`, which was most of
/// the key's cost. A lookup needs nothing else.
pub fn key_only(request: &RequestView<'_>, rules: &MatchRules) -> MatchKey {
    if !rules.ignore_pointers.is_empty() || rules.ignore_array_order {
        return normalize(request, rules).key();
    }
    // Everything but the body, normalised as `normalize` does it.
    let head = normalize(
        &RequestView {
            body: &[],
            ..*request
        },
        rules,
    );
    let body = plain_body(request);
    head.key_with_body(|image| {
        match matched_body::<canonical::Borrowed>(request.content_type, &body, rules) {
            MatchedBody::Empty => image.push(b'e'),
            MatchedBody::Json(document) => {
                image.push(b'j');
                document.write(image);
            }
            MatchedBody::Bytes => {
                image.push(b'b');
                image.extend_from_slice(&body);
            }
        }
    })
}

/// The body as matched: decoded when its `Content-Encoding` is one the proxy reads.
fn plain_body<'a>(request: &RequestView<'a>) -> Cow<'a, [u8]> {
    match decode_body(request.content_encoding, request.body, MAX_DECODED_BYTES) {
        Some(decoded) => Cow::Owned(decoded),
        None => Cow::Borrowed(request.body),
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
    // Most paths and values have nothing to rewrite: copy them whole.
    let plus = plus_is_space.then_some(b'+');
    if memchr::memchr2(b'%', plus.unwrap_or(b'%'), bytes).is_none() {
        return text.to_owned();
    }
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
            (decode_query_part(name), decode_query_part(value))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Query parts are compared decoded, as servers read them (`%2C` = `,`, `+` = space),
/// after splitting on `&` and `=` so encoded separators stay inside their part. Parts
/// that do not decode to UTF-8 are compared in normalised escaped form.
fn decode_query_part(part: &str) -> String {
    let spaced = part.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(decoded) => decoded.into_owned(),
        Err(_) => normalize_percent(part, true),
    }
}

/// What a body is matched as: the one decision behind both [`normalize`] and
/// [`key_only`], which read the JSON document into different types.
enum MatchedBody<T> {
    Empty,
    Json(T),
    /// Compared as exact bytes.
    Bytes,
}

fn matched_body<'a, T: serde::Deserialize<'a>>(
    content_type: Option<&str>,
    body: &'a [u8],
    rules: &MatchRules,
) -> MatchedBody<T> {
    if body.is_empty() || rules.body == BodyMatch::Ignore {
        return MatchedBody::Empty;
    }
    if rules.body == BodyMatch::Json && is_json_candidate(content_type, body) {
        // serde_json bounds nesting (128 levels): deeper input fails to parse and falls
        // back to exact bytes instead of recursing without limit. A parsed document that
        // lost information (a duplicate key, a number f64 cannot hold exactly) is
        // compared as bytes too, or different requests would match.
        let parsed = serde_json::from_slice::<T>(body)
            .ok()
            .filter(|_| json_reads_exactly(body));
        if let Some(document) = parsed {
            return MatchedBody::Json(document);
        }
    }
    MatchedBody::Bytes
}

fn normalize_body(content_type: Option<&str>, body: &[u8], rules: &MatchRules) -> NormalBody {
    match matched_body::<Value>(content_type, body, rules) {
        MatchedBody::Empty => NormalBody::Empty,
        MatchedBody::Json(mut value) => {
            for pointer in &rules.ignore_pointers {
                remove_pointer(&mut value, &rules::pointer_tokens(pointer));
            }
            if rules.ignore_array_order {
                sort_arrays(&mut value);
            }
            NormalBody::Json(value)
        }
        MatchedBody::Bytes => NormalBody::Bytes(Bytes::copy_from_slice(body)),
    }
}

/// An object's keys so far. Most objects have a handful, where a scan beats hashing;
/// a large one switches to a hash set so a crafted body cannot make checking quadratic.
#[derive(Default)]
struct KeySet<'a> {
    few: Vec<Cow<'a, [u8]>>,
    many: Option<std::collections::HashSet<Cow<'a, [u8]>>>,
}

impl<'a> KeySet<'a> {
    const FEW: usize = 16;

    /// False when `key` was already there.
    fn insert(&mut self, key: Cow<'a, [u8]>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > Self::FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// Whether a document serde_json has already parsed reads back without loss: no object
/// repeats a key (serde_json keeps the last, so `{"a":1,"a":2}` would equal `{"a":2}`)
/// and every number is held exactly (integers within 64 bits, decimals with at most
/// 15 significant digits; beyond that distinct numbers collapse into one f64).
///
/// Only call it on text that parsed: it skims tokens and trusts the syntax, and
/// serde_json's own nesting limit bounds its stack.
pub fn json_reads_exactly(text: &[u8]) -> bool {
    // One entry per open container: the keys seen so far for objects, `None` for arrays.
    let mut open: Vec<Option<KeySet<'_>>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' => {
                open.push(Some(KeySet::default()));
                expect_key = true;
            }
            b'[' => {
                open.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                open.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(open.last(), Some(Some(_))),
            b'"' => {
                let start = i;
                let mut escaped = false;
                i += 1;
                // Jump between quotes and backslashes (SIMD search): string contents are
                // most of a body's bytes, and nothing inside them matters but these two.
                while let Some(offset) = memchr::memchr2(b'"', b'\\', &text[i.min(text.len())..]) {
                    i += offset;
                    if text[i] == b'"' {
                        break;
                    }
                    escaped = true;
                    i += 2;
                }
                if i < text.len() && text[i] != b'"' {
                    i = text.len();
                }
                if expect_key {
                    let raw = &text[start..(i + 1).min(text.len())];
                    let key: Cow<'_, [u8]> = if escaped {
                        // `"\u0061"` and `"a"` are the same key.
                        match serde_json::from_slice::<String>(raw) {
                            Ok(decoded) => Cow::Owned(decoded.into_bytes()),
                            Err(_) => return false,
                        }
                    } else {
                        Cow::Borrowed(&text[start + 1..i.min(text.len())])
                    };
                    if let Some(Some(keys)) = open.last_mut() {
                        if !keys.insert(key) {
                            return false;
                        }
                    }
                    expect_key = false;
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < text.len()
                    && matches!(text[i + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                if !number_is_exact(&text[start..=i]) {
                    return false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// Whether serde_json holds the number token exactly (see [`json_reads_exactly`]).
fn number_is_exact(token: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    if mantissa.len() == text.len() && !text.contains('.') {
        return text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok();
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    significant.len() <= 15
}

/// Removes the members a pointer names; `*` stands for every member or element.
/// Array elements become `null` rather than shifting their neighbours' positions.
pub fn remove_pointer(value: &mut Value, tokens: &[String]) {
    let Some((first, rest)) = tokens.split_first() else {
        return;
    };
    match value {
        Value::Object(map) => {
            if first == "*" {
                for item in map.values_mut() {
                    if rest.is_empty() {
                        *item = Value::Null;
                    } else {
                        remove_pointer(item, rest);
                    }
                }
            } else if rest.is_empty() {
                map.shift_remove(first.as_str());
            } else if let Some(item) = map.get_mut(first.as_str()) {
                remove_pointer(item, rest);
            }
        }
        Value::Array(items) => {
            let targets: Vec<usize> = if first == "*" {
                (0..items.len()).collect()
            } else {
                first
                    .parse()
                    .ok()
                    .filter(|i| *i < items.len())
                    .into_iter()
                    .collect()
            };
            for index in targets {
                if rest.is_empty() {
                    items[index] = Value::Null;
                } else {
                    remove_pointer(&mut items[index], rest);
                }
            }
        }
        _ => {}
    }
}

/// Sets the values a pointer names (`*` for every member or element) to `replacement`;
/// returns whether any existed and differed.
pub fn replace_pointer(value: &mut Value, tokens: &[String], replacement: &Value) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        if value != replacement {
            *value = replacement.clone();
            return true;
        }
        return false;
    };
    let mut changed = false;
    match value {
        Value::Object(map) => {
            for (name, item) in map.iter_mut() {
                if first == "*" || name == first {
                    changed |= replace_pointer(item, rest, replacement);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                if first == "*" || first.parse() == Ok(index) {
                    changed |= replace_pointer(item, rest, replacement);
                }
            }
        }
        _ => {}
    }
    changed
}

fn sort_arrays(value: &mut Value) {
    match value {
        Value::Array(items) => {
            items.iter_mut().for_each(sort_arrays);
            items.sort_by_cached_key(|item| {
                let mut text = String::new();
                canonical_json(item, &mut text);
                text
            });
        }
        Value::Object(map) => map.values_mut().for_each(sort_arrays),
        _ => {}
    }
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
    let mut bytes = Vec::with_capacity(64);
    write_canonical(value, &mut bytes);
    // Every fragment is valid UTF-8 (JSON text from `str`s), so this never replaces.
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// [`canonical_json`] into bytes, as hashed for the match key.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    canonical::Borrowed::of_value(value).write(out);
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
            content_encoding: None,
            headers: &[],
            body,
        }
    }

    /// The key by both roads, which must agree: every table below checks `key_only`.
    fn key(method: &str, uri: &str, ct: Option<&str>, body: &str) -> MatchKey {
        let request = view(method, uri, ct, body.as_bytes());
        let full = normalize(&request, &MatchRules::default()).key();
        assert_eq!(
            key_only(&request, &MatchRules::default()),
            full,
            "{request:?}"
        );
        full
    }

    #[test]
    fn the_key_alone_is_the_normalised_requests_key_under_every_kind_of_rule() {
        let gzipped = {
            use std::io::Write as _;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder
                .write_all(br#"{"b":[2,1],"a":"\u00e9"}"#)
                .expect("gzip into memory");
            encoder.finish().expect("gzip into memory")
        };
        let bodies: [&[u8]; 9] = [
            br#"{"status":"compliant","id":"x","nested":{"z":1.0,"a":[1e2,-0,"\t"]}}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"n":0.12345678901234567}"#,
            br#"not json {"#,
            br#"[3,1,2]"#,
            b"",
            b"  ",
            br#"{"deep":"#,
            &gzipped,
        ];
        let rule_sets = [
            MatchRules::default(),
            MatchRules {
                ignore_pointers: vec!["/id".to_owned()],
                ..MatchRules::default()
            },
            MatchRules {
                ignore_array_order: true,
                ..MatchRules::default()
            },
            MatchRules {
                body: BodyMatch::Exact,
                ..MatchRules::default()
            },
            MatchRules {
                body: BodyMatch::Ignore,
                ..MatchRules::default()
            },
        ];
        let headers = [Header {
            name: "X-Tenant".to_owned(),
            value: "t1".to_owned(),
            binary: false,
        }];
        for rules in &rule_sets {
            let rules = MatchRules {
                headers: vec!["x-tenant".to_owned()],
                ..rules.clone()
            };
            for body in bodies {
                for (content_type, encoding) in [
                    (Some("application/json"), None),
                    (None, None),
                    (Some("text/plain"), None),
                    (Some("application/json"), Some("gzip")),
                ] {
                    let request = RequestView {
                        method: "PATCH",
                        host: Some("Graph.Microsoft.com"),
                        path_and_query: "/v1.0/a%7eb?$Select=id&x=1+2",
                        content_type,
                        content_encoding: encoding,
                        headers: &headers,
                        body,
                    };
                    assert_eq!(
                        key_only(&request, &rules),
                        normalize(&request, &rules).key(),
                        "{request:?} under {rules:?}"
                    );
                }
            }
        }
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

    /// Stored indexes are keyed by this hash: a change to it would orphan every index
    /// already on disk, so it is pinned for each kind of body.
    #[test]
    fn match_keys_are_stable_across_releases() {
        let normalized = |body: NormalBody| Normalized {
            method: "PATCH".to_owned(),
            host: Some("graph.microsoft.com".to_owned()),
            path: "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses/d".to_owned(),
            query: vec![
                ("$select".to_owned(), "id".to_owned()),
                ("a".to_owned(), String::new()),
            ],
            headers: vec![("consistencylevel".to_owned(), "eventual".to_owned())],
            body,
        };
        let json: Value = serde_json::from_str(
            r#"{"status":"compliant","userName":"Ünïcode \"q\"","n":[1,2.5,null,true]}"#,
        )
        .expect("valid JSON");
        let hex = |body| {
            let MatchKey(bytes) = normalized(body).key();
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let keys = [
            hex(NormalBody::Empty),
            hex(NormalBody::Json(json)),
            hex(NormalBody::Bytes(Bytes::from_static(b"\x00\xffraw"))),
        ];
        assert_eq!(
            keys,
            [
                "3744d87166dca62d64adfcd700d787010beeebf6bab5c79c3fa2863d8955fbf7",
                "b81892ca82b18a257f27f16736161990b5b5503fc63f1c600bd4327cd12dcaa7",
                "cb19dd5304a1116d65a24da8df2cda177bd765fced6f243e6d02e164bf33367b",
            ]
        );
    }

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
            // OData options (the `odata` rule, on by default): names and list order free,
            // continuation tokens opaque and exact.
            (
                ("GET", "/v1.0/x?$select=id,status&$top=5", None, ""),
                ("GET", "/v1.0/x?$TOP=5&$Select=status%2Cid", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/x?$skipToken=AbC", None, ""),
                ("GET", "/v1.0/x?$skiptoken=AbC", None, ""),
                true,
            ),
            (
                ("GET", "/v1.0/x?$skiptoken=AbC", None, ""),
                ("GET", "/v1.0/x?$skiptoken=abc", None, ""),
                false,
            ),
            (
                ("GET", "/v1.0/x?$skiptoken=a%2Bb", None, ""),
                ("GET", "/v1.0/x?$skiptoken=a+b", None, ""),
                false,
            ),
            (
                ("GET", "/x?%zz", None, ""),
                ("GET", "/x?%ZZ", None, ""),
                false,
            ),
        ]);
    }

    /// Regression (found by the `matching` fuzz target): without correctly rounded float
    /// parsing, `1.50e41` and `1.5e41` parsed to neighbouring f64s, so two spellings of
    /// one number did not match, and canonical JSON was not a fixed point.
    #[test]
    fn float_spellings_parse_to_the_same_value() {
        check(&[
            (
                ("PUT", "/x", JSON, r#"{"b":1.50e41}"#),
                ("PUT", "/x", JSON, r#"{"b":1.5e41}"#),
                true,
            ),
            (
                (
                    "PUT",
                    "/x",
                    JSON,
                    r#"{"b":150000000000000000000000000000000000000000.0}"#,
                ),
                ("PUT", "/x", JSON, r#"{"b":1.5E+41}"#),
                true,
            ),
        ]);
        let crash = b"{\"a\":[3,1,{\"b\":1.50e41,\"a\":null}],\"c\":\"\\u00e9\",\"n\":-373615}";
        let value: Value = serde_json::from_slice(crash).expect("parses");
        let mut canonical = String::new();
        canonical_json(&value, &mut canonical);
        let again: Value = serde_json::from_str(&canonical).expect("canonical parses");
        let mut twice = String::new();
        canonical_json(&again, &mut twice);
        assert_eq!(canonical, twice);
    }

    #[test]
    fn lossy_json_is_compared_as_bytes() {
        check(&[
            // Duplicate keys: serde_json keeps the last one; the bytes differ.
            (
                ("PATCH", "/x", JSON, r#"{"a":1,"a":2}"#),
                ("PATCH", "/x", JSON, r#"{"a":2}"#),
                false,
            ),
            (
                ("PATCH", "/x", JSON, r#"{"a":{"b":1,"\u0062":2}}"#),
                ("PATCH", "/x", JSON, r#"{"a":{"b":2}}"#),
                false,
            ),
            // The same key in sibling objects is not a duplicate.
            (
                ("PATCH", "/x", JSON, r#"{"a":{"k":1},"b":{"k":1}}"#),
                ("PATCH", "/x", JSON, r#"{ "b":{"k":1}, "a":{"k":1} }"#),
                true,
            ),
            // Integers beyond 64 bits collapse into one f64.
            (
                (
                    "PATCH",
                    "/x",
                    JSON,
                    r#"{"n":1234567890123456789012345678901234567890}"#,
                ),
                (
                    "PATCH",
                    "/x",
                    JSON,
                    r#"{"n":1234567890123456789012345678901234567891}"#,
                ),
                false,
            ),
            (
                ("PATCH", "/x", JSON, r#"{"n":0.12345678901234567890}"#),
                ("PATCH", "/x", JSON, r#"{"n":0.12345678901234567891}"#),
                false,
            ),
            // Exact numbers still match by value.
            (
                (
                    "PATCH",
                    "/x",
                    JSON,
                    r#"{"n":[1.50, -0.000125e3, 18446744073709551615]}"#,
                ),
                (
                    "PATCH",
                    "/x",
                    JSON,
                    r#"{"n":[1.5, -0.125, 18446744073709551615]}"#,
                ),
                true,
            ),
        ]);
        assert!(json_reads_exactly(br#"{"a":"x\"y","b":[1,2,{"a":3}]}"#));
        assert!(!json_reads_exactly(br#"{"a":"x\"y","a":1}"#));
        // Escapes next to the quotes, a key that only differs once unescaped, a string
        // cut short: the scan between quotes and backslashes keeps each reading.
        assert!(json_reads_exactly(br#"{"a\\":"\\","a":"\"","b":"\\\""}"#));
        assert!(!json_reads_exactly(br#"{"\u0061":1,"a":2}"#));
        assert!(json_reads_exactly(br#"{"a":"never closed"#));
        assert!(json_reads_exactly(br#"{"a":"ends in a backslash\"#));
        // Past the short list the keys move to a hash set; a repeat is still found,
        // whichever side of the move its first occurrence was.
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let distinct = format!("{{{}}}", keys.join(","));
        assert!(json_reads_exactly(distinct.as_bytes()));
        for (first, again) in [(3, 10), (3, 30), (25, 39)] {
            let mut repeated = keys.clone();
            repeated[again] = format!("\"k{first}\":0");
            let text = format!("{{{}}}", repeated.join(","));
            assert!(!json_reads_exactly(text.as_bytes()), "k{first} at {again}");
        }
    }

    #[test]
    fn percent_normalisation_copies_text_without_escapes_whole() {
        for (text, plus_is_space, expected) in [
            ("/v1.0/users/a-b_c.d~e", false, "/v1.0/users/a-b_c.d~e"),
            ("a+b", false, "a+b"),
            ("a+b", true, "a%20b"),
            ("%7euser%2fx", false, "~user%2Fx"),
            ("caf\u{e9}", true, "caf\u{e9}"),
        ] {
            assert_eq!(normalize_percent(text, plus_is_space), expected, "{text}");
        }
    }

    #[test]
    fn odata_rule_can_be_switched_off() {
        let exact = MatchRules {
            odata: false,
            ..MatchRules::default()
        };
        let key =
            |uri: &str, rules: &MatchRules| normalize(&view("GET", uri, None, b""), rules).key();
        let (a, b) = ("/v1.0/x?$select=a,b", "/v1.0/x?$SELECT=b,a");
        assert_eq!(
            key(a, &MatchRules::default()),
            key(b, &MatchRules::default())
        );
        assert_ne!(key(a, &exact), key(b, &exact));
    }

    #[test]
    fn deep_and_odd_json_falls_back_to_bytes() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let normalized = normalize(
            &view("POST", "/x", JSON, deep.as_bytes()),
            &MatchRules::default(),
        );
        assert!(matches!(normalized.body, NormalBody::Bytes(_)));
        let huge = normalize(
            &view("POST", "/x", JSON, b"{\"n\":1e400}"),
            &MatchRules::default(),
        );
        assert!(matches!(huge.body, NormalBody::Bytes(_)));
        let invalid_utf8 = normalize(
            &view("POST", "/x", JSON, b"{\"n\":\"\xff\"}"),
            &MatchRules::default(),
        );
        assert!(matches!(invalid_utf8.body, NormalBody::Bytes(_)));
        // Duplicate keys: a JSON reading would keep only the last one, so the document
        // is compared as the bytes it is.
        let duplicate = normalize(
            &view("POST", "/x", JSON, b"{\"n\":1,\"n\":2}"),
            &MatchRules::default(),
        );
        assert!(matches!(duplicate.body, NormalBody::Bytes(_)));
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

    /// Match keys of existing cassettes depend on these exact bytes: escapes, key order
    /// (by UTF-8 bytes), nesting and literals must never change.
    #[test]
    fn canonical_form_is_stable() {
        let input = r#"{"z":{"y":[true,false,null,"a\"b\\c\n\t\u0001\u001f\u007f"],"x":{}},
            "\u00e9":"\u00fc\u2028\ud83d\ude00","A":[],"a b":-12,"big":18446744073709551615,
            "neg":-9223372036854775808,"f":0.1,"e":2.5e-8,"w":4.0}"#;
        let value: Value = serde_json::from_str(input).expect("valid JSON");
        let mut out = String::new();
        canonical_json(&value, &mut out);
        let expected = concat!(
            r#"{"A":[],"a b":-12,"big":18446744073709551615,"e":2.5e-8,"f":0.1,"#,
            r#""neg":-9223372036854775808,"w":4,"#,
            r#""z":{"x":{},"y":[true,false,null,"a\"b\\c\n\t\u0001\u001f"#,
            "\u{7f}\"]},\"\u{e9}\":\"\u{fc}\u{2028}\u{1f600}\"}"
        );
        assert_eq!(out, expected);
        let key = normalize(
            &view("PATCH", "/v1.0/x?b=2&a=1", JSON, input.as_bytes()),
            &MatchRules::default(),
        )
        .key();
        assert_eq!(
            key.to_hex(),
            "63693dd07083c79c6567f7917afb1b045e3843d1e07e94310eb5d6822f0678b6"
        );
    }
}
