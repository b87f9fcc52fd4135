//! `graphvcr demo`: the whole job on the embedded defaults, with no tenant and no
//! network: emulator -> record -> emulator stopped -> replay, then the shipped sample
//! cassette replayed. Prints each step and fails loudly if any promise does not hold.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::app::{self, AppError};
use crate::config::{Config, Mode};
use crate::emulate::EmulatorOptions;
use crate::error::MISS_STATUS;
use crate::proxy::OUTCOME_HEADER;

/// The sample cassette shipped in `cassettes/`, embedded so the demo runs from anywhere.
pub const SAMPLE_CASSETTE: &str = include_str!("../cassettes/sample.json");

const SEED_PATH: &str = "/v1.0/deviceManagement/deviceConfigurations/5f1ab2c4-demo-config/deviceStatuses/50d7942b-942b-50d7-2b94-d7502b94d750";
const DEMO_TOKEN: &str = "demo-token-never-stored";

/// [`crate::graph::SEED_PATCH_BODY`] with its keys in another order and other whitespace:
/// the same request to JSON-aware matching.
pub const SEED_PATCH_BODY_REORDERED: &str = r##"{
    "userPrincipalName": "User Principal Name value",
    "status": "compliant",
    "lastReportedDateTime": "2017-01-01T00:01:57.2065179+03:00",
    "deviceModel": "Device Model value",
    "userName": "User Name value",
    "deviceDisplayName": "Device Display Name value",
    "complianceGracePeriodExpirationDateTime": "2016-12-31T23:56:34.1389963+03:00",
    "@odata.type": "#microsoft.graph.deviceConfigurationDeviceStatus"
}"##;

type DemoClient = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    outcome: String,
    body: Bytes,
}

async fn send(
    client: &DemoClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
) -> Result<Answer, AppError> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {DEMO_TOKEN}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| AppError::Other(format!("cannot build request: {e}")))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| AppError::Other(format!("request to {addr} failed: {e}")))?;
    let status = response.status();
    let outcome = response
        .headers()
        .get(OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| AppError::Other(format!("reading the answer failed: {e}")))?
        .to_bytes();
    Ok(Answer {
        status,
        outcome,
        body,
    })
}

fn check(condition: bool, what: &str) -> Result<(), AppError> {
    if condition {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(AppError::Other(format!("demo check failed: {what}")))
    }
}

fn proxy_config(
    store: &Path,
    mode: Mode,
    upstream: String,
    listen: SocketAddr,
) -> Result<Config, AppError> {
    let args = crate::cli::ServeArgs {
        mode: Some(mode),
        listen: Some(listen),
        upstream: Some(upstream),
        store: Some(store.to_owned()),
        ..Default::default()
    };
    // Built-in defaults under the flags: the demo ignores ./config.toml on purpose.
    Ok(Config::from_layers(&args, Default::default())?)
}

/// Runs the demo; with `serve`, keeps replaying the sample cassette there afterwards.
pub async fn run(serve: Option<SocketAddr>) -> Result<(), AppError> {
    let dir = std::env::temp_dir().join(format!("graphvcr-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = dir.join("store");
    let client: DemoClient = Client::builder(TokioExecutor::new()).build_http();
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    let seed = crate::graph::SEED_PATCH_BODY;
    let reordered = SEED_PATCH_BODY_REORDERED;

    println!("1. record: emulator <- graphvcr (record) <- client");
    let emulator = app::start_emulator(any_port, EmulatorOptions::new(), None).await?;
    let upstream = format!("http://{}", emulator.addr);
    let recorder = app::start_proxy(&proxy_config(
        &store,
        Mode::Record,
        upstream.clone(),
        any_port,
    )?)
    .await?;
    let recorded = send(&client, recorder.addr(), Method::PATCH, SEED_PATH, seed).await?;
    println!(
        "  PATCH {SEED_PATH} -> {} ({})",
        recorded.status, recorded.outcome
    );
    check(
        recorded.status == StatusCode::OK && recorded.outcome == "recorded",
        "the seed PATCH was recorded with 200",
    )?;
    recorder.stop().await?;
    emulator.stop().await;

    println!("2. replay: the emulator is stopped; graphvcr answers from the cassette");
    let replayer =
        app::start_proxy(&proxy_config(&store, Mode::Replay, upstream, any_port)?).await?;
    let replayed = send(
        &client,
        replayer.addr(),
        Method::PATCH,
        SEED_PATH,
        reordered,
    )
    .await?;
    println!(
        "  PATCH (same body, keys reordered) -> {} ({})",
        replayed.status, replayed.outcome
    );
    check(
        replayed.outcome == "replayed" && replayed.body == recorded.body,
        "replay is byte-identical to the recording",
    )?;
    let other = SEED_PATH.replace("50d7942b-942b-50d7-2b94-d7502b94d750", "not-recorded");
    let missed = send(&client, replayer.addr(), Method::PATCH, &other, seed).await?;
    println!(
        "  PATCH {other} -> {} ({})",
        missed.status.as_u16(),
        missed.outcome
    );
    println!(
        "  {}",
        String::from_utf8_lossy(&missed.body)
            .chars()
            .take(240)
            .collect::<String>()
    );
    check(
        missed.status.as_u16() == MISS_STATUS,
        "an unrecorded request is a loud miss",
    )?;

    println!("3. the shipped sample cassette");
    let document =
        crate::cassette::parse_export(SAMPLE_CASSETTE, Path::new("cassettes/sample.json"))?;
    let first = document
        .interactions
        .iter()
        .find(|i| i.request.method == "PATCH")
        .or(document.interactions.first())
        .cloned()
        .ok_or_else(|| AppError::Other("the sample cassette is empty".into()))?;
    let (name, count) =
        crate::cassette::import(&replayer.store, document, None, &Default::default())?;
    println!("  imported {count} interactions into cassette '{name}'");
    let body = first.request.body.to_bytes().unwrap_or_default();
    let request = Request::builder()
        .method(first.request.method.as_str())
        .uri(format!("http://{}{}", replayer.addr(), first.request.uri))
        .header("content-type", "application/json")
        .header("x-graphvcr-cassette", name.as_str())
        .body(Full::new(body))
        .map_err(|e| AppError::Other(format!("cannot build request: {e}")))?;
    let answer = client
        .request(request)
        .await
        .map_err(|e| AppError::Other(format!("sample replay failed: {e}")))?;
    println!(
        "  {} {} -> {}",
        first.request.method,
        first.request.uri,
        answer.status()
    );
    check(
        answer.status().as_u16() == first.response.status,
        "the sample replays its recorded status",
    )?;
    replayer.stop().await?;

    let leaked = find_in_files(&store, DEMO_TOKEN.as_bytes());
    check(
        leaked.is_empty(),
        "the bearer token is in no file under the store",
    )?;
    println!("demo passed: recorded, replayed offline, missed loudly, nothing secret on disk");

    if let Some(listen) = serve {
        let mut config = proxy_config(
            &store,
            Mode::Replay,
            crate::graph::DEFAULT_UPSTREAM.into(),
            listen,
        )?;
        config.proxy.cassette = name;
        let shutdown = app::shutdown_signal();
        let server = app::start_proxy(&config).await?;
        let addr = server.addr();
        eprintln!("listening on http://{addr}");
        println!(
            "try: curl -s -X {} http://{addr}{} -H 'content-type: application/json' -d '{}'",
            first.request.method,
            first.request.uri,
            String::from_utf8_lossy(&first.request.body.to_bytes().unwrap_or_default())
        );
        shutdown.await;
        server.stop().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Paths of files under `dir` whose bytes contain `needle`.
pub fn find_in_files(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len().max(1)).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}
