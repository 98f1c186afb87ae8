#!/usr/bin/env bash
# Cold start of the Lambda function, measured locally under cargo-lambda's Runtime API emulator
# (`cargo lambda watch --only-lambda-apis`), and the size of the deployment binary.
#
#   bench/lambda-cold-start.sh [ROUNDS]
#
# Needs cargo-lambda on the PATH (`pip install cargo-lambda==1.9.2`, which brings zig) and curl. Builds
# target/lambda/handoff-lambda/bootstrap once (`cargo lambda build --release --x86-64`) if it is missing.
#
# Each round starts a fresh process and times, with curl against the emulator's Invoke API:
#   cold  = process start → first response (init phase + first request), GET /healthz as a Function URL event;
#   warm  = a second GET /healthz on the same process;
#   init  ≈ cold − warm.
# "first" rounds use an empty data directory (SQLite created and migrated, first signing key made); the others
# reuse one, as a function whose stores already exist does. Local SQLite + disk stand in for DynamoDB + S3: on
# AWS add the network round trips of opening the stores (one read of the signing keys).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
BIN=${BIN:-target/lambda/handoff-lambda/bootstrap}
PORT=${PORT:-9713}
EVENT=crates/handoff-lambda/tests/fixtures/function-url-me.json

if [ ! -x "$BIN" ]; then
    cargo lambda build --release --x86-64 -p handoff-lambda
fi
work=$(mktemp -d)
trap 'kill "${emulator:-0}" "${function:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# A GET /healthz event (Function URL payload 2.0): the fixture with its path and token replaced.
python3 - "$EVENT" > "$work/healthz.json" <<'EOF'
import json, sys
event = json.load(open(sys.argv[1]))
event["rawPath"] = event["requestContext"]["http"]["path"] = "/healthz"
event["headers"].pop("authorization", None)
print(json.dumps(event))
EOF

(cd crates/handoff-lambda && exec cargo lambda watch --only-lambda-apis -A 127.0.0.1 -P "$PORT") \
    > "$work/emulator.log" 2>&1 &
emulator=$!
for _ in $(seq 1 100); do
    grep -q "starting Runtime server" "$work/emulator.log" && break
    sleep 0.1
done

invoke() {
    curl -sf -X POST "http://127.0.0.1:$PORT/2015-03-31/functions/_/invocations" --data-binary @"$work/healthz.json"
}
now_ms() { date +%s%3N; }

run_round() { # $1: data directory
    local start first second
    start=$(now_ms)
    env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
        AWS_LAMBDA_FUNCTION_VERSION=1 AWS_LAMBDA_FUNCTION_MEMORY_SIZE=512 AWS_LAMBDA_FUNCTION_NAME=_ \
        AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$PORT/.rt" \
        HANDOFF_DATA_DIR="$1" "$BIN" 2>>"$work/function.log" &
    function=$!
    invoke | grep -q '"statusCode":200' || { echo "first invocation failed" >&2; cat "$work/function.log" >&2; exit 1; }
    first=$(now_ms)
    invoke >/dev/null
    second=$(now_ms)
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$function/status")
    kill "$function"; wait "$function" 2>/dev/null || true
    echo "$((first - start)) $((second - first)) $rss"
}

echo "binary: $BIN, $(stat -c %s "$BIN") bytes ($(du -h "$BIN" | cut -f1))"
echo "kind   cold_ms warm_ms peak_rss_kib"
shared="$work/shared"
for i in $(seq 1 "$ROUNDS"); do
    echo "first  $(run_round "$work/fresh-$i")"
done
run_round "$shared" > /dev/null # create the stores once
for i in $(seq 1 "$ROUNDS"); do
    echo "reuse  $(run_round "$shared")"
done
