#!/usr/bin/env bash
# Crash safety, full length: 20 rounds of 8 concurrent clients x 500 PATCH requests
# recording into one cassette through a real proxy process, SIGKILLed at a random moment
# each round, then restarted on the same store. Every answered request must be in the
# cassette exactly once, and the store must open as it is.
#
#   bench/crash.sh              # debug build (the one `cargo test` already made)
#   PROFILE=release bench/crash.sh
#
# The normal test suite runs the same test with 2 rounds of 8 x 50.
set -euo pipefail
cd "$(dirname "$0")/.."
flags=()
if [[ "${PROFILE:-debug}" == release ]]; then
    flags+=(--release)
fi
GRAPHVCR_LONG=1 cargo test "${flags[@]}" --locked --test it \
    reliability::crash -- --nocapture --test-threads=1 2>&1 | grep -E '^crash|test result|panicked|lost|twice'
