#!/usr/bin/env python3
"""Instruction counts per request: runs `handoff serve` under `valgrind --tool=callgrind`, signs up and in, then
makes a fixed number of 4 KiB downloads or uploads over keep-alive connections and reports the server's
instructions (Ir) per request for exactly those requests (counters are zeroed before and dumped after them with
`callgrind_control`). Unlike wall-clock figures, Ir does not depend on what else the machine is doing.

    bench/profile.py BINARY get  [--requests 2000] [--connections 8]
    bench/profile.py BINARY put  [--requests 500]  [--connections 8]

Leaves `callgrind.out.*` in --out (default: a temporary directory it prints) for `callgrind_annotate`.
"""

import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PASSWORD = "bench-password-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("mode", choices=["get", "put"])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out")
    ap.add_argument("--no-valgrind", action="store_true", help="run the server natively (to test the client)")
    args = ap.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="handoff-callgrind-")
    os.makedirs(out, exist_ok=True)
    data = tempfile.mkdtemp(prefix="handoff-profile-data-")
    port = free_port()
    cmd = [args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
    if not args.no_valgrind:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p"] + cmd
    # The environment as bench/run.sh gives it (RUST_LOG unset unless the caller set it: the default filter).
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(out, "server.log"), "w"))
    try:
        deadline = time.time() + 120
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                if request(c, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("server did not start")
            time.sleep(0.5)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        js = {"content-type": "application/json"}
        st, _ = request(c, "POST", "/auth/signup", json.dumps({"username": "bench", "password": PASSWORD}), js)
        assert st in (200, 201), st
        st, body = request(c, "POST", "/auth/signin", json.dumps({"username": "bench", "password": PASSWORD}), js)
        assert st == 200, st
        auth = {"authorization": "Bearer " + json.loads(body)["access_token"]}
        payload = ("0123456789abcdef" * 256).encode()
        up = dict(auth, **{"content-type": "application/octet-stream"})
        st, body = request(c, "POST", "/files?fileName=small.bin", payload, up)
        assert st == 201, st
        url = json.loads(body)["download_url"]
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(args.connections)]
        # Warm-up: every connection once, both kinds of request.
        for i, k in enumerate(conns):
            assert request(k, "GET", url, headers=auth)[0] == 200
            assert request(k, "POST", f"/files?fileName=warm-{i}", payload, up)[0] == 201
        pid = server.pid
        if not args.no_valgrind:
            subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, stdout=subprocess.DEVNULL)
        per = args.requests // args.connections
        errors = []

        def worker(n, k):
            for i in range(per):
                if args.mode == "get":
                    st, body = request(k, "GET", url, headers=auth)
                    ok = st == 200 and len(body) == 4096
                else:
                    st, body = request(k, "POST", f"/files?fileName=p{n}-{i}", payload, up)
                    ok = st == 201
                if not ok:
                    errors.append(st)

        t0 = time.time()
        threads = [threading.Thread(target=worker, args=(n, k)) for n, k in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t0
        total = per * len(conns)
        if not args.no_valgrind:
            subprocess.run(["callgrind_control", "--dump=measured", str(pid)], check=True, stdout=subprocess.DEVNULL)
            time.sleep(1)
        print(f"{total} {args.mode} requests over {len(conns)} connections in {elapsed:.1f} s, errors: {len(errors)}")
        if not args.no_valgrind:
            dumps = sorted(glob.glob(f"{out}/callgrind.out.{pid}.*"), key=os.path.getmtime)
            ir = None
            with open(dumps[-1]) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        ir = int(line.split()[1])
            print(f"dump: {dumps[-1]}")
            print(f"Ir total {ir:,}; per request {ir / total:,.0f}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)
        print(f"callgrind output in {out}")


if __name__ == "__main__":
    main()
