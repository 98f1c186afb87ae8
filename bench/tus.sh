#!/usr/bin/env bash
# tus upload throughput against POST /files on the same machine, and peak RSS of a large tus upload.
#
#   bench/tus.sh [SIZE_GIB] [BIG_GIB]      (defaults: 1 and 10)
#
# Builds the release binary (or uses HANDOFF_BIN), starts `handoff serve` on a free loopback port with a fresh
# data directory (local backend), makes one SIZE_GIB random file, and uploads it — each way once, in this order,
# `sync` before each — with curl:
#   - POST /files (raw body),
#   - tus, one PATCH for the whole file (what a non-chunked tus-js-client does),
#   - tus in 64 MiB and in 8 MiB PATCHes (chunked clients),
# checking the SHA-256 the server reports. Then one BIG_GIB tus upload in a single PATCH streamed from /dev/zero,
# with the server's peak RSS (VmHWM, reset through /proc/PID/clear_refs before it) before and after.
# Everything it starts is stopped by PID.
set -euo pipefail
size_gib=${1:-1}
big_gib=${2:-10}
cd "$(dirname "$0")/.."
bin=${HANDOFF_BIN:-}
[ -n "$bin" ] || { cargo build --release --quiet -p handoff; bin=./target/release/handoff; }
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>/dev/null &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.05; done
base=$(sed -n 's/^handoff listening on //p' "$work/out")
curl -sf -X POST "$base/auth/signup" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench-password"}' >/dev/null
token=$(curl -sf -X POST "$base/auth/signin" -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
auth="authorization: Bearer $token"
tus=(-H 'tus-resumable: 1.0.0' -H "$auth")

size=$((size_gib * 1024 * 1024 * 1024))
file="$work/payload.bin"
head -c "$size" /dev/urandom >"$file"
want=$(sha256sum "$file" | cut -d' ' -f1)

now() { date +%s.%N; }
mbps() { echo "scale=0; $size / ($2 - $1) / 1000000" | bc; }
sha_of_key() {
  curl -sf "$base/files/$1" -H "$auth" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])'
}
# tus_create LENGTH → upload path
tus_create() {
  curl -sf -o /dev/null -D - -X POST "$base/uploads" "${tus[@]}" -H "upload-length: $1" \
    -H "upload-metadata: filename $(printf bench.bin | base64)" | tr -d '\r' | sed -n 's/^location: //Ip'
}
# tus_patch PATH OFFSET (body on stdin) → the response headers
tus_patch() {
  curl -sf -o /dev/null -D - -X PATCH "$base$1" "${tus[@]}" -H "upload-offset: $2" \
    -H 'content-type: application/offset+octet-stream' -T - | tr -d '\r'
}
# tus_upload CHUNK_BYTES (0 = one PATCH) → file key
tus_upload() {
  local path offset=0 chunk=$1 headers
  path=$(tus_create "$size")
  [ "$chunk" -gt 0 ] || chunk=$size
  while [ "$offset" -lt "$size" ]; do
    headers=$(tail -c +"$((offset + 1))" "$file" | head -c "$chunk" | tus_patch "$path" "$offset")
    offset=$(echo "$headers" | sed -n 's/^upload-offset: //Ip')
  done
  echo "$headers" | sed -n 's/^handoff-file-key: //Ip'
}

echo "== ${size_gib} GiB random file, local backend, $(nproc) cores"
sync; t0=$(now)
key=$(curl -sf -X POST -T "$file" "$base/files?fileName=bench.bin" -H "$auth" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
t1=$(now)
[ "$(sha_of_key "$key")" = "$want" ] || { echo "POST /files: wrong hash" >&2; exit 1; }
echo "POST /files:            $(mbps "$t0" "$t1") MB/s"
for chunk in 0 $((64 << 20)) $((8 << 20)); do
  sync; t0=$(now)
  key=$(tus_upload "$chunk")
  t1=$(now)
  [ "$(sha_of_key "$key")" = "$want" ] || { echo "tus chunk $chunk: wrong hash" >&2; exit 1; }
  label=$([ "$chunk" = 0 ] && echo "one PATCH" || echo "$((chunk >> 20)) MiB PATCHes")
  printf 'tus, %-18s %s MB/s\n' "$label:" "$(mbps "$t0" "$t1")"
done
rm -f "$file"

echo "== ${big_gib} GiB tus upload in one PATCH, from /dev/zero"
big=$((big_gib * 1024 * 1024 * 1024))
rss() { awk '/^VmHWM/ {print $2}' "/proc/$pid/status"; }
echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
idle_kib=$(rss)
path=$(tus_create "$big")
t0=$(now)
headers=$(head -c "$big" /dev/zero | tus_patch "$path" 0)
t1=$(now)
key=$(echo "$headers" | sed -n 's/^handoff-file-key: //Ip')
[ -n "$key" ] || { echo "the big upload did not complete: $headers" >&2; exit 1; }
peak_kib=$(rss)
zero_sha=$(head -c "$big" /dev/zero | sha256sum | cut -d' ' -f1)
[ "$(sha_of_key "$key")" = "$zero_sha" ] || { echo "big upload: wrong hash" >&2; exit 1; }
echo "stored ${big} bytes in $(echo "$t1 - $t0" | bc) s ($(echo "scale=0; $big / ($t1 - $t0) / 1000000" | bc) MB/s)"
echo "server peak RSS: before ${idle_kib} KiB, during/after ${peak_kib} KiB"
