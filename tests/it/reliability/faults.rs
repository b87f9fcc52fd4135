//! Upstream faults from upstreams that misbehave on purpose. Each gives a Graph-shaped
//! 502 or 504 naming the cause (or, for the upstream's own 429/503, passes it through),
//! nothing half-recorded, and the next request works.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::assert_still_serving;
use crate::support::*;

/// Reads one request head and its `content-length` body; returns the request target.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while received.len() < head_end + length {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..n]);
    }
    head.split_whitespace().nth(1).map(str::to_owned)
}

fn ok_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A raw upstream that misbehaves according to the request path.
async fn misbehaving_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Some(target) = read_request(&mut stream).await else {
                    return;
                };
                let path = target.split('?').next().unwrap_or("").to_owned();
                match path.rsplit('/').next().unwrap_or("") {
                    "reset" => {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"partial\":",
                            )
                            .await;
                        let _ = stream.flush().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        // Linger 0: close with RST instead of FIN. (Deprecated because a
                        // non-zero linger blocks the thread on drop; zero does not.)
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                    "truncated" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":[1,2,")
                            .await;
                        let _ = stream.shutdown().await;
                    }
                    "bad-chunk" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
                            .await;
                        let _ = stream.shutdown().await;
                    }
                    "garbage" => {
                        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
                        let _ = stream.shutdown().await;
                    }
                    "silent-close" => {
                        let _ = stream.shutdown().await;
                    }
                    "stall" => tokio::time::sleep(Duration::from_secs(10)).await,
                    "stall-body" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"a\":")
                            .await;
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    "429" | "503" => {
                        let (status, retry) = if path.ends_with("429") {
                            ("429 Too Many Requests", "7")
                        } else {
                            ("503 Service Unavailable", "3")
                        };
                        let body = r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#;
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: {retry}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                    }
                    _ => {
                        let body = format!(r#"{{"ok":true,"path":"{path}"}}"#);
                        let _ = stream.write_all(ok_response(&body).as_bytes()).await;
                    }
                }
            });
        }
    });
    addr
}

const TIMEOUTS: &str = "[upstream]\nresponse_timeout = \"1s\"\nconnect_timeout = \"1s\"\n";

#[tokio::test]
async fn broken_upstream_answers_are_502_or_504_and_never_recorded() {
    let scratch = Scratch::new();
    let upstream = misbehaving_upstream().await;
    let config = write_config(&scratch, "timeouts.toml", TIMEOUTS);
    let mut proxy = proxy(
        &scratch,
        "record",
        &format!("http://{upstream}"),
        &["--config", &config, "--cassette", "faults"],
    );
    let http = Http::new();
    // (fault, status, code, words the message must contain)
    let cases: [(&str, u16, &str, &[&str]); 7] = [
        ("reset", 502, "UpstreamConnectionBroken", &["reset"]),
        (
            "truncated",
            502,
            "UpstreamConnectionBroken",
            &["end of file"],
        ),
        ("bad-chunk", 502, "UpstreamConnectionBroken", &["chunk"]),
        (
            "garbage",
            502,
            "UpstreamConnectionBroken",
            &["invalid HTTP"],
        ),
        ("silent-close", 502, "UpstreamConnectionBroken", &["closed"]),
        (
            "stall",
            504,
            "UpstreamTimeout",
            &["did not answer within 1s"],
        ),
        (
            "stall-body",
            504,
            "UpstreamTimeout",
            &["did not answer within 1s"],
        ),
    ];
    for (i, (fault, status, code, words)) in cases.into_iter().enumerate() {
        let answer = http
            .patch(&proxy.url(&format!("/v1.0/fault/{i}/{fault}")), SEED_BODY)
            .await;
        assert_eq!(answer.status.as_u16(), status, "{fault}: {}", answer.text());
        assert_eq!(
            answer.header("x-graphvcr-outcome"),
            Some("upstream_error"),
            "{fault}"
        );
        let body = answer.json();
        assert_eq!(body["error"]["code"], code, "{fault}: {body}");
        assert!(
            body["error"]["innerError"]["request-id"].is_string(),
            "{fault}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&upstream.to_string()),
            "{fault}: the message does not name the upstream: {message}"
        );
        for word in words {
            assert!(
                message.to_lowercase().contains(&word.to_lowercase()),
                "{fault}: the message does not say {word:?}: {message}"
            );
        }
        // The next request works.
        let next = http
            .patch(&proxy.url(&format!("/v1.0/after/{i}/ok")), SEED_BODY)
            .await;
        assert_eq!(next.status, 200, "after {fault}: {}", next.text());
        assert_eq!(next.header("x-graphvcr-outcome"), Some("recorded"));
        assert_still_serving(&proxy, fault).await;
    }
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    let list = cassette_list(&scratch);
    assert_eq!(
        list,
        vec![("faults".to_owned(), 7)],
        "only the good answers are recorded"
    );
    let exported = export(&scratch, "faults");
    let uris: Vec<&str> = exported["interactions"]
        .as_array()
        .expect("interactions")
        .iter()
        .filter_map(|i| i["request"]["uri"].as_str())
        .collect();
    assert!(
        uris.iter().all(|uri| uri.starts_with("/v1.0/after/")),
        "{uris:?}"
    );
}

#[tokio::test]
async fn throttling_answers_pass_through_and_are_recorded_as_real_answers() {
    let scratch = Scratch::new();
    let upstream = misbehaving_upstream().await;
    let proxy = proxy(
        &scratch,
        "record",
        &format!("http://{upstream}"),
        &["--cassette", "throttled"],
    );
    let http = Http::new();
    for (code, retry) in [("429", "7"), ("503", "3")] {
        let path = format!("/v1.0/throttle/{code}");
        let answer = http.get(&proxy.url(&path)).await;
        assert_eq!(answer.status.as_str(), code, "{}", answer.text());
        assert_eq!(answer.header("retry-after"), Some(retry));
        assert_eq!(answer.header("x-graphvcr-outcome"), Some("recorded"));
        assert_eq!(answer.json()["error"]["code"], "TooManyRequests");
        let replayed = http
            .send(
                "GET",
                &proxy.url(&path),
                &[("x-graphvcr-mode", "replay"), ("authorization", "Bearer x")],
                "",
            )
            .await;
        assert_eq!(replayed.status.as_str(), code);
        assert_eq!(replayed.header("retry-after"), Some(retry));
        assert_eq!(replayed.header("x-graphvcr-outcome"), Some("replayed"));
        assert_eq!(replayed.body, answer.body);
    }
}

/// An HTTPS upstream presenting a self-signed certificate for `names`, valid in
/// `[not_before, not_after]` (years); returns its address and the certificate's PEM path.
async fn tls_upstream(
    scratch: &Scratch,
    names: &[&str],
    not_before: i32,
    not_after: i32,
) -> (SocketAddr, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.not_before = rcgen::date_time_ymd(not_before, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after, 1, 1);
    let cert = params.self_signed(&key).expect("self-signed");
    let pem_path = scratch.join("upstream.pem");
    std::fs::write(&pem_path, cert.pem()).expect("write pem");
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let config =
        graphvcr::tls::server_config(vec![cert.der().clone()], der_key).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    if read_request_tls(&mut tls).await {
                        let _ = tls.write_all(ok_response("{}").as_bytes()).await;
                    }
                }
            });
        }
    });
    (addr, pem_path.display().to_string())
}

async fn read_request_tls(stream: &mut tokio_rustls::server::TlsStream<TcpStream>) -> bool {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    true
}

/// (case, names on the certificate, validity in years, what the message must say)
type CertCase = (
    &'static str,
    &'static [&'static str],
    (i32, i32),
    &'static str,
);

#[tokio::test]
async fn bad_upstream_certificates_are_502_tls_failures() {
    let year = 2026;
    let cases: [CertCase; 3] = [
        (
            "expired",
            &["127.0.0.1", "localhost"],
            (2000, 2001),
            "expired",
        ),
        (
            "for another host",
            &["other.example"],
            (year - 1, year + 5),
            "not valid for name",
        ),
        (
            "not yet valid",
            &["127.0.0.1"],
            (2090, 2091),
            "not valid yet",
        ),
    ];
    let http = Http::new();
    for (case, names, (from, to), words) in cases {
        let scratch = Scratch::new();
        let (upstream, pem) = tls_upstream(&scratch, names, from, to).await;
        let proxy = proxy(
            &scratch,
            "record",
            &format!("https://{upstream}"),
            &["--upstream-ca", &pem],
        );
        let answer = http
            .patch(&proxy.url(&status_path("cfg-t", "dev-t")), SEED_BODY)
            .await;
        assert_eq!(answer.status, 502, "{case}: {}", answer.text());
        let body = answer.json();
        assert_eq!(
            body["error"]["code"], "UpstreamTlsFailure",
            "{case}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.to_lowercase().contains(words),
            "{case}: the message does not say {words:?}: {message}"
        );
        assert_still_serving(&proxy, case).await;
        drop(proxy);
        assert!(
            cassette_list(&scratch).is_empty(),
            "{case}: a failed exchange was recorded"
        );
    }
}
