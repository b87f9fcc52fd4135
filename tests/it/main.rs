//! Integration tests: one binary, real processes on 127.0.0.1 ephemeral ports.

mod audit;
mod core;
mod forward;
mod rules;
mod support;
