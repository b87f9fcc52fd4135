//! Record and replay through real processes: emulator, proxy, client.

use crate::support::*;

/// Records the seed PATCH through the proxy over `emulator`, then replays it with the
/// emulator gone and checks status, headers and body are byte-identical.
async fn record_then_replay(scratch: &Scratch, mut emulator: Proc, upstream_flags: &[&str]) {
    let http = Http::new();
    let upstream = emulator.url("");
    let mut recorder = proxy(scratch, "record", &upstream, upstream_flags);
    let path = status_path("cfg-1", "dev-1");
    let recorded = http.patch(&recorder.url(&path), SEED_BODY).await;
    assert_eq!(recorded.status, 200, "{}", recorded.text());
    assert_eq!(recorded.header("x-graphvcr-outcome"), Some("recorded"));
    let entity = recorded.json();
    assert_eq!(entity["id"], "dev-1");
    assert_eq!(
        entity["@odata.type"],
        "#microsoft.graph.deviceConfigurationDeviceStatus"
    );
    assert_eq!(entity["status"], "compliant");
    assert!(recorded.header("request-id").is_some());
    assert!(
        recorder.interrupt().success(),
        "SIGINT exits 0: {}",
        recorder.stderr()
    );
    emulator.kill();

    // Replay gives answers the current Date by default ([graph] regenerate_date); this
    // checks byte-identical replay, so the replayer keeps the recorded one.
    let keep_date = scratch.join("keep-date.toml");
    std::fs::write(&keep_date, "[graph]\nregenerate_date = false\n").expect("write config");
    let keep_date = keep_date.display().to_string();
    let mut replay_flags = upstream_flags.to_vec();
    replay_flags.extend_from_slice(&["--config", &keep_date]);
    let replayer = proxy(scratch, "replay", &upstream, &replay_flags);
    let replayed = http.patch(&replayer.url(&path), SEED_BODY_REORDERED).await;
    assert_eq!(
        replayed.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        replayed.text()
    );
    assert_eq!(replayed.status, recorded.status);
    assert_eq!(
        replayed.headers_without_provenance(),
        recorded.headers_without_provenance()
    );
    assert_eq!(replayed.body, recorded.body);
    assert_eq!(replayed.header("x-graphvcr-episode"), Some("1/1"));
    assert_eq!(
        replayed.header("x-graphvcr-interaction"),
        recorded.header("x-graphvcr-interaction")
    );
}

#[tokio::test]
async fn records_over_https_and_replays_identically_without_the_upstream() {
    let scratch = Scratch::new();
    let emulator = tls_emulator(&scratch);
    assert_eq!(emulator.scheme, "https");
    let ca = scratch.arg("emulator.pem");
    record_then_replay(&scratch, emulator, &["--upstream-ca", &ca]).await;
}

#[tokio::test]
async fn records_over_http_and_replays_identically_without_the_upstream() {
    let scratch = Scratch::new();
    let emulator = emulator(&scratch);
    record_then_replay(&scratch, emulator, &[]).await;
}

#[tokio::test]
async fn query_order_does_not_matter() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let collection = "/v1.0/deviceManagement/deviceConfigurations/cfg-q/deviceStatuses";
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        let answer = http
            .get(&recorder.url(&format!("{collection}?$top=5&$select=id,status")))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let answer = http
        .get(&replayer.url(&format!("{collection}?$select=id%2Cstatus&$top=5")))
        .await;
    assert_eq!(
        answer.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{}",
        answer.text()
    );
    let missed = http
        .get(&replayer.url(&format!("{collection}?$top=6&$select=id,status")))
        .await;
    assert_eq!(missed.status.as_u16(), 599);
}

#[tokio::test]
async fn identical_requests_replay_as_episodes_in_recorded_order() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-e", "dev-e");
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        assert_eq!(http.get(&recorder.url(&path)).await.status, 404);
        assert_eq!(
            http.patch(&recorder.url(&path), SEED_BODY).await.status,
            200
        );
        assert_eq!(http.get(&recorder.url(&path)).await.status, 200);
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let answer = http.get(&replayer.url(&path)).await;
        seen.push((
            answer.status.as_u16(),
            answer
                .header("x-graphvcr-episode")
                .unwrap_or("-")
                .to_owned(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (404, "1/2".to_owned()),
            (200, "2/2".to_owned()),
            (200, "2/2".to_owned())
        ],
        "episodes in order, then the last keeps answering"
    );
}

/// A replay or auto proxy reads its default cassette's index into memory after it
/// starts (unless `store.warm_index = false`); what is recorded afterwards must still be
/// replayed as the next episode.
#[tokio::test]
async fn the_index_read_at_start_up_stays_true_to_new_recordings() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let (first, second) = (status_path("cfg-w", "dev-1"), status_path("cfg-w", "dev-2"));
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        for path in [&first, &second] {
            let reply = http.patch(&recorder.url(path), SEED_BODY).await;
            assert_eq!(reply.status, 200);
        }
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    let cold = write_config(&scratch, "cold.toml", "[store]\nwarm_index = false\n");
    let mut replay = proxy(&scratch, "replay", &upstream.url(""), &["--config", &cold]);
    let reply = http.patch(&replay.url(&first), SEED_BODY).await;
    assert_eq!(reply.header("x-graphvcr-outcome"), Some("replayed"));
    assert!(replay.terminate().success(), "{}", replay.stderr());
    assert!(
        !replay.stderr().contains("replay index read into memory"),
        "turned off, nothing is read at start-up: {}",
        replay.stderr()
    );
    // On by default.
    let mut auto = proxy(&scratch, "auto", &upstream.url(""), &[]);
    assert!(
        auto.wait_for_log("replay index read into memory cassette=default requests=2"),
        "{}",
        auto.stderr()
    );
    let mut seen = Vec::new();
    for (path, mode) in [(&first, "replay"), (&second, "record"), (&second, "replay")] {
        let reply = http
            .patch_with(&auto.url(path), &[("x-graphvcr-mode", mode)], SEED_BODY)
            .await;
        seen.push((
            reply.status.as_u16(),
            reply.header("x-graphvcr-outcome").unwrap_or("-").to_owned(),
            reply.header("x-graphvcr-episode").unwrap_or("-").to_owned(),
        ));
    }
    let expected = [
        (200, "replayed", "1/1"),
        (200, "recorded", "-"),
        (200, "replayed", "1/2"),
    ]
    .map(|(status, outcome, episode)| (status, outcome.to_owned(), episode.to_owned()));
    assert_eq!(seen, expected, "{}", auto.stderr());
    // The reader held a clone of the store: shutdown still releases and compacts it.
    assert!(auto.terminate().success(), "{}", auto.stderr());
    assert!(!auto.stderr().contains("still in use"), "{}", auto.stderr());
}

/// A running proxy remembers the episodes of a request once replayed; a recording made
/// afterwards through the same proxy must still be replayed as the next episode.
#[tokio::test]
async fn a_new_recording_shows_in_replay_at_once() {
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let http = Http::new();
    let auto = proxy(&scratch, "auto", &upstream.url(""), &[]);
    let path = status_path("cfg-n", "dev-n");
    let url = auto.url(&path);
    let provenance = |reply: &Reply| {
        (
            reply.status.as_u16(),
            reply.header("x-graphvcr-outcome").unwrap_or("-").to_owned(),
            reply.header("x-graphvcr-episode").unwrap_or("-").to_owned(),
        )
    };
    let mut seen = Vec::new();
    for mode in ["auto", "replay", "record", "replay", "replay"] {
        let reply = http
            .patch_with(&url, &[("x-graphvcr-mode", mode)], SEED_BODY)
            .await;
        seen.push(provenance(&reply));
    }
    let expected = [
        (200, "recorded", "-"),
        (200, "replayed", "1/1"),
        (200, "recorded", "-"),
        (200, "replayed", "2/2"),
        (200, "replayed", "2/2"),
    ]
    .map(|(status, outcome, episode)| (status, outcome.to_owned(), episode.to_owned()));
    assert_eq!(seen, expected, "{}", auto.stderr());
}

#[tokio::test]
async fn auto_replays_what_it_has_and_records_what_it_lacks() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let auto = proxy(&scratch, "auto", &upstream.url(""), &[]);
    let path = status_path("cfg-a", "dev-a");
    let first = http.patch(&auto.url(&path), SEED_BODY).await;
    assert_eq!(
        first.header("x-graphvcr-outcome"),
        Some("recorded"),
        "{}",
        first.text()
    );
    let second = http.patch(&auto.url(&path), SEED_BODY_REORDERED).await;
    assert_eq!(second.header("x-graphvcr-outcome"), Some("replayed"));
    assert_eq!(second.body, first.body);
    upstream.kill();
    let third = http.patch(&auto.url(&path), SEED_BODY).await;
    assert_eq!(third.header("x-graphvcr-outcome"), Some("replayed"));
    let unknown = http
        .patch(&auto.url(&status_path("cfg-a", "other")), SEED_BODY)
        .await;
    assert_eq!(unknown.status, 502, "{}", unknown.text());
    assert_eq!(unknown.header("x-graphvcr-outcome"), Some("upstream_error"));
}

#[tokio::test]
async fn passthrough_forwards_and_stores_nothing() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-p", "dev-p");
    {
        let mut passthrough = proxy(&scratch, "passthrough", &upstream.url(""), &[]);
        let answer = http.patch(&passthrough.url(&path), SEED_BODY).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-graphvcr-outcome"), Some("forwarded"));
        assert!(
            passthrough.interrupt().success(),
            "{}",
            passthrough.stderr()
        );
    }
    upstream.kill();
    let (status, stdout, stderr) = run(
        &["cassette", "list", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        !stdout.contains("default"),
        "passthrough created a cassette:\n{stdout}"
    );
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    assert_eq!(
        http.patch(&replayer.url(&path), SEED_BODY)
            .await
            .status
            .as_u16(),
        599
    );
}

#[tokio::test]
async fn a_miss_is_loud_and_names_what_differs() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-m", "dev-m");
    {
        let mut recorder = proxy(
            &scratch,
            "record",
            &upstream.url(""),
            &["--cassette", "suite-a"],
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
        &["--cassette", "suite-a"],
    );
    let changed = SEED_BODY.replace("\"compliant\"", "\"nonCompliant\"");
    let miss = http.patch(&replayer.url(&path), &changed).await;
    assert_eq!(miss.status.as_u16(), 599);
    assert_eq!(miss.header("x-graphvcr-outcome"), Some("miss"));
    let body = miss.json();
    assert_eq!(body["error"]["code"], "ReplayMiss");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for needle in ["suite-a", "PATCH", "/deviceStatuses/dev-m", "/status"] {
        assert!(
            message.contains(needle),
            "miss message lacks {needle:?}: {message}"
        );
    }
    assert!(body["error"]["innerError"]["request-id"].is_string());
    let nearest = &body["error"]["graphvcr"]["nearest"][0];
    assert_eq!(nearest["differences"][0]["field"], "body /status");
    assert_eq!(nearest["differences"][0]["recorded"], "\"compliant\"");
    assert_eq!(nearest["differences"][0]["received"], "\"nonCompliant\"");
    // Another method on the same path has nothing to compare with.
    let other = http.send("DELETE", &replayer.url(&path), &[], "").await;
    assert_eq!(other.status.as_u16(), 599);
    assert!(other.json()["error"]["graphvcr"]["nearest"]
        .as_array()
        .is_some_and(Vec::is_empty));
    assert!(
        replayer.wait_for_log("outcome=\"miss\""),
        "a miss is logged: {}",
        replayer.stderr()
    );
}

#[tokio::test]
async fn credentials_never_reach_the_store_or_the_log() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.c2VjcmV0LXRva2Vu.c2ln";
    let cookie = "session=cookie-secret-4711";
    let path = status_path("cfg-r", "dev-r");
    let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
    let bearer = format!("Bearer {token}");
    let answer = http
        .send(
            "PATCH",
            &recorder.url(&path),
            &[
                ("authorization", &bearer),
                ("cookie", cookie),
                ("content-type", "application/json"),
            ],
            SEED_BODY,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    upstream.kill();
    let store = scratch.join("store");
    assert!(file_count(&store) > 0, "the store has files to scan");
    for secret in [token, "cookie-secret-4711"] {
        let leaked = files_containing(&store, secret);
        assert!(leaked.is_empty(), "{secret} found in {leaked:?}");
        assert!(
            !recorder.stderr().contains(secret),
            "{secret} found in the log"
        );
    }
    let (status, export, _) = run(
        &[
            "cassette",
            "export",
            "default",
            "--store",
            &scratch.arg("store"),
        ],
        scratch.path(),
    );
    assert!(status.success());
    assert!(
        export.contains("Bearer [REDACTED]"),
        "the export shows a token was sent:\n{export}"
    );
    assert!(!export.contains(token));
}

/// PATCHes `count` device statuses (`dev-0`, `dev-1`, …) of `config` through `proxy`,
/// all in flight together; the answers in that order.
async fn patch_all_at_once(http: &Http, proxy: &Proc, config: &str, count: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let http = http.clone();
            let url = proxy.url(&status_path(config, &format!("dev-{i}")));
            tokio::spawn(async move { http.patch(&url, SEED_BODY).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(count);
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

#[tokio::test]
async fn acknowledged_recordings_survive_sigkill() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
    for answer in patch_all_at_once(&http, &recorder, "cfg-k", 40).await {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // Right after the last response: no graceful shutdown, no final flush.
    recorder.kill();
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    for i in 0..40 {
        let answer = http
            .patch(
                &replayer.url(&status_path("cfg-k", &format!("dev-{i}"))),
                SEED_BODY,
            )
            .await;
        assert_eq!(
            answer.header("x-graphvcr-outcome"),
            Some("replayed"),
            "dev-{i} lost: {}",
            answer.text()
        );
    }
}

/// Group commit with a commit delay: recordings in flight together share flushes, and
/// every one is still acknowledged only once durable (the SIGKILL test covers that).
#[tokio::test]
async fn concurrent_recordings_share_flushes() {
    const RECORDINGS: usize = 16;
    let scratch = Scratch::new();
    let upstream = emulator(&scratch);
    let group = write_config(
        &scratch,
        "group.toml",
        "[store]\ncommit_delay = \"100ms\"\n",
    );
    let recorder = proxy(&scratch, "record", &upstream.url(""), &["--config", &group]);
    let http = Http::new();
    for answer in patch_all_at_once(&http, &recorder, "cfg-g", RECORDINGS).await {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-graphvcr-outcome"), Some("recorded"));
    }
    let metrics = http
        .send("GET", &recorder.admin_url("/metrics"), &[], "")
        .await
        .text();
    let flushes: usize = metrics
        .lines()
        .find_map(|line| line.strip_prefix("graphvcr_store_flushes_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no graphvcr_store_flushes_total in:\n{metrics}"));
    assert!(
        (1..RECORDINGS).contains(&flushes),
        "{RECORDINGS} concurrent recordings took {flushes} flushes"
    );
}

#[tokio::test]
async fn upstream_failures_are_graph_shaped_and_the_proxy_keeps_serving() {
    let scratch = Scratch::new();
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let http = Http::new();
    let path = status_path("cfg-u", "dev-u");
    let mut proxy_down = proxy(&scratch, "record", &format!("http://{closed}"), &[]);
    for _ in 0..2 {
        let answer = http.patch(&proxy_down.url(&path), SEED_BODY).await;
        assert_eq!(answer.status, 502, "{}", answer.text());
        let body = answer.json();
        assert_eq!(body["error"]["code"], "UpstreamUnreachable");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&closed.to_string()));
        assert_eq!(answer.header("x-graphvcr-outcome"), Some("upstream_error"));
    }
    assert!(proxy_down.interrupt().success(), "{}", proxy_down.stderr());

    // TLS: an HTTPS upstream whose certificate the proxy was not told to trust.
    let tls_scratch = Scratch::new();
    let emulator = tls_emulator(&tls_scratch);
    let untrusting = proxy(&tls_scratch, "record", &emulator.url(""), &[]);
    let answer = http.patch(&untrusting.url(&path), SEED_BODY).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "UpstreamTlsFailure");
    let (_, stdout, _) = run(
        &["cassette", "list", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(
        !stdout.contains("default"),
        "a failed exchange was recorded:\n{stdout}"
    );
}

#[tokio::test]
async fn a_slow_upstream_gives_504() {
    let scratch = Scratch::new();
    // Accepts connections but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let config = scratch.join("slow.toml");
    std::fs::write(&config, "[upstream]\nresponse_timeout = \"300ms\"\n").expect("write config");
    let proxy = proxy(
        &scratch,
        "record",
        &format!("http://{addr}"),
        &["--config", &scratch.arg("slow.toml")],
    );
    let answer = Http::new()
        .patch(&proxy.url(&status_path("c", "d")), SEED_BODY)
        .await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "UpstreamTimeout");
    drop(silent);
}

#[tokio::test]
async fn a_store_held_by_another_process_is_a_clear_startup_error() {
    let scratch = Scratch::new();
    let _holder = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    let store = scratch.arg("store");
    let (status, _, stderr) = run(
        &["serve", "--listen", "127.0.0.1:0", "--store", &store],
        scratch.path(),
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&store) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bad_config_key_is_named() {
    let scratch = Scratch::new();
    std::fs::write(scratch.join("config.toml"), "[proxy]\nmood = \"replay\"\n").expect("write");
    let (status, _, stderr) = run(&["serve", "--listen", "127.0.0.1:0"], scratch.path());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mood"), "{stderr}");
}

#[tokio::test]
async fn cassette_header_selects_the_cassette_per_request() {
    let scratch = Scratch::new();
    let mut upstream = emulator(&scratch);
    let http = Http::new();
    let path = status_path("cfg-h", "dev-h");
    {
        let mut recorder = proxy(&scratch, "record", &upstream.url(""), &[]);
        let answer = http
            .send(
                "PATCH",
                &recorder.url(&path),
                &[
                    ("x-graphvcr-cassette", "one"),
                    ("authorization", "Bearer t"),
                    ("content-type", "application/json"),
                ],
                SEED_BODY,
            )
            .await;
        assert_eq!(answer.header("x-graphvcr-cassette"), Some("one"));
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    upstream.kill();
    let replayer = proxy(&scratch, "replay", &upstream.url(""), &[]);
    let hit = http
        .send(
            "PATCH",
            &replayer.url(&path),
            &[("x-graphvcr-cassette", "one")],
            SEED_BODY,
        )
        .await;
    assert_eq!(hit.header("x-graphvcr-outcome"), Some("replayed"));
    let other = http
        .send(
            "PATCH",
            &replayer.url(&path),
            &[("x-graphvcr-cassette", "two")],
            SEED_BODY,
        )
        .await;
    assert_eq!(other.status.as_u16(), 599);
    let bad = http
        .send(
            "PATCH",
            &replayer.url(&path),
            &[("x-graphvcr-mode", "rewind")],
            SEED_BODY,
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "InvalidGraphvcrHeader");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_the_proxy_keeps_serving() {
    let scratch = Scratch::new();
    std::fs::write(
        scratch.join("small.toml"),
        "[proxy]\nmax_body_bytes = 1024\n",
    )
    .expect("write");
    let proxy = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &scratch.arg("small.toml")],
    );
    let http = Http::new();
    let big = "x".repeat(4096);
    let answer = http
        .send("POST", &proxy.url("/v1.0/$batch"), &[], &big)
        .await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"]["code"], "RequestEntityTooLarge");
    let after = http.send("GET", &proxy.url("/v1.0/me"), &[], "").await;
    assert_eq!(after.status.as_u16(), 599, "still serving");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let scratch = Scratch::new();
    let mut proxy = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    assert_eq!(
        Http::new()
            .get(&proxy.url("/v1.0/me"))
            .await
            .status
            .as_u16(),
        599
    );
    let status = proxy.terminate();
    assert!(status.success(), "{status:?}: {}", proxy.stderr());
    // It compacted the store on the way out (reopened it once), then let it go.
    let log = proxy.stderr();
    assert!(
        !log.contains("not compacted") && !log.contains("stays locked"),
        "{log}"
    );
    // The store is released: a new process can open it at once.
    let again = Proc::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &scratch.arg("store"),
        ],
        scratch.path(),
    );
    drop(again);
}

#[tokio::test]
async fn the_demo_runs_offline_and_passes() {
    let scratch = Scratch::new();
    let (status, stdout, stderr) = run(&["demo"], scratch.path());
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("demo passed"), "{stdout}");
    assert!(
        stdout.contains("(replayed)") && stdout.contains("(miss)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn forwarding_rewrites_host_and_drops_hop_by_hop_and_own_headers() {
    let scratch = Scratch::new();
    let upstream = TestUpstream::start(|seen| {
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let echo = serde_json::json!({
            "method": seen.parts.method.as_str(),
            "uri": seen.parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&seen.body),
        });
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            echo.to_string(),
        )))
    })
    .await;
    let proxy = proxy(&scratch, "passthrough", &upstream.url(), &[]);
    let answer = Http::new()
        .send(
            "PATCH",
            &proxy.url("/v1.0//deviceManagement/x?b=2&a=1"),
            &[
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("x-graphvcr-cassette", "c"),
                ("authorization", "Bearer real-token"),
                ("content-type", "application/json"),
            ],
            SEED_BODY,
        )
        .await;
    let echo = answer.json();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(
        echo["uri"], "/v1.0//deviceManagement/x?b=2&a=1",
        "path and query byte-exact"
    );
    assert_eq!(echo["headers"]["host"], upstream.addr.to_string());
    assert_eq!(
        echo["headers"]["authorization"], "Bearer real-token",
        "the upstream gets the real token"
    );
    for dropped in ["x-hop", "connection", "x-graphvcr-cassette"] {
        assert!(
            echo["headers"].get(dropped).is_none(),
            "{dropped} was forwarded: {echo}"
        );
    }
    assert_eq!(echo["body"], SEED_BODY);
}
