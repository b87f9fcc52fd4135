//! Test harness: real `graphvcr` processes on 127.0.0.1 ephemeral ports, a real HTTP
//! client, and helpers that say what went wrong (command, stderr) when a step fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long any one process may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any one HTTP exchange may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The deviceStatuses PATCH body from the Graph docs example.
pub const SEED_BODY: &str = graphvcr::graph::SEED_PATCH_BODY;

/// The seed body with its keys in another order and other whitespace.
pub const SEED_BODY_REORDERED: &str = graphvcr::demo::SEED_PATCH_BODY_REORDERED;

pub fn status_path(config: &str, status: &str) -> String {
    format!("/v1.0/deviceManagement/deviceConfigurations/{config}/deviceStatuses/{status}")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_graphvcr")
}

/// A running graphvcr process; killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    pub scheme: String,
    /// The admin API's base URL, from the `admin listening on` line `serve` prints first.
    pub admin: Option<String>,
    command: String,
    stderr: Arc<(Mutex<Vec<String>>, std::sync::Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `graphvcr ARGS` in `cwd` and waits for its `listening on` line.
    pub fn start(args: &[&str], cwd: &Path) -> Proc {
        Self::start_logging(args, cwd, "info")
    }

    /// As [`Proc::start`], with `RUST_LOG` set to `filter` (e.g. `debug`).
    pub fn start_logging(args: &[&str], cwd: &Path, filter: &str) -> Proc {
        let command = format!("graphvcr {}", args.join(" "));
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let stderr = Arc::new((Mutex::new(Vec::new()), std::sync::Condvar::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let pipe = child.stderr.take().expect("stderr is piped");
        let lines = stderr.clone();
        let admin = Arc::new(Mutex::new(None::<String>));
        let admin_slot = admin.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = ready_tx.send(url.trim().to_owned());
                }
                if let Some(url) = line.strip_prefix("admin listening on ") {
                    *admin_slot.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(url.trim().to_owned());
                }
                lines.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                lines.1.notify_all();
            }
        });
        let url = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = stderr
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .join("\n");
                panic!(
                    "{command} did not say `listening on` within {START_TIMEOUT:?}; stderr:\n{log}"
                );
            }
        };
        let (scheme, addr) = url.split_once("://").expect("listening line has a scheme");
        let admin_url = admin.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Proc {
            child,
            addr: addr.parse().expect("listening line has an address"),
            scheme: scheme.to_owned(),
            // Printed before `listening on`, so already read.
            admin: admin_url,
            command,
            stderr,
            reader: Some(reader),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A URL on the admin API; panics when the process runs none.
    pub fn admin_url(&self, path: &str) -> String {
        let base = self.admin.as_deref().unwrap_or_else(|| {
            panic!(
                "{} printed no `admin listening on` line; stderr:\n{}",
                self.command,
                self.stderr()
            )
        });
        format!("{base}{path}")
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits (at most 10 s) until a stderr line contains `needle`; log lines are written
    /// after the response, so a test must wait for them rather than read at once.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let (lines, changed) = &*self.stderr;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut guard = lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if guard.iter().any(|line| line.contains(needle)) {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            guard = changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// SIGINT, then wait (bounded) for a clean exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal("INT");
        self.wait_exit()
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends `signal` (`TERM`, `INT`, …) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
    }

    /// Waits (bounded) for the process to exit, after a signal.
    pub fn wait_exit(&mut self) -> ExitStatus {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The pipe is closed now: collect the last log lines before returning.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!(
            "{} did not exit within 15 s of a signal; stderr:\n{}",
            self.command,
            self.stderr()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a store may stay locked after its last holder in this process let go.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until no one holds the sled store at `store`, failing after [`UNLOCK_TIMEOUT`].
///
/// sled takes an exclusive `flock` on `STORE/db` and the lock lasts as long as that file
/// stays open. Dropping a `sled::Db` does not wait for that: sled's I/O thread pool runs
/// log writes and segment truncations as tasks that hold the file, and such a task can
/// still be finishing (it signals the flush it serves before it lets go of the file)
/// after `flush` and `drop` have returned; a child process that another test forks in
/// that moment also keeps the lock until it execs. A process that opens the store right
/// then fails with "store locked". There is nothing to await for those threads, so this
/// polls the lock itself (taking it and releasing it at once) until it is free.
pub fn wait_until_store_unlocked(store: &Path) {
    let path = store.join("db");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let deadline = std::time::Instant::now() + UNLOCK_TIMEOUT;
    loop {
        // fs2's calls by path: std's `File` has inherent lock methods of its own.
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => {
                fs2::FileExt::unlock(&file)
                    .unwrap_or_else(|e| panic!("cannot unlock {}: {e}", path.display()));
                return;
            }
            Err(e) if e.kind() == fs2::lock_contended_error().kind() => {}
            Err(e) => panic!("cannot probe the lock on {}: {e}", path.display()),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} is still locked {UNLOCK_TIMEOUT:?} after its holders let go",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a graphvcr command to completion: (status, stdout, stderr).
pub fn run(args: &[&str], cwd: &Path) -> (ExitStatus, String, String) {
    let output = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run graphvcr {}: {e}", args.join(" ")));
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A scratch directory per test: the process cwd, the store, certificates.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }
}

/// Starts the emulator over HTTP.
pub fn emulator(scratch: &Scratch) -> Proc {
    Proc::start(&["emulate", "--listen", "127.0.0.1:0"], scratch.path())
}

/// Starts the emulator over HTTPS; the certificate goes to `emulator.pem`.
pub fn tls_emulator(scratch: &Scratch) -> Proc {
    let cert = scratch.arg("emulator.pem");
    Proc::start(
        &[
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert-out",
            &cert,
        ],
        scratch.path(),
    )
}

/// Starts `serve` in `mode` against `upstream` with the scratch store, plus `extra` flags.
pub fn proxy(scratch: &Scratch, mode: &str, upstream: &str, extra: &[&str]) -> Proc {
    let store = scratch.arg("store");
    let mut args = vec![
        "serve",
        "--mode",
        mode,
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
        "--upstream",
        upstream,
    ];
    args.extend_from_slice(extra);
    Proc::start(&args, scratch.path())
}

/// An HTTP answer, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Headers without graphvcr's provenance ones, as sorted `name: value` lines.
    pub fn headers_without_provenance(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .headers
            .iter()
            .filter(|(name, _)| !name.as_str().starts_with("x-graphvcr-"))
            .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
            .collect();
        lines.sort();
        lines
    }
}

/// A real HTTP/1.1 + HTTP/2 client (hyper-util over rustls), optionally trusting a PEM CA.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Self {
        Self::with_ca(None)
    }

    pub fn with_ca(ca: Option<&Path>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).expect("read CA");
            for cert in rustls_pemfile_certs(&pem) {
                roots.add(cert).expect("CA certificate");
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.send_bytes(method, url, headers, Bytes::from(body.to_owned()))
            .await
    }

    /// As [`Http::send_bytes`], but a failed exchange is an `Err` naming the failure
    /// instead of a panic: for tests that kill the server mid-flight.
    pub async fn try_send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
            .uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{method} {url} failed: {e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: body: {e:?}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{method} {url} took longer than {REQUEST_TIMEOUT:?}"
                ))
            })
    }

    pub async fn send_bytes(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).expect("request");
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("read body").to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {url} took longer than {REQUEST_TIMEOUT:?}"))
    }

    /// PATCH with a JSON body and a bearer token, as a Graph SDK would.
    pub async fn patch(&self, url: &str, body: &str) -> Reply {
        self.patch_with(url, &[], body).await
    }

    /// [`Http::patch`] with more headers, e.g. `x-graphvcr-mode` for one request.
    pub async fn patch_with(&self, url: &str, extra: &[(&str, &str)], body: &str) -> Reply {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("authorization", "Bearer test-token"),
        ];
        headers.extend_from_slice(extra);
        self.send("PATCH", url, &headers, body).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send("GET", url, &[("authorization", "Bearer test-token")], "")
            .await
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// Files under `dir` containing `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    graphvcr::demo::find_in_files(dir, needle.as_bytes())
}

/// Every file under `dir`, for checks that must have looked at something.
pub fn file_count(dir: &Path) -> usize {
    let mut count = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

/// What an in-test upstream sees of a request.
pub struct Seen {
    pub parts: http::request::Parts,
    pub body: Bytes,
}

type Respond = dyn Fn(&Seen) -> http::Response<Full<Bytes>> + Send + Sync;

struct FnHandler(std::sync::Arc<Respond>);

impl graphvcr::server::Handler for FnHandler {
    fn call(
        &self,
        request: Request<hyper::body::Incoming>,
        _peer: SocketAddr,
    ) -> graphvcr::server::ResponseFuture {
        let respond = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            graphvcr::server::whole(respond(&Seen { parts, body }))
        })
    }
}

/// An in-process upstream on 127.0.0.1 answering with `respond`; stops when dropped.
pub struct TestUpstream {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestUpstream {
    pub async fn start(
        respond: impl Fn(&Seen) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handler = std::sync::Arc::new(FnHandler(std::sync::Arc::new(respond)));
        tokio::spawn(graphvcr::server::serve(
            listener,
            None,
            graphvcr::server::Limits::default(),
            handler,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the emulator over HTTP with extra flags (`--seed-devices`, `--throttle-every`, …).
pub fn emulator_with(scratch: &Scratch, extra: &[&str]) -> Proc {
    let mut args = vec!["emulate", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::start(&args, scratch.path())
}

/// Writes `text` to `name` in the scratch directory and returns its path as an argument.
pub fn write_file(scratch: &Scratch, name: &str, text: &str) -> String {
    std::fs::write(scratch.join(name), text).expect("write file");
    scratch.arg(name)
}

/// Interactions per cassette in a store no process holds, from `graphvcr cassette list`.
pub fn cassette_counts(scratch: &Scratch, store: &str) -> Vec<(String, u64)> {
    let (status, stdout, stderr) = run(&["cassette", "list", "--store", store], scratch.path());
    assert!(status.success(), "cassette list failed: {stderr}");
    stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// Runs curl (a real, independent HTTP client with proxy, HTTP/2 and TLS support) and
/// returns (exit code, body, stderr). Bounded by curl's own --max-time.
pub fn curl(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", ""])
        .args(args)
        .current_dir(cwd)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("CURL_CA_BUNDLE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (is it installed?): {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes `text` as the file `name` in the scratch directory; returns its path.
pub fn write_config(scratch: &Scratch, name: &str, text: &str) -> String {
    std::fs::write(scratch.join(name), text).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    scratch.arg(name)
}

/// `graphvcr cassette export NAME` of the scratch store, parsed.
/// Runs a graphvcr command on the scratch store (`--store` added) and returns its stdout;
/// fails the test if it fails.
pub fn cli_ok(scratch: &Scratch, args: &[&str]) -> String {
    let store = scratch.arg("store");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--store", &store]);
    let (status, stdout, stderr) = run(&all, scratch.path());
    assert!(
        status.success(),
        "graphvcr {} failed: {stderr}\n{stdout}",
        all.join(" ")
    );
    stdout
}

pub fn export(scratch: &Scratch, cassette: &str) -> Value {
    let (status, stdout, stderr) = run(
        &[
            "cassette",
            "export",
            cassette,
            "--store",
            &scratch.arg("store"),
        ],
        scratch.path(),
    );
    assert!(status.success(), "export of {cassette} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("export of {cassette} is not JSON ({e}):\n{stdout}"))
}

/// `graphvcr cassette list` of the scratch store: (name, interactions) pairs.
pub fn cassette_list(scratch: &Scratch) -> Vec<(String, u64)> {
    let (status, stdout, stderr) = run(
        &["cassette", "list", "--store", &scratch.arg("store")],
        scratch.path(),
    );
    assert!(status.success(), "cassette list failed: {stderr}");
    stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_owned();
            let count = fields.next()?.parse().ok()?;
            Some((name, count))
        })
        .collect()
}

/// Resident set size of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What came back on a raw socket.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code of the first response line, if one arrived.
    pub status: Option<u16>,
    /// Everything read, lossily as text.
    pub text: String,
    /// The server closed the connection (EOF or reset) before `wait` ran out.
    pub closed: bool,
    /// From the last byte written to the end of reading.
    pub elapsed: Duration,
}

/// Writes `parts` to a fresh connection to `addr`, pausing `pause` between parts, then
/// reads until the server closes or `wait` runs out. Write errors are ignored: a server
/// may answer and close before the client has finished.
pub async fn raw_exchange(
    addr: SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
    wait: Duration,
) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let mut closed = false;
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let remaining = wait.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, stream.read(&mut buffer)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    RawAnswer {
        status,
        text,
        closed,
        elapsed: started.elapsed(),
    }
}
