//! The audit trail and the admin API, through real processes on loopback.

use serde_json::Value;

use crate::support::*;

/// `graphvcr ARGS --store STORE`, expected to succeed; its stdout.
fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// `graphvcr cassette export CASSETTE --out FILE` (through the proxy while one runs).
fn export_to(scratch: &Scratch, cassette: &str, file: &str) {
    cli_ok(
        scratch,
        &["cassette", "export", cassette, "--out", &scratch.arg(file)],
    );
}

fn column(records: &[Value], field: &str) -> Vec<String> {
    records
        .iter()
        .map(|r| match &r[field] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// One exchange of every outcome: recorded, replayed, miss, passthrough and rejected
/// through a proxy in front of the emulator, then an upstream failure through a second
/// proxy on the same store (the chain continues across processes).
async fn mixed_run(scratch: &Scratch) {
    let http = Http::new();
    let mut upstream = emulator(scratch);
    let mut proxy = proxy(scratch, "record", &upstream.url(""), &[]);
    let path = status_path("cfg-a", "dev-a");
    let recorded = http.patch(&proxy.url(&path), SEED_BODY).await;
    assert_eq!(recorded.header("x-graphvcr-outcome"), Some("recorded"));
    let send = |mode: &'static str, path: String| {
        let http = http.clone();
        let url = proxy.url(&path);
        async move {
            let headers = [
                ("x-graphvcr-mode", mode),
                ("client-request-id", "c0ffee00-0000-4000-8000-000000000001"),
            ];
            http.patch_with(&url, &headers, SEED_BODY).await
        }
    };
    let replayed = send("replay", path.clone()).await;
    assert_eq!(replayed.header("x-graphvcr-outcome"), Some("replayed"));
    let miss = send("replay", status_path("cfg-a", "dev-missing")).await;
    assert_eq!(miss.status.as_u16(), 599);
    let passthrough = send("passthrough", status_path("cfg-p", "dev-p")).await;
    assert_eq!(passthrough.status, 200, "{}", passthrough.text());
    let rejected = send("rewind", path.clone()).await;
    assert_eq!(rejected.status, 400);
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    upstream.kill();

    let mut unreachable = crate::support::proxy(scratch, "record", &upstream.url(""), &[]);
    let failed = http.patch(&unreachable.url(&path), SEED_BODY).await;
    assert_eq!(failed.status, 502, "{}", failed.text());
    assert!(
        unreachable.interrupt().success(),
        "{}",
        unreachable.stderr()
    );
}

#[tokio::test]
async fn every_exchange_is_audited_with_its_outcome_and_status() {
    let scratch = Scratch::new();
    mixed_run(&scratch).await;

    let records = jsonl(&cli_ok(&scratch, &["audit", "--format", "jsonl"]));
    assert_eq!(
        column(&records, "outcome"),
        [
            "recorded",
            "replayed",
            "miss",
            "passthrough",
            "rejected",
            "upstream_error"
        ]
    );
    assert_eq!(
        column(&records, "status"),
        ["200", "200", "599", "200", "400", "502"]
    );
    assert_eq!(column(&records, "seq"), ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(
        column(&records, "mode"),
        [
            "record",
            "replay",
            "replay",
            "passthrough",
            "record",
            "record"
        ]
    );
    let (first, second) = (&records[0], &records[1]);
    assert!(first["interaction"].is_u64(), "{first}");
    assert_eq!(first["interaction"], second["interaction"]);
    assert!(
        first["request_id"].is_string(),
        "Graph's request-id is kept"
    );
    assert!(first["upstream_us"].is_u64() && second["upstream_us"].is_null());
    assert_eq!(
        second["client_request_id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    assert_eq!(first["uri"], status_path("cfg-a", "dev-a"));
    assert_eq!(first["request_bytes"], SEED_BODY.len());
    assert!(first["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert!(first["request_body"].is_null(), "bodies are off by default");
    assert_eq!(first["hash"].as_str().map(str::len), Some(64));

    // Filters.
    let count = |args: &[&str]| {
        let mut all = vec!["audit", "--format", "jsonl"];
        all.extend_from_slice(args);
        jsonl(&cli_ok(&scratch, &all)).len()
    };
    assert_eq!(count(&["--outcome", "miss"]), 1);
    assert_eq!(count(&["--status", "5xx"]), 2);
    assert_eq!(count(&["--status", "2xx,400"]), 4);
    assert_eq!(count(&["--status", "599"]), 1);
    assert_eq!(count(&["--method", "patch"]), 6);
    assert_eq!(count(&["--method", "GET"]), 0);
    assert_eq!(count(&["--path", "/v1.0/**/deviceStatuses/dev-a"]), 4);
    assert_eq!(count(&["--path", "/v1.0/*"]), 0);
    assert_eq!(count(&["--path", "/v1.0/*/*/cfg-a/**"]), 5);
    assert_eq!(count(&["--cassette", "default"]), 6);
    assert_eq!(count(&["--since", "1h"]), 6);
    assert_eq!(count(&["--until", "2020-01-01T00:00:00+01:00"]), 0);
    let last_two = jsonl(&cli_ok(
        &scratch,
        &["audit", "--format", "jsonl", "--limit", "2"],
    ));
    assert_eq!(column(&last_two, "seq"), ["5", "6"]);
    let (status, _, stderr) = run(
        &["audit", "--store", &scratch.arg("store"), "--status", "2yy"],
        scratch.path(),
    );
    assert!(!status.success() && stderr.contains("--status"), "{stderr}");

    // The table: one header and one row per record, columns aligned.
    let table = cli_ok(&scratch, &["audit"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 7, "{table}");
    for name in [
        "SEQ", "TIME", "MODE", "CASSETTE", "METHOD", "STATUS", "OUTCOME", "PATH",
    ] {
        assert!(lines[0].contains(name), "{name} missing: {table}");
    }
    let path_column = lines[0].find("PATH").expect("PATH column");
    for line in &lines[1..] {
        assert_eq!(
            line.find("/v1.0"),
            Some(path_column),
            "misaligned:\n{table}"
        );
    }
    assert!(
        lines[3].contains("miss") && lines[3].contains("599"),
        "{table}"
    );

    // HAR 1.2.
    let har: Value = serde_json::from_str(&cli_ok(&scratch, &["audit", "--format", "har"]))
        .expect("HAR is JSON");
    assert_eq!(har["log"]["version"], "1.2");
    assert!(har["log"]["creator"]["name"].is_string());
    assert!(har["log"]["creator"]["version"].is_string());
    let entries = har["log"]["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 6);
    for entry in entries {
        assert!(entry["startedDateTime"].is_string(), "{entry}");
        assert!(entry["time"].is_number(), "{entry}");
        let request = &entry["request"];
        for field in ["method", "url", "httpVersion"] {
            assert!(request[field].is_string(), "request.{field}: {entry}");
        }
        for field in ["cookies", "headers", "queryString"] {
            assert!(request[field].is_array(), "request.{field}: {entry}");
        }
        for field in ["headersSize", "bodySize"] {
            assert!(request[field].is_number(), "request.{field}: {entry}");
        }
        let response = &entry["response"];
        assert!(response["status"].is_number());
        for field in ["statusText", "httpVersion", "redirectURL"] {
            assert!(response[field].is_string(), "response.{field}: {entry}");
        }
        for field in ["cookies", "headers"] {
            assert!(response[field].is_array(), "response.{field}: {entry}");
        }
        for field in ["headersSize", "bodySize"] {
            assert!(response[field].is_number(), "response.{field}: {entry}");
        }
        assert!(response["content"]["size"].is_number());
        assert!(response["content"]["mimeType"].is_string());
        assert!(entry["cache"].is_object());
        for field in ["send", "wait", "receive"] {
            assert!(entry["timings"][field].is_number(), "timings.{field}");
        }
        assert!(request["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")));
    }
    assert_eq!(entries[2]["response"]["statusText"], "Replay Miss");

    // Statistics.
    let stats = cli_ok(&scratch, &["audit", "stats"]);
    for needle in [
        "records  6",
        "upstream_error",
        "599",
        "P50",
        "P90",
        "P99",
        "total",
    ] {
        assert!(stats.contains(needle), "{needle} missing:\n{stats}");
    }
    let only_misses = cli_ok(&scratch, &["audit", "stats", "--outcome", "miss"]);
    assert!(only_misses.contains("records  1"), "{only_misses}");

    let verified = cli_ok(&scratch, &["audit", "verify"]);
    assert!(verified.contains("intact: 6 records"), "{verified}");
}

/// Rewrites or removes one audit record in the stopped proxy's store, as someone with
/// the files could, bypassing the chain. Returns once the store is free for the next
/// process to open.
fn tamper(scratch: &Scratch, seq: u64, bytes: Option<Vec<u8>>) {
    let store = open_stopped_store(scratch);
    store.audit().tamper(seq, bytes).expect("tamper");
    release(scratch, store);
}

/// One audit record's bytes, read straight from the stopped proxy's store.
fn stored_record(scratch: &Scratch, seq: u64) -> Vec<u8> {
    let store = open_stopped_store(scratch);
    let found = store
        .audit()
        .records()
        .map(|r| r.expect("read"))
        .find(|(s, _)| *s == seq)
        .map(|(_, bytes)| bytes)
        .expect("record");
    release(scratch, store);
    found
}

fn open_stopped_store(scratch: &Scratch) -> graphvcr::store::Store {
    // Nothing may hold the store now (the proxy has exited, every command has finished);
    // a lock left over from an earlier open is waited out here, not failed on.
    wait_until_store_unlocked(&scratch.join("store"));
    graphvcr::store::Store::open(&scratch.join("store"), 1 << 20).expect("open the store directly")
}

fn release(scratch: &Scratch, store: graphvcr::store::Store) {
    store
        .close_and_release()
        .expect("flush and release the store");
    // Dropping the last handle does not release sled's lock synchronously: the lock lives
    // as long as the locked file stays open, and sled's I/O threads can still hold it
    // (see `wait_until_store_unlocked`). `audit verify` would then find the store locked.
    wait_until_store_unlocked(&scratch.join("store"));
}

fn verify_fails_naming(scratch: &Scratch, needle: &str) {
    let (status, stdout, stderr) = run(
        &["audit", "verify", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(
        !status.success(),
        "verify passed a tampered trail: {stdout}"
    );
    assert!(
        stdout.contains(needle) && stderr.contains(needle),
        "{needle:?} not named:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn audit_verify_names_an_edited_or_removed_record() {
    let scratch = Scratch::new();
    let http = Http::new();
    // Replay misses need no upstream and are audited like anything else.
    let mut proxy = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    for i in 0..4 {
        let answer = http
            .get(&proxy.url(&status_path("cfg-v", &format!("dev-{i}"))))
            .await;
        assert_eq!(answer.status.as_u16(), 599);
    }
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    assert!(cli_ok(&scratch, &["audit", "verify"]).contains("intact: 4 records"));

    let original = stored_record(&scratch, 2);
    let mut record: Value = serde_json::from_slice(&original).expect("JSON");
    record["status"] = 200.into();
    tamper(
        &scratch,
        2,
        Some(serde_json::to_vec(&record).expect("JSON")),
    );
    verify_fails_naming(&scratch, "record 2 was edited");

    tamper(&scratch, 2, Some(original));
    assert!(cli_ok(&scratch, &["audit", "verify"]).contains("intact"));

    tamper(&scratch, 3, None);
    verify_fails_naming(&scratch, "record 3 was removed");
    tamper(&scratch, 4, None);
    verify_fails_naming(&scratch, "records 3 to 4 were removed");
}

#[tokio::test]
async fn the_admin_api_switches_mode_and_cassette_on_a_live_proxy() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let proxy = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let admin = |path: &str| proxy.admin_url(path);
    let path = status_path("cfg-s", "dev-s");

    let health = http.send("GET", &admin("/health"), &[], "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(
        http.send("GET", &admin("/mode"), &[], "").await.json()["mode"],
        "replay"
    );
    assert_eq!(
        http.patch(&proxy.url(&path), SEED_BODY)
            .await
            .status
            .as_u16(),
        599
    );

    let json = [("content-type", "application/json")];
    let switched = http
        .send("PUT", &admin("/mode"), &json, r#"{"mode":"record"}"#)
        .await;
    assert_eq!(switched.status, 200, "{}", switched.text());
    assert_eq!(switched.json()["mode"], "record");
    let recorded = http.patch(&proxy.url(&path), SEED_BODY).await;
    assert_eq!(recorded.header("x-graphvcr-outcome"), Some("recorded"));
    assert_eq!(recorded.header("x-graphvcr-cassette"), Some("default"));

    let selected = http
        .send("POST", &admin("/cassettes/suite-b/select"), &[], "")
        .await;
    assert_eq!(selected.json()["cassette"], "suite-b");
    let into_b = http.patch(&proxy.url(&path), SEED_BODY).await;
    assert_eq!(into_b.header("x-graphvcr-outcome"), Some("recorded"));
    assert_eq!(into_b.header("x-graphvcr-cassette"), Some("suite-b"));

    http.send("PUT", &admin("/mode"), &json, r#"{"mode":"replay"}"#)
        .await;
    let replayed = http.patch(&proxy.url(&path), SEED_BODY).await;
    assert_eq!(replayed.header("x-graphvcr-outcome"), Some("replayed"));
    assert_eq!(
        replayed.header("x-graphvcr-interaction"),
        into_b.header("x-graphvcr-interaction")
    );

    let cassettes = http.send("GET", &admin("/cassettes"), &[], "").await.json();
    assert_eq!(cassettes["default"], "suite-b");
    let names: Vec<&str> = cassettes["cassettes"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["default", "suite-b"]);
    let interactions = http
        .send("GET", &admin("/cassettes/suite-b/interactions"), &[], "")
        .await
        .json();
    assert_eq!(
        interactions["interactions"].as_array().map(Vec::len),
        Some(1)
    );

    let deleted = http
        .send("DELETE", &admin("/cassettes/default"), &[], "")
        .await;
    assert_eq!(deleted.json()["deleted"], 1);
    let again = http
        .send("DELETE", &admin("/cassettes/default"), &[], "")
        .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["error"]["code"], "ResourceNotFound");

    // Errors in Graph's shape; a wrong method is 405 naming the allowed ones.
    let bad = http
        .send("PUT", &admin("/mode"), &json, r#"{"mode":"rewind"}"#)
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["innerError"]["request-id"].is_string());
    let wrong = http.send("POST", &admin("/mode"), &[], "").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, PUT"));
    assert_eq!(wrong.json()["error"]["code"], "MethodNotAllowed");
    assert_eq!(http.send("GET", &admin("/nope"), &[], "").await.status, 404);

    // The audit and its chain, read from the live proxy; read-your-writes.
    let audit = http
        .send("GET", &admin("/audit?outcome=recorded"), &[], "")
        .await
        .json();
    let cassettes: Vec<&str> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["cassette"].as_str())
        .collect();
    assert_eq!(cassettes, ["default", "suite-b"]);
    let har = http
        .send("GET", &admin("/audit?format=har&limit=1"), &[], "")
        .await
        .json();
    assert_eq!(har["log"]["entries"].as_array().map(Vec::len), Some(1));
    let verify = http
        .send("GET", &admin("/audit/verify"), &[], "")
        .await
        .json();
    assert_eq!(verify["intact"], true, "{verify}");
    assert_eq!(verify["records"], 4);

    let metrics = http.send("GET", &admin("/metrics"), &[], "").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for needle in [
        r#"graphvcr_exchanges_total{outcome="recorded",mode="record",cassette="suite-b",status_class="2xx"} 1"#,
        r#"graphvcr_exchanges_total{outcome="miss",mode="replay",cassette="default",status_class="5xx"} 1"#,
        "graphvcr_exchange_duration_seconds_count 4",
        "graphvcr_upstream_duration_seconds_count 2",
        "graphvcr_redactions_total",
        "graphvcr_leak_guard_refusals_total",
        "graphvcr_store_size_bytes",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[tokio::test]
async fn cassette_and_audit_commands_work_while_the_proxy_runs() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let mut proxy = proxy(&scratch, "record", &upstream.url(""), &[]);
    let path = status_path("cfg-l", "dev-l");
    assert_eq!(http.patch(&proxy.url(&path), SEED_BODY).await.status, 200);

    // The store is locked by the proxy: these go through its admin API.
    let list = cli_ok(&scratch, &["cassette", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("default") && l.ends_with(" 1")),
        "{list}"
    );
    let show = cli_ok(&scratch, &["cassette", "show", "default"]);
    assert!(show.contains("/deviceStatuses/dev-l"), "{show}");
    let table = cli_ok(&scratch, &["audit"]);
    assert!(
        table.contains("recorded") && table.contains("/deviceStatuses/dev-l"),
        "{table}"
    );
    let stats = cli_ok(&scratch, &["audit", "stats"]);
    assert!(stats.contains("records  1"), "{stats}");
    assert!(cli_ok(&scratch, &["audit", "verify"]).contains("intact"));
    let admin = proxy.admin.clone().expect("admin URL");
    let (status, stdout, stderr) = run(
        &["audit", "--admin", &admin, "--format", "jsonl"],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(jsonl(&stdout).len(), 1);

    // Export, then import under another name, both through the running proxy.
    let exported = scratch.join("default.json");
    export_to(&scratch, "default", "default.json");
    assert!(exported.is_file());
    cli_ok(
        &scratch,
        &[
            "cassette",
            "import",
            &scratch.arg("default.json"),
            "--as",
            "copy",
        ],
    );
    let replayed = http
        .send(
            "PATCH",
            &proxy.url(&path),
            &[
                ("x-graphvcr-mode", "replay"),
                ("x-graphvcr-cassette", "copy"),
            ],
            SEED_BODY,
        )
        .await;
    assert_eq!(
        replayed.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        replayed.text()
    );
    let (status, _, stderr) = run(
        &[
            "cassette",
            "prune",
            "copy",
            "--older-than",
            "1d",
            "--store",
            &scratch.arg("store"),
        ],
        scratch.path(),
    );
    assert!(
        status.success() && stderr.contains("pruned 0 interactions"),
        "{stderr}"
    );
    cli_ok(&scratch, &["cassette", "delete", "copy"]);
    assert!(!cli_ok(&scratch, &["cassette", "list"]).contains("copy"));

    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    // Stopped: the same commands open the store themselves.
    let after = jsonl(&cli_ok(&scratch, &["audit", "--format", "jsonl"]));
    assert_eq!(column(&after, "outcome"), ["recorded", "replayed"]);
}

/// A cassette's export and the audit records, large enough to span several of the admin
/// API's streamed chunks, read from the live proxy: chunked (no length known up front),
/// and the same as what the stopped store gives.
#[tokio::test]
async fn large_answers_stream_from_a_live_proxy_as_the_stopped_store_gives_them() {
    const REQUESTS: usize = 200;
    const HAR_EXPORT: [&str; 7] = [
        "cassette",
        "export",
        "default",
        "--format",
        "har",
        "--base-url",
        "https://graph.example:8443/",
    ];
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let mut proxy = proxy(&scratch, "record", &upstream.url(""), &[]);
    for i in 0..REQUESTS {
        let path = status_path("cfg-big", &format!("dev-{i:03}"));
        let recorded = http.patch(&proxy.url(&path), SEED_BODY).await;
        assert_eq!(recorded.status, 200, "{}", recorded.text());
    }
    let admin = |path: &str| proxy.admin_url(path);

    let export = http
        .send("GET", &admin("/cassettes/default/interactions"), &[], "")
        .await;
    assert_eq!(export.status, 200, "{}", export.text());
    assert_eq!(export.header("transfer-encoding"), Some("chunked"));
    assert!(export.text().len() > 4 * 64 * 1024, "spans several chunks");
    let lines = http
        .send("GET", &admin("/audit?format=jsonl"), &[], "")
        .await;
    assert_eq!(lines.status, 200, "{}", lines.text());
    assert_eq!(lines.header("transfer-encoding"), Some("chunked"));
    assert_eq!(lines.header("content-type"), Some("application/x-ndjson"));
    let live_lines = lines.text();
    assert!(live_lines.len() > 64 * 1024, "spans several chunks");
    let records = http.send("GET", &admin("/audit"), &[], "").await.json();
    let records = records["records"].as_array().expect("records").clone();
    assert_eq!(records, jsonl(&live_lines), "JSON and JSON Lines agree");
    assert_eq!(records.len(), REQUESTS);
    let newest = http
        .send("GET", &admin("/audit?limit=5"), &[], "")
        .await
        .json();
    assert_eq!(
        newest["records"].as_array().expect("records")[..],
        records[REQUESTS - 5..],
        "a limit keeps the most recent"
    );
    // HAR and the table stream too (the table reads the trail twice, for its widths).
    for (format, content_type) in [
        ("har", "application/json"),
        ("table", "text/plain; charset=utf-8"),
    ] {
        let answer = http
            .send("GET", &admin(&format!("/audit?format={format}")), &[], "")
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(
            answer.header("transfer-encoding"),
            Some("chunked"),
            "{format}"
        );
        assert_eq!(
            answer.header("content-type"),
            Some(content_type),
            "{format}"
        );
        let text = answer.text();
        match format {
            "har" => assert!(text.len() > 64 * 1024, "HAR spans several chunks"),
            _ => assert_eq!(text.lines().count(), REQUESTS + 1, "{text}"),
        }
    }
    let har = http
        .send("GET", &admin("/audit?format=har"), &[], "")
        .await
        .json();
    let entry_seqs: Vec<&Value> = har["log"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["_graphvcr"]["seq"])
        .collect();
    let record_seqs: Vec<&Value> = records.iter().map(|r| &r["seq"]).collect();
    assert_eq!(
        entry_seqs, record_seqs,
        "one HAR entry per record, in order"
    );
    let bad = http
        .send("GET", &admin("/audit?format=har&pretty=maybe"), &[], "")
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let missing = http
        .send("GET", &admin("/cassettes/nope/interactions"), &[], "")
        .await;
    assert_eq!(missing.status, 404, "a missing cassette is still a 404");
    assert_eq!(missing.json()["error"]["code"], "ResourceNotFound");
    // The commands through the proxy write what they write from the store itself.
    let live_cli_lines = cli_ok(&scratch, &["audit", "--format", "jsonl"]);
    let live_stats = cli_ok(&scratch, &["audit", "stats"]);
    let live_newest = cli_ok(&scratch, &["audit", "--format", "jsonl", "--limit", "5"]);
    let live_table = cli_ok(&scratch, &["audit"]);
    let live_har = cli_ok(&scratch, &["audit", "--format", "har"]);
    let live_newest_table = cli_ok(&scratch, &["audit", "--limit", "5"]);
    export_to(&scratch, "default", "live.json");
    let live_har_export = cli_ok(&scratch, &HAR_EXPORT);
    let live_show = cli_ok(&scratch, &["cassette", "show", "default"]);
    assert_eq!(live_show.lines().count(), REQUESTS + 2, "{live_show}");
    let (status, _, stderr) = run(&["cassette", "show", "nope"], scratch.path());
    assert!(
        !status.success() && stderr.contains("no cassette named 'nope'"),
        "{stderr}"
    );
    // The admin API's export forms: compact by default, the CLI's bytes when pretty.
    let pretty = http
        .send(
            "GET",
            &admin("/cassettes/default/interactions?pretty=true"),
            &[],
            "",
        )
        .await;
    assert_eq!(pretty.status, 200, "{}", pretty.text());
    let har_export = http
        .send(
            "GET",
            &admin("/cassettes/default/interactions?format=har&base_url=https%3A%2F%2Fgraph.example%3A8443"),
            &[],
            "",
        )
        .await
        .json();
    let har_entries = har_export["log"]["entries"].as_array().expect("entries");
    assert_eq!(har_entries.len(), REQUESTS);
    assert!(
        har_entries[0]["request"]["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("https://graph.example:8443/")),
        "{}",
        har_entries[0]["request"]["url"]
    );
    for bad in ["format=csv", "pretty=yes", "colour=blue"] {
        let refused = http
            .send(
                "GET",
                &admin(&format!("/cassettes/default/interactions?{bad}")),
                &[],
                "",
            )
            .await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert_eq!(refused.json()["error"]["code"], "BadRequest", "{bad}");
    }

    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    export_to(&scratch, "default", "stopped.json");
    let read = |name: &str| std::fs::read(scratch.join(name)).expect("export file");
    assert!(read("live.json") == read("stopped.json"), "the same export");
    assert!(
        pretty.text().as_bytes() == read("stopped.json"),
        "the admin API's pretty document is the export, byte for byte"
    );
    let stopped_har_export = cli_ok(&scratch, &HAR_EXPORT);
    assert_eq!(
        cli_ok(&scratch, &["cassette", "show", "default"]),
        live_show,
        "the same listing live and stopped"
    );
    assert!(
        stopped_har_export == live_har_export,
        "the same HAR export live and stopped"
    );
    let document: Value = serde_json::from_str(&export.text()).expect("the streamed export parses");
    let stopped: Value = serde_json::from_slice(&read("stopped.json")).expect("JSON");
    assert_eq!(
        document, stopped,
        "the streamed document is the stored cassette"
    );
    assert_eq!(
        cli_ok(&scratch, &["audit", "--format", "jsonl"]),
        live_lines,
        "the same records, byte for byte"
    );
    assert_eq!(live_cli_lines, live_lines);
    assert_eq!(
        cli_ok(&scratch, &["audit", "--format", "jsonl", "--limit", "5"]),
        live_newest
    );
    assert_eq!(jsonl(&live_newest), records[REQUESTS - 5..]);
    assert_eq!(cli_ok(&scratch, &["audit"]), live_table, "the same table");
    assert_eq!(live_table.lines().count(), REQUESTS + 1, "{live_table}");
    assert_eq!(
        cli_ok(&scratch, &["audit", "--format", "har"]),
        live_har,
        "the same HAR, byte for byte"
    );
    assert_eq!(
        cli_ok(&scratch, &["audit", "--limit", "5"]),
        live_newest_table
    );
    assert_eq!(live_newest_table.lines().count(), 6, "{live_newest_table}");
    let stats = cli_ok(&scratch, &["audit", "stats"]);
    assert!(stats.contains(&format!("records  {REQUESTS}")), "{stats}");
    assert_eq!(stats, live_stats, "the same statistics live and stopped");
}

#[tokio::test]
async fn forward_proxy_requests_and_tunnels_are_audited() {
    let scratch = Scratch::new();
    // A stand-in for graph.microsoft.com (intercepted) and a plain localhost emulator
    // (not intercepted: tunnelled), each with its own certificate file.
    let graph = Proc::start(
        &[
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert-out",
            &scratch.arg("emulator.pem"),
            "--tls-name",
            "graph.microsoft.com",
        ],
        scratch.path(),
    );
    let other_scratch = Scratch::new();
    let other = tls_emulator(&other_scratch);
    let resolve = format!("graph.microsoft.com=127.0.0.1:{}", graph.addr.port());
    let mut proxy = proxy(
        &scratch,
        "record",
        "https://graph.microsoft.com",
        &[
            "--upstream-ca",
            &scratch.arg("emulator.pem"),
            "--resolve",
            &resolve,
        ],
    );
    let proxy_url = format!("http://{}", proxy.addr);
    let ca = scratch
        .join("store")
        .join("ca")
        .join("graphvcr-ca.pem")
        .display()
        .to_string();
    let path = status_path("cfg-f", "dev-f");
    let intercepted = format!("https://graph.microsoft.com{path}");
    let (code, _, stderr) = curl(
        &[
            "--proxy",
            &proxy_url,
            "--cacert",
            &ca,
            &intercepted,
            "-H",
            "authorization: Bearer t",
        ],
        scratch.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    let tunnelled = format!(
        "https://localhost:{}/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses",
        other.addr.port()
    );
    let (code, _, stderr) = curl(
        &[
            "--proxy",
            &proxy_url,
            "--cacert",
            &other_scratch.arg("emulator.pem"),
            &tunnelled,
            "-H",
            "authorization: Bearer t",
        ],
        scratch.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());

    let records = jsonl(&cli_ok(&scratch, &["audit", "--format", "jsonl"]));
    let summary: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["method"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
                r["status"],
                r["host"].as_str().unwrap_or("")
            )
        })
        .collect();
    let tunnel_host = format!("localhost:{}", other.addr.port());
    assert_eq!(
        summary,
        [
            "GET recorded 404 graph.microsoft.com".to_owned(),
            format!("CONNECT tunnel 200 {tunnel_host}"),
        ],
        "{records:?}"
    );
    assert_eq!(records[0]["uri"], path);
    assert_eq!(records[1]["mode"], "passthrough");
}

#[tokio::test]
async fn kept_bodies_are_sanitized_like_recordings() {
    let scratch = Scratch::new();
    std::fs::write(scratch.join("bodies.toml"), "[audit]\nbodies = true\n").expect("write");
    let upstream = emulator(&scratch);
    let http = Http::new();
    let mut proxy = proxy(
        &scratch,
        "record",
        &upstream.url(""),
        &["--config", &scratch.arg("bodies.toml")],
    );
    let secret = "hunter2-not-for-the-audit";
    let body = format!(r#"{{"status":"compliant","password":"{secret}"}}"#);
    let answer = http
        .patch(&proxy.url(&status_path("cfg-b", "dev-b")), &body)
        .await;
    assert_eq!(answer.header("x-graphvcr-outcome"), Some("recorded"));
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());

    let records = jsonl(&cli_ok(&scratch, &["audit", "--format", "jsonl"]));
    let kept = records[0]["request_body"]["text"].as_str().unwrap_or("");
    assert!(
        kept.contains("[REDACTED]") && !kept.contains(secret),
        "{kept}"
    );
    assert!(records[0]["response_body"]["text"].is_string());
    assert_eq!(records[0]["request_content_type"], "application/json");
    let leaked = files_containing(&scratch.join("store"), secret);
    assert!(leaked.is_empty(), "{secret} reached {leaked:?}");
    let har: Value =
        serde_json::from_str(&cli_ok(&scratch, &["audit", "--format", "har"])).expect("HAR");
    assert_eq!(
        har["log"]["entries"][0]["request"]["postData"]["text"],
        kept
    );
}

#[tokio::test]
async fn retention_prunes_the_oldest_and_the_chain_still_verifies() {
    let scratch = Scratch::new();
    std::fs::write(scratch.join("small.toml"), "[audit]\nmax_records = 3\n").expect("write");
    let http = Http::new();
    let mut proxy = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &scratch.arg("small.toml")],
    );
    for i in 0..5u64 {
        let answer = http
            .get(&proxy.url(&status_path("cfg-r", &format!("dev-{i}"))))
            .await;
        assert_eq!(answer.status.as_u16(), 599);
        // The admin API's audit query waits for the writer, so each exchange is written
        // in a round (a segment) of its own and retention can keep exactly 3.
        let listed = http.get(&proxy.admin_url("/audit")).await;
        let listed = listed.json();
        let seqs: Vec<u64> = listed["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .collect();
        assert_eq!(seqs.last(), Some(&(i + 1)), "{listed}");
        assert!(seqs.len() <= 3, "{listed}");
    }
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    let records = jsonl(&cli_ok(&scratch, &["audit", "--format", "jsonl"]));
    assert_eq!(column(&records, "seq"), ["3", "4", "5"]);
    let verified = cli_ok(&scratch, &["audit", "verify"]);
    assert!(
        verified.contains("intact: 3 records (3 to 5)"),
        "{verified}"
    );
}
