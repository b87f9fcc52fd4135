//! The benchmark's ceiling: a bare hyper HTTP/1.1 server that reads each request body and
//! answers a fixed ~500-byte JSON entity. Nothing is parsed, matched or stored, so its
//! throughput is the upper bound for any HTTP server on the same machine and runtime.
//!
//! `cargo run --release --example ceiling -- [--listen 127.0.0.1:0]` prints
//! `listening on http://ADDR:PORT` on stderr once it accepts connections, like graphvcr,
//! and exits 0 on SIGTERM or SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;

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

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as a real server must; a broken body still gets the answer.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn listen_address() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| "--listen needs ADDR:PORT".to_owned())?
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: ceiling [--listen ADDR:PORT]"
                ))
            }
        }
    }
    listen
        .parse()
        .map_err(|_| format!("{listen:?} is not an ADDR:PORT socket address"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let addr = listen_address()?;
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
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
