#!/usr/bin/env bash
# Replay soak: `wrk` at concurrency 256 against a replaying proxy for DURATION (default
# 10m), sampling the proxy's resident memory every 10 s. Fails on any error (a socket
# error or a non-2xx answer) or when RSS at the end is over 1.5x RSS after warm-up.
#
#   bench/soak.sh [DURATION]     # e.g. bench/soak.sh 30s; wrk's duration syntax
#   CONNECTIONS=512 CACHE_MB=64 AUDIT=false bench/soak.sh 1h
#
# Installs wrk with apt-get when it is missing. Builds graphvcr in release mode. The test
# suite runs a 30-second version in Rust (reliability::load).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10m}"
connections="${CONNECTIONS:-256}"

if ! command -v wrk >/dev/null; then
    echo "== installing wrk"
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq wrk
fi

echo "== building graphvcr (release)"
cargo build --release --locked --quiet
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release/graphvcr"

work="$(mktemp -d)"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # A stopping proxy still writes its store (it compacts it on the way out).
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# Starts a graphvcr command in the background and waits until it listens; sets URL and PID.
start() {
    local log="$work/$1.log"
    shift
    "$bin" "$@" >/dev/null 2>"$log" &
    PID=$!
    pids+=("$PID")
    for _ in $(seq 1 300); do
        # `^`: the admin API prints `admin listening on …` first.
        if URL=$(grep -m1 -o '^listening on [^ ]*' "$log" 2>/dev/null); then
            URL="${URL#listening on }"
            return
        fi
        sleep 0.1
    done
    echo "graphvcr $* did not start:" >&2
    cat "$log" >&2
    exit 1
}

path="/v1.0/deviceManagement/deviceConfigurations/soak/deviceStatuses/dev-1"
body='{"@odata.type":"#microsoft.graph.deviceConfigurationDeviceStatus","userName":"User Name value","status":"compliant","lastReportedDateTime":"2017-01-01T00:01:57.2065179+03:00"}'

echo "== recording one PATCH through the emulator"
start emulator emulate --listen 127.0.0.1:0
emulator="$URL" emulator_pid="$PID"
start recorder serve --mode record --listen 127.0.0.1:0 --store "$work/store" --upstream "$emulator"
curl -sf -X PATCH "$URL$path" -H 'authorization: Bearer soak' \
    -H 'content-type: application/json' -d "$body" >/dev/null
kill -INT "$PID"
wait "$PID" || true
kill "$emulator_pid"
pids=()

# sled's page cache grows to store.cache_capacity_mb (4 MiB by default, as here unless
# CACHE_MB says otherwise) as the audit trail is written, then stays there: a small cache
# fills during warm-up, so growth after it means a leak.
printf '[store]\ncache_capacity_mb = %s\n[audit]\nenabled = %s\n' \
    "${CACHE_MB:-4}" "${AUDIT:-true}" >"$work/soak.toml"
start replayer serve --config "$work/soak.toml" --mode replay --listen 127.0.0.1:0 --store "$work/store"
replayer="$URL" proxy_pid="$PID"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$proxy_pid/status"; }

cat >"$work/patch.lua" <<LUA
wrk.method = "PATCH"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer soak"
LUA

echo "== wrk -c $connections -d $duration against $replayer (replay)"
(
    sleep 10
    while kill -0 "$proxy_pid" 2>/dev/null; do
        echo "$(date +%s) $(rss)"
        sleep 10
    done
) >"$work/rss.txt" &
sampler=$!
wrk -t2 -c"$connections" -d"$duration" --latency -s "$work/patch.lua" "$replayer$path" | tee "$work/wrk.txt"
end_rss=$(rss)
kill "$sampler" 2>/dev/null || true

warm_rss=$(awk 'NR==1 {print $2}' "$work/rss.txt")
samples=$(awk '{print $2}' "$work/rss.txt" | tr '\n' ' ')
non2xx=$(awk '/Non-2xx or 3xx responses/ {print $NF}' "$work/wrk.txt")
socket=$(grep -o 'Socket errors:.*' "$work/wrk.txt" || true)
echo "== RSS KiB after warm-up: ${warm_rss:-?}, at end: $end_rss; samples: $samples"
status=0
if [[ -n "$non2xx" && "$non2xx" != 0 ]]; then
    echo "FAIL: $non2xx non-2xx answers"
    status=1
fi
if [[ -n "$socket" ]]; then
    echo "FAIL: $socket"
    status=1
fi
if [[ -n "${warm_rss:-}" ]] && (( end_rss * 2 > warm_rss * 3 )); then
    echo "FAIL: RSS grew from $warm_rss KiB to $end_rss KiB"
    status=1
fi
if (( status == 0 )); then
    echo "soak passed: no errors, RSS flat"
fi
exit "$status"
