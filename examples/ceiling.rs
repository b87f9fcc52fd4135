//! The benchmark's ceiling: a bare hyper HTTP/1.1 server that reads each request body and
//! answers a fixed ~500-byte JSON entity. Nothing is parsed, matched or stored, so its
//! throughput is the upper bound for any HTTP server on the same machine and runtime.
//!
//! `cargo run --release --example ceiling -- [--listen 127.0.0.1:0] [--work-us N]` prints
//! `listening on http://ADDR:PORT` on stderr once it accepts connections, like graphvcr,
//! and exits 0 on SIGTERM or SIGINT.
//!
//! `--work-us N` adds N µs of pure CPU work to every request (a spin calibrated at
//! start-up, touching no memory), which is how `bench/run.sh --ceiling-work-us` measures what a handler
//! may cost for a server to keep a given share of the ceiling's throughput.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A deviceConfigurationDeviceStatus entity, as Graph answers a PATCH (about 500 bytes).
const BODY: &str = concat!(
    r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#deviceManagement/deviceConfigurations('ceiling')/deviceStatuses/$entity","#,
    r#""@odata.type":"#,
    r##""#microsoft.graph.deviceConfigurationDeviceStatus","##,
    r#""id":"00000000-0000-0000-0000-000000000000","deviceDisplayName":"Device Display Name value","#,
    r#""userName":"User Name value","deviceModel":"Device Model value","complianceGracePeriodExpirationDateTime":"2016-12-31T23:56:44.951111-08:00","#,
    r#""status":"compliant","lastReportedDateTime":"2017-01-01T00:00:56.8321556-08:00","userPrincipalName":"User Principal Name value"}"#
);

/// Spin iterations per request for `--work-us`; 0 leaves the ceiling bare.
#[derive(Debug, Clone, Copy)]
struct Work {
    iterations: u64,
}

impl Work {
    /// Counts how many spin iterations make `micros` µs on this machine: the fastest of a
    /// few timed batches, so a preempted batch does not inflate the work.
    fn calibrated(micros: u64) -> Self {
        if micros == 0 {
            return Self { iterations: 0 };
        }
        const BATCH: u64 = 2_000_000;
        let fastest = (0..5)
            .map(|_| {
                let started = Instant::now();
                spin(BATCH);
                started.elapsed()
            })
            .min()
            .unwrap_or(Duration::from_millis(1))
            .max(Duration::from_nanos(1));
        let per_micro = BATCH as f64 / (fastest.as_nanos() as f64 / 1000.0);
        Self {
            iterations: (per_micro * micros as f64).round() as u64,
        }
    }
}

/// A dependent chain of multiplications the optimiser cannot remove or shorten.
fn spin(iterations: u64) -> u64 {
    let mut state = std::hint::black_box(0x9e37_79b9_7f4a_7c15_u64);
    for _ in 0..iterations {
        state = std::hint::black_box(
            state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1),
        );
    }
    state
}

async fn answer(
    request: Request<Incoming>,
    work: Work,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as a real server must; a broken body still gets the answer.
    let _ = request.into_body().collect().await;
    std::hint::black_box(spin(work.iterations));
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

const USAGE: &str = "usage: ceiling [--listen ADDR:PORT] [--work-us N]";

fn arguments() -> Result<(SocketAddr, u64), String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_owned();
    let mut work_us = 0;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| format!("--listen needs ADDR:PORT; {USAGE}"))?
            }
            "--work-us" => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("--work-us needs a number of µs; {USAGE}"))?;
                work_us = value
                    .parse()
                    .map_err(|_| format!("--work-us {value:?} is not a whole number of µs"))?;
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let listen = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not an ADDR:PORT socket address"))?;
    Ok((listen, work_us))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let (addr, work_us) = arguments()?;
    let work = Work::calibrated(work_us);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listener has no address: {e}"))?;
    eprintln!("listening on http://{local}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: back off instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| answer(request, work)),
                )
                .await;
        });
    }
}
