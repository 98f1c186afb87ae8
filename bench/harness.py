#!/usr/bin/env python3
"""Handoff against nginx and dufs, interleaved, on loopback (issue 8). Run through bench/run.sh.

Every server runs on a free 127.0.0.1 port with a fresh data directory under one temporary directory; every
workload runs A B C A B C ... for --rounds rounds; every process started here is stopped by PID on exit (also on
Ctrl-C / SIGTERM). The tables go into bench/RESULTS.md between the markers below, the rest of the file is kept.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
BEGIN = "<!-- bench/run.sh: begin (generated, replaced by every run) -->"
END = "<!-- bench/run.sh: end -->"
PASSWORD = "bench-password-1"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port, path, timeout=1.0, headers=None):
    """Status of one GET, or None when nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def wait_status(port, path, deadline_s=30.0, poll_s=0.002):
    """Seconds until GET path answers 200 (polling every poll_s); raises after deadline_s."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if http_status(port, path, timeout=0.5) == 200:
            return time.perf_counter() - t0
        time.sleep(poll_s)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200 within {deadline_s} s")


def proc_stat_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Server:
    """One server process (plus, for nginx, its workers) with its own data directory."""

    name = "?"

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, self.name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.auth = []  # extra curl/wrk headers

    # --- process
    def command(self):
        raise NotImplementedError

    def start(self, ready_path):
        t0 = time.perf_counter()
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        STARTED.append(self)
        wait_status(self.port, ready_path)
        return time.perf_counter() - t0

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    # --- /proc figures
    def cpu_pids(self):
        return [self.proc.pid]

    def mem_pids(self):
        return [self.proc.pid]

    def cpu(self):
        return sum(proc_stat_cpu(p) for p in self.cpu_pids())

    def reset_peak(self):
        for p in self.mem_pids():  # "5" resets VmHWM to the current RSS (proc(5), clear_refs)
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")

    def peak_mib(self):
        return sum(proc_status_kib(p, "VmHWM") for p in self.mem_pids()) / 1024

    def rss_mib(self):
        return sum(proc_status_kib(p, "VmRSS") for p in self.mem_pids()) / 1024

    # --- workload specifics
    def setup(self, small_file):
        """Store the 4 KiB file that the GET workloads fetch; returns its URL path."""
        raise NotImplementedError

    def upload_cmd(self, path, name):
        return ["-T", path, f"{self.base}/{name}"]  # PUT

    def uploaded_path(self, name, response):
        return f"/{name}"

    def upload_wrk(self):
        return f"{self.base}/up/", {"BENCH_UPLOAD": "put"}


class Handoff(Server):
    name = "Handoff"

    def __init__(self, tmp, binary):
        super().__init__(tmp)
        self.binary = binary

    def command(self):
        return [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", os.path.join(self.dir, "data")]

    def post_json(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def sign_in(self):
        """A real bearer token: sign-up (once) and sign-in."""
        if not self.auth:
            self.post_json("/auth/signup", {"username": "bench", "password": PASSWORD})
        token = self.post_json("/auth/signin", {"username": "bench", "password": PASSWORD})["access_token"]
        self.auth = ["-H", f"Authorization: Bearer {token}"]

    def setup(self, small_file):
        self.sign_in()
        with open(small_file, "rb") as f:
            req = urllib.request.Request(f"{self.base}/files?fileName=small.bin", data=f.read(), method="POST",
                                         headers={"authorization": self.auth[1].split(": ", 1)[1],
                                                  "content-type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["download_url"]

    def upload_cmd(self, path, name):
        return ["-X", "POST", "-T", path, f"{self.base}/files?fileName={name}"]

    def uploaded_path(self, name, response):
        return json.loads(response)["download_url"]

    def upload_wrk(self):
        return f"{self.base}/files", {"BENCH_UPLOAD": "post"}


class Nginx(Server):
    name = "nginx"

    def __init__(self, tmp, workers):
        super().__init__(tmp)
        self.root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(self.root, "up"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        self.conf = os.path.join(self.dir, "nginx.conf")
        d = self.dir
        with open(self.conf, "w") as f:
            f.write(f"""daemon off;
master_process on;
user root;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 10000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw;
            client_max_body_size 0;
        }}
    }}
}}
""")

    def command(self):
        return ["nginx", "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", self.conf]

    def cpu_pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def mem_pids(self):
        return children(self.proc.pid)  # the workers

    def setup(self, small_file):
        shutil.copy(small_file, os.path.join(self.root, "small.bin"))
        return "/small.bin"


class Dufs(Server):
    name = "dufs"

    def __init__(self, tmp):
        super().__init__(tmp)
        self.root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(self.root, "up"))

    def command(self):
        return ["dufs", "-A", "-b", "127.0.0.1", "-p", str(self.port), "--log-format", "", self.root]

    def setup(self, small_file):
        shutil.copy(small_file, os.path.join(self.root, "small.bin"))
        return "/small.bin"


STARTED = []


def stop_all():
    for s in reversed(STARTED):
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {s.name} (pid {s.proc.pid}): {e}")


def curl(args, timeout):
    """Runs curl; returns (http_code, seconds, body)."""
    out = subprocess.run(["curl", "-sS", "-H", "Expect:", "--max-time", str(timeout), "-w", "\n%{http_code} %{time_total}"]
                         + args, capture_output=True, text=True, timeout=timeout + 10)
    body, _, tail = out.stdout.rpartition("\n")
    code, seconds = tail.split()
    if out.returncode != 0 or not code.startswith("2"):
        raise RuntimeError(f"curl {' '.join(args)}: exit {out.returncode}, HTTP {code}, {out.stderr.strip()} {body[:300]}")
    return int(code), float(seconds), body


def wrk(url, conns, threads, duration, headers, script, env):
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--timeout", "5s",
           "-s", os.path.join(BENCH, "wrk", script)] + headers + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                         env={**os.environ, "BENCH_WRK_DIR": os.path.join(BENCH, "wrk"), **env})
    m = re.search(r"^BENCH (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no summary: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


# ----------------------------------------------------------------------------------------------------- workloads

def measured(server, fn):
    """Runs fn() with the server's CPU time and peak RSS taken around it."""
    os.sync()  # the previous run's dirty pages are written back before this one starts
    server.reset_peak()
    idle = server.rss_mib()
    cpu0 = server.cpu()
    result = fn()
    result["cpu_s"] = server.cpu() - cpu0
    result["peak_mib"] = server.peak_mib()
    result["idle_mib"] = idle
    return result


def settle_memory(source):
    """Before a big upload: write back and drop the page cache, then read the source file back in. On a
    Firecracker VM (this machine) the guest's memory is backed lazily: page cache that grows into memory the guest
    never touched costs a host page fault per page, which shows up as the *writer's* system time. Measured with
    `dd bs=1M conv=fdatasync` of 1 GiB: 0.52-0.74 system CPU-s right after a drop, 1.98-2.90 once a few GiB had
    been written since. Without this, a server's upload CPU depended on how much the runs before it had written.
    Needs root (as the rest of the harness); without it the drop is skipped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass
    with open(source, "rb") as f:
        while f.read(1 << 20):
            pass


def big_upload(server, big, size, rnd):
    settle_memory(big)

    def run():
        code, secs, body = curl(server.auth + server.upload_cmd(big, f"big-{rnd}.bin"), timeout=300)
        server.big_path = server.uploaded_path(f"big-{rnd}.bin", body)
        return {"mb_s": size / secs / 1e6, "seconds": secs}
    r = measured(server, run)
    r["cpu_per_gib"] = r["cpu_s"] / (size / GIB)
    return r


def durable_write(tmp, big, size):
    """The disk's ceiling for a durable big upload, as `dd bs=1M conv=fdatasync` measures it: the big file copied
    with 1 MiB writes into a new file, then `fdatasync`ed, after the same `settle_memory` as each upload. No server
    that syncs before answering stores a file faster here. CPU is this process's user+system time."""
    settle_memory(big)
    path = os.path.join(tmp, "ceiling.bin")
    c0, t0 = os.times(), time.perf_counter()
    with open(big, "rb", buffering=0) as src, open(path, "wb", buffering=0) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        os.fdatasync(dst.fileno())
    secs, c1 = time.perf_counter() - t0, os.times()
    os.unlink(path)
    cpu = c1.user - c0.user + c1.system - c0.system
    return {"mb_s": size / secs / 1e6, "cpu_per_gib": cpu / (size / GIB)}


def sha256_cost(big, size):
    """CPU-seconds per GiB that SHA-256 alone costs here (hashlib is OpenSSL's, with SHA-NI where the CPU has it),
    reading the file from the page cache: what a server that hashes every upload spends before receiving or
    writing anything."""
    digest = hashlib.sha256()
    c0 = os.times()
    with open(big, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    c1 = os.times()
    return {"cpu_per_gib": (c1.user - c0.user + c1.system - c0.system) / (size / GIB)}


def big_download(server, size, rnd):
    def run():
        code, secs, _ = curl(server.auth + ["-o", "/dev/null", server.base + server.big_path], timeout=300)
        return {"mb_s": size / secs / 1e6, "seconds": secs}
    r = measured(server, run)
    r["cpu_per_gib"] = r["cpu_s"] / (size / GIB)
    return r


def small_get(server, conns, threads, duration):
    r = measured(server, lambda: wrk(server.base + server.small_path, conns, threads, duration, server.auth,
                                     "get.lua", {}))
    r["cpu_us_per_req"] = r["cpu_s"] / max(r["requests"], 1) * 1e6
    return r


def small_put(server, duration, rnd):
    url, env = server.upload_wrk()
    r = measured(server, lambda: wrk(url, 64, 2, duration, server.auth, "upload.lua",
                                     {**env, "BENCH_PREFIX": f"r{rnd}-"}))
    r["cpu_us_per_req"] = r["cpu_s"] / max(r["requests"], 1) * 1e6
    return r


def cold_start(cls, tmp, i, *args):
    """Process start to the first 200 (Handoff: /readyz on an empty data dir; peers: a 4 KiB file)."""
    sub = os.path.join(tmp, f"cold{i}")
    os.makedirs(sub, exist_ok=True)
    s = cls(sub, *args)
    if cls is Handoff:
        path = "/readyz"
    else:
        with open(os.path.join(s.root, "ping.txt"), "w") as f:
            f.write("ok")
        path = "/ping.txt"
    try:
        secs = s.start(path)
    finally:
        s.stop()
        STARTED.remove(s)
    return {"ms": secs * 1000}


# ------------------------------------------------------------------------------------------------------- report

def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Results:
    def __init__(self):
        self.data = {}  # workload -> server -> list of dicts

    def add(self, workload, server, r):
        self.data.setdefault(workload, {}).setdefault(server, []).append(r)

    def values(self, workload, server, key):
        return [r[key] for r in self.data.get(workload, {}).get(server, []) if r.get(key) is not None]

    def median(self, workload, server, key):
        v = self.values(workload, server, key)
        return statistics.median(v) if v else None

    def ratio(self, workload, key, peer):
        h, p = self.median(workload, "Handoff", key), self.median(workload, peer, key)
        return h / p if h is not None and p else None

    def table(self, workload, metrics, servers, handoff_from=None):
        """handoff_from: the workload whose Handoff median the ratio column divides (default: this one)."""
        rows = ["| metric | server | median | min | max | Handoff ÷ this |", "|---|---|---:|---:|---:|---:|"]
        for key, label in metrics:
            for s in servers:
                v = self.values(workload, s, key)
                if not v:
                    continue
                if handoff_from is not None:
                    h = self.median(handoff_from, "Handoff", key)
                    ratio = fmt(h / statistics.median(v) if h is not None and statistics.median(v) else None)
                else:
                    ratio = "" if s == "Handoff" or key == "errors" else fmt(self.ratio(workload, key, s))
                rows.append(f"| {label} | {s} | {fmt(statistics.median(v))} | {fmt(min(v))} | {fmt(max(v))} | {ratio} |")
        return "\n".join(rows)


def targets(res):
    """(target, measured, met) for each of issue 8's targets that this run measured."""
    out = []

    def ratio_target(text, wl, key, peer, at_least):
        r = res.ratio(wl, key, peer)
        if r is not None:
            out.append((text, f"{r:.2f}×", r >= at_least))

    def abs_target(text, wl, key, at_most, unit, server="Handoff"):
        v = res.median(wl, server, key)
        if v is not None:
            out.append((text, f"{fmt(v)} {unit}", v <= at_most))

    # What the disk and the CPU allow at best (no server): a target beyond them is impossible on this machine.
    ceiling = res.median("ceiling", "durable write", "mb_s")
    floor = [res.median("ceiling", k, "cpu_per_gib") for k in ("SHA-256", "durable write")]

    def upload_ratio(text, peer, at_least):
        r, p = res.ratio("upload", "mb_s", peer), res.median("upload", peer, "mb_s")
        if r is None:
            return
        if ceiling is None or r >= at_least:
            out.append((text, f"{r:.2f}×", r >= at_least))
        else:
            possible = ceiling / p >= at_least
            out.append((text, f"{r:.2f}× (the disk's durable-write ceiling: {ceiling / p:.2f}×)",
                        False if possible else "impossible here"))

    upload_ratio("1 GiB upload ≥ 0.8 × nginx PUT", "nginx", 0.8)
    upload_ratio("1 GiB upload ≥ 4 × dufs", "dufs", 4)
    cpu = res.median("upload", "Handoff", "cpu_per_gib")
    if cpu is not None:
        if cpu <= 1.5 or None in floor:
            out.append(("1 GiB upload CPU ≤ 1.5 cpu-s/GiB", f"{fmt(cpu)} cpu-s/GiB", cpu <= 1.5))
        else:
            out.append(("1 GiB upload CPU ≤ 1.5 cpu-s/GiB",
                        f"{fmt(cpu)} cpu-s/GiB (floor without a server: SHA-256 {fmt(floor[0])} + durable write "
                        f"{fmt(floor[1])} = {fmt(sum(floor))})",
                        "impossible here" if sum(floor) > 1.5 else False))
    abs_target("1 GiB upload peak RSS ≤ 32 MiB", "upload", "peak_mib", 32, "MiB")
    ratio_target("1 GiB download ≥ 0.7 × nginx", "download", "mb_s", "nginx", 0.7)
    ratio_target("1 GiB download ≥ 1.5 × dufs", "download", "mb_s", "dufs", 1.5)
    abs_target("1 GiB download CPU ≤ 0.6 cpu-s/GiB", "download", "cpu_per_gib", 0.6, "cpu-s/GiB")
    abs_target("1 GiB download peak RSS ≤ 32 MiB", "download", "peak_mib", 32, "MiB")
    ratio_target("4 KiB download ≥ 0.3 × nginx req/s", "get4k", "rps", "nginx", 0.3)
    ratio_target("4 KiB download ≥ 10 × dufs req/s", "get4k", "rps", "dufs", 10)
    abs_target("4 KiB download p99 ≤ 10 ms", "get4k", "p99_ms", 10, "ms")
    ratio_target("4 KiB upload ≥ 1 × dufs req/s", "put4k", "rps", "dufs", 1)
    h, d = res.median("put4k", "Handoff", "p99_ms"), res.median("put4k", "dufs", "p99_ms")
    if h is not None and d:
        out.append(("4 KiB upload p99 ≤ 2 × dufs p99", f"{h / d:.2f}× ({fmt(h)} ms vs {fmt(d)} ms)", h <= 2 * d))
    abs_target("10 GiB upload peak RSS ≤ 32 MiB", "upload10g", "peak_mib", 32, "MiB")
    abs_target("2,000 connections: 0 errors", "c2000", "errors", 0, "errors")
    abs_target("2,000 connections: RSS ≤ 128 MiB", "c2000", "peak_mib", 128, "MiB")
    abs_target("Cold start ≤ 100 ms", "cold", "ms", 100, "ms")
    return out


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    sha = "sha_ni" in open("/proc/cpuinfo").read()
    return f"{os.cpu_count()} CPUs ({model}{', SHA-NI' if sha else ''}), {mem:.0f} GiB RAM, kernel {os.uname().release}"


def versions(handoff_bin):
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split(": ", 1)[-1]
    dufs = subprocess.run(["dufs", "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0].strip()
    curl_v = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split(" (")[0]
    h = f"Handoff {commit}" + (" + uncommitted changes in the working tree" if dirty else "")
    return f"{h}; {nginx}; {dufs}; {wrk_v}; {curl_v}"


def write_report(res, args, started, elapsed, notes, handoff_bin):
    servers = ["Handoff", "nginx", "dufs"]
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()
    parts = [BEGIN, "", f"## Handoff vs nginx vs dufs (`bench/run.sh`)", "",
             f"{date}, {machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min).",
             f"Versions: {versions(handoff_bin)}.",
             f"{args.rounds} rounds, interleaved Handoff → nginx → dufs within each round; load runs {args.duration} s; "
             f"benchmark time {elapsed / 60:.1f} min. nginx: {args.nginx_workers} workers. MB/s is 10⁶ bytes/s. "
             "CPU is the server's utime+stime from /proc (all threads; nginx master + workers); peak RSS is VmHWM, "
             "reset before each run (`clear_refs` 5), so it includes what the server already held (for nginx, the sum "
             "over its workers). Handoff runs with authentication on (a bearer token from sign-up + sign-in), "
             "SQLite + local disk, default configuration; its uploads hash SHA-256 and fsync before `201`, nginx "
             "and dufs do neither. The machine is shared (other builds ran at the same time): compare ratios "
             "within this run, not absolute figures across runs; the min–max spread shows the noise.", ""]
    tables = [
        ("upload", f"1. {args.big_mib} MiB upload (curl -T of random bytes; Handoff `POST /files`, peers `PUT`)",
         [("mb_s", "MB/s"), ("cpu_per_gib", "server CPU-s per GiB"), ("peak_mib", "server peak RSS, MiB")]),
        ("download", f"2. {args.big_mib} MiB download (curl -o /dev/null of the uploaded file)",
         [("mb_s", "MB/s"), ("cpu_per_gib", "server CPU-s per GiB"), ("peak_mib", "server peak RSS, MiB")]),
        ("get4k", f"3. 4 KiB downloads, wrk 64 connections, 2 threads, {args.duration} s",
         [("rps", "requests/s"), ("p99_ms", "p99 latency, ms"), ("errors", "errors"),
          ("cpu_us_per_req", "server CPU µs per request")]),
        ("put4k", f"4. 4 KiB uploads to new names, wrk 64 connections, 2 threads, {args.duration} s",
         [("rps", "requests/s"), ("p99_ms", "p99 latency, ms"), ("errors", "errors"),
          ("cpu_us_per_req", "server CPU µs per request")]),
        ("c2000", f"6. 2,000 keep-alive connections downloading 4 KiB, wrk -c 2000 -t 2, {args.duration} s",
         [("rps", "requests/s"), ("errors", "errors (connect/read/write/timeout 5 s/non-2xx)"),
          ("p99_ms", "p99 latency, ms"), ("peak_mib", "server peak RSS, MiB")]),
        ("cold", "7. Cold start: process start to the first 200 (Handoff `/readyz`, empty data dir; peers: a file)",
         [("ms", "ms")]),
    ]
    if "ceiling" in res.data:
        tables.insert(1, ("ceiling", f"1a. Ceilings without a server, measured between the upload rounds: "
                                     f"{args.big_mib} MiB written with 1 MiB writes and `fdatasync` "
                                     "(`dd bs=1M conv=fdatasync`), and SHA-256 of it (Python's hashlib, OpenSSL)",
                          [("mb_s", "MB/s"), ("cpu_per_gib", "CPU-s per GiB")]))
    for wl, title, metrics in tables:
        if wl not in res.data:
            continue
        if wl == "ceiling":
            parts += [f"### {title}", "", f"Handoff's {args.big_mib} MiB upload divided by each.", "",
                      res.table(wl, metrics, ["durable write", "SHA-256"], handoff_from="upload"), ""]
            continue
        if wl == "c2000":
            parts += ["### 5. 10 GiB upload: peak RSS", "", notes.get("upload10g", "Not run."), ""]
        parts += [f"### {title}", "", res.table(wl, metrics, servers), ""]
    parts += ["### Targets (issue 8)", "", "| target | measured (median) | met |", "|---|---|---|"]
    for text, value, ok in targets(res):
        verdict = ok if isinstance(ok, str) else ("met" if ok else "**not met**")
        parts.append(f"| {text} | {value} | {verdict} |")
    parts += [""]
    if notes.get("extra"):
        parts += [notes["extra"], ""]
    parts += [END]
    section = "\n".join(parts) + "\n"

    path = args.results
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")


# --------------------------------------------------------------------------------------------------------- main

def upload_10g(args, tmp, handoff_bin, res, notes):
    need = 10 * GIB + 5 * GIB
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if args.skip_10g:
        notes["upload10g"] = "Skipped (`--skip-10g`)."
        return
    if free < need:
        notes["upload10g"] = (f"Skipped: {free / GIB:.1f} GiB free in {tempfile.gettempdir()}, "
                              f"the 10 GiB upload needs {need / GIB:.0f} GiB.")
        return
    log("10 GiB upload (bench/upload-memory.sh 10)")
    out = subprocess.run([os.path.join(BENCH, "upload-memory.sh"), "10"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "HANDOFF_BIN": handoff_bin})
    m = re.search(r"idle (\d+) KiB, after upload (\d+) KiB", out.stdout)
    w = re.search(r"stored (\d+) bytes in ([\d.]+) s", out.stdout)
    if out.returncode != 0 or not m:
        notes["upload10g"] = f"Failed: {out.stderr.strip()[-300:]}"
        return
    idle, peak = int(m.group(1)) / 1024, int(m.group(2)) / 1024
    res.add("upload10g", "Handoff", {"peak_mib": peak})
    notes["upload10g"] = (f"Handoff only, `bench/upload-memory.sh 10` (10 GiB of zeros streamed from a pipe, chunked): "
                          f"peak RSS during the upload {peak:.1f} MiB (VmHWM reset after sign-in, as for the other "
                          f"transfers), of which {idle:.1f} MiB was resident before it "
                          f"(growth during the upload {peak - idle:.1f} MiB); "
                          f"{int(w.group(1)) / 1e9 / float(w.group(2)):.2f} GB/s wall." if w else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (≤ 15)")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the large transfer")
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--skip-10g", action="store_true")
    ap.add_argument("--only", default="upload,download,get4k,put4k,c2000,cold,upload10g")
    ap.add_argument("--handoff-bin", default=os.path.join(REPO, "target", "release", "handoff"))
    ap.add_argument("--results", default=os.path.join(BENCH, "RESULTS.md"))
    args = ap.parse_args()
    args.duration = min(args.duration, 15)
    only = set(args.only.split(","))

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.time()
    tmp = tempfile.mkdtemp(prefix="handoff-bench-")
    res, notes = Results(), {}
    try:
        # One copy of the binary for the whole run: others may rebuild target/release meanwhile.
        handoff_bin = os.path.join(tmp, "handoff")
        shutil.copy2(args.handoff_bin, handoff_bin)
        size = args.big_mib << 20
        big = os.path.join(tmp, "big.bin")
        small = os.path.join(tmp, "small.bin")
        with open(big, "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(1 << 20))
        with open(small, "wb") as f:
            f.write(os.urandom(4096))

        servers = [Handoff(tmp, handoff_bin), Nginx(tmp, args.nginx_workers), Dufs(tmp)]
        for s in servers:
            if isinstance(s, Handoff):
                s.start("/readyz")
            else:
                with open(os.path.join(s.root, "index.txt"), "w") as f:
                    f.write("ok")
                s.start("/index.txt")
        for s in servers:
            s.small_path = s.setup(small)
            log(f"{s.name} on {s.base} (pid {s.proc.pid})")

        def rounds(wl, fn, after_round=None):
            if wl not in only:
                return
            for rnd in range(1, args.rounds + 1):
                if after_round is not None and rnd > 1:
                    after_round()
                for s in servers:
                    if isinstance(s, Handoff):
                        s.sign_in()  # a fresh token per run: the whole benchmark outlives one access token
                    r = fn(s, rnd)
                    if "p99_us" in r:
                        r["p99_ms"] = r["p99_us"] / 1000
                    res.add(wl, s.name, r)
                    log(f"{wl} round {rnd} {s.name}: " + ", ".join(
                        f"{k}={fmt(v)}" for k, v in r.items() if k in
                        ("mb_s", "cpu_per_gib", "peak_mib", "rps", "p99_ms", "errors", "cpu_us_per_req", "ms")))

        def ceilings():
            r = durable_write(tmp, big, size)
            res.add("ceiling", "durable write", r)
            res.add("ceiling", "SHA-256", sha256_cost(big, size))
            log(f"ceiling: durable write mb_s={fmt(r['mb_s'])}, cpu_per_gib={fmt(r['cpu_per_gib'])}")
        rounds("upload", lambda s, rnd: big_upload(s, big, size, rnd), after_round=ceilings)
        if "upload" in only:
            ceilings()
        if "download" in only and "upload" not in only:
            for s in servers:  # the download needs an uploaded file
                big_upload(s, big, size, 0)
        if "download" in only:
            # Each upload's page-cache drop evicted the files uploaded before it: one unmeasured download per
            # server brings its file back, so every measured download reads from memory, as the servers had
            # just written it.
            for s in servers:
                if isinstance(s, Handoff):
                    s.sign_in()
                curl(s.auth + ["-o", "/dev/null", s.base + s.big_path], timeout=300)
        rounds("download", lambda s, rnd: big_download(s, size, rnd))
        rounds("get4k", lambda s, rnd: small_get(s, 64, 2, args.duration))
        rounds("put4k", lambda s, rnd: small_put(s, args.duration, rnd))
        rounds("c2000", lambda s, rnd: small_get(s, 2000, 2, args.duration))
        for s in servers:
            log(f"{s.name}: data directory {sum_dir(s.dir) / 1e9:.2f} GB, "
                f"log {os.path.getsize(os.path.join(s.dir, 'server.log')) / 1e6:.2f} MB")
        stop_all()
        STARTED.clear()

        if "cold" in only:
            for i in range(args.cold_runs):
                for cls, extra in ((Handoff, (handoff_bin,)), (Nginx, (args.nginx_workers,)), (Dufs, ())):
                    r = cold_start(cls, tmp, i, *extra)
                    res.add("cold", cls.name, r)
                    log(f"cold start {i + 1} {cls.name}: {r['ms']:.1f} ms")
        if "upload10g" in only:
            upload_10g(args, tmp, handoff_bin, res, notes)
        elapsed = time.time() - started
        write_report(res, args, started, elapsed, notes, handoff_bin)
        log(f"done in {elapsed / 60:.1f} min")
    finally:
        stop_all()
        # Hundreds of thousands of 4 KiB files: on a busy disk this takes minutes (unlink is metadata I/O).
        t0 = time.time()
        log(f"removing {tmp}")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed in {time.time() - t0:.0f} s")


def sum_dir(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


if __name__ == "__main__":
    main()
