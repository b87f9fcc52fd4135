//! Request normalisation and JSON canonicalisation on arbitrary requests: redaction of
//! the target and body, normalisation under default and non-default rules, match keys,
//! differences. Properties: no panic; canonical JSON is a fixed point (canonicalising
//! its own output gives the same text); a request equals itself.
//!
//! Input: `METHOD \n TARGET \n CONTENT-TYPE \n BODY…` (missing parts are empty).
#![no_main]

use graphvcr::matching::{self, MatchRules, NormalBody, RequestView};
use graphvcr::record::Header;
use graphvcr::redact::Redactor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = bytes::Bytes::copy_from_slice(parts.next().unwrap_or_default());

    let redactor = Redactor::default();
    let target = redactor.uri(&target);
    let body = redactor.body(Some(&content_type), &body);
    let headers = [Header::new("content-type", content_type.as_bytes())];
    let view = RequestView {
        method: &method,
        host: None,
        path_and_query: &target,
        content_type: Some(&content_type),
        content_encoding: None,
        headers: &headers,
        body: &body,
    };
    let relaxed = MatchRules {
        ignore_pointers: vec!["/a/*".to_owned(), "/*/0".to_owned()],
        ignore_array_order: true,
        path_case_insensitive: true,
        ignore_query: vec!["$top".to_owned()],
        ..MatchRules::default()
    };
    for rules in [MatchRules::default(), relaxed] {
        let normalized = matching::normalize(&view, &rules);
        let key = normalized.key();
        assert_eq!(key, matching::normalize(&view, &rules).key(), "keys are stable");
        assert!(matching::differences(&normalized, &normalized).is_empty());
        if let NormalBody::Json(value) = &normalized.body {
            let mut canonical = String::new();
            matching::canonical_json(value, &mut canonical);
            let again: serde_json::Value =
                serde_json::from_str(&canonical).expect("canonical JSON parses");
            let mut twice = String::new();
            matching::canonical_json(&again, &mut twice);
            assert_eq!(canonical, twice, "canonical JSON is a fixed point");
        }
    }
    let _ = matching::normalize_percent(&target, true);
});
