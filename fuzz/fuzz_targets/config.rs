//! The config parser: `FileConfig::parse` on arbitrary text, then resolution into a
//! `Config` (durations, addresses, URLs, match rules, sanitizer regexes). Property: no
//! panic; errors are `ConfigError`s.
#![no_main]

use std::path::Path;

use graphvcr::cli::ServeArgs;
use graphvcr::config::{Config, FileConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = FileConfig::parse(text, Path::new("fuzz.toml")) {
        let _ = Config::from_layers(&ServeArgs::default(), file);
    }
});
