//! Credentials and configured sanitizers are applied here, before a request or response
//! reaches the store or a log line; the leak guard then checks what survived. What is
//! removed is listed in README.md: changing this module changes what can leak to disk.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderMap;
use regex::Regex;
use serde_json::Value;

use crate::config::{LeakGuard, SanitizeConfig};
use crate::matching::replace_pointer;
use crate::matching::rules::pointer_tokens;
use crate::record::{decode_body, headers_from_map, Header};

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

/// Sanitizes messages; cheap to clone and shared by every request.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    config: Arc<SanitizeConfig>,
    /// How many values were replaced since start-up (for metrics).
    redactions: Arc<AtomicU64>,
}

/// A message (headers and body) in the form that may be stored.
#[derive(Debug, Clone)]
pub struct Sanitized {
    pub headers: Vec<Header>,
    pub body: Bytes,
}

impl Redactor {
    pub fn new(config: SanitizeConfig) -> Self {
        Self {
            config: Arc::new(config),
            redactions: Arc::default(),
        }
    }

    pub fn leak_guard(&self) -> LeakGuard {
        self.config.leak_guard
    }

    /// Values replaced so far.
    pub fn redaction_count(&self) -> u64 {
        self.redactions.load(Ordering::Relaxed)
    }

    fn count(&self, n: u64) {
        if n > 0 {
            self.redactions.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn is_secret_header(&self, name: &str) -> bool {
        CREDENTIAL_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
            || self
                .config
                .headers
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
    }

    /// A copy of `headers` safe to store. The auth scheme is kept (`Bearer [REDACTED]`)
    /// so a reader can still see that a token was sent.
    pub fn headers(&self, headers: &HeaderMap) -> Vec<Header> {
        let mut out = headers_from_map(headers);
        let mut replaced = 0;
        for header in &mut out {
            if self.is_secret_header(&header.name) {
                header.value = redacted_value(&header.name, &header.value_bytes());
                header.binary = false;
                replaced += 1;
            }
        }
        self.count(replaced);
        out
    }

    /// The request target with token-bearing query parameters (OAuth fields, SAS `sig`)
    /// replaced and the configured regex replacements applied; other parts byte-exact.
    pub fn uri(&self, path_and_query: &str) -> String {
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let mut path = Cow::Borrowed(path);
        for replacement in self.config.replacements.iter().filter(|r| r.path) {
            if let Cow::Owned(changed) = replacement
                .pattern
                .replace_all(&path, replacement.replacement.as_str())
            {
                self.count(1);
                path = Cow::Owned(changed);
            }
        }
        let Some(query) = query else {
            return path.into_owned();
        };
        let mut query: String = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((name, _)) if is_token_field(name) || name.eq_ignore_ascii_case("sig") => {
                    self.count(1);
                    format!("{name}=%5BREDACTED%5D")
                }
                _ => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        for replacement in self.config.replacements.iter().filter(|r| r.query) {
            if let Cow::Owned(changed) = replacement
                .pattern
                .replace_all(&query, replacement.replacement.as_str())
            {
                self.count(1);
                query = changed;
            }
        }
        format!("{path}?{query}")
    }

    /// Headers and body in storable form. A compressed body is kept as received unless
    /// sanitizing changes it: then the sanitized, decoded body is kept and the
    /// `Content-Encoding`/`Content-Length` headers are adjusted to match.
    pub fn message(&self, headers: &HeaderMap, body: &Bytes) -> Sanitized {
        let original_len = body.len();
        let mut stored_headers = self.headers(headers);
        let content_type = header(headers, "content-type");
        let encoding = header(headers, "content-encoding");
        let decoded = decode_body(encoding, body, DECODE_LIMIT).map(Bytes::from);
        let plain = decoded.as_ref().unwrap_or(body);
        let sanitized = self.body(content_type, plain);
        let body = match decoded {
            Some(decoded) if sanitized != decoded => {
                stored_headers.retain(|h| !h.name.eq_ignore_ascii_case("content-encoding"));
                sanitized
            }
            Some(_) => body.clone(),
            None => sanitized,
        };
        if body.len() != original_len {
            // The stored length must describe the stored body, or replay sends a broken message.
            for header in stored_headers
                .iter_mut()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            {
                header.value = body.len().to_string();
            }
        }
        Sanitized {
            headers: stored_headers,
            body,
        }
    }

    /// A copy of a plain (not compressed) body with token members, configured JSON
    /// Pointers and regex replacements applied; the same bytes when nothing matched.
    pub fn body(&self, content_type: Option<&str>, body: &Bytes) -> Bytes {
        if body.is_empty() {
            return body.clone();
        }
        let content_type = content_type.unwrap_or("").to_ascii_lowercase();
        let mut out = body.clone();
        if content_type.contains("x-www-form-urlencoded") {
            if let Some(redacted) = redact_form(body) {
                self.count(1);
                out = redacted;
            }
        } else if (content_type.contains("json") || body.first() == Some(&b'{'))
            && (!self.config.json_pointers.is_empty() || may_hold_token_member(body))
        {
            if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
                let mut changed = redact_json(&mut value);
                for pointer in &self.config.json_pointers {
                    let redacted = Value::String(REDACTED.to_owned());
                    changed |= replace_pointer(&mut value, &pointer_tokens(pointer), &redacted);
                }
                if changed {
                    self.count(1);
                    out = Bytes::from(value.to_string());
                }
            }
        }
        let body_replacements: Vec<_> =
            self.config.replacements.iter().filter(|r| r.body).collect();
        if !body_replacements.is_empty() {
            if let Ok(text) = std::str::from_utf8(&out) {
                let mut text = Cow::Borrowed(text);
                for replacement in body_replacements {
                    if let Cow::Owned(changed) = replacement
                        .pattern
                        .replace_all(&text, replacement.replacement.as_str())
                    {
                        self.count(1);
                        text = Cow::Owned(changed);
                    }
                }
                if let Cow::Owned(text) = text {
                    out = Bytes::from(text);
                }
            }
        }
        out
    }
}

/// Decoded bodies larger than this are left as received.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Patterns of values that look like secrets.
fn leak_patterns() -> &'static [(&'static str, Regex)] {
    static PATTERNS: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            (
                "a JWT",
                r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            ),
            (
                "a client_secret",
                r#"client_secret["']?\s*[=:]\s*["']?[^\s"'&\[%]"#,
            ),
            // ASCII case only, as `may_leak` looks for it (Unicode would fold `ſ` to `s`).
            ("a SAS signature", r"(?i-u)[?&]sig=[A-Za-z0-9%+/=]{16,}"),
            ("a bearer token", r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{20,}"),
        ]
        .into_iter()
        .filter_map(|(name, pattern)| Regex::new(pattern).ok().map(|regex| (name, regex)))
        .collect()
    })
}

/// Whether `text` holds a literal that every match of one of [`leak_patterns`] has:
/// `eyJ`, `client_secret`, or `sig=` or `bearer` in any ASCII case. Most headers and
/// bodies hold none, and then no pattern runs: four regex searches for every header and
/// body were ~7% of a recording's CPU.
fn may_leak(text: &[u8]) -> bool {
    static FINDERS: OnceLock<[memchr::memmem::Finder<'static>; 2]> = OnceLock::new();
    let [jwt, client_secret] = FINDERS.get_or_init(|| {
        [
            memchr::memmem::Finder::new("eyJ"),
            memchr::memmem::Finder::new("client_secret"),
        ]
    });
    jwt.find(text).is_some()
        || client_secret.find(text).is_some()
        || holds_ignoring_ascii_case(text, b"sig=", 3)
        || holds_ignoring_ascii_case(text, b"bearer", 0)
}

/// Whether `word` occurs in `text`, ASCII case aside, found from its byte at `anchor`
/// (the rarest in the texts searched).
fn holds_ignoring_ascii_case(text: &[u8], word: &[u8], anchor: usize) -> bool {
    let Some(&byte) = word.get(anchor) else {
        return false;
    };
    memchr::memchr2_iter(byte.to_ascii_lowercase(), byte.to_ascii_uppercase(), text).any(|at| {
        at.checked_sub(anchor)
            .and_then(|start| text.get(start..start + word.len()))
            .is_some_and(|window| window.eq_ignore_ascii_case(word))
    })
}

/// Where a secret-looking value survived sanitizing, as `"<kind> in <field>"`.
pub fn find_leak(uri: &str, parts: &[(&str, &Sanitized)]) -> Option<String> {
    // Bytes are read as text (lossily) only once they pass the prefilter.
    let scan = |bytes: &[u8]| {
        if !may_leak(bytes) {
            return None;
        }
        let text = String::from_utf8_lossy(bytes);
        leak_patterns()
            .iter()
            .find(|(_, regex)| regex.is_match(&text))
            .map(|(name, _)| *name)
    };
    if let Some(kind) = scan(uri.as_bytes()) {
        return Some(format!("{kind} in the request target"));
    }
    for (side, message) in parts {
        for header in &message.headers {
            if let Some(kind) = scan(header.value.as_bytes()) {
                return Some(format!("{kind} in the {side} header {}", header.name));
            }
        }
        let encoding = message
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-encoding"))
            .map(|h| h.value.as_str());
        let decoded = decode_body(encoding, &message.body, DECODE_LIMIT);
        if let Some(kind) = scan(decoded.as_deref().unwrap_or(&message.body)) {
            return Some(format!("{kind} in the {side} body"));
        }
    }
    None
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

/// Words of letters only, one of which every name in [`TOKEN_FIELDS`] contains.
const TOKEN_WORDS: [&str; 4] = ["token", "secret", "assertion", "password"];

/// Whether a JSON body can have a member named like one of [`TOKEN_FIELDS`]: false only
/// when none of [`TOKEN_WORDS`] appears in its bytes (case-insensitively) and nothing is
/// escaped, so no key can spell one. Most bodies (Graph payloads) are then left
/// unparsed here. Runs on every request with a body, so it is a few SIMD scans rather
/// than a case-insensitive regex (which was ~2% of replay's CPU).
fn may_hold_token_member(body: &[u8]) -> bool {
    static WORDS: OnceLock<Vec<memchr::memmem::Finder<'static>>> = OnceLock::new();
    if memchr::memchr(b'\\', body).is_some() {
        return true;
    }
    // Setting bit 5 lower-cases ASCII letters and turns no other byte into a letter.
    let folded: Vec<u8> = body.iter().map(|byte| byte | 0x20).collect();
    WORDS
        .get_or_init(|| {
            TOKEN_WORDS
                .iter()
                .map(|word| memchr::memmem::Finder::new(word.as_bytes()))
                .collect()
        })
        .iter()
        .any(|word| word.find(&folded).is_some())
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

    fn message(body: &str) -> Sanitized {
        Sanitized {
            headers: vec![Header::new("content-type", b"application/json")],
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn the_leak_guard_finds_surviving_secrets() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl";
        let check = |uri: &str, body: &str, expected: Option<&str>| {
            let found = find_leak(uri, &[("response", &message(body))]);
            assert_eq!(found.as_deref(), expected, "{uri} {body}");
        };
        check("/v1.0/me", r#"{"status":"compliant"}"#, None);
        check(
            "/v1.0/me",
            &format!(r#"{{"token":"{jwt}"}}"#),
            Some("a JWT in the response body"),
        );
        check(
            "/x?sv=2020&sig=abcdefghijklmnop1234%3D",
            "",
            Some("a SAS signature in the request target"),
        );
        check("/x?sig=%5BREDACTED%5D", "", None);
        check(
            "/x",
            "client_secret=abc&x=1",
            Some("a client_secret in the response body"),
        );
        check("/x", "client_secret=%5BREDACTED%5D", None);
        check(
            "/x",
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz",
            Some("a bearer token in the response body"),
        );
        check("/x", "Bearer [REDACTED]", None);
        check(
            "/x?SIG=abcdefghijklmnop1234",
            "",
            Some("a SAS signature in the request target"),
        );
        check(
            "/x",
            "BEARER abcdefghijklmnopqrstuvwxyz",
            Some("a bearer token in the response body"),
        );
        // A text with two kinds names the first in the patterns' order.
        check(
            "/x",
            &format!("client_secret=abc Authorization: Bearer {jwt}"),
            Some("a JWT in the response body"),
        );
    }

    /// The literal check before the patterns never hides a match: every text a pattern
    /// matches passes it.
    #[test]
    fn the_leak_prefilter_lets_every_match_through() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let pieces = [
            "eyJhbGci",
            ".",
            "eyJzdWIi",
            "abcdefghij",
            "client_secret",
            "=",
            ":",
            "\"",
            "?",
            "&",
            "sig",
            "SiG",
            "ſig",
            "bearer",
            "BeArEr",
            " ",
            "\t",
            "%2B",
            "x",
            "é",
        ];
        let mut per_kind = vec![0; leak_patterns().len()];
        let (mut matched, mut passed) = (0, 0);
        for _ in 0..20_000 {
            let text: String = (0..rng.next_u32() % 12)
                .map(|_| pieces[rng.next_u32() as usize % pieces.len()])
                .collect();
            let mut hit = false;
            for (count, (_, regex)) in per_kind.iter_mut().zip(leak_patterns()) {
                if regex.is_match(&text) {
                    *count += 1;
                    hit = true;
                }
            }
            let pass = may_leak(text.as_bytes());
            assert!(
                !hit || pass,
                "{text:?} matches a pattern but fails the prefilter"
            );
            matched += usize::from(hit);
            passed += usize::from(pass);
        }
        // The generated texts exercise every kind, and texts that pass but match nothing.
        assert!(per_kind.iter().all(|&n| n > 0), "{per_kind:?}");
        assert!(passed > matched, "{passed} vs {matched}");
        assert!(!may_leak(
            br#"{"status":"compliant","userName":"Sig Bear"}"#
        ));
    }

    #[test]
    fn configured_sanitizers_apply_to_uri_and_body() {
        let config: crate::config::FileSanitize = toml::from_str(
            r#"
            json_pointers = ["/userPrincipalName", "/value/*/userName"]
            [[replace]]
            pattern = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
            replacement = "00000000-0000-0000-0000-000000000000"
            "#,
        )
        .expect("toml");
        let redactor = Redactor::new(config.resolve().expect("valid"));
        let uri = redactor.uri("/v1.0/x/2f0e1c3a-1b2c-4d5e-8f90-123456789abc?tenant=2f0e1c3a-1b2c-4d5e-8f90-123456789abc");
        assert_eq!(uri, "/v1.0/x/00000000-0000-0000-0000-000000000000?tenant=00000000-0000-0000-0000-000000000000");
        let body = Bytes::from_static(
            br#"{"userPrincipalName":"ada@contoso.com","value":[{"userName":"Ada"}],"keep":1}"#,
        );
        let out = redactor.body(Some("application/json"), &body);
        assert_eq!(
            &out[..],
            br#"{"userPrincipalName":"[REDACTED]","value":[{"userName":"[REDACTED]"}],"keep":1}"#
        );
        assert!(redactor.redaction_count() >= 3);
    }

    #[test]
    fn compressed_bodies_stay_as_received_unless_sanitized() {
        use std::io::Write;
        let gzip = |text: &str| {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(text.as_bytes()).expect("gzip");
            Bytes::from(encoder.finish().expect("gzip"))
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-encoding", HeaderValue::from_static("gzip"));
        let clean = gzip(r#"{"status":"compliant"}"#);
        let stored = Redactor::default().message(&headers, &clean);
        assert_eq!(stored.body, clean, "kept as received");
        let secret = gzip(r#"{"access_token":"abc","status":"compliant"}"#);
        let stored = Redactor::default().message(&headers, &secret);
        assert_eq!(
            &stored.body[..],
            br#"{"access_token":"[REDACTED]","status":"compliant"}"#
        );
        assert!(!stored.headers.iter().any(|h| h.name == "content-encoding"));
    }

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
        let redacted = Redactor::new(SanitizeConfig {
            headers: vec!["X-Api-Key".to_owned()],
            ..SanitizeConfig::default()
        })
        .headers(&headers);
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
        // Bodies are parsed only when a token name can be in them: escaped and
        // differently-cased names still count.
        for body in [
            &br#"{"pass\u0077ord":"hunter2"}"#[..],
            br#"{"nested":[{"Access_Token":"hunter2"}]}"#,
        ] {
            let out = redactor.body(Some("application/json"), &Bytes::from_static(body));
            assert!(!String::from_utf8_lossy(&out).contains("hunter2"));
        }
        let plain = Bytes::from_static(br#"{"status":"compliant"}"#);
        assert_eq!(redactor.body(Some("application/json"), &plain), plain);
    }

    #[test]
    fn the_token_name_scan_misses_no_name_in_any_case() {
        for field in TOKEN_FIELDS {
            assert!(
                TOKEN_WORDS.iter().any(|word| field.contains(word)),
                "{field} contains none of TOKEN_WORDS"
            );
            for name in [field.to_owned(), field.to_ascii_uppercase(), {
                // Alternate case: aCcEsS_tOkEn.
                field
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 2 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            }] {
                let body = format!(r#"{{"a":1,"{name}":"x"}}"#);
                assert!(may_hold_token_member(body.as_bytes()), "{name}");
            }
        }
        assert!(may_hold_token_member(br#"{"a\u0062":1}"#), "an escape");
        // Only letters fold into letters: near misses and non-ASCII bytes make no word.
        for body in [
            &br#"{"status":"compliant","userName":"a@b","n":[12345]}"#[..],
            b"{\"t\":\"TOK\xc3\xa9N\"}",
            br#"{"t":"t0ken","s":"s[cret"}"#,
        ] {
            assert!(
                !may_hold_token_member(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
