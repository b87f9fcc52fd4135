//! Temporary stand-in while the emulator module is written.
use std::net::SocketAddr;

use http::Request;
use hyper::body::Incoming;

use crate::server::{Handler, ResponseFuture};

#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    pub patch_no_content: bool,
    pub require_auth: bool,
}

impl EmulatorOptions {
    pub fn new() -> Self {
        Self {
            patch_no_content: false,
            require_auth: true,
        }
    }
}

pub struct Emulator;

impl Emulator {
    pub fn new(_options: EmulatorOptions) -> Self {
        Self
    }
}

impl Handler for Emulator {
    fn call(&self, _request: Request<Incoming>, _peer: SocketAddr) -> ResponseFuture {
        Box::pin(async {
            crate::graph::error_response(http::StatusCode::NOT_IMPLEMENTED, "x", "x", None)
        })
    }
}
