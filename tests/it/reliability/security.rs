//! Secrets: bearer tokens, cookies, client secrets and refresh tokens go through every
//! mode; none may appear in any file under the store, in any export, or in the log.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;

use crate::support::*;

const BEARER: &str = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJzZWNyZXQtYmVhcmVyIn0.bearer-4711";
const COOKIE: &str = "cookie-secret-4712";
const CLIENT_SECRET: &str = "client-secret~4713";
const REFRESH_IN: &str = "refresh-token-in-4714";
const ACCESS_OUT: &str = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhY2Nlc3Mtb3V0In0.access-4715";
const REFRESH_OUT: &str = "refresh-token-out-4716";
const ID_OUT: &str = "id-token-out-4717";
const SET_COOKIE: &str = "set-cookie-secret-4718";
const SAS: &str = "sas-signature-secret-4719";

const SECRETS: [&str; 9] = [
    BEARER,
    COOKIE,
    CLIENT_SECRET,
    REFRESH_IN,
    ACCESS_OUT,
    REFRESH_OUT,
    ID_OUT,
    SET_COOKIE,
    SAS,
];

/// The forms a secret can take on disk: as is, percent-encoded, and inside base64 at
/// each of the three byte alignments (stored bodies are base64).
fn disguises(secret: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![
        secret.as_bytes().to_vec(),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .into_bytes(),
    ];
    for skip in 0..3 {
        let tail = &secret.as_bytes()[skip..];
        let whole = &tail[..tail.len() / 3 * 3];
        forms.push(
            base64::engine::general_purpose::STANDARD
                .encode(whole)
                .into_bytes(),
        );
    }
    forms
}

/// Files under `dir` holding any form of any secret, as `(secret, file)`.
fn leaks_in(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for secret in SECRETS {
        for form in disguises(secret) {
            for file in graphvcr::demo::find_in_files(dir, &form) {
                found.push((secret.to_owned(), file.display().to_string()));
            }
        }
    }
    found
}

fn leaks_in_text(text: &str) -> Vec<String> {
    SECRETS
        .iter()
        .filter(|secret| {
            disguises(secret)
                .iter()
                .any(|form| text.as_bytes().windows(form.len()).any(|w| w == &form[..]))
        })
        .map(|s| (*s).to_owned())
        .collect()
}

#[tokio::test]
async fn secrets_reach_no_file_export_or_log_in_any_mode() {
    let scratch = Scratch::new();
    let saw_real_secrets = Arc::new(AtomicBool::new(false));
    let saw = saw_real_secrets.clone();
    let upstream = TestUpstream::start(move |seen| {
        let headers = format!("{:?}", seen.parts.headers);
        let body = String::from_utf8_lossy(&seen.body);
        if headers.contains(BEARER) || body.contains("client_secret=client-secret") {
            saw.store(true, Ordering::Relaxed);
        }
        let payload = if seen.parts.uri.path().ends_with("/oauth2/v2.0/token") {
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": ACCESS_OUT,
                "refresh_token": REFRESH_OUT,
                "id_token": ID_OUT,
            })
        } else {
            serde_json::json!({ "status": "compliant" })
        };
        let mut response =
            http::Response::new(http_body_util::Full::new(Bytes::from(payload.to_string())));
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static("fpc=set-cookie-secret-4718; path=/; secure; HttpOnly"),
        );
        response
    })
    .await;
    let store = scratch.arg("store");
    let mut proxy = Proc::start_logging(
        &[
            "serve",
            "--mode",
            "replay",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--upstream",
            &upstream.url(),
        ],
        scratch.path(),
        "debug",
    );
    let http = Http::new();
    let bearer = format!("Bearer {BEARER}");
    let cookie = format!("session={COOKIE}; other=1");
    let token_form = format!(
        "grant_type=refresh_token&client_id=app-1&client_secret={}&refresh_token={REFRESH_IN}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default",
        percent_encoding::utf8_percent_encode(CLIENT_SECRET, percent_encoding::NON_ALPHANUMERIC)
    );
    let patch_path = status_path("cfg-s", "dev-s");
    let sas_path = format!("/v1.0/drive/items/x/content?sv=2020-08-04&sig={SAS}");
    // (mode, cassette) in the order they run: replay and auto find the recording.
    let runs = [
        ("record", "sec"),
        ("replay", "sec"),
        ("auto", "sec"),
        ("auto", "sec-auto"),
        ("passthrough", "sec-pass"),
    ];
    for (mode, cassette) in runs {
        let common = [
            ("x-graphvcr-mode", mode),
            ("x-graphvcr-cassette", cassette),
            ("authorization", bearer.as_str()),
            ("cookie", cookie.as_str()),
        ];
        let token = http
            .send(
                "POST",
                &proxy.url("/common/oauth2/v2.0/token"),
                &[
                    common[0],
                    common[1],
                    common[3],
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &token_form,
            )
            .await;
        assert_eq!(token.status, 200, "{mode}/{cassette}: {}", token.text());
        let patch = http
            .send(
                "PATCH",
                &proxy.url(&patch_path),
                &[
                    common[0],
                    common[1],
                    common[2],
                    common[3],
                    ("content-type", "application/json"),
                ],
                r#"{"status":"compliant"}"#,
            )
            .await;
        assert_eq!(patch.status, 200, "{mode}/{cassette}: {}", patch.text());
        let sas = http.send("GET", &proxy.url(&sas_path), &common, "").await;
        assert_eq!(sas.status, 200, "{mode}/{cassette}: {}", sas.text());
        let outcome = token.header("x-graphvcr-outcome").unwrap_or("");
        match mode {
            "replay" => assert_eq!(outcome, "replayed"),
            "passthrough" => assert_eq!(outcome, "forwarded"),
            "record" => assert_eq!(outcome, "recorded"),
            _ => assert!(outcome == "recorded" || outcome == "replayed", "{outcome}"),
        }
        if outcome == "replayed" {
            // What was stored is the redacted answer.
            let text = token.text();
            assert!(
                text.contains("[REDACTED]") && leaks_in_text(&text).is_empty(),
                "{text}"
            );
        }
    }
    assert!(
        saw_real_secrets.load(Ordering::Relaxed),
        "the upstream got the real credentials"
    );
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(log.contains("exchange"), "the log was captured:\n{log}");
    assert!(
        leaks_in_text(&log).is_empty(),
        "secrets in the log: {:?}",
        leaks_in_text(&log)
    );

    let store_dir = scratch.join("store");
    assert!(file_count(&store_dir) >= 2, "the store has files to scan");
    let leaked = leaks_in(&store_dir);
    assert!(leaked.is_empty(), "secrets in the store: {leaked:?}");
    // The scan can see stored bodies: a recorded, non-secret body is found.
    let control = r#"{"status":"compliant"}"#;
    assert!(
        disguises(control)
            .iter()
            .any(|form| !graphvcr::demo::find_in_files(&store_dir, form).is_empty()),
        "the scan does not see stored bodies"
    );

    let exports = scratch.join("exports");
    std::fs::create_dir_all(&exports).expect("exports dir");
    for cassette in ["sec", "sec-auto"] {
        for format in ["json", "har"] {
            let out = exports.join(format!("{cassette}.{format}"));
            let (status, _, stderr) = run(
                &[
                    "cassette",
                    "export",
                    cassette,
                    "--format",
                    format,
                    "--out",
                    &out.display().to_string(),
                    "--store",
                    &store,
                ],
                scratch.path(),
            );
            assert!(status.success(), "{stderr}");
            let text = std::fs::read_to_string(&out).expect("export written");
            assert!(
                text.contains("[REDACTED]"),
                "{cassette}.{format} shows the redaction"
            );
        }
    }
    assert_eq!(file_count(&exports), 4);
    let leaked = leaks_in(&exports);
    assert!(leaked.is_empty(), "secrets in exports: {leaked:?}");
    let names: Vec<String> = cassette_list(&scratch)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !names.contains(&"sec-pass".to_owned()),
        "passthrough stored: {names:?}"
    );
    // Everything the test itself wrote (config, exports, store) is clean too.
    let leaked = leaks_in(scratch.path());
    assert!(
        leaked.is_empty(),
        "secrets under the scratch dir: {leaked:?}"
    );
}
