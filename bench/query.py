# -*- test-case-name: tests.unit.test_web -*-
"""
Benchmark of the HTTPS query service (docs/reference.md, Performance targets): job status by id and a
job list page with a million jobs stored.

Fills a fresh store directly (the store's own schema and migrations; jobs rows in
bulk, their status computed from a generated direct CREAM trace; the events of a
sample of jobs), starts a real C{twistd -n lbproxy} on it (development PKI), and
queries it with a keep-alive HTTPS client presenting the development user's proxy:

1. job status, one kept-alive TLS connection: latency p50/p99;
2. job status, 8 concurrent clients (processes), one connection each: p50/p99, rate;
3. a job list page (100 of the caller's jobs, newest first), first and later pages
   (cursor), with and without a state filter, with a condition no job meets (each page
   examines C{--list-scan} jobs), and as HTML: p50/p99;
4. logging-info (the events) of sampled jobs, and their HTML job pages;

then reports the service's resident memory (VmRSS) and start-up time.

Run from the repository root::

    .venv/bin/python -m bench.query [--jobs 1000000] [--requests 5000]

Targets: status p99 < 5 ms over one connection and < 10 ms from 8 clients with under
0.5 ms of the service's CPU per request, list page p99 < 20 ms, RSS < 300 MB, start-up
< 2 s.
The last line is a one-line summary and the command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import storefill
from bench.common import fmt, summary
from lbtwist.core.events import parse_event
from lbtwist.core.states import compute_status
from lbtwist.core.states.status import format_iso
from lbtwist.security.devcerts import USER_NAME, ensure_dev_pki
from lbtwist.security.identity import slash_dn
from tests.e2e.harness import T0, USER_DN, LBService, cream_direct_trace, cream_jobid, free_port

DEV_DN = slash_dn(USER_NAME)
STATES = ("Done", "Done", "Done", "Running", "Scheduled", "Waiting", "Aborted", "Cleared")


def owner_of(i: int) -> str:
    """
    Every tenth job is the development user's; the rest spread over 1000 users.
    """
    if i % 10 == 0:
        return DEV_DN
    return f"/DC=org/DC=example/OU=People/CN=User {i % 1000:03d}"


def fill(db: str, jobs: int, sample: int) -> dict[str, float]:
    """
    Write C{jobs} jobs (and the events of the first C{sample}) into a new store file.
    """
    started = time.perf_counter()
    conn = storefill.open_fill(db)
    template = [
        parse_event(step.line.replace(USER_DN, DEV_DN))
        for step in cream_direct_trace(cream_jobid(0), T0)
    ]
    base_status = compute_status((ev, n + 1) for n, ev in enumerate(template)).to_json_dict()

    def rows() -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
        event_id = 0
        for i in range(jobs):
            jobid = cream_jobid(i + 1)
            unique = jobid.rsplit("/", 1)[1]
            owner = owner_of(i)
            state = STATES[i % len(STATES)]
            last = T0 + i * 10_000  # newer jobs updated later
            status = dict(base_status)
            status.update(
                jobId=jobid,
                owner=owner,
                cream_owner=owner,
                state=state,
                globusId=unique,
                cream_id=unique,
                cream_jobid=unique,
                lastUpdateTime=format_iso(last),
            )
            events = []
            if i < sample:
                for seqno, step in enumerate(cream_direct_trace(jobid, T0 + i * 10_000)):
                    line = step.line.replace(USER_DN, owner)
                    ev = parse_event(line)
                    event_id += 1
                    events.append(
                        storefill.event_row(event_id, jobid, seqno + 1, ev.date, line, ev)
                    )
            row = storefill.job_row(
                jobid, owner, state, status["lastUpdateTime"], len(template), status, unique
            )
            yield row, events

    storefill.fill_rows(conn, rows())
    return storefill.fill_figures(db, started)


class Client:
    """
    One kept-alive HTTPS connection.
    """

    def __init__(self, port: int, pki_dir: str) -> None:
        self.conn = http.client.HTTPSConnection(
            "localhost", port, context=storefill.tls_context(pki_dir), timeout=30
        )

    def get(self, path: str) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Accept": "application/json"})
        resp = self.conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - start


def status_paths(jobs: int, count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    # The development user's jobs (every tenth): readable, so 200 answers.
    return [
        "/" + cream_jobid(rnd.randrange(0, jobs, 10) + 1).rsplit("/", 1)[1] for _ in range(count)
    ]


def run_status(port: int, pki_dir: str, paths: list[str]) -> list[float]:
    client = Client(port, pki_dir)
    client.get(paths[0])  # handshake outside the measurement
    times = []
    for path in paths:
        code, body, elapsed = client.get(path)
        if code != 200:
            raise SystemExit(f"GET {path}: {code} {body[:200]!r}")
        times.append(elapsed)
    return times


def _worker(args: tuple[int, str, list[str]]) -> list[float]:
    return run_status(*args)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """
    User and system CPU time of process C{pid} so far (less sensitive to other
    load on the machine than latencies).
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def list_pages(client: Client, query: str, pages: int) -> list[float]:
    times = []
    cursor = None
    for _ in range(pages):
        path = "/?" + query + (f"&cursor={cursor}" if cursor else "")
        code, body, elapsed = client.get(path)
        if code != 200:
            raise SystemExit(f"GET {path}: {code} {body[:200]!r}")
        times.append(elapsed)
        cursor = json.loads(body)["cursor"]
        if cursor is None:
            cursor = None
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs stored")
    parser.add_argument("--requests", type=int, default=5000, help="status requests per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--sample", type=int, default=10_000, help="jobs stored with events")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the store already filled in --dir (same --jobs and --sample)",
    )
    args = parser.parse_args(argv)
    command = "python -m bench.query " + " ".join(argv if argv is not None else sys.argv[1:])

    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-query-")
    port = free_port()
    service = LBService(base, args=["--query", f"tcp:{port}:interface=127.0.0.1"])
    os.makedirs(service.state_dir, exist_ok=True)
    pki = ensure_dev_pki(service.state_dir, storefill.WallClock())
    pki_dir = str(pki.directory)
    figures: dict[str, dict[str, float]] = {}
    if args.reuse and os.path.exists(service.db_path):
        figures["fill"] = {"seconds": 0.0, "size_mb": os.path.getsize(service.db_path) / 1e6}
        print(fmt(f"reused store of {args.jobs} jobs", figures["fill"]), flush=True)
    else:
        figures["fill"] = fill(service.db_path, args.jobs, min(args.sample, args.jobs))
        print(fmt(f"fill {args.jobs} jobs", figures["fill"]), flush=True)

    started = time.perf_counter()
    service.start()
    # Ready when the query port answers a request.
    while True:
        try:
            Client(port, pki_dir).get("/")
            break
        except OSError:
            if time.perf_counter() - started > 60:
                raise
            time.sleep(0.02)
    figures["startup"] = {"seconds": time.perf_counter() - started}
    print(fmt("start-up (until the first answer)", figures["startup"]), flush=True)
    try:
        assert service.process is not None
        pid = service.process.pid
        figures["rss_start"] = {"rss_mb": rss_mb(pid)}

        paths = status_paths(args.jobs, args.requests, 1)
        cpu = cpu_seconds(pid)
        figures["status_1"] = summary(run_status(port, pki_dir, paths))
        figures["status_1"]["cpu_ms_per_req"] = (cpu_seconds(pid) - cpu) * 1000 / len(paths)
        print(fmt("status, 1 kept-alive connection", figures["status_1"]), flush=True)

        per = max(1, args.requests // args.clients)
        work = [(port, pki_dir, status_paths(args.jobs, per, 100 + c)) for c in range(args.clients)]
        t0 = time.perf_counter()
        cpu = cpu_seconds(pid)
        with multiprocessing.Pool(args.clients) as pool:
            results = pool.map(_worker, work)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu
        merged = [t for r in results for t in r]
        figures["status_n"] = summary(merged) | {
            "req_per_s": len(merged) / wall,
            "cpu_ms_per_req": cpu * 1000 / (len(merged) + args.clients),
        }
        print(fmt(f"status, {args.clients} concurrent clients", figures["status_n"]), flush=True)

        client = Client(port, pki_dir)
        client.get("/?limit=1")
        first = [client.get("/?limit=100")[2] for _ in range(50)]
        figures["list_first"] = summary(first)
        print(fmt("list page 1 (100 own jobs)", figures["list_first"]), flush=True)
        figures["list_pages"] = summary(list_pages(client, "limit=100", 50))
        print(fmt("list pages 1..50 (cursor)", figures["list_pages"]), flush=True)
        figures["list_state"] = summary(list_pages(client, "limit=100&state=scheduled", 20))
        print(fmt("list pages, state=scheduled", figures["list_state"]), flush=True)
        figures["list_query"] = summary(
            list_pages(client, "limit=100&query=status%3Ddone%7C%3Daborted%26exit_code%3D0", 20)
        )
        print(fmt("list pages, ?query=status=done|=aborted&...", figures["list_query"]))
        figures["list_nomatch"] = summary(list_pages(client, "limit=100&query=exit_code%3D77", 20))
        print(fmt("list pages, a condition no job meets", figures["list_nomatch"]), flush=True)
        html = []
        for _ in range(50):
            code, body, elapsed = client.get("/?limit=100&format=html")
            if code != 200 or not body.startswith(b"<!DOCTYPE html>"):
                raise SystemExit(f"GET /?format=html: {code} {body[:200]!r}")
            html.append(elapsed)
        figures["list_html"] = summary(html)
        print(fmt("list page 1, HTML", figures["list_html"]), flush=True)

        sample = min(args.sample, args.jobs)
        ev_paths = [
            "/" + cream_jobid(i + 1).rsplit("/", 1)[1] + "/events"
            for i in range(0, sample, 10)[:200]
        ]
        times = []
        for path in ev_paths:
            code, body, elapsed = client.get(path)
            if code != 200 or not json.loads(body):
                raise SystemExit(f"GET {path}: {code} {body[:200]!r}")
            times.append(elapsed)
        figures["events"] = summary(times)
        print(fmt("logging-info (events of one job)", figures["events"]), flush=True)
        times = []
        for path in ev_paths:
            code, body, elapsed = client.get(path.replace("/events", "?format=html"))
            if code != 200 or not body.startswith(b"<!DOCTYPE html>"):
                raise SystemExit(f"GET {path}: {code} {body[:200]!r}")
            times.append(elapsed)
        figures["job_html"] = summary(times)
        print(fmt("job page, HTML (status and events)", figures["job_html"]), flush=True)
        figures["rss_end"] = {"rss_mb": rss_mb(pid)}
        print(
            fmt(
                "service RSS at start / after",
                {
                    "start_mb": figures["rss_start"]["rss_mb"],
                    "end_mb": figures["rss_end"]["rss_mb"],
                },
            ),
            flush=True,
        )
    finally:
        service.cleanup()

    print(
        f"query: {args.jobs} jobs; status p50 {figures['status_1']['p50_ms']:.2f} ms"
        f" p99 {figures['status_1']['p99_ms']:.2f} ms (1 conn),"
        f" p50 {figures['status_n']['p50_ms']:.2f} ms p99 {figures['status_n']['p99_ms']:.2f} ms"
        f" {figures['status_n']['req_per_s']:.0f} req/s ({args.clients} clients);"
        f" list page p50 {figures['list_pages']['p50_ms']:.2f} ms"
        f" p99 {figures['list_pages']['p99_ms']:.2f} ms"
        f" (HTML p99 {figures['list_html']['p99_ms']:.2f} ms);"
        f" CPU {figures['status_n']['cpu_ms_per_req']:.2f} ms/status;"
        f" RSS {figures['rss_end']['rss_mb']:.0f} MB;"
        f" start-up {figures['startup']['seconds']:.2f} s  [{command}]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
