//! The cassette import formats: graphvcr export JSON and HAR 1.2, read by
//! `cassette::parse_any`. Properties: no panic; whatever imports exports again as a
//! document that reads back to the same bodies (export is the lossless migration path).
#![no_main]

use std::path::Path;

use graphvcr::cassette;
use graphvcr::record::{ExportDocument, ExportedInteraction, EXPORT_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(imported) = cassette::parse_any(text, Path::new("fuzz.json"), "fuzz") else {
        return;
    };
    let document = ExportDocument {
        graphvcr_export: EXPORT_VERSION,
        cassette: imported.cassette.clone(),
        interactions: imported
            .interactions
            .iter()
            .map(ExportedInteraction::from_interaction)
            .collect(),
    };
    let exported = cassette::export_text(&document);
    let again = cassette::parse_any(&exported, Path::new("again.json"), "fuzz")
        .expect("an export of imported interactions reads back");
    assert_eq!(again.interactions.len(), imported.interactions.len());
    for (before, after) in imported.interactions.iter().zip(&again.interactions) {
        assert_eq!(before.request.body, after.request.body, "request body");
        assert_eq!(before.response.body, after.response.body, "response body");
        assert_eq!(before.request.uri, after.request.uri);
    }
    let entries = imported
        .interactions
        .iter()
        .map(|i| graphvcr::har::entry_from_interaction(i, "https://graph.microsoft.com"))
        .collect();
    let har = serde_json::to_string(&graphvcr::har::document(entries)).expect("HAR serialises");
    let _ = cassette::parse_any(&har, Path::new("again.har"), "fuzz");
});
