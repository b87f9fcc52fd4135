//! HAR 1.2 (HTTP Archive) documents: cassettes out to browser DevTools and other tools,
//! and captures from them in as cassettes.
//!
//! Bodies: text bodies are `text`, binary ones base64 with `encoding: "base64"`. A
//! compressed body is shown decoded in `text` (as DevTools does) and its exact bytes kept
//! in the `_graphvcrRaw` extension field, so import gives back what was recorded.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::record::{
    decode_body, header_value, Header, Interaction, RecordedRequest, RecordedResponse,
    SCHEMA_VERSION,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Har<E = Vec<Entry>> {
    pub log: Log<E>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Log<E = Vec<Entry>> {
    pub version: String,
    pub creator: Creator,
    /// A `Vec` read in; written out, also anything that serializes as a sequence of
    /// entries (an export streams them from the store).
    pub entries: E,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Creator {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub started_date_time: String,
    /// Milliseconds.
    pub time: f64,
    pub request: Request,
    pub response: Response,
    #[serde(default)]
    pub cache: serde_json::Map<String, serde_json::Value>,
    pub timings: Timings,
    #[serde(
        rename = "_graphvcrId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub graphvcr_id: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub method: String,
    pub url: String,
    pub http_version: String,
    #[serde(default)]
    pub cookies: Vec<NameValue>,
    pub headers: Vec<NameValue>,
    #[serde(default)]
    pub query_string: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_data: Option<PostData>,
    pub headers_size: i64,
    pub body_size: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub status: u16,
    pub status_text: String,
    pub http_version: String,
    #[serde(default)]
    pub cookies: Vec<NameValue>,
    pub headers: Vec<NameValue>,
    pub content: Content,
    #[serde(rename = "redirectURL", default)]
    pub redirect_url: String,
    pub headers_size: i64,
    pub body_size: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostData {
    pub mime_type: String,
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(
        rename = "_graphvcrRaw",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub raw: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<i64>,
    #[serde(default)]
    pub mime_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(
        rename = "_graphvcrRaw",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub raw: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timings {
    pub send: f64,
    pub wait: f64,
    pub receive: f64,
}

/// How a body is written into HAR: text, base64, plus the raw bytes when compressed.
struct HarBody {
    text: String,
    encoding: Option<String>,
    raw: Option<String>,
    decoded_len: usize,
}

fn har_body(headers: &[Header], body: &[u8]) -> HarBody {
    let decoded = decode_body(header_value(headers, "content-encoding"), body, 64 << 20);
    let shown = decoded.as_deref().unwrap_or(body);
    let raw = decoded.as_ref().map(|_| BASE64.encode(body));
    match std::str::from_utf8(shown) {
        Ok(text) => HarBody {
            text: text.to_owned(),
            encoding: None,
            raw,
            decoded_len: shown.len(),
        },
        Err(_) => HarBody {
            text: BASE64.encode(shown),
            encoding: Some("base64".to_owned()),
            raw,
            decoded_len: shown.len(),
        },
    }
}

fn body_from_har(text: &str, encoding: Option<&str>, raw: Option<&str>) -> Result<Bytes, String> {
    if let Some(raw) = raw {
        return BASE64
            .decode(raw)
            .map(Bytes::from)
            .map_err(|e| format!("_graphvcrRaw is not base64: {e}"));
    }
    match encoding {
        Some(e) if e.eq_ignore_ascii_case("base64") => BASE64
            .decode(text)
            .map(Bytes::from)
            .map_err(|e| format!("a base64 body does not decode: {e}")),
        _ => Ok(Bytes::from(text.to_owned())),
    }
}

fn name_values(headers: &[Header]) -> Vec<NameValue> {
    headers
        .iter()
        .map(|h| NameValue {
            name: h.name.clone(),
            value: h.value.clone(),
        })
        .collect()
}

fn query_of(uri: &str) -> Vec<NameValue> {
    let Some((_, query)) = uri.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            NameValue {
                name: decode(name),
                value: decode(value),
            }
        })
        .collect()
}

/// The HTTP reason phrase for a status, or empty.
fn status_text(status: u16) -> String {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
        .to_owned()
}

/// An interaction as a HAR entry. `base_url` (scheme and host, no trailing slash) makes
/// the absolute URL for reverse-mode recordings, which keep only path and query.
pub fn entry_from_interaction(interaction: &Interaction, base_url: &str) -> Entry {
    let request = &interaction.request;
    let response = &interaction.response;
    let url = match &request.host {
        Some(host) => format!("https://{host}{}", request.uri),
        None => format!("{base_url}{}", request.uri),
    };
    let request_body = har_body(&request.headers, &request.body);
    let response_body = har_body(&response.headers, &response.body);
    let mime = |headers: &[Header]| {
        header_value(headers, "content-type")
            .unwrap_or("")
            .to_owned()
    };
    Entry {
        started_date_time: interaction.recorded_at.clone(),
        time: interaction.upstream_latency_ms,
        request: Request {
            method: request.method.clone(),
            url,
            http_version: "HTTP/1.1".to_owned(),
            cookies: Vec::new(),
            headers: name_values(&request.headers),
            query_string: query_of(&request.uri),
            post_data: (!request.body.is_empty()).then(|| PostData {
                mime_type: mime(&request.headers),
                text: request_body.text,
                encoding: request_body.encoding,
                raw: request_body.raw,
            }),
            headers_size: -1,
            body_size: request.body.len() as i64,
        },
        response: Response {
            status: response.status,
            status_text: status_text(response.status),
            http_version: "HTTP/1.1".to_owned(),
            cookies: Vec::new(),
            headers: name_values(&response.headers),
            content: Content {
                size: response_body.decoded_len as i64,
                compression: response_body
                    .raw
                    .as_ref()
                    .map(|_| response_body.decoded_len as i64 - response.body.len() as i64),
                mime_type: mime(&response.headers),
                text: Some(response_body.text),
                encoding: response_body.encoding,
                raw: response_body.raw,
            },
            redirect_url: header_value(&response.headers, "location")
                .unwrap_or("")
                .to_owned(),
            headers_size: -1,
            body_size: response.body.len() as i64,
        },
        cache: serde_json::Map::new(),
        timings: Timings {
            send: 0.0,
            wait: interaction.upstream_latency_ms,
            receive: 0.0,
        },
        graphvcr_id: Some(interaction.id),
    }
}

/// A whole HAR document.
pub fn document<E>(entries: E) -> Har<E> {
    Har {
        log: Log {
            version: "1.2".to_owned(),
            creator: Creator {
                name: "graphvcr".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            entries,
        },
    }
}

/// A HAR entry as an interaction of `cassette` (the id is assigned by the store).
/// Browsers store bodies decoded even when `Content-Encoding` says otherwise: such a
/// header is dropped when the body is not actually encoded, so replay stays coherent.
pub fn interaction_from_entry(entry: Entry, cassette: &str) -> Result<Interaction, String> {
    let uri = match entry.request.url.find("://") {
        Some(scheme_end) => {
            let rest = &entry.request.url[scheme_end + 3..];
            match rest.find('/') {
                Some(path_start) => rest[path_start..].to_owned(),
                None => "/".to_owned(),
            }
        }
        None => entry.request.url.clone(),
    };
    let uri = uri.split('#').next().unwrap_or("/").to_owned();
    let headers = |values: Vec<NameValue>| -> Vec<Header> {
        values
            .into_iter()
            .filter(|h| !h.name.starts_with(':'))
            .map(|h| Header::new(&h.name, h.value.as_bytes()))
            .collect()
    };
    let request_body = match &entry.request.post_data {
        Some(post) => body_from_har(&post.text, post.encoding.as_deref(), post.raw.as_deref())?,
        None => Bytes::new(),
    };
    let content = &entry.response.content;
    let response_body = body_from_har(
        content.text.as_deref().unwrap_or(""),
        content.encoding.as_deref(),
        content.raw.as_deref(),
    )?;
    let mut response_headers = headers(entry.response.headers);
    let encoding = header_value(&response_headers, "content-encoding").map(str::to_owned);
    if content.raw.is_none()
        && encoding.is_some()
        && decode_body(encoding.as_deref(), &response_body, 64 << 20).is_none()
    {
        response_headers.retain(|h| {
            !h.name.eq_ignore_ascii_case("content-encoding")
                && !h.name.eq_ignore_ascii_case("content-length")
        });
    }
    Ok(Interaction {
        schema: SCHEMA_VERSION,
        id: entry.graphvcr_id.unwrap_or(0),
        cassette: cassette.to_owned(),
        recorded_at: entry.started_date_time,
        upstream_latency_ms: entry.time.max(0.0),
        request: RecordedRequest {
            method: entry.request.method,
            uri,
            host: None,
            headers: headers(entry.request.headers),
            body: request_body,
        },
        response: RecordedResponse {
            status: entry.response.status,
            headers: response_headers,
            body: response_body,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        use std::io::Write;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(br#"{"value":[]}"#).expect("gzip");
        let gzipped = Bytes::from(gzip.finish().expect("gzip"));
        let interaction = Interaction {
            schema: SCHEMA_VERSION,
            id: 9,
            cassette: "c".into(),
            recorded_at: "2026-11-29T03:00:00.000Z".into(),
            upstream_latency_ms: 12.5,
            request: RecordedRequest {
                method: "PATCH".into(),
                uri: "/v1.0/x?$select=id&a=%20b".into(),
                host: None,
                headers: vec![Header::new("content-type", b"application/json")],
                body: Bytes::from_static(b"\xff\x00binary"),
            },
            response: RecordedResponse {
                status: 200,
                headers: vec![
                    Header::new("content-encoding", b"gzip"),
                    Header::new("content-type", b"application/json"),
                ],
                body: gzipped,
            },
        };
        let entry = entry_from_interaction(&interaction, "https://graph.microsoft.com");
        assert_eq!(
            entry.request.url,
            "https://graph.microsoft.com/v1.0/x?$select=id&a=%20b"
        );
        assert_eq!(
            entry.response.content.text.as_deref(),
            Some(r#"{"value":[]}"#)
        );
        assert_eq!(
            entry.request.query_string[1],
            NameValue {
                name: "a".into(),
                value: " b".into()
            }
        );
        let text = serde_json::to_string(&document(vec![entry])).expect("serialise");
        let parsed: Har = serde_json::from_str(&text).expect("parse");
        let back = interaction_from_entry(parsed.log.entries[0].clone(), "c").expect("import");
        assert_eq!(back, interaction);
    }

    #[test]
    fn browser_captures_with_decoded_bodies_drop_content_encoding() {
        let entry: Entry = serde_json::from_value(serde_json::json!({
            "startedDateTime": "2026-11-29T03:00:00.000Z", "time": 5,
            "request": {"method": "GET", "url": "https://graph.microsoft.com/v1.0/me", "httpVersion": "h2",
                        "headers": [{"name": ":authority", "value": "graph.microsoft.com"}], "headersSize": -1, "bodySize": 0},
            "response": {"status": 200, "statusText": "", "httpVersion": "h2",
                         "headers": [{"name": "content-encoding", "value": "gzip"}],
                         "content": {"size": 2, "mimeType": "application/json", "text": "{}"},
                         "redirectURL": "", "headersSize": -1, "bodySize": -1},
            "cache": {}, "timings": {"send": 0, "wait": 5, "receive": 0}
        }))
        .expect("entry");
        let interaction = interaction_from_entry(entry, "c").expect("import");
        assert_eq!(interaction.request.uri, "/v1.0/me");
        assert!(
            interaction.request.headers.is_empty(),
            "pseudo-headers dropped"
        );
        assert!(
            interaction.response.headers.is_empty(),
            "content-encoding dropped"
        );
        assert_eq!(&interaction.response.body[..], b"{}");
    }
}
