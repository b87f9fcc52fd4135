#!/usr/bin/env bash
# The load benchmark: one command, from the repository root or anywhere.
#
#   bench/run.sh [loadbench options]      e.g. bench/run.sh --subjects ceiling,replay-1k
#
# Builds graphvcr and the ceiling server in release mode, installs wrk when it is missing
# (Debian/Ubuntu, apt-get), generates the 1,000- and 100,000-interaction cassettes and
# imports them with `graphvcr cassette import`, then starts every subject on 127.0.0.1,
# drives it with wrk and writes the results between the markers in BENCHMARKS.md.
# Options are passed to examples/loadbench.rs (see `--help` there): --runs, --duration,
# --warmup, --subjects, --small, --large; --ceiling-work-us 0,10,20 measures the budget
# table instead (the ceiling alone, with that much CPU work added per request).
# Everything listens on 127.0.0.1 only.
set -euo pipefail

started="$(date +%s)"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
fail() { echo "bench/run.sh: $*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo is not installed"

if ! command -v wrk >/dev/null; then
    echo "== installing wrk"
    command -v apt-get >/dev/null || fail "wrk is missing and there is no apt-get to install it; install wrk 4.x and rerun"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || fail "wrk is missing; installing it needs root (sudo not found)"
        sudo="sudo"
    fi
    $sudo apt-get update -qq || fail "apt-get update failed"
    $sudo apt-get install -y -qq wrk || fail "apt-get install wrk failed"
    command -v wrk >/dev/null || fail "wrk still missing after apt-get install"
fi

target="${CARGO_TARGET_DIR:-$repo/target}"
echo "== building (release)"
cargo build --locked --release --bin graphvcr --example ceiling --example loadbench \
    || fail "the release build failed"

for binary in "$target/release/graphvcr" "$target/release/examples/ceiling" "$target/release/examples/loadbench"; do
    [ -x "$binary" ] || fail "$binary was not built (is CARGO_TARGET_DIR set differently for cargo?)"
done

echo "== running the load benchmark"
shown="bench/run.sh${*:+ $*}"
"$target/release/examples/loadbench" \
    --graphvcr "$target/release/graphvcr" \
    --ceiling "$target/release/examples/ceiling" \
    --lua "$repo/bench/wrk.lua" \
    --work "$target/bench-work" \
    --out "$repo/BENCHMARKS.md" \
    --command "$shown" \
    --started "$started" \
    "$@" || fail "the load benchmark failed (logs in $target/bench-work/logs)"
