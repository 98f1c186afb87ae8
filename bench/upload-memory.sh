#!/usr/bin/env bash
# Peak resident memory of `handoff serve` while one large file streams in (default 5 GiB).
#
#   bench/upload-memory.sh [SIZE_GIB]
#
# Builds the release binary, starts it on a free loopback port with a fresh data directory, uploads SIZE_GIB of
# zeros through `POST /files` (chunked, from a pipe, so the client holds nothing either), checks the stored size,
# and prints the server's resident memory before the upload and its peak (VmHWM, reset after sign-in when run as
# root) during it. Everything it starts is stopped by PID.
set -euo pipefail
size_gib=${1:-5}
cd "$(dirname "$0")/.."
# HANDOFF_BIN: an already built binary (bench/run.sh passes its copy), else build the release binary.
bin=${HANDOFF_BIN:-}
[ -n "$bin" ] || { cargo build --release --quiet -p handoff; bin=./target/release/handoff; }
data=$(mktemp -d)
out=$(mktemp)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$data" "$out"; }
trap cleanup EXIT

"$bin" serve --listen 127.0.0.1:0 --data-dir "$data" >"$out" 2>/dev/null &
pid=$!
for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.05; done
base=$(sed -n 's/^handoff listening on //p' "$out")

curl -sf -X POST "$base/auth/signup" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench-password"}' >/dev/null
token=$(curl -sf -X POST "$base/auth/signin" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

rss() { awk '/^VmHWM/ {print $2}' "/proc/$pid/status"; }
# The peak *during the upload*, as bench/run.sh measures every transfer: reset VmHWM (root only) after sign-in, whose
# argon2id hashing has its own short peak, and start from what the server holds then.
signin_peak_kib=$(rss)
if echo 5 2>/dev/null >"/proc/$pid/clear_refs"; then
    reset=yes
else
    reset=no
fi
idle_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
[ "$reset" = yes ] || idle_kib=$signin_peak_kib
start=$(date +%s.%N)
response=$(head -c "$((size_gib * 1024 * 1024 * 1024))" /dev/zero |
  curl -sf -X POST -T - "$base/files?fileName=big.bin" -H "authorization: Bearer $token")
end=$(date +%s.%N)
stored=$(echo "$response" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')
peak_kib=$(rss)
[ "$stored" = "$((size_gib * 1024 * 1024 * 1024))" ] || { echo "stored size $stored is wrong" >&2; exit 1; }
echo "upload of ${size_gib} GiB: stored ${stored} bytes in $(echo "$end - $start" | bc) s"
echo "server peak RSS: idle ${idle_kib} KiB, after upload ${peak_kib} KiB"
echo "(VmHWM reset after sign-in: ${reset}; sign-up/sign-in peak ${signin_peak_kib} KiB)"
