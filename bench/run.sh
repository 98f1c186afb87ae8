#!/usr/bin/env bash
# Handoff against nginx (static GET, WebDAV PUT) and dufs on loopback, interleaved; writes bench/RESULTS.md.
#
#   bench/run.sh [--rounds N] [--duration S] [--only upload,download,get4k,put4k,c2000,cold,upload10g] [--skip-10g]
#
# Installs what is missing (Debian: nginx with the DAV module, wrk; crates.io: dufs), builds the release binary,
# then runs bench/harness.py, which starts every server on a free 127.0.0.1 port with a fresh data directory,
# runs the workloads of issue 8 and stops everything it started by PID. Needs root for apt-get (when something
# is missing) and for resetting VmHWM through /proc/PID/clear_refs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

have_nginx_dav() { command -v nginx >/dev/null && nginx -V 2>&1 | grep -q -- --with-http_dav_module; }
if ! have_nginx_dav || ! command -v wrk >/dev/null; then
  echo "installing nginx and wrk (Debian)" >&2
  apt-get update -qq
  # policy-rc.d in this image keeps the packaged nginx service from starting; the harness runs its own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
  have_nginx_dav || { echo "nginx lacks the DAV module (try: apt-get install nginx-extras)" >&2; exit 1; }
fi
if ! command -v dufs >/dev/null; then
  echo "installing dufs (crates.io)" >&2
  # 0.47.0 builds with rustc 1.95; should a newer release need a newer compiler, pin it here.
  cargo install dufs --locked --quiet || cargo install dufs@0.47.0 --locked --quiet
fi
command -v curl >/dev/null && command -v python3 >/dev/null

# HANDOFF_BIN=path: benchmark that binary instead of building the working tree.
if [ -n "${HANDOFF_BIN:-}" ]; then
  set -- --handoff-bin "$HANDOFF_BIN" "$@"
else
  cargo build --release --quiet -p handoff
fi

# 2,000 connections need more descriptors than the default soft limit, for wrk and every server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 8192 ] || { echo "ulimit -n is $(ulimit -n): too low" >&2; exit 1; }

export PYTHONDONTWRITEBYTECODE=1
exec timeout --foreground 1500 python3 bench/harness.py "$@"
