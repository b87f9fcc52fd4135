//! Match rules, sanitizers, per-request control and cassette tooling, through real
//! processes.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::*;

fn write_config(scratch: &Scratch, text: &str) -> String {
    std::fs::write(scratch.join("rules.toml"), text).expect("write config");
    scratch.arg("rules.toml")
}

fn seed_with(field: &str, value: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(SEED_BODY).expect("seed");
    body[field] = serde_json::Value::String(value.to_owned());
    body.to_string()
}

#[tokio::test]
async fn an_ignored_pointer_does_not_break_the_match_but_others_do() {
    let scratch = Scratch::new();
    let config = write_config(
        &scratch,
        r#"
        [[match.routes]]
        route = "/*/deviceManagement/deviceConfigurations/{id}/deviceStatuses/{id}"
        route_method = "PATCH"
        ignore_pointers = ["/lastReportedDateTime"]
        "#,
    );
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-i", "dev-i");
    {
        let mut recorder = proxy(
            &scratch,
            "record",
            &upstream.url(""),
            &["--config", &config],
        );
        assert_eq!(
            http.patch(&recorder.url(&path), SEED_BODY).await.status,
            200
        );
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let replayer = proxy(
        &scratch,
        "replay",
        &upstream.url(""),
        &["--config", &config],
    );
    let later = seed_with("lastReportedDateTime", "2026-11-29T10:00:00.1234567Z");
    let hit = http.patch(&replayer.url(&path), &later).await;
    assert_eq!(
        hit.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        hit.text()
    );
    let other = seed_with("userName", "Someone Else");
    let miss = http.patch(&replayer.url(&path), &other).await;
    assert_eq!(miss.status.as_u16(), 599);
    let differences = &miss.json()["error"]["graphvcr"]["nearest"][0]["differences"];
    assert_eq!(differences[0]["field"], "body /userName", "{differences}");
    assert_eq!(
        differences.as_array().map(Vec::len),
        Some(1),
        "the ignored pointer is not reported"
    );
}

#[tokio::test]
async fn regex_sanitized_guid_and_upn_never_reach_the_store_or_exports() {
    let scratch = Scratch::new();
    let config = write_config(
        &scratch,
        r#"
        [[sanitize.replace]]
        pattern = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        replacement = "00000000-0000-0000-0000-000000000000"
        [[sanitize.replace]]
        pattern = "[A-Za-z0-9._%+-]+@contoso\\.com"
        replacement = "user@example.invalid"
        "#,
    );
    let guid = "7c1f9d2e-4b3a-4e8f-9a6b-2d5c8e1f0a3b";
    let upn = "ada.lovelace@contoso.com";
    let path = status_path(guid, "dev-s");
    let body = seed_with("userPrincipalName", upn);
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    {
        let mut recorder = proxy(
            &scratch,
            "record",
            &upstream.url(""),
            &["--config", &config],
        );
        let recorded = http.patch(&recorder.url(&path), &body).await;
        assert_eq!(recorded.status, 200, "{}", recorded.text());
        assert_eq!(
            recorded.json()["userPrincipalName"],
            upn,
            "the client sees the real answer"
        );
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
        for secret in [guid, upn] {
            assert!(!recorder.stderr().contains(secret), "{secret} in the log");
        }
    }
    upstream.kill();
    let store = scratch.arg("store");
    let (status, json_export, _) = run(
        &[
            "cassette", "export", "default", "--store", &store, "--config", &config,
        ],
        scratch.path(),
    );
    assert!(status.success());
    let (status, har_export, _) = run(
        &[
            "cassette", "export", "default", "--format", "har", "--store", &store,
        ],
        scratch.path(),
    );
    assert!(status.success());
    assert!(
        json_export.contains("00000000-0000-0000-0000-000000000000")
            && json_export.contains("user@example.invalid")
    );
    assert!(file_count(&scratch.join("store")) > 0);
    for secret in [guid, upn] {
        assert!(
            files_containing(&scratch.join("store"), secret).is_empty(),
            "{secret} on disk"
        );
        assert!(
            !json_export.contains(secret) && !har_export.contains(secret),
            "{secret} exported"
        );
    }
    // The live request still matches its sanitized recording.
    let replayer = proxy(
        &scratch,
        "replay",
        &upstream.url(""),
        &["--config", &config],
    );
    let replayed = http.patch(&replayer.url(&path), &body).await;
    assert_eq!(
        replayed.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        replayed.text()
    );
}

#[tokio::test]
async fn concurrent_tests_get_their_own_cassettes_through_one_proxy() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-c", "dev-c");
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        for (cassette, status) in [("alpha", "compliant"), ("beta", "error")] {
            let headers = [
                ("x-graphvcr-cassette", cassette),
                ("authorization", "Bearer t"),
                ("content-type", "application/json"),
            ];
            let patched = http
                .send(
                    "PATCH",
                    &recorder.url(&path),
                    &headers,
                    &seed_with("status", status),
                )
                .await;
            assert_eq!(patched.status, 200, "{}", patched.text());
            let read = http.send("GET", &recorder.url(&path), &headers, "").await;
            assert_eq!(read.json()["status"], status);
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let mut tasks = Vec::new();
    for round in 0..20 {
        let (cassette, expected) = if round % 2 == 0 {
            ("alpha", "compliant")
        } else {
            ("beta", "error")
        };
        let http = http.clone();
        let url = replayer.url(&path);
        tasks.push(tokio::spawn(async move {
            let answer = http
                .send("GET", &url, &[("x-graphvcr-cassette", cassette)], "")
                .await;
            (expected, answer)
        }));
    }
    for task in tasks {
        let (expected, answer) = task.await.expect("task");
        assert_eq!(answer.json()["status"], expected, "{}", answer.text());
    }
}

fn gzip(text: &str) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip");
    Bytes::from(encoder.finish().expect("gzip"))
}

#[tokio::test]
async fn gzip_responses_round_trip_and_export_decoded() {
    let scratch = Scratch::new();
    let compressed = gzip(r#"{"value":[{"id":"a","status":"compliant"}]}"#);
    let served = compressed.clone();
    let upstream = TestUpstream::start(move |_| {
        http::Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(served.clone()))
            .expect("response")
    })
    .await;
    let http = Http::new();
    let path = "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses";
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(), &[]);
        let recorded = http
            .send(
                "GET",
                &recorder.url(path),
                &[("accept-encoding", "gzip")],
                "",
            )
            .await;
        assert_eq!(recorded.body, compressed);
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    drop(upstream);
    let replayer = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    let replayed = http
        .send(
            "GET",
            &replayer.url(path),
            &[("accept-encoding", "gzip")],
            "",
        )
        .await;
    assert_eq!(replayed.body, compressed, "stored and replayed as received");
    assert_eq!(replayed.header("content-encoding"), Some("gzip"));
    drop(replayer);
    let export = cli_ok(&scratch, &["cassette", "export", "default"]);
    let document: serde_json::Value = serde_json::from_str(&export).expect("export is JSON");
    assert_eq!(
        document["interactions"][0]["response"]["decoded"]["value"][0]["status"],
        "compliant"
    );
}

/// Replays `requests` and returns (status, body) of each.
async fn replay_all(
    proxy: &Proc,
    cassette: &str,
    requests: &[(&str, String, String)],
) -> Vec<(u16, Bytes)> {
    let http = Http::new();
    let mut out = Vec::new();
    for (method, path, body) in requests {
        let answer = http
            .send(
                method,
                &proxy.url(path),
                &[
                    ("x-graphvcr-cassette", cassette),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        assert_eq!(
            answer.header("x-graphvcr-outcome"),
            Some("replayed"),
            "{method} {path}: {}",
            answer.text()
        );
        out.push((answer.status.as_u16(), answer.body));
    }
    out
}

#[tokio::test]
async fn json_and_har_exports_round_trip_losslessly() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-x", "dev-x");
    let requests = vec![
        ("GET", path.clone(), String::new()),
        ("PATCH", path.clone(), SEED_BODY.to_owned()),
        ("GET", path.clone(), String::new()),
    ];
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        for (method, path, body) in &requests {
            http.send(
                method,
                &recorder.url(path),
                &[
                    ("authorization", "Bearer t"),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let store = scratch.arg("store");
    let before = {
        let replayer = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
        replay_all(&replayer, "default", &requests).await
    };
    assert_eq!(
        before.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![404, 200, 200]
    );
    let json_file = scratch.arg("default.json");
    let har_file = scratch.arg("default.har");
    for (format, file) in [("json", &json_file), ("har", &har_file)] {
        let (status, _, stderr) = run(
            &[
                "cassette", "export", "default", "--format", format, "--out", file, "--store",
                &store,
            ],
            scratch.path(),
        );
        assert!(status.success(), "{stderr}");
    }
    let har: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&har_file).expect("har"))
            .expect("HAR is JSON");
    assert_eq!(har["log"]["version"], "1.2");
    for field in [
        "startedDateTime",
        "time",
        "request",
        "response",
        "cache",
        "timings",
    ] {
        assert!(
            har["log"]["entries"][0].get(field).is_some(),
            "HAR entry lacks {field}"
        );
    }
    let (status, _, stderr) = run(
        &["cassette", "delete", "default", "--store", &store],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    let (status, _, stderr) = run(
        &["cassette", "import", &json_file, "--store", &store],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    let (status, _, stderr) = run(
        &[
            "cassette", "import", &har_file, "--as", "from-har", "--store", &store,
        ],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    // A document cut short is refused by name, and the cassette it would have filled
    // keeps what it holds (checked by the replay below).
    let exported = std::fs::read_to_string(&json_file).expect("export");
    let cut_file = scratch.arg("cut.json");
    std::fs::write(&cut_file, &exported[..exported.len() / 2]).expect("write");
    let (status, _, stderr) = run(
        &[
            "cassette", "import", &cut_file, "--as", "default", "--store", &store,
        ],
        scratch.path(),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cut.json is not JSON: EOF while parsing"),
        "{stderr}"
    );
    let replayer = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    assert_eq!(
        replay_all(&replayer, "default", &requests).await,
        before,
        "JSON round trip"
    );
    assert_eq!(
        replay_all(&replayer, "from-har", &requests).await,
        before,
        "HAR round trip"
    );
}

#[tokio::test]
async fn exhausted_sequences_follow_the_configured_policy() {
    let scratch = Scratch::new();
    let config = write_config(
        &scratch,
        r#"
        [match.cassettes.strict]
        exhausted = "miss"
        [match.cassettes.looping]
        exhausted = "cycle"
        [match.cassettes.pinned]
        order = "first"
        "#,
    );
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-p", "dev-p");
    {
        let mut recorder = proxy(
            &scratch,
            "record",
            &upstream.url(""),
            &["--config", &config],
        );
        for cassette in ["strict", "looping", "pinned"] {
            let headers = [
                ("x-graphvcr-cassette", cassette),
                ("authorization", "Bearer t"),
                ("content-type", "application/json"),
            ];
            http.send("DELETE", &recorder.url(&path), &headers, "")
                .await;
            assert_eq!(
                http.send("GET", &recorder.url(&path), &headers, "")
                    .await
                    .status,
                404
            );
            http.send("PATCH", &recorder.url(&path), &headers, SEED_BODY)
                .await;
            assert_eq!(
                http.send("GET", &recorder.url(&path), &headers, "")
                    .await
                    .status,
                200
            );
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let replayer = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &config],
    );
    let statuses = |cassette: &'static str| {
        let http = http.clone();
        let url = replayer.url(&path);
        async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(
                    http.send("GET", &url, &[("x-graphvcr-cassette", cassette)], "")
                        .await
                        .status
                        .as_u16(),
                );
            }
            seen
        }
    };
    assert_eq!(statuses("strict").await, vec![404, 200, 599]);
    assert_eq!(statuses("looping").await, vec![404, 200, 404]);
    assert_eq!(statuses("pinned").await, vec![404, 404, 404]);
    let used_up = http
        .send(
            "GET",
            &replayer.url(&path),
            &[("x-graphvcr-cassette", "strict")],
            "",
        )
        .await;
    assert!(used_up.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("used up"));
}

#[tokio::test]
async fn the_leak_guard_keeps_surviving_secrets_out_of_the_cassette() {
    let scratch = Scratch::new();
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJsZWFrIn0.bGVha3ktc2lnbmF0dXJl";
    let body = format!(r#"{{"id":"x","sessionKey":"{token}"}}"#);
    let upstream = TestUpstream::start(move |_| {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .expect("response")
    })
    .await;
    let mut recorder = proxy(&scratch, "record", &upstream.url(), &[]);
    let answer = Http::new().get(&recorder.url("/v1.0/me")).await;
    assert_eq!(answer.status, 200, "the client is answered normally");
    assert!(answer.text().contains(token));
    assert_eq!(answer.header("x-graphvcr-leak-guard"), Some("refused"));
    assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    assert!(
        recorder.stderr().contains("response body"),
        "the log names the field: {}",
        recorder.stderr()
    );
    assert!(!recorder.stderr().contains(token));
    assert!(files_containing(&scratch.join("store"), token).is_empty());
    let (_, list, _) = run(
        &["cassette", "list", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(!list.contains("default"), "{list}");
}

#[tokio::test]
async fn a_request_can_choose_its_mode() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-m", "dev-m");
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let headers = [
        ("x-graphvcr-mode", "record"),
        ("authorization", "Bearer t"),
        ("content-type", "application/json"),
    ];
    let recorded = http
        .send("PATCH", &replayer.url(&path), &headers, SEED_BODY)
        .await;
    assert_eq!(
        recorded.header("x-graphvcr-outcome"),
        Some("recorded"),
        "{}",
        recorded.text()
    );
    upstream.kill();
    let replayed = http.patch(&replayer.url(&path), SEED_BODY).await;
    assert_eq!(replayed.header("x-graphvcr-outcome"), Some("replayed"));
    assert_eq!(replayed.body, recorded.body);
}

/// `graphvcr cassette verify default` against `upstream` with a live token, plus `extra`.
fn cassette_verify(
    scratch: &Scratch,
    upstream: &str,
    extra: &[&str],
) -> (std::process::ExitStatus, String, String) {
    let mut args = vec![
        "cassette",
        "verify",
        "default",
        "--upstream",
        upstream,
        "--header",
        "Authorization: Bearer live",
    ];
    args.extend_from_slice(extra);
    run(&args, scratch.path())
}

#[tokio::test]
async fn verify_reports_answers_that_changed_upstream() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-v", "dev-v");
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        http.patch(&recorder.url(&path), SEED_BODY).await;
        assert_eq!(http.get(&recorder.url(&path)).await.status, 200);
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    let store = scratch.arg("store");
    let upstream_url = upstream.url("");
    let verify = |extra: &[&str]| {
        let mut args = vec!["--store", &store];
        args.extend_from_slice(extra);
        cassette_verify(&scratch, &upstream_url, &args)
    };
    let (status, stdout, stderr) = verify(&[]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1 requests re-sent, 0 changed"), "{stdout}");
    // The live entity changes behind the recording's back.
    http.patch(&upstream.url(&path), &seed_with("status", "error"))
        .await;
    let (status, stdout, _) = verify(&[]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("CHANGED") && stdout.contains("body /status"),
        "{stdout}"
    );
    let (status, stdout, _) = verify(&["--ignore", "/status"]);
    assert!(
        status.success(),
        "ignored pointers are not changes: {stdout}"
    );
}

#[tokio::test]
async fn suggest_finds_volatile_request_fields_and_prune_removes_old_recordings() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-g", "dev-g");
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        for stamp in [
            "2026-01-01T00:00:00Z",
            "2026-02-01T00:00:00Z",
            "2026-03-01T00:00:00Z",
        ] {
            assert_eq!(
                http.patch(
                    &recorder.url(&path),
                    &seed_with("lastReportedDateTime", stamp)
                )
                .await
                .status,
                200
            );
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let store = scratch.arg("store");
    let (status, stdout, stderr) = run(
        &["cassette", "suggest", "default", "--store", &store],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains(r#"ignore_pointers = ["/lastReportedDateTime"]"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "route = \"/v1.0/deviceManagement/deviceConfigurations/cfg-g/deviceStatuses/dev-g\""
        ),
        "{stdout}"
    );
    let (status, _, stderr) = run(
        &[
            "cassette",
            "prune",
            "default",
            "--older-than",
            "1ns",
            "--store",
            &store,
        ],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("pruned 3 interactions"), "{stderr}");
}

#[tokio::test]
async fn verify_and_suggest_read_the_cassette_through_a_running_proxy() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-r", "dev-r");
    let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
    for stamp in ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"] {
        let body = seed_with("lastReportedDateTime", stamp);
        assert_eq!(http.patch(&recorder.url(&path), &body).await.status, 200);
    }
    assert_eq!(http.get(&recorder.url(&path)).await.status, 200);

    // The proxy holds the store: the commands find its admin API in the owner file, or
    // are given it with --admin.
    let store = scratch.arg("store");
    let admin = recorder.admin_url("");
    let upstream_url = upstream.url("");
    let verify = |place: &[&str]| cassette_verify(&scratch, &upstream_url, place);
    let suggest = |place: &[&str]| {
        let mut args = vec!["cassette", "suggest", "default"];
        args.extend_from_slice(place);
        run(&args, scratch.path())
    };
    let (status, verified, stderr) = verify(&["--store", &store]);
    assert!(status.success(), "{verified}{stderr}");
    assert!(
        verified.contains("1 requests re-sent, 0 changed"),
        "{verified}"
    );
    let (status, suggested, stderr) = suggest(&["--admin", &admin]);
    assert!(status.success(), "{stderr}");
    assert!(
        suggested.contains(r#"ignore_pointers = ["/lastReportedDateTime"]"#),
        "{suggested}"
    );
    assert!(
        suggested.contains(
            "route = \"/v1.0/deviceManagement/deviceConfigurations/cfg-r/deviceStatuses/dev-r\""
        ),
        "{suggested}"
    );
    let (status, _, stderr) = run(
        &["cassette", "suggest", "nope", "--store", &store],
        scratch.path(),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no cassette named 'nope'"), "{stderr}");

    // A change upstream is reported through the proxy as it is from the store.
    http.patch(&upstream.url(&path), &seed_with("status", "error"))
        .await;
    let (status, changed, _) = verify(&["--store", &store]);
    assert_eq!(status.code(), Some(1), "{changed}");
    assert!(
        changed.contains("CHANGED") && changed.contains("body /status"),
        "{changed}"
    );

    // Once the proxy is stopped, the store itself gives the same reports.
    assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    let (status, local, _) = verify(&["--store", &store]);
    assert_eq!(status.code(), Some(1), "{local}");
    assert_eq!(local, changed);
    let (status, local, stderr) = suggest(&["--store", &store]);
    assert!(status.success(), "{stderr}");
    assert_eq!(local, suggested);
}

/// An upstream that answers every request with 200 and a JSON echo of its path.
async fn echo_upstream() -> TestUpstream {
    TestUpstream::start(|seen| {
        let body = serde_json::json!({ "path": seen.parts.uri.to_string() }).to_string();
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    })
    .await
}

#[tokio::test]
async fn each_rule_changes_what_matches() {
    let scratch = Scratch::new();
    let config = write_config(
        &scratch,
        r#"
        [match.cassettes.headers]
        headers = ["ConsistencyLevel"]
        [match.cassettes.query]
        ignore_query = ["api-version"]
        [match.cassettes.noquery]
        query = false
        [match.cassettes.case]
        path_case_insensitive = true
        [match.cassettes.exact]
        body = "exact"
        [match.cassettes.nobody]
        body = "ignore"
        [match.cassettes.arrays]
        ignore_array_order = true
        [match.cassettes.wildcard]
        ignore_pointers = ["/value/*/stamp"]
        [match.cassettes.nomethod]
        method = false
        "#,
    );
    // (cassette, recorded request, replayed request, should match)
    type Req = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: Vec<(&str, Req, Req, bool)> = vec![
        (
            "headers",
            (
                "GET",
                "/v1.0/users",
                &[("consistencylevel", "eventual")],
                "",
            ),
            (
                "GET",
                "/v1.0/users",
                &[("ConsistencyLevel", "eventual")],
                "",
            ),
            true,
        ),
        (
            "headers",
            (
                "GET",
                "/v1.0/groups",
                &[("consistencylevel", "eventual")],
                "",
            ),
            ("GET", "/v1.0/groups", &[], ""),
            false,
        ),
        (
            "query",
            ("GET", "/v1.0/me?api-version=1&$top=1", &[], ""),
            ("GET", "/v1.0/me?$top=1&api-version=2", &[], ""),
            true,
        ),
        (
            "query",
            ("GET", "/v1.0/you?api-version=1&$top=1", &[], ""),
            ("GET", "/v1.0/you?$top=2", &[], ""),
            false,
        ),
        (
            "noquery",
            ("GET", "/v1.0/me?a=1", &[], ""),
            ("GET", "/v1.0/me?b=2", &[], ""),
            true,
        ),
        (
            "case",
            ("GET", "/v1.0/Me/Drive", &[], ""),
            ("GET", "/V1.0/me/drive", &[], ""),
            true,
        ),
        (
            "exact",
            ("POST", "/v1.0/x", &[], r#"{"a":1,"b":2}"#),
            ("POST", "/v1.0/x", &[], r#"{"b":2,"a":1}"#),
            false,
        ),
        (
            "exact",
            ("POST", "/v1.0/y", &[], r#"{"a":1}"#),
            ("POST", "/v1.0/y", &[], r#"{"a":1}"#),
            true,
        ),
        (
            "nobody",
            ("POST", "/v1.0/x", &[], r#"{"a":1}"#),
            ("POST", "/v1.0/x", &[], r#"{"a":2}"#),
            true,
        ),
        (
            "arrays",
            ("POST", "/v1.0/x", &[], r#"{"ids":[1,2,3]}"#),
            ("POST", "/v1.0/x", &[], r#"{"ids":[3,1,2]}"#),
            true,
        ),
        (
            "arrays",
            ("POST", "/v1.0/y", &[], r#"{"ids":[1,2,3]}"#),
            ("POST", "/v1.0/y", &[], r#"{"ids":[1,2]}"#),
            false,
        ),
        (
            "wildcard",
            (
                "POST",
                "/v1.0/x",
                &[],
                r#"{"value":[{"id":1,"stamp":"a"},{"id":2,"stamp":"b"}]}"#,
            ),
            (
                "POST",
                "/v1.0/x",
                &[],
                r#"{"value":[{"id":1,"stamp":"c"},{"id":2,"stamp":"d"}]}"#,
            ),
            true,
        ),
        (
            "wildcard",
            (
                "POST",
                "/v1.0/y",
                &[],
                r#"{"value":[{"id":1,"stamp":"a"}]}"#,
            ),
            (
                "POST",
                "/v1.0/y",
                &[],
                r#"{"value":[{"id":9,"stamp":"a"}]}"#,
            ),
            false,
        ),
        (
            "nomethod",
            ("PUT", "/v1.0/x", &[], ""),
            ("PATCH", "/v1.0/x", &[], ""),
            true,
        ),
    ];
    let upstream = echo_upstream().await;
    let http = Http::new();
    let send = |proxy: &Proc, cassette: &'static str, request: Req| {
        let http = http.clone();
        let url = proxy.url(request.1);
        async move {
            let mut headers: Vec<(&str, &str)> = vec![
                ("x-graphvcr-cassette", cassette),
                ("content-type", "application/json"),
            ];
            headers.extend_from_slice(request.2);
            http.send(request.0, &url, &headers, request.3).await
        }
    };
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(), &["--config", &config]);
        for (cassette, recorded, _, _) in &cases {
            assert_eq!(send(&recorder, cassette, *recorded).await.status, 200);
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    let replayer = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &config],
    );
    for (cassette, recorded, replayed, should_match) in &cases {
        let answer = send(&replayer, cassette, *replayed).await;
        let matched = answer.header("x-graphvcr-outcome") == Some("replayed");
        assert_eq!(
            matched,
            *should_match,
            "{cassette}: recorded {recorded:?}, replayed {replayed:?}: {}",
            answer.text()
        );
    }
}

#[tokio::test]
async fn configured_header_and_pointer_sanitizers_and_max_age_apply() {
    let scratch = Scratch::new();
    let config = write_config(
        &scratch,
        r#"
        [proxy]
        max_age = "1ns"
        [sanitize]
        headers = ["x-api-key"]
        json_pointers = ["/owner/mail"]
        "#,
    );
    let upstream = TestUpstream::start(|_| {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"owner":{"mail":"grace@contoso.com"},"ok":true}"#,
            )))
            .expect("response")
    })
    .await;
    let http = Http::new();
    let mut auto = proxy(&scratch, "auto", &upstream.url(), &["--config", &config]);
    let headers = [
        ("x-api-key", "key-8d1f3a"),
        ("content-type", "application/json"),
    ];
    let body = r#"{"owner":{"mail":"grace@contoso.com"}}"#;
    for _ in 0..2 {
        let answer = http
            .send("POST", &auto.url("/v1.0/things"), &headers, body)
            .await;
        assert_eq!(
            answer.header("x-graphvcr-outcome"),
            Some("recorded"),
            "max_age makes every recording stale"
        );
        assert!(
            answer.text().contains("grace@contoso.com"),
            "the client gets the real answer"
        );
    }
    assert!(auto.interrupt().success(), "{}", auto.stderr());
    for secret in ["key-8d1f3a", "grace@contoso.com"] {
        assert!(
            files_containing(&scratch.join("store"), secret).is_empty(),
            "{secret} on disk"
        );
    }
    let (_, export, _) = run(
        &[
            "cassette",
            "export",
            "default",
            "--store",
            &scratch.arg("store"),
        ],
        scratch.path(),
    );
    assert_eq!(
        export.matches("[REDACTED]").count(),
        6,
        "header, request and response pointer, twice:\n{export}"
    );
}

#[tokio::test]
async fn compressed_request_bodies_are_decoded_for_matching() {
    let scratch = Scratch::new();
    let upstream = echo_upstream().await;
    let http = Http::new();
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(), &[]);
        let answer = http
            .send_bytes(
                "POST",
                &recorder.url("/v1.0/search/query"),
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ],
                gzip(r#"{"requests":[{"id":"1","method":"GET","url":"/me"}]}"#),
            )
            .await;
        assert_eq!(answer.status, 200);
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    let replayer = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    let plain = r#"{ "requests": [ { "url": "/me", "method": "GET", "id": "1" } ] }"#;
    let answer = http
        .send(
            "POST",
            &replayer.url("/v1.0/search/query"),
            &[("content-type", "application/json")],
            plain,
        )
        .await;
    assert_eq!(
        answer.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        answer.text()
    );
}
