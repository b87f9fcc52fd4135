//! Forward-proxy mode with TLS interception and HTTP/2, driven by curl as an unmodified
//! client would be: `--proxy` and a CA bundle, nothing else.

use crate::support::*;

const GRAPH_URL: &str = "https://graph.microsoft.com/v1.0/deviceManagement/deviceConfigurations/cfg-f/deviceStatuses/dev-f";

/// An emulator standing in for graph.microsoft.com (its certificate names that host).
fn graph_stand_in(scratch: &Scratch) -> Proc {
    let cert = scratch.arg("emulator.pem");
    Proc::start(
        &[
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert-out",
            &cert,
            "--tls-name",
            "graph.microsoft.com",
        ],
        scratch.path(),
    )
}

/// `serve` as a forward proxy, sending graph.microsoft.com to `emulator`.
fn forward_proxy(scratch: &Scratch, mode: &str, emulator_port: u16, extra: &[&str]) -> Proc {
    let resolve = format!("graph.microsoft.com=127.0.0.1:{emulator_port}");
    let ca = scratch.arg("emulator.pem");
    let mut args = vec!["--upstream-ca", ca.as_str(), "--resolve", resolve.as_str()];
    args.extend_from_slice(extra);
    proxy(scratch, mode, "https://graph.microsoft.com", &args)
}

fn ca_file(scratch: &Scratch) -> String {
    scratch
        .join("store")
        .join("ca")
        .join("graphvcr-ca.pem")
        .display()
        .to_string()
}

fn patch_through(proxy: &Proc, scratch: &Scratch, version: &str) -> (i32, String, String) {
    curl_patch(proxy.addr, scratch.path(), &ca_file(scratch), version)
}

/// curl's PATCH of [`GRAPH_URL`] through the forward proxy at `proxy`, trusting `ca`.
fn curl_patch(
    proxy: std::net::SocketAddr,
    cwd: &std::path::Path,
    ca: &str,
    version: &str,
) -> (i32, String, String) {
    let proxy_url = format!("http://{proxy}");
    curl(
        &[
            version,
            "--suppress-connect-headers",
            "--proxy",
            &proxy_url,
            "--cacert",
            ca,
            "-X",
            "PATCH",
            GRAPH_URL,
            "-H",
            "authorization: Bearer sdk-token",
            "-H",
            "content-type: application/json",
            "-d",
            SEED_BODY,
            "-D",
            "-",
        ],
        cwd,
    )
}

fn body_of(output: &str) -> &str {
    output.split("\r\n\r\n").last().unwrap_or("")
}

#[tokio::test]
async fn an_unmodified_client_records_and_replays_through_https_proxy() {
    let scratch = Scratch::new();
    let mut emulator = graph_stand_in(&scratch);
    let port = emulator.addr.port();
    let (recorded, recorded_h2) = {
        let mut recorder = forward_proxy(&scratch, "record", port, &[]);
        let (code, h1, stderr) = patch_through(&recorder, &scratch, "--http1.1");
        assert_eq!(code, 0, "{stderr}");
        assert!(h1.contains("x-graphvcr-outcome: recorded"), "{h1}");
        assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
        let (code, h2, stderr) = patch_through(&recorder, &scratch, "--http2");
        assert_eq!(code, 0, "{stderr}");
        assert!(
            h2.starts_with("HTTP/2 200"),
            "ALPN h2 inside the intercepted TLS: {h2}"
        );
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
        (h1, h2)
    };
    emulator.kill();
    // Replay: no emulator, the CONNECT is answered locally; HTTP/2 replays an
    // HTTP/1.1 recording and the other way round.
    let replayer = forward_proxy(&scratch, "replay", port, &[]);
    for (version, expected) in [("--http2", &recorded), ("--http1.1", &recorded_h2)] {
        let (code, replayed, stderr) = patch_through(&replayer, &scratch, version);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            replayed.contains("x-graphvcr-outcome: replayed"),
            "{replayed}"
        );
        assert_eq!(body_of(&replayed), body_of(expected));
        assert!(
            body_of(&replayed).contains("\"id\":\"dev-f\""),
            "{replayed}"
        );
    }
    drop(replayer);
    let export = cli_ok(&scratch, &["cassette", "export", "default"]);
    assert!(
        export.contains("\"host\": \"graph.microsoft.com\""),
        "cassettes record the target host:\n{export}"
    );
    assert!(!export.contains("sdk-token"));
}

#[tokio::test]
async fn other_hosts_are_tunnelled_untouched_and_never_stored() {
    let scratch = Scratch::new();
    // The plain self-signed emulator (localhost) is not an intercepted host.
    let emulator = tls_emulator(&scratch);
    let mut proxy = proxy(&scratch, "record", "https://graph.microsoft.com", &[]);
    let url = format!(
        "https://localhost:{}/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses",
        emulator.addr.port()
    );
    let (code, body, stderr) = curl(
        &[
            "--proxy",
            &format!("http://{}", proxy.addr),
            "--cacert",
            &scratch.arg("emulator.pem"),
            &url,
            "-H",
            "authorization: Bearer t",
        ],
        scratch.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        body.contains("\"value\""),
        "the emulator answered through the tunnel: {body}"
    );
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("outcome=\"tunnel\""),
        "{}",
        proxy.stderr()
    );
    let (_, list, _) = run(
        &["cassette", "list", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(!list.contains("default"), "a tunnel was stored: {list}");
}

#[tokio::test]
async fn unknown_hosts_can_be_denied() {
    let scratch = Scratch::new();
    std::fs::write(
        scratch.join("deny.toml"),
        "[forward]\nunknown_hosts = \"deny\"\n",
    )
    .expect("write");
    let proxy = proxy(
        &scratch,
        "record",
        "https://graph.microsoft.com",
        &["--config", &scratch.arg("deny.toml")],
    );
    let (code, _, stderr) = curl(
        &[
            "--proxy",
            &format!("http://{}", proxy.addr),
            "https://example.invalid/",
        ],
        scratch.path(),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("403"), "{stderr}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_tls_and_the_proxy_keeps_serving() {
    let scratch = Scratch::new();
    let emulator = graph_stand_in(&scratch);
    let proxy = forward_proxy(&scratch, "record", emulator.addr.port(), &[]);
    let proxy_url = format!("http://{}", proxy.addr);
    let (code, _, stderr) = curl(&["--proxy", &proxy_url, GRAPH_URL], scratch.path());
    assert_eq!(code, 60, "certificate not trusted: {stderr}");
    let (code, _, stderr) = patch_through(&proxy, &scratch, "--http1.1");
    assert_eq!(code, 0, "still serving: {stderr}");
    let log = proxy.stderr();
    assert!(
        log.contains("does it trust graphvcr's CA"),
        "the proxy says why: {log}"
    );
}

#[tokio::test]
async fn ca_commands_create_print_and_protect_the_ca() {
    let scratch = Scratch::new();
    let dir = scratch.arg("ca");
    let (status, stdout, stderr) = run(&["ca", "init", "--ca-dir", &dir], scratch.path());
    assert!(status.success(), "{stderr}");
    for line in [
        "SSL_CERT_FILE=",
        "REQUESTS_CA_BUNDLE=",
        "NODE_EXTRA_CA_CERTS=",
        "CURL_CA_BUNDLE=",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(scratch.join("ca").join("graphvcr-ca-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (_, path, _) = run(&["ca", "path", "--ca-dir", &dir], scratch.path());
    assert_eq!(
        path.trim(),
        scratch
            .join("ca")
            .join("graphvcr-ca.pem")
            .display()
            .to_string()
    );
    let (status, shown, _) = run(&["ca", "show", "--ca-dir", &dir], scratch.path());
    assert!(status.success());
    assert!(shown.starts_with("-----BEGIN CERTIFICATE-----"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"));
    let (status, again, _) = run(&["ca", "init", "--ca-dir", &dir], scratch.path());
    assert!(status.success());
    let (_, shown_again, _) = run(&["ca", "show", "--ca-dir", &dir], scratch.path());
    assert_eq!(shown, shown_again, "init keeps an existing CA: {again}");
}

#[tokio::test]
async fn the_listener_speaks_h2c_and_tls_with_alpn() {
    let scratch = Scratch::new();
    let mut emulator = emulator(&scratch);
    let path = status_path("cfg-2", "dev-2");
    {
        let mut recorder = proxy(&scratch, "record", &emulator.url(""), &[]);
        let (code, out, stderr) = curl(
            &[
                "--http2-prior-knowledge",
                "-D",
                "-",
                "-X",
                "PATCH",
                &recorder.url(&path),
                "-H",
                "authorization: Bearer t",
                "-H",
                "content-type: application/json",
                "-d",
                SEED_BODY,
            ],
            scratch.path(),
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(
            out.starts_with("HTTP/2 200") && out.contains("x-graphvcr-outcome: recorded"),
            "{out}"
        );
        assert!(recorder.interrupt().success(), "{}", recorder.stderr());
    }
    emulator.kill();
    // A TLS listener with a certificate of its own, offering h2 and http/1.1.
    let minted = graphvcr::tls::self_signed(&["localhost"]).expect("mint");
    std::fs::write(scratch.join("proxy.pem"), &minted.cert_pem).expect("cert");
    std::fs::write(scratch.join("proxy-key.pem"), &minted.key_pem).expect("key");
    let tls_proxy = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &[
            "--tls-cert",
            &scratch.arg("proxy.pem"),
            "--tls-key",
            &scratch.arg("proxy-key.pem"),
        ],
    );
    assert_eq!(tls_proxy.scheme, "https");
    let url = format!("https://localhost:{}{path}", tls_proxy.addr.port());
    for version in ["--http2", "--http1.1"] {
        let (code, out, stderr) = curl(
            &[
                version,
                "--cacert",
                &scratch.arg("proxy.pem"),
                "-D",
                "-",
                "-X",
                "PATCH",
                &url,
                "-H",
                "content-type: application/json",
                "-d",
                SEED_BODY_REORDERED,
            ],
            scratch.path(),
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(
            out.contains("x-graphvcr-outcome: replayed"),
            "{version}: {out}"
        );
    }
}

/// An in-process HTTPS upstream standing in for graph.microsoft.com that holds every
/// request until the test releases it, and says when one has arrived.
struct HeldUpstream {
    arrived: tokio::sync::mpsc::UnboundedSender<()>,
    release: tokio::sync::watch::Receiver<bool>,
}

impl graphvcr::server::Handler for HeldUpstream {
    fn call(
        &self,
        request: http::Request<hyper::body::Incoming>,
        _peer: std::net::SocketAddr,
    ) -> graphvcr::server::ResponseFuture {
        use http_body_util::BodyExt;
        let arrived = self.arrived.clone();
        let mut release = self.release.clone();
        Box::pin(async move {
            let _ = request.into_body().collect().await;
            let _ = arrived.send(());
            let _ = release.wait_for(|released| *released).await;
            let mut response = http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(br#"{"id":"dev-h","status":"compliant"}"#),
            ));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            graphvcr::server::whole(response)
        })
    }
}

/// Runs `graphvcr ca init` for the scratch store, so clients can load the CA at once.
fn init_ca(scratch: &Scratch) {
    let (status, _, stderr) = run(
        &["ca", "init", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_intercepted_request_finish() {
    let scratch = Scratch::new();
    init_ca(&scratch);
    let minted = graphvcr::tls::self_signed(&["graph.microsoft.com"]).expect("mint");
    std::fs::write(scratch.join("upstream.pem"), &minted.cert_pem).expect("cert");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_port = listener.local_addr().expect("addr").port();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::watch::channel(false);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(graphvcr::server::serve(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(minted.config)),
        graphvcr::server::Limits::default(),
        std::sync::Arc::new(HeldUpstream {
            arrived: arrived_tx,
            release: released,
        }),
        async move {
            let _ = stopped.await;
        },
    ));
    let resolve = format!("graph.microsoft.com=127.0.0.1:{upstream_port}");
    let ca = scratch.arg("upstream.pem");
    let mut recorder = proxy(
        &scratch,
        "record",
        "https://graph.microsoft.com",
        &["--upstream-ca", &ca, "--resolve", &resolve],
    );

    // An SDK's PATCH through the intercepted tunnel, held by the upstream.
    let (addr, cwd, ca) = (recorder.addr, scratch.path().to_owned(), ca_file(&scratch));
    let client = tokio::task::spawn_blocking(move || curl_patch(addr, &cwd, &ca, "--http1.1"));
    tokio::time::timeout(std::time::Duration::from_secs(30), arrived.recv())
        .await
        .expect("the intercepted request reaches the upstream within 30 s")
        .expect("upstream running");

    // SIGTERM mid-request: the proxy drains, and the intercepted connection is part of
    // that drain (the admin API, stopped only after the proxy, still answers).
    recorder.signal("TERM");
    let draining =
        tokio::task::block_in_place(|| recorder.wait_for_log("shutting down: finishing in-flight"));
    assert!(draining, "{}", recorder.stderr());
    let health = Http::new()
        .try_send(
            "GET",
            &recorder.admin_url("/health"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert!(
        health.is_ok_and(|answer| answer.status == 200),
        "the proxy stopped waiting for the intercepted request: {}",
        recorder.stderr()
    );

    release.send_replace(true);
    let (code, answer, stderr) = client.await.expect("curl ran");
    assert_eq!(code, 0, "{stderr}\n{}", recorder.stderr());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-graphvcr-outcome: recorded"), "{answer}");
    assert!(
        answer.contains("\"id\":\"dev-h\""),
        "the held answer: {answer}"
    );
    let status = tokio::task::block_in_place(|| recorder.wait_exit());
    assert!(status.success(), "{}", recorder.stderr());
    let _ = stop.send(());
    upstream.await.expect("upstream ends");
    // The exchange finished before the final flush: it is in the cassette.
    assert_eq!(cassette_list(&scratch), [("default".to_owned(), 1)]);
}

/// Reads one HTTP/1.1 answer (head and a `content-length` body) from `stream`.
async fn read_answer(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    let mut body_length = None;
    loop {
        if let Some(length) = body_length {
            if received.len() >= length {
                break;
            }
        }
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert_eq!(read, 1, "connection closed after {received:?}");
        received.push(byte[0]);
        assert!(received.len() < 64 * 1024, "answer too long: {received:?}");
        if body_length.is_none() && received.ends_with(b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().expect("content-length"));
            body_length = Some(received.len() + length);
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_intercepted_connections_and_exits_promptly() {
    use tokio::io::AsyncWriteExt;
    let scratch = Scratch::new();
    init_ca(&scratch);
    let mut replayer = proxy(&scratch, "replay", "https://graph.microsoft.com", &[]);
    let tunnel = || async {
        let mut stream = tokio::net::TcpStream::connect(replayer.addr)
            .await
            .expect("connect");
        stream
            .write_all(b"CONNECT graph.microsoft.com:443 HTTP/1.1\r\nhost: graph.microsoft.com:443\r\n\r\n")
            .await
            .expect("CONNECT");
        let head = read_answer(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stream
    };

    // One tunnel whose client never starts TLS; one that served a request and is idle,
    // kept alive, inside TLS.
    let _not_started = tunnel().await;
    let tls = graphvcr::tls::client_config(Some(std::path::Path::new(&ca_file(&scratch))))
        .expect("client config");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("graph.microsoft.com").expect("name");
    let mut idle = connector
        .connect(name, tunnel().await)
        .await
        .expect("TLS through the tunnel with the proxy's CA");
    idle.write_all(b"GET /v1.0/me HTTP/1.1\r\nhost: graph.microsoft.com\r\n\r\n")
        .await
        .expect("request");
    let answer = read_answer(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 599"), "{answer}");

    // The handshake timeout (proxy.header_read_timeout, 30 s) is not waited out, and the
    // idle connection is closed by the graceful shutdown (TLS close_notify).
    sigterm_closes(&mut replayer, &mut idle).await;
}

/// SIGTERMs `proxy`, which must exit 0 within 10 s, and expects `stream` (a tunnel or a
/// connection inside one) to end cleanly with nothing more sent.
async fn sigterm_closes(proxy: &mut Proc, stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    proxy.signal("TERM");
    let status = tokio::task::block_in_place(|| proxy.wait_exit());
    assert!(status.success(), "{}", proxy.stderr());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?} to exit",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("the connection is closed");
    assert!(
        closed.as_ref().is_ok_and(|_| rest.is_empty()),
        "closed cleanly with nothing sent: {closed:?} {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_count_toward_max_connections_and_close_at_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scratch = Scratch::new();
    std::fs::write(scratch.join("one.toml"), "[proxy]\nmax_connections = 1\n").expect("write");
    // The tunnels' far end: a TCP echo server, not an intercepted host.
    let far_end = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let far = far_end.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = far_end.accept().await {
            tokio::spawn(async move {
                let (mut from, mut to) = socket.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    let mut proxy = proxy(
        &scratch,
        "replay",
        "http://127.0.0.1:9",
        &["--config", &scratch.arg("one.toml")],
    );
    let open_tunnel = || async {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        stream
            .write_all(format!("CONNECT {far} HTTP/1.1\r\nhost: {far}\r\n\r\n").as_bytes())
            .await
            .expect("CONNECT");
        let head = read_answer(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stream.write_all(b"ping").await.expect("write");
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).await.expect("echo");
        assert_eq!(&echoed, b"ping", "the tunnel relays both ways");
        stream
    };

    // The open tunnel holds the only connection place: a second client is not served.
    let tunnel = open_tunnel().await;
    let mut second = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("the kernel accepts into the backlog");
    second
        .write_all(b"GET /v1.0/me HTTP/1.1\r\nhost: graphvcr\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        second.read(&mut byte),
    )
    .await;
    assert!(
        early.is_err(),
        "served while an open tunnel held the only place: {early:?}"
    );
    // Closing the tunnel frees the place and the waiting request is served.
    drop(tunnel);
    let answer = read_answer(&mut second).await;
    assert!(answer.starts_with("HTTP/1.1 599"), "{answer}");
    drop(second);

    // At shutdown an open tunnel is closed, not left to the process's exit.
    let mut tunnel = open_tunnel().await;
    sigterm_closes(&mut proxy, &mut tunnel).await;
    assert!(
        proxy.stderr().contains("shutting down: tunnel closed"),
        "{}",
        proxy.stderr()
    );
}
