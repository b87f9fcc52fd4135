//! The stored interaction format (versioned) and the reviewable export document.
//!
//! Stored records keep bodies as exact bytes so replay is byte-identical: since schema 2
//! in a compact binary form (postcard after a tag byte, the answer first), before it as
//! JSON with base64 bodies; both are read. The export document is meant for people and
//! git: pretty, stable order, JSON bodies as JSON values, text as text, binary as
//! base64, and it reads back losslessly.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Version of [`Interaction`]'s stored form. Bump it with a migration (or a reader of the
/// old form) and a test that reads a fixture written by the previous version.
///
/// 1: JSON, bodies as base64 (still read: a value that starts with `{`).
/// 2: [`BINARY_TAG`], then postcard of [`StoredForm`]. Replay decodes only its prefix,
/// the answer, and neither form needs base64 undone on the way.
pub const SCHEMA_VERSION: u32 = 2;
/// First byte of a value in the binary form; the JSON form's is `{`.
const BINARY_TAG: u8 = 0xb2;
/// Version of the export document.
pub const EXPORT_VERSION: u32 = 1;

/// One recorded request/response pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub schema: u32,
    /// Unique in the store, increasing in recording order.
    pub id: u64,
    pub cassette: String,
    /// RFC 3339, UTC.
    pub recorded_at: String,
    /// Time from sending the request upstream to the last response byte.
    pub upstream_latency_ms: f64,
    pub request: RecordedRequest,
    pub response: RecordedResponse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as the client sent them.
    pub uri: String,
    /// Target host in forward-proxy mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// After redaction; graphvcr's own `x-graphvcr-*` headers are never here.
    pub headers: Vec<Header>,
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<Header>,
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
}

/// A header as sent, in order. Values that are not UTF-8 are kept as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

impl Header {
    pub fn new(name: &str, value: &[u8]) -> Self {
        match std::str::from_utf8(value) {
            Ok(text) => Self {
                name: name.to_owned(),
                value: text.to_owned(),
                binary: false,
            },
            Err(_) => Self {
                name: name.to_owned(),
                value: BASE64.encode(value),
                binary: true,
            },
        }
    }

    pub fn value_bytes(&self) -> Vec<u8> {
        if self.binary {
            BASE64.decode(&self.value).unwrap_or_default()
        } else {
            self.value.clone().into_bytes()
        }
    }
}

/// Headers in wire order.
pub fn headers_from_map(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()))
        .collect()
}

/// Rebuilds a header map; entries that are not valid HTTP headers are skipped (they
/// could only come from a hand-edited import).
pub fn headers_to_map(headers: &[Header]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for header in headers {
        if let Some((name, value)) = header_pair(&header.name, &header.value, header.binary) {
            map.append(name, value);
        }
    }
    map
}

/// A stored header (its value base64 when `binary`, as in [`Header::value_bytes`]) as
/// sent; `None` when it is not a valid HTTP header.
fn header_pair(name: &str, value: &str, binary: bool) -> Option<(HeaderName, HeaderValue)> {
    let value = if binary {
        HeaderValue::from_bytes(&BASE64.decode(value).unwrap_or_default())
    } else {
        HeaderValue::from_str(value)
    };
    Some((HeaderName::from_bytes(name.as_bytes()).ok()?, value.ok()?))
}

/// First value of a header, case-insensitively.
pub fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name) && !h.binary)
        .map(|h| h.value.as_str())
}

/// Decodes a gzip, deflate or brotli body, up to `limit` decoded bytes. `None` when the
/// body is not encoded (or not in a way graphvcr knows), is corrupt, or is too large:
/// callers then use the bytes as received.
pub fn decode_body(encoding: Option<&str>, body: &[u8], limit: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let encoding = encoding?.trim().to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(body)),
        "br" => Box::new(brotli::Decompressor::new(body, 4096)),
        _ => return None,
    };
    let mut out = Vec::new();
    let read = reader.take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (read <= limit).then_some(out)
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        // Decoded straight from the parser's text: no intermediate String.
        struct Base64Visitor;
        impl serde::de::Visitor<'_> for Base64Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bytes, E> {
                BASE64.decode(text).map(Bytes::from).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

/// What replay reads of a stored [`Interaction`]: the request, the larger part, is
/// skipped while parsing rather than decoded (its base64 body, its headers), since a
/// replayed answer never needs it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredReply {
    pub schema: u32,
    pub id: u64,
    /// RFC 3339, UTC.
    pub recorded_at: String,
    pub upstream_latency_ms: f64,
    pub response: ReplayedResponse,
}

/// A stored response in the form it is sent in: its headers are read straight into a
/// header map, as [`headers_to_map`] would build it, without a `String` per name and
/// value on the way.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReplayedResponse {
    pub status: u16,
    #[serde(deserialize_with = "header_map")]
    pub headers: HeaderMap,
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
}

/// A stored [`Header`], borrowed from the stored bytes where it has no escapes.
#[derive(Deserialize)]
struct BorrowedHeader<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    value: std::borrow::Cow<'a, str>,
    #[serde(default)]
    binary: bool,
}

fn header_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HeaderMap, D::Error> {
    struct HeaderMapVisitor;
    impl<'de> serde::de::Visitor<'de> for HeaderMapVisitor {
        type Value = HeaderMap;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of headers")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<HeaderMap, A::Error> {
            let mut map = HeaderMap::with_capacity(seq.size_hint().unwrap_or(8));
            while let Some(header) = seq.next_element::<BorrowedHeader<'de>>()? {
                // Entries that are not valid HTTP headers are skipped, as in `headers_to_map`.
                if let Some((name, value)) = header_pair(&header.name, &header.value, header.binary)
                {
                    map.append(name, value);
                }
            }
            Ok(map)
        }
    }
    deserializer.deserialize_seq(HeaderMapVisitor)
}

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredFormError {
    #[error("the stored value is empty")]
    Empty,
    #[error("stored in a form this graphvcr does not know (first byte {0:#04x}); a newer graphvcr may have written it")]
    UnknownForm(u8),
    #[error("stored interaction has schema {found}, newer than this graphvcr understands ({SCHEMA_VERSION})")]
    NewerSchema { found: u32 },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Binary(#[from] postcard::Error),
}

/// The stored forms a value may be in, told apart by its first byte.
enum Form<'a> {
    /// Schema 1.
    Json(&'a [u8]),
    /// Schema 2 and later, after the tag byte.
    Binary(&'a [u8]),
}

impl<'a> Form<'a> {
    fn of(bytes: &'a [u8]) -> Result<Self, StoredFormError> {
        match bytes.split_first() {
            None => Err(StoredFormError::Empty),
            Some((&BINARY_TAG, rest)) => {
                // The schema leads, so a newer layout is refused before it is misread.
                let (schema, _) = postcard::take_from_bytes::<u32>(rest)?;
                newer_refused(schema)?;
                Ok(Self::Binary(rest))
            }
            Some((b'{', _)) => Ok(Self::Json(bytes)),
            Some((&other, _)) => Err(StoredFormError::UnknownForm(other)),
        }
    }
}

fn newer_refused(schema: u32) -> Result<(), StoredFormError> {
    if schema > SCHEMA_VERSION {
        return Err(StoredFormError::NewerSchema { found: schema });
    }
    Ok(())
}

/// A header in the binary form: as [`Header`], with `binary` always present (postcard
/// has no field names to leave one out by).
#[derive(Serialize, Deserialize)]
struct StoredHeader<'a> {
    name: &'a str,
    value: &'a str,
    binary: bool,
}

fn stored_headers(headers: &[Header]) -> Vec<StoredHeader<'_>> {
    headers
        .iter()
        .map(|h| StoredHeader {
            name: &h.name,
            value: &h.value,
            binary: h.binary,
        })
        .collect()
}

fn owned_headers(headers: Vec<StoredHeader<'_>>) -> Vec<Header> {
    headers
        .into_iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value.to_owned(),
            binary: h.binary,
        })
        .collect()
}

/// Schema 2, field for field: postcard writes no names, so this order is the format.
/// Everything replay needs comes first ([`StoredReplyForm`] is its prefix).
#[derive(Serialize, Deserialize)]
struct StoredForm<'a> {
    schema: u32,
    id: u64,
    recorded_at: &'a str,
    upstream_latency_ms: f64,
    status: u16,
    response_headers: Vec<StoredHeader<'a>>,
    #[serde(with = "serde_bytes")]
    response_body: &'a [u8],
    cassette: &'a str,
    method: &'a str,
    uri: &'a str,
    host: Option<&'a str>,
    request_headers: Vec<StoredHeader<'a>>,
    #[serde(with = "serde_bytes")]
    request_body: &'a [u8],
}

/// The leading fields of [`StoredForm`], the rest of the value left unread.
#[derive(Deserialize)]
struct StoredReplyForm<'a> {
    schema: u32,
    id: u64,
    recorded_at: &'a str,
    upstream_latency_ms: f64,
    status: u16,
    #[serde(deserialize_with = "header_map")]
    headers: HeaderMap,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

impl StoredReply {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoredFormError> {
        match Form::of(bytes)? {
            Form::Json(json) => {
                let reply: Self = serde_json::from_slice(json)?;
                newer_refused(reply.schema)?;
                Ok(reply)
            }
            Form::Binary(binary) => {
                let (form, _request) = postcard::take_from_bytes::<StoredReplyForm>(binary)?;
                Ok(Self {
                    schema: form.schema,
                    id: form.id,
                    recorded_at: form.recorded_at.to_owned(),
                    upstream_latency_ms: form.upstream_latency_ms,
                    response: ReplayedResponse {
                        status: form.status,
                        headers: form.headers,
                        body: Bytes::copy_from_slice(form.body),
                    },
                })
            }
        }
    }
}

impl Interaction {
    /// The current stored form (schema [`SCHEMA_VERSION`], whatever `schema` says).
    pub fn to_bytes(&self) -> Vec<u8> {
        let form = StoredForm {
            schema: SCHEMA_VERSION,
            id: self.id,
            recorded_at: &self.recorded_at,
            upstream_latency_ms: self.upstream_latency_ms,
            status: self.response.status,
            response_headers: stored_headers(&self.response.headers),
            response_body: &self.response.body,
            cassette: &self.cassette,
            method: &self.request.method,
            uri: &self.request.uri,
            host: self.request.host.as_deref(),
            request_headers: stored_headers(&self.request.headers),
            request_body: &self.request.body,
        };
        // Sized up front, so the bodies are copied once.
        let headers = |headers: &[Header]| -> usize {
            headers
                .iter()
                .map(|h| h.name.len() + h.value.len() + 3)
                .sum()
        };
        let estimate = 64
            + self.recorded_at.len()
            + self.cassette.len()
            + self.request.uri.len()
            + headers(&self.request.headers)
            + headers(&self.response.headers)
            + self.request.body.len()
            + self.response.body.len();
        let mut bytes = Vec::with_capacity(estimate);
        bytes.push(BINARY_TAG);
        // Writing plain data into a Vec cannot fail; were it to, the value reads back as
        // an error rather than as someone else's answer.
        postcard::to_io(&form, bytes).unwrap_or_default()
    }

    /// Reads either stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoredFormError> {
        match Form::of(bytes)? {
            Form::Json(json) => {
                let interaction: Self = serde_json::from_slice(json)?;
                newer_refused(interaction.schema)?;
                Ok(interaction)
            }
            Form::Binary(binary) => {
                let form: StoredForm = postcard::from_bytes(binary)?;
                Ok(Self {
                    schema: form.schema,
                    id: form.id,
                    cassette: form.cassette.to_owned(),
                    recorded_at: form.recorded_at.to_owned(),
                    upstream_latency_ms: form.upstream_latency_ms,
                    request: RecordedRequest {
                        method: form.method.to_owned(),
                        uri: form.uri.to_owned(),
                        host: form.host.map(str::to_owned),
                        headers: owned_headers(form.request_headers),
                        body: Bytes::copy_from_slice(form.request_body),
                    },
                    response: RecordedResponse {
                        status: form.status,
                        headers: owned_headers(form.response_headers),
                        body: Bytes::copy_from_slice(form.response_body),
                    },
                })
            }
        }
    }
}

/// The export document: one cassette, reviewable and diffable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDocument {
    pub graphvcr_export: u32,
    pub cassette: String,
    pub interactions: Vec<ExportedInteraction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedInteraction {
    pub id: u64,
    pub recorded_at: String,
    pub upstream_latency_ms: f64,
    pub request: ExportedRequest,
    pub response: ExportedResponse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRequest {
    pub method: String,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub headers: Vec<Header>,
    #[serde(flatten)]
    pub body: ExportedBody,
    /// For reading only: a compressed body decoded (JSON as a value). Import ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedResponse {
    pub status: u16,
    pub headers: Vec<Header>,
    #[serde(flatten)]
    pub body: ExportedBody,
    /// For reading only: a compressed body decoded (JSON as a value). Import ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Value>,
}

/// JSON bodies nested deeper than this are exported as text. The export document wraps
/// a body in levels of its own, and serde_json refuses to read documents nested deeper
/// than 128: a body of 124-128 levels would export but not import again.
const MAX_EXPORTED_JSON_DEPTH: usize = 100;

/// Nesting depth of a value (a scalar is 0). Bounded by serde_json's own limit of 128
/// on anything parsed.
fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A compressed body decoded for people: JSON as a value, else text, else nothing.
fn decoded_for_display(headers: &[Header], body: &[u8]) -> Option<Value> {
    let decoded = decode_body(header_value(headers, "content-encoding"), body, 64 << 20)?;
    serde_json::from_slice(&decoded)
        .ok()
        .filter(|value| json_depth(value) <= MAX_EXPORTED_JSON_DEPTH)
        .or_else(|| String::from_utf8(decoded).ok().map(Value::String))
}

/// A body in the most readable form that still gives back the exact bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportedBody {
    /// Compact JSON whose re-serialisation is byte-identical to what was recorded.
    #[serde(rename = "body_json")]
    Json(Value),
    #[serde(rename = "body_text")]
    Text(String),
    #[serde(rename = "body_base64")]
    Base64(String),
}

impl ExportedBody {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            if json_depth(&value) <= MAX_EXPORTED_JSON_DEPTH
                && serde_json::to_vec(&value).is_ok_and(|again| again == bytes)
            {
                return Self::Json(value);
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => Self::Base64(BASE64.encode(bytes)),
        }
    }

    pub fn to_bytes(&self) -> Result<Bytes, base64::DecodeError> {
        Ok(match self {
            Self::Json(value) => Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            Self::Text(text) => Bytes::from(text.clone()),
            Self::Base64(text) => Bytes::from(BASE64.decode(text)?),
        })
    }
}

impl ExportedInteraction {
    pub fn from_interaction(interaction: &Interaction) -> Self {
        Self {
            id: interaction.id,
            recorded_at: interaction.recorded_at.clone(),
            upstream_latency_ms: interaction.upstream_latency_ms,
            request: ExportedRequest {
                method: interaction.request.method.clone(),
                uri: interaction.request.uri.clone(),
                host: interaction.request.host.clone(),
                headers: interaction.request.headers.clone(),
                body: ExportedBody::from_bytes(&interaction.request.body),
                decoded: decoded_for_display(
                    &interaction.request.headers,
                    &interaction.request.body,
                ),
            },
            response: ExportedResponse {
                status: interaction.response.status,
                headers: interaction.response.headers.clone(),
                body: ExportedBody::from_bytes(&interaction.response.body),
                decoded: decoded_for_display(
                    &interaction.response.headers,
                    &interaction.response.body,
                ),
            },
        }
    }

    /// Back to the stored form, under `cassette`; the id is assigned by the store.
    pub fn into_interaction(self, cassette: &str) -> Result<Interaction, base64::DecodeError> {
        Ok(Interaction {
            schema: SCHEMA_VERSION,
            id: self.id,
            cassette: cassette.to_owned(),
            recorded_at: self.recorded_at,
            upstream_latency_ms: self.upstream_latency_ms,
            request: RecordedRequest {
                method: self.request.method,
                uri: self.request.uri,
                host: self.request.host,
                headers: self.request.headers,
                body: self.request.body.to_bytes()?,
            },
            response: RecordedResponse {
                status: self.response.status,
                headers: self.response.headers,
                body: self.response.body.to_bytes()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_bodies_round_trip_exactly() {
        for bytes in [
            &br#"{"b":1,"a":[true,null]}"#[..],
            b"{ \"pretty\": true }\n",
            b"plain text",
            b"\xff\x00binary",
            b"",
        ] {
            let exported = ExportedBody::from_bytes(bytes);
            assert_eq!(
                exported.to_bytes().expect("decodes"),
                Bytes::copy_from_slice(bytes)
            );
        }
        assert!(matches!(
            ExportedBody::from_bytes(br#"{"b":1,"a":2}"#),
            ExportedBody::Json(_)
        ));
        assert!(matches!(
            ExportedBody::from_bytes(b"{ \"a\": 1 }"),
            ExportedBody::Text(_)
        ));
    }

    /// Regression: a body nested 124-127 levels deep was exported as a JSON value, and
    /// the document holding it was then too deep for serde_json to read back.
    #[test]
    fn deeply_nested_json_bodies_export_and_read_back() {
        for depth in [1, 99, 100, 101, 124, 126, 127, 128, 129, 10_000] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let interaction = Interaction {
                schema: SCHEMA_VERSION,
                id: 1,
                cassette: "c".into(),
                recorded_at: "2026-01-01T00:00:00Z".into(),
                upstream_latency_ms: 0.0,
                request: RecordedRequest {
                    method: "POST".into(),
                    uri: "/".into(),
                    host: None,
                    headers: vec![Header::new("content-type", b"application/json")],
                    body: Bytes::from(body.clone()),
                },
                response: RecordedResponse {
                    status: 200,
                    headers: vec![],
                    body: Bytes::from(body.clone()),
                },
            };
            let document = ExportDocument {
                graphvcr_export: EXPORT_VERSION,
                cassette: "c".into(),
                interactions: vec![ExportedInteraction::from_interaction(&interaction)],
            };
            let text = serde_json::to_string_pretty(&document).expect("serialises");
            let back: ExportDocument = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("depth {depth}: export does not read back: {e}"));
            let again = back.interactions[0]
                .clone()
                .into_interaction("c")
                .expect("bodies decode");
            assert_eq!(
                again.request.body, interaction.request.body,
                "depth {depth}"
            );
            assert_eq!(
                again.response.body, interaction.response.body,
                "depth {depth}"
            );
        }
    }

    #[test]
    fn stored_form_of_version_1_still_reads() {
        let fixture = include_str!("../tests/fixtures/interaction-v1.json");
        let interaction = Interaction::from_bytes(fixture.as_bytes()).expect("v1 fixture reads");
        assert_eq!(interaction.schema, 1);
        assert_eq!(interaction.request.method, "PATCH");
        assert_eq!(interaction.response.status, 200);
        assert!(!interaction.response.body.is_empty());

        // Replay's partial read sees the same answer.
        let reply = StoredReply::from_bytes(fixture.as_bytes()).expect("v1 reply reads");
        assert_eq!(reply.id, interaction.id);
        assert_eq!(reply.recorded_at, interaction.recorded_at);
        assert_eq!(reply.upstream_latency_ms, interaction.upstream_latency_ms);
        assert_eq!(reply.response.status, interaction.response.status);
        assert_eq!(reply.response.body, interaction.response.body);
        assert_eq!(
            reply.response.headers,
            headers_to_map(&interaction.response.headers)
        );
    }

    fn varied_interactions() -> Vec<Interaction> {
        let base = Interaction::from_bytes(
            include_str!("../tests/fixtures/interaction-v1.json").as_bytes(),
        )
        .expect("v1 fixture reads");
        let mut empty = base.clone();
        empty.request.body = Bytes::new();
        empty.response.body = Bytes::new();
        empty.request.headers.clear();
        empty.response.headers.clear();
        empty.request.host = Some("graph.microsoft.com".into());
        empty.cassette = String::new();
        let mut odd = base.clone();
        odd.id = u64::MAX;
        odd.upstream_latency_ms = 1234.5678;
        odd.cassette = "ünïcode \"quoted\" cassette".into();
        odd.request.body = Bytes::from_static(b"\xff\x00\x80 not UTF-8");
        odd.response.body = Bytes::from(vec![7u8; 200_000]);
        odd.response.headers = vec![
            Header::new("x-binary", &[0x80, 0xfe, b'a']),
            Header {
                name: "x-bad-base64".to_owned(),
                value: "not base64!".to_owned(),
                binary: true,
            },
            Header::new("set-cookie", b"a=1"),
            Header::new("set-cookie", b"b=2"),
        ];
        vec![base, empty, odd]
    }

    #[test]
    fn the_binary_form_round_trips_exactly() {
        for mut interaction in varied_interactions() {
            interaction.schema = SCHEMA_VERSION;
            let bytes = interaction.to_bytes();
            assert_eq!(bytes.first(), Some(&BINARY_TAG));
            let back = Interaction::from_bytes(&bytes).expect("reads back");
            assert_eq!(back, interaction);
            // No base64 in the binary form: bodies cost their own size.
            assert!(
                bytes.len()
                    < 512 + interaction.request.body.len() + interaction.response.body.len(),
                "{} bytes",
                bytes.len()
            );
        }
    }

    /// Replay's prefix read gives the same answer from either form.
    #[test]
    fn replay_reads_the_same_answer_from_both_forms() {
        for interaction in varied_interactions() {
            let json = serde_json::to_vec(&interaction).expect("json");
            let binary = interaction.to_bytes();
            let from_json = StoredReply::from_bytes(&json).expect("json reply");
            let from_binary = StoredReply::from_bytes(&binary).expect("binary reply");
            assert_eq!(from_json.schema, interaction.schema);
            assert_eq!(from_binary.schema, SCHEMA_VERSION);
            assert_eq!(from_binary.response, from_json.response);
            assert_eq!(
                from_binary.response.headers,
                headers_to_map(&interaction.response.headers)
            );
            assert_eq!(from_binary.response.body, interaction.response.body);
            assert_eq!(
                (from_binary.id, &from_binary.recorded_at),
                (from_json.id, &from_json.recorded_at)
            );
            assert_eq!(
                from_binary.upstream_latency_ms,
                from_json.upstream_latency_ms
            );
        }
    }

    #[test]
    fn damaged_and_foreign_values_are_errors() {
        let interaction = varied_interactions().remove(0);
        let bytes = interaction.to_bytes();
        // Every truncation fails cleanly (the full value is the only one that reads).
        for end in 0..bytes.len() {
            assert!(Interaction::from_bytes(&bytes[..end]).is_err(), "at {end}");
        }
        assert!(matches!(
            Interaction::from_bytes(b""),
            Err(StoredFormError::Empty)
        ));
        assert!(matches!(
            StoredReply::from_bytes(b"[1]"),
            Err(StoredFormError::UnknownForm(b'['))
        ));
        let mut newer = bytes.clone();
        newer[1] = 3; // the leading varint schema
        assert!(matches!(
            Interaction::from_bytes(&newer),
            Err(StoredFormError::NewerSchema { found: 3 })
        ));
        assert!(matches!(
            StoredReply::from_bytes(&newer),
            Err(StoredFormError::NewerSchema { found: 3 })
        ));
        let mut json_newer = interaction.clone();
        json_newer.schema = 7;
        let json_newer = serde_json::to_vec(&json_newer).expect("json");
        assert!(matches!(
            StoredReply::from_bytes(&json_newer),
            Err(StoredFormError::NewerSchema { found: 7 })
        ));
    }

    #[test]
    fn replay_reads_headers_as_the_header_map_would_be_built() {
        let mut interaction = Interaction::from_bytes(
            include_str!("../tests/fixtures/interaction-v1.json").as_bytes(),
        )
        .expect("v1 fixture reads");
        interaction.response.headers = vec![
            Header::new("content-type", b"application/json"),
            Header::new("x-escaped", "quote \" and \\ backslash".as_bytes()),
            Header::new("x-binary", &[0x80, 0xfe, b'a']),
            Header::new("set-cookie", b"a=1"),
            Header::new("set-cookie", b"b=2"),
            Header::new("bad name", b"skipped"),
            Header::new("x-bad-value", b"line\nbreak"),
            Header {
                name: "x-bad-base64".to_owned(),
                value: "not base64!".to_owned(),
                binary: true,
            },
        ];
        let expected = headers_to_map(&interaction.response.headers);
        for stored in [
            interaction.to_bytes(),
            serde_json::to_vec(&interaction).expect("json"),
        ] {
            let reply = StoredReply::from_bytes(&stored).expect("reply reads");
            assert_eq!(reply.response.headers, expected);
        }
        assert_eq!(expected.len(), 6, "{expected:?}");
        assert_eq!(expected["x-escaped"], "quote \" and \\ backslash");
        assert_eq!(expected["x-binary"].as_bytes(), &[0x80, 0xfe, b'a']);
        assert_eq!(expected.get_all("set-cookie").iter().count(), 2);
    }
}
