//! The bad-input matrix: each malformed, oversized, slow or odd request gets a specific
//! answer, and the proxy keeps serving.

use std::time::Duration;

use bytes::Bytes;

use super::{assert_still_serving, echo_upstream, LIMITS};
use crate::support::*;

const SHORT: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(5);

/// One raw-socket case: the bytes sent and the status expected back.
struct Case {
    name: &'static str,
    parts: Vec<Vec<u8>>,
    status: u16,
    /// Text the answer must contain (a Graph error code), when graphvcr itself answers.
    contains: Option<&'static str>,
}

fn case(name: &'static str, bytes: &[u8], status: u16, contains: Option<&'static str>) -> Case {
    Case {
        name,
        parts: vec![bytes.to_vec()],
        status,
        contains,
    }
}

#[tokio::test]
async fn malformed_oversized_and_odd_requests_get_specific_answers() {
    let scratch = Scratch::new();
    let upstream = echo_upstream().await;
    let config = write_config(&scratch, "limits.toml", LIMITS);
    let proxy = proxy(&scratch, "replay", &upstream.url(), &["--config", &config]);
    let big_header = format!(
        "GET /v1.0/me HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let many_headers = format!(
        "GET /v1.0/me HTTP/1.1\r\nhost: t\r\n{}\r\n",
        (0..200)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let big_body = format!(
        "POST /v1.0/$batch HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n{}",
        "x".repeat(100_000)
    );
    let chunk = "x".repeat(30_000);
    let big_chunked = format!(
        "POST /v1.0/$batch HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n\
         7530\r\n{chunk}\r\n7530\r\n{chunk}\r\n7530\r\n{chunk}\r\n0\r\n\r\n"
    );
    let cases = vec![
        case("not HTTP at all", b"GARBAGE\r\n\r\n", 400, None),
        case(
            "a header line without a colon",
            b"GET /v1.0/me HTTP/1.1\r\nhost: t\r\nno colon here\r\n\r\n",
            400,
            None,
        ),
        case(
            "an unknown HTTP version",
            b"GET /v1.0/me HTTP/7.3\r\nhost: t\r\n\r\n",
            400,
            None,
        ),
        case(
            "a bad chunk size",
            b"POST /v1.0/me HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            400,
            Some("BadRequest"),
        ),
        case(
            "both content-length and a second different content-length",
            b"POST /v1.0/me HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            400,
            None,
        ),
        case("a 20 kB header", big_header.as_bytes(), 431, None),
        case("200 headers", many_headers.as_bytes(), 431, None),
        case(
            "a body over max_body_bytes (content-length)",
            big_body.as_bytes(),
            413,
            Some("RequestEntityTooLarge"),
        ),
        case(
            "a chunked body over max_body_bytes",
            big_chunked.as_bytes(),
            413,
            Some("RequestEntityTooLarge"),
        ),
        case(
            "a non-UTF-8 byte in the path",
            b"GET /v1.0/\xff\xfe/me HTTP/1.1\r\nhost: t\r\n\r\n",
            400,
            None,
        ),
        case(
            "a space in the path",
            b"GET /v1.0/a b HTTP/1.1\r\nhost: t\r\n\r\n",
            400,
            None,
        ),
        case(
            "invalid percent-encoding in the path",
            b"GET /v1.0/%zz/%4/%%/me?x=%g1 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            599,
            Some("%zz/%4/%%/me"),
        ),
        case(
            "a non-UTF-8 x-graphvcr-mode value",
            b"GET /v1.0/me HTTP/1.1\r\nhost: t\r\nx-graphvcr-mode: \xff\xfe\r\nconnection: close\r\n\r\n",
            400,
            Some("InvalidGraphvcrHeader"),
        ),
        case(
            "an unknown x-graphvcr-mode value",
            b"GET /v1.0/me HTTP/1.1\r\nhost: t\r\nx-graphvcr-mode: Record\r\nconnection: close\r\n\r\n",
            400,
            Some("InvalidGraphvcrHeader"),
        ),
        case(
            "a path as x-graphvcr-cassette",
            b"GET /v1.0/me HTTP/1.1\r\nhost: t\r\nx-graphvcr-cassette: ../../etc\r\nconnection: close\r\n\r\n",
            400,
            Some("InvalidGraphvcrHeader"),
        ),
        case(
            "TRACE in replay",
            b"TRACE /v1.0/me HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            599,
            Some("TRACE /v1.0/me"),
        ),
        case(
            "an invented method in replay",
            b"FROB /v1.0/me HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            599,
            Some("FROB /v1.0/me"),
        ),
    ];
    for case in cases {
        let parts: Vec<&[u8]> = case.parts.iter().map(Vec::as_slice).collect();
        let answer = raw_exchange(proxy.addr, &parts, SHORT, WAIT).await;
        assert_eq!(
            answer.status,
            Some(case.status),
            "{}: expected {}, got:\n{}",
            case.name,
            case.status,
            answer.text
        );
        if let Some(needle) = case.contains {
            assert!(
                answer.text.contains(needle),
                "{}: the answer lacks {needle:?}:\n{}",
                case.name,
                answer.text
            );
        }
        assert!(answer.closed, "{}: connection left open", case.name);
        assert_still_serving(&proxy, case.name).await;
    }
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
}

/// CONNECT misuse: a CONNECT to an intercepted host followed by plain text instead of a
/// TLS handshake, a CONNECT to a dead port, a CONNECT without an authority, and one to a
/// host `forward.unknown_hosts = "deny"` refuses.
#[tokio::test]
async fn connect_misuse_gets_clear_answers() {
    let scratch = Scratch::new();
    let config = write_config(&scratch, "limits.toml", LIMITS);
    let proxy = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &config],
    );

    let intercepted = raw_exchange(
        proxy.addr,
        &[
            b"CONNECT graph.microsoft.com:443 HTTP/1.1\r\nhost: graph.microsoft.com:443\r\n\r\n",
            b"GET /v1.0/me HTTP/1.1\r\nhost: graph.microsoft.com\r\n\r\n",
        ],
        SHORT,
        WAIT,
    )
    .await;
    assert_eq!(intercepted.status, Some(200), "{}", intercepted.text);
    assert!(
        intercepted.closed,
        "plain text in an intercepted tunnel must end it: {intercepted:?}"
    );
    assert_still_serving(&proxy, "plain text inside an intercepted CONNECT").await;

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let request = format!("CONNECT {dead} HTTP/1.1\r\nhost: {dead}\r\n\r\n");
    let tunnel = raw_exchange(proxy.addr, &[request.as_bytes()], SHORT, WAIT).await;
    assert_eq!(tunnel.status, Some(502), "{}", tunnel.text);
    assert!(
        tunnel.text.contains("UpstreamUnreachable"),
        "{}",
        tunnel.text
    );
    assert_still_serving(&proxy, "a CONNECT to a dead port").await;

    let no_authority = raw_exchange(
        proxy.addr,
        &[b"CONNECT /v1.0/me HTTP/1.1\r\nhost: t\r\n\r\n"],
        SHORT,
        WAIT,
    )
    .await;
    assert_eq!(no_authority.status, Some(400), "{}", no_authority.text);
    assert_still_serving(&proxy, "a CONNECT without an authority").await;

    let deny_scratch = Scratch::new();
    let deny = write_config(
        &deny_scratch,
        "deny.toml",
        "[forward]\nunknown_hosts = \"deny\"\n",
    );
    let denying = crate::support::proxy(
        &deny_scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &deny],
    );
    let refused = raw_exchange(
        denying.addr,
        &[b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n"],
        SHORT,
        WAIT,
    )
    .await;
    assert_eq!(refused.status, Some(403), "{}", refused.text);
    assert!(refused.text.contains("TunnelRefused"), "{}", refused.text);
    assert_still_serving(&denying, "a refused CONNECT").await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_slow_bodies_get_408() {
    let scratch = Scratch::new();
    let config = write_config(&scratch, "limits.toml", LIMITS);
    let proxy = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &config],
    );

    // Half a request head, then silence: hyper closes the connection once
    // proxy.header_read_timeout (1 s) has passed, without an answer.
    let answer = raw_exchange(
        proxy.addr,
        &[b"GET /v1.0/me HTTP/1.1\r\nhost: t\r\n"],
        SHORT,
        WAIT,
    )
    .await;
    assert!(answer.closed, "a slow head was not cut off: {answer:?}");
    assert!(
        answer.elapsed >= Duration::from_millis(900) && answer.elapsed < Duration::from_secs(4),
        "cut off after {:?}, expected about 1 s",
        answer.elapsed
    );
    assert_still_serving(&proxy, "a slow request head").await;

    // A head trickled in one byte at a time is still cut off at the timeout.
    let head: Vec<&[u8]> = b"GET /v1.0/me HTTP/1.1\r\nhost: t\r\nx-slow: 1234567890\r\n"
        .chunks(1)
        .collect();
    let trickle = raw_exchange(proxy.addr, &head, Duration::from_millis(100), WAIT).await;
    assert!(trickle.closed && trickle.status.is_none(), "{trickle:?}");
    assert_still_serving(&proxy, "a trickled request head").await;

    // A whole head with 10 of 100 body bytes: 408 once proxy.body_read_timeout (500 ms) passes.
    let answer = raw_exchange(
        proxy.addr,
        &[b"PATCH /v1.0/me HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":1234"],
        SHORT,
        WAIT,
    )
    .await;
    assert_eq!(answer.status, Some(408), "{}", answer.text);
    assert!(answer.text.contains("RequestTimeout"), "{}", answer.text);
    assert!(
        answer.elapsed < Duration::from_secs(3),
        "408 after {:?}",
        answer.elapsed
    );
    assert_still_serving(&proxy, "a slow body").await;
}

/// Sends `body` as JSON in record mode then in replay mode (cassette `json`) and checks
/// both work and the replay gives back the recorded answer.
async fn record_and_replay(http: &Http, proxy: &Proc, name: &str, path: &str, body: Bytes) {
    let send = |mode: &'static str| {
        let body = body.clone();
        let url = proxy.url(path);
        async move {
            http.send_bytes(
                "PATCH",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("x-graphvcr-mode", mode),
                    ("x-graphvcr-cassette", "json"),
                ],
                body,
            )
            .await
        }
    };
    let recorded = send("record").await;
    assert_eq!(recorded.status, 200, "{name}: record: {}", recorded.text());
    assert_eq!(
        recorded.header("x-graphvcr-outcome"),
        Some("recorded"),
        "{name}"
    );
    let replayed = send("replay").await;
    assert_eq!(
        replayed.header("x-graphvcr-outcome"),
        Some("replayed"),
        "{name}: replay: {}",
        replayed.text()
    );
    assert_eq!(replayed.body, recorded.body, "{name}");
    assert_still_serving(proxy, name).await;
}

/// A JSON PATCH to cassette `json` in the proxy's own mode (replay).
async fn replay_json(http: &Http, proxy: &Proc, path: &str, body: Bytes) -> Reply {
    http.send_bytes(
        "PATCH",
        &proxy.url(path),
        &[
            ("content-type", "application/json"),
            ("x-graphvcr-cassette", "json"),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn hostile_json_bodies_record_and_replay_without_crashing() {
    let scratch = Scratch::new();
    let upstream = echo_upstream().await;
    // Only the body limit: these requests share pooled connections, which the 1 s
    // header timeout of LIMITS would close between cases.
    let config = write_config(&scratch, "body.toml", "[proxy]\nmax_body_bytes = 65536\n");
    let proxy = proxy(&scratch, "replay", &upstream.url(), &["--config", &config]);
    let http = Http::new();
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let cases: Vec<(&str, Bytes)> = vec![
        ("arrays nested 10,000 deep", Bytes::from(deep_array)),
        ("objects nested 5,000 deep", Bytes::from(deep_object)),
        (
            "a number over f64's range",
            Bytes::from_static(br#"{"n":1e400}"#),
        ),
        (
            "a 40-digit integer",
            Bytes::from_static(br#"{"n":1234567890123456789012345678901234567890}"#),
        ),
        (
            "a 400-digit number",
            Bytes::from(format!("{{\"n\":{}}}", "9".repeat(400))),
        ),
        ("duplicate keys", Bytes::from_static(br#"{"a":1,"a":2}"#)),
        (
            "invalid UTF-8 in a string",
            Bytes::from_static(b"{\"a\":\"\xff\xfe\xfd\"}"),
        ),
        (
            "a lone surrogate escape",
            Bytes::from_static(br#"{"a":"\ud800"}"#),
        ),
        ("truncated JSON", Bytes::from_static(br#"{"a":[1,2"#)),
        ("a NUL byte", Bytes::from_static(b"{\"a\":\"\x00\"}")),
    ];
    for (i, (name, body)) in cases.into_iter().enumerate() {
        record_and_replay(&http, &proxy, name, &format!("/v1.0/json/{i}"), body).await;
    }

    // Spelling that parses to the same f64 must not make different big integers match.
    let near = Bytes::from_static(br#"{"n":1234567890123456789012345678901234567891}"#);
    let answer = replay_json(&http, &proxy, "/v1.0/json/3", near).await;
    assert_eq!(answer.status.as_u16(), 599, "{}", answer.text());
    // Duplicate keys are compared as bytes: the last-wins reading must not match.
    let last_wins = replay_json(
        &http,
        &proxy,
        "/v1.0/json/5",
        Bytes::from_static(br#"{"a":2}"#),
    )
    .await;
    assert_eq!(last_wins.status.as_u16(), 599, "{}", last_wins.text());
    // JSON a client re-spells is still matched as JSON.
    let respelled = replay_json(
        &http,
        &proxy,
        "/v1.0/json/2",
        Bytes::from_static(br#"{ "n" : 1e400 }"#),
    )
    .await;
    assert_eq!(
        respelled.status.as_u16(),
        599,
        "out-of-range numbers compare as bytes"
    );
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
}

/// The admin API refuses wrong methods, unknown resources and bad bodies with specific
/// answers in Graph's error shape, and keeps serving.
#[tokio::test]
async fn admin_api_wrong_methods_and_bad_bodies_get_specific_answers() {
    let scratch = Scratch::new();
    let proxy = proxy(&scratch, "replay", "http://127.0.0.1:9", &[]);
    let http = Http::new();
    let deep = "[".repeat(10_000);
    let cases: [(&str, &str, &str, u16, &str); 8] = [
        ("DELETE", "/health", "", 405, "MethodNotAllowed"),
        ("TRACE", "/mode", "", 405, "MethodNotAllowed"),
        ("POST", "/cassettes", "{}", 405, "MethodNotAllowed"),
        ("GET", "/nothing/here", "", 404, "ResourceNotFound"),
        ("PUT", "/mode", "{not json", 400, "BadRequest"),
        ("PUT", "/mode", r#"{"mode":"rewind"}"#, 400, "BadRequest"),
        ("PUT", "/mode", &deep, 400, "BadRequest"),
        ("DELETE", "/cassettes/..%2F..%2Fetc", "", 400, "BadRequest"),
    ];
    for (method, path, body, status, code) in cases {
        let answer = http.send(method, &proxy.admin_url(path), &[], body).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {path}: {}",
            answer.text()
        );
        assert_eq!(answer.json()["error"]["code"], code, "{method} {path}");
        if status == 405 {
            assert!(
                answer.header("allow").is_some(),
                "{method} {path}: no Allow"
            );
        }
        let health = Http::new().get(&proxy.admin_url("/health")).await;
        assert_eq!(health.status, 200, "after {method} {path}");
    }
    assert_still_serving(&proxy, "admin API misuse").await;
}
