//! Integration tests: one binary, real processes on 127.0.0.1 ephemeral ports.

mod audit;
mod core;
mod forward;
mod graph;
mod reliability;
mod rules;
mod support;
