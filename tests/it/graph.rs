//! Graph-aware record and replay through real processes: `$batch`, paging links,
//! throttling sequences, the chaos layer and Graph's headers.

use serde_json::{json, Value};

use crate::support::*;

const TOKEN: (&str, &str) = ("authorization", "Bearer test-token");
const JSON: (&str, &str) = ("content-type", "application/json");

fn sub_patch(id: &str, device: &str, status: &str) -> Value {
    json!({
        "id": id,
        "method": "PATCH",
        "url": format!("/deviceManagement/deviceConfigurations/cfg-batch/deviceStatuses/{device}"),
        "headers": {"content-type": "application/json"},
        "body": {"status": status, "userName": format!("User of {device}")}
    })
}

async fn post_batch(http: &Http, url: &str, requests: &[&Value]) -> Reply {
    let body = json!({ "requests": requests }).to_string();
    http.send("POST", url, &[TOKEN, JSON], &body).await
}

/// The sub-responses of a batch answer, by id.
fn responses(reply: &Reply) -> std::collections::HashMap<String, Value> {
    reply.json()["responses"]
        .as_array()
        .unwrap_or_else(|| panic!("no responses[]: {}", reply.text()))
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or_default().to_owned(), r.clone()))
        .collect()
}

#[tokio::test]
async fn batch_replays_per_sub_request_reordered_and_with_one_missing() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let (a, b, c) = (
        sub_patch("1", "dev-a", "compliant"),
        sub_patch("2", "dev-b", "nonCompliant"),
        sub_patch("3", "dev-c", "error"),
    );
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        let recorded = post_batch(&http, &recorder.url("/v1.0/$batch"), &[&a, &b, &c]).await;
        assert_eq!(recorded.status, 200, "{}", recorded.text());
        assert_eq!(recorded.header("x-graphvcr-outcome"), Some("recorded"));
        let answers = responses(&recorded);
        assert_eq!(answers.len(), 3);
        for (id, device) in [("1", "dev-a"), ("2", "dev-b"), ("3", "dev-c")] {
            assert_eq!(answers[id]["status"], 200, "{}", answers[id]);
            assert_eq!(answers[id]["body"]["id"], device);
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    // The batch itself and each of its three sub-exchanges.
    assert_eq!(
        cassette_counts(&scratch, &scratch.arg("store")),
        vec![("default".to_owned(), 4)]
    );

    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let url = replayer.url("/v1.0/$batch");
    let reordered = post_batch(&http, &url, &[&c, &a, &b]).await;
    assert_eq!(reordered.status, 200, "{}", reordered.text());
    assert_eq!(reordered.header("x-graphvcr-outcome"), Some("replayed"));
    let ids: Vec<String> = reordered.json()["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["3", "1", "2"], "answers come in request order");
    let answers = responses(&reordered);
    for (id, device, status) in [
        ("1", "dev-a", "compliant"),
        ("2", "dev-b", "nonCompliant"),
        ("3", "dev-c", "error"),
    ] {
        let answer = &answers[id];
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(answer["body"]["id"], device);
        assert_eq!(answer["body"]["status"], status);
        assert_eq!(answer["headers"]["x-graphvcr-outcome"], "replayed");
    }

    // A subset, with one sub-request that was never recorded.
    let unrecorded = sub_patch("9", "dev-z", "compliant");
    let partial = post_batch(&http, &url, &[&b, &unrecorded]).await;
    assert_eq!(partial.status, 200, "the batch itself stays 200");
    let answers = responses(&partial);
    assert_eq!(answers["2"]["status"], 200);
    assert_eq!(answers["2"]["body"]["id"], "dev-b");
    assert_eq!(answers["9"]["status"], 599, "{}", answers["9"]);
    assert_eq!(answers["9"]["body"]["error"]["code"], "ReplayMiss");
    assert_eq!(answers["9"]["headers"]["x-graphvcr-outcome"], "miss");

    // A gzip-compressed batch is split in its decoded form.
    let compressed = gzip(json!({ "requests": [&a] }).to_string().as_bytes());
    let gzipped = http
        .send_bytes(
            "POST",
            &url,
            &[TOKEN, JSON, ("content-encoding", "gzip")],
            bytes::Bytes::from(compressed),
        )
        .await;
    assert_eq!(
        responses(&gzipped)["1"]["headers"]["x-graphvcr-outcome"],
        "replayed"
    );

    // Each sub-exchange is an interaction of its own: it replays outside a batch too.
    let alone = http
        .patch(
            &replayer.url(&status_path("cfg-batch", "dev-a")),
            r#"{"userName":"User of dev-a","status":"compliant"}"#,
        )
        .await;
    assert_eq!(
        alone.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        alone.text()
    );
    assert_eq!(alone.json()["id"], "dev-a");
}

/// Follows `@odata.nextLink` from `first`, checking every link points at `origin`;
/// returns the ids seen and the outcome header of each page.
async fn walk(http: &Http, first: &str, origin: &str) -> (Vec<String>, Vec<String>) {
    let (mut ids, mut outcomes) = (Vec::new(), Vec::new());
    let mut next = Some(first.to_owned());
    while let Some(url) = next.take() {
        assert!(outcomes.len() < 10, "too many pages");
        let page = http.get(&url).await;
        assert_eq!(page.status, 200, "{url}: {}", page.text());
        outcomes.push(page.header("x-graphvcr-outcome").unwrap_or("").to_owned());
        let body = page.json();
        for item in body["value"].as_array().expect("value") {
            ids.push(item["id"].as_str().unwrap_or_default().to_owned());
        }
        if let Some(link) = body["@odata.nextLink"].as_str() {
            assert!(
                link.starts_with(&format!("{origin}/")),
                "{link} should point at {origin}"
            );
            assert!(link.contains("$skiptoken="), "{link}");
            next = Some(link.to_owned());
        }
    }
    (ids, outcomes)
}

#[tokio::test]
async fn paging_links_point_at_the_proxy_in_record_and_replay() {
    let scratch = Scratch::new();
    let mut upstream = emulator_with(&scratch, &["--seed-devices", "250"]);
    let http = Http::new();
    let collection = "/v1.0/deviceManagement/deviceConfigurations/cfg-page/deviceStatuses";
    let first = format!("{collection}?$top=100&$select=id,status");
    let recorded_ids = {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        let origin = recorder.url("");
        let (ids, outcomes) = walk(&http, &recorder.url(&first), &origin).await;
        assert_eq!(outcomes, ["recorded"; 3]);
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
        ids
    };
    assert_eq!(recorded_ids.len(), 250);
    let unique: std::collections::HashSet<&String> = recorded_ids.iter().collect();
    assert_eq!(unique.len(), 250);
    upstream.kill();

    // The cassette keeps the links as the upstream sent them.
    let export = cli_ok(&scratch, &["cassette", "export", "default"]);
    assert!(
        export.contains(&upstream.url("/v1.0/")),
        "recorded links kept"
    );

    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let origin = replayer.url("");
    let (ids, outcomes) = walk(&http, &replayer.url(&first), &origin).await;
    assert_eq!(outcomes, ["replayed"; 3]);
    assert_eq!(ids, recorded_ids);
    // OData options match as Graph reads them: name case and $select order do not matter.
    let respelled = http
        .get(&replayer.url(&format!("{collection}?$SELECT=status,id&$Top=100")))
        .await;
    assert_eq!(
        respelled.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        respelled.text()
    );
}

#[tokio::test]
async fn a_throttled_call_and_its_retry_replay_in_sequence() {
    let scratch = Scratch::new();
    let mut upstream = emulator_with(
        &scratch,
        &[
            "--seed-devices",
            "3",
            "--throttle-every",
            "2",
            "--retry-after",
            "7",
        ],
    );
    let http = Http::new();
    let path = "/beta/deviceManagement/deviceConfigurations/cfg-t/deviceStatuses";
    let mut recorded = Vec::new();
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        for _ in 0..2 {
            let reply = http.get(&recorder.url(path)).await;
            recorded.push((
                reply.status.as_u16(),
                reply.header("retry-after").map(str::to_owned),
            ));
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    assert_eq!(recorded, [(429, Some("7".to_owned())), (200, None)]);
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let throttled = http.get(&replayer.url(path)).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("7"));
    assert_eq!(throttled.json()["error"]["code"], "TooManyRequests");
    assert_eq!(throttled.header("x-graphvcr-episode"), Some("1/2"));
    let retried = http.get(&replayer.url(path)).await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert_eq!(retried.header("x-graphvcr-episode"), Some("2/2"));
    assert_eq!(retried.json()["value"].as_array().map(Vec::len), Some(3));
}

/// The status and chaos label of each answer to the same 24 requests.
async fn chaos_run(
    http: &Http,
    scratch: &Scratch,
    upstream: &str,
    config: &str,
) -> Vec<(u16, String)> {
    let mut recorder = proxy(scratch, "record", upstream, &["--config", config]);
    let mut seen = Vec::new();
    for i in 0..24 {
        let path = status_path("cfg-chaos", &format!("dev-{}", i % 4));
        let reply = http.get(&recorder.url(&path)).await;
        let label = reply.header("x-graphvcr-chaos").unwrap_or("").to_owned();
        if !label.is_empty() {
            assert_eq!(reply.header("x-graphvcr-outcome"), Some("injected"));
            assert!(reply.json()["error"]["code"].is_string());
            if matches!(reply.status.as_u16(), 429 | 503) {
                assert_eq!(reply.header("retry-after"), Some("3"));
            }
        } else {
            assert_eq!(reply.header("x-graphvcr-outcome"), Some("recorded"));
        }
        seen.push((reply.status.as_u16(), label));
    }
    assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    seen
}

#[tokio::test]
async fn a_seeded_chaos_run_repeats_exactly_and_records_no_injected_answer() {
    let scratch = Scratch::new();
    let upstream = emulator_with(&scratch, &["--seed-devices", "4"]);
    let http = Http::new();
    let config = write_file(
        &scratch,
        "chaos.toml",
        "[chaos]\nenabled = true\nseed = 20261129\nrate = 0.4\nstatuses = [429, 503, 500]\nretry_after = 3\n",
    );
    // Two processes, each with a store of its own.
    let (one, two) = (Scratch::new(), Scratch::new());
    let first = chaos_run(&http, &one, &upstream.url(""), &config).await;
    let second = chaos_run(&http, &two, &upstream.url(""), &config).await;
    assert_eq!(first, second, "same seed, same requests, same faults");
    let injected = first.iter().filter(|(_, label)| !label.is_empty()).count();
    assert!(injected > 0 && injected < first.len(), "{first:?}");
    // Only real answers were recorded.
    assert_eq!(
        cassette_counts(&one, &one.arg("store")),
        vec![("default".to_owned(), (first.len() - injected) as u64)]
    );
}

#[tokio::test]
async fn replayed_answers_echo_client_request_id_and_refresh_date() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-h", "dev-h");
    let recorded = {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        let reply = http
            .send(
                "PATCH",
                &recorder.url(&path),
                &[
                    TOKEN,
                    JSON,
                    ("client-request-id", "11111111-1111-4111-8111-111111111111"),
                ],
                SEED_BODY,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
        reply
    };
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let mine = "22222222-2222-4222-8222-222222222222";
    let replayed = http
        .send(
            "PATCH",
            &replayer.url(&path),
            &[TOKEN, JSON, ("client-request-id", mine)],
            SEED_BODY,
        )
        .await;
    assert_eq!(replayed.header("x-graphvcr-outcome"), Some("replayed"));
    assert_eq!(replayed.header("client-request-id"), Some(mine));
    // request-id is kept as recorded by default; Date is the replay's own.
    assert_eq!(replayed.header("request-id"), recorded.header("request-id"));
    let date = replayed.header("date").expect("date");
    let sent = httpdate::parse_http_date(date).expect("HTTP date");
    let age = std::time::SystemTime::now()
        .duration_since(sent)
        .unwrap_or_default();
    assert!(age < std::time::Duration::from_secs(30), "{date}");
    assert_eq!(replayed.body, recorded.body);
}

#[tokio::test]
async fn auto_replays_a_batch_only_when_every_sub_request_is_recorded() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let (a, b, c) = (
        sub_patch("1", "dev-a", "compliant"),
        sub_patch("2", "dev-b", "remediated"),
        sub_patch("3", "dev-c", "conflict"),
    );
    let auto = proxy(&scratch, "auto", &upstream.url(""), &[]);
    let url = auto.url("/beta/$batch");
    let first = post_batch(&http, &url, &[&a, &b]).await;
    assert_eq!(
        first.header("x-graphvcr-outcome"),
        Some("recorded"),
        "{}",
        first.text()
    );
    let again = post_batch(&http, &url, &[&b, &a]).await;
    assert_eq!(
        again.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        again.text()
    );
    assert_eq!(responses(&again)["1"]["body"]["status"], "compliant");
    let grown = post_batch(&http, &url, &[&a, &c]).await;
    assert_eq!(grown.header("x-graphvcr-outcome"), Some("recorded"));
    assert_eq!(responses(&grown)["3"]["status"], 200);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn compressed_links_and_location_are_rewritten_kept_as_recorded_and_linted() {
    let scratch = Scratch::new();
    let collection = "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses";
    let delta = format!("{collection}?$deltatoken=Tok%2B1");
    let body = json!({
        "value": [{"id": "a", "bogus": 1}],
        "@odata.deltaLink": format!("https://graph.microsoft.us{delta}"),
    })
    .to_string();
    let compressed = bytes::Bytes::from(gzip(body.as_bytes()));
    let upstream = TestUpstream::start(move |_| {
        http::Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("location", "https://graph.microsoft.com/v1.0/somewhere")
            .body(http_body_util::Full::new(compressed.clone()))
            .expect("response")
    })
    .await;
    let http = Http::new();
    let check = |reply: &Reply, origin: &str| {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("content-encoding"), None, "sent decoded");
        assert_eq!(reply.json()["@odata.deltaLink"], format!("{origin}{delta}"));
        assert_eq!(
            reply.header("location"),
            Some(format!("{origin}/v1.0/somewhere").as_str())
        );
    };
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(), &[]);
        let recorded = http.get(&recorder.url(collection)).await;
        check(&recorded, &recorder.url(""));
        assert!(
            recorder.wait_for_log("/value/0/bogus"),
            "the lint names the unknown property: {}",
            recorder.stderr()
        );
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    drop(upstream);
    // The lint's findings are noted in the audit record too, and the chain still verifies.
    let store = scratch.arg("store");
    let (status, audit, stderr) = run(
        &["audit", "--format", "jsonl", "--store", &store],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    let noted = audit
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|record| {
            record["notes"].as_array().is_some_and(|notes| {
                notes
                    .iter()
                    .any(|n| n.as_str().is_some_and(|n| n.contains("/value/0/bogus")))
            })
        });
    assert!(noted, "{audit}");
    let (status, _, stderr) = run(&["audit", "verify", "--store", &store], scratch.path());
    assert!(status.success(), "{stderr}");
    let export = cli_ok(&scratch, &["cassette", "export", "default"]);
    assert!(
        export.contains("https://graph.microsoft.com/v1.0/somewhere"),
        "{export}"
    );
    let replayer = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    let replayed = http.get(&replayer.url(collection)).await;
    check(&replayed, &replayer.url(""));
}

#[tokio::test]
async fn the_chaos_rate_limit_counts_down_then_answers_429() {
    let scratch = Scratch::new();
    let upstream = emulator_with(&scratch, &["--seed-devices", "1"]);
    let config = write_file(
        &scratch,
        "limit.toml",
        "[chaos]\nenabled = true\nrate_limit = 2\nrate_limit_window = \"1h\"\n",
    );
    let passthrough = proxy(
        &scratch,
        "passthrough",
        &upstream.url(""),
        &["--config", &config],
    );
    let http = Http::new();
    let path = passthrough.url("/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let reply = http.get(&path).await;
        seen.push((
            reply.status.as_u16(),
            reply.header("ratelimit-limit").map(str::to_owned),
            reply.header("ratelimit-remaining").map(str::to_owned),
        ));
        if reply.status == 429 {
            assert_eq!(reply.header("x-graphvcr-outcome"), Some("injected"));
            assert!(reply
                .header("x-graphvcr-chaos")
                .is_some_and(|c| c.starts_with("rate-limit")));
            let retry_after: u64 = reply
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .expect("retry-after");
            assert!((1..=3600).contains(&retry_after), "{retry_after}");
        }
    }
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        seen,
        [
            (200, some("2"), some("1")),
            (200, some("2"), some("0")),
            (429, some("2"), some("0")),
        ]
    );
}

#[tokio::test]
async fn the_lint_checks_request_bodies_as_sent_whatever_the_match_rules_drop() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let mut body: Value = serde_json::from_str(SEED_BODY).expect("seed");
    body["bogus"] = json!(1);
    body["status"] = json!("nonsense");
    let body = body.to_string();
    let ignoring = write_config(
        &scratch,
        "ignoring.toml",
        r#"
        [[match.routes]]
        route = "/*/deviceManagement/deviceConfigurations/{id}/deviceStatuses/{id}"
        route_method = "PATCH"
        ignore_pointers = ["/status", "/bogus"]
        "#,
    );
    let compressed = bytes::Bytes::from(gzip(body.as_bytes()));
    // Default rules (matching's parse of the body is reused), then rules that drop the
    // offending members before matching: the lint sees both members either way, in a
    // plain body and in a compressed one.
    for (cassette, extra) in [("plain", vec![]), ("ignoring", vec!["--config", &ignoring])] {
        for encoding in ["identity", "gzip"] {
            let mut args = vec!["--cassette", cassette];
            args.extend(extra.iter().copied());
            let mut recorder = proxy(&scratch, "record", &upstream.url(""), &args);
            let path = status_path("cfg-lint", &format!("{cassette}-{encoding}"));
            let sent = match encoding {
                "gzip" => compressed.clone(),
                _ => bytes::Bytes::from(body.clone()),
            };
            let headers = [
                ("content-type", "application/json"),
                ("content-encoding", encoding),
            ];
            let reply = http
                .send_bytes("PATCH", &recorder.url(&path), &headers, sent)
                .await;
            assert_eq!(
                reply.header("x-graphvcr-outcome"),
                Some("recorded"),
                "{}",
                reply.text()
            );
            for needle in ["request body /bogus", "request body /status"] {
                assert!(
                    recorder.wait_for_log(needle),
                    "{cassette}, {encoding}: the lint names {needle}: {}",
                    recorder.stderr()
                );
            }
            assert!(recorder.interrupt().success(), "{}", recorder.stderr());
        }
    }
}
