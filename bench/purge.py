# -*- test-case-name: tests.unit.test_purge_service -*-
"""
Benchmark of purging under intake load (docs/lifecycle.md): intake acknowledgement
latency while a purge of a large store runs, against the same without a purge.

Fills a fresh store directly (the store's schema and migrations, incremental vacuum
on; jobs rows in bulk with a direct CREAM job's status, every job updated long ago so
that all are due, and two event rows each), starts a real C{twistd -n lbproxy} on it
(development PKI, the development user a super user, no periodic purge), then:

1. a producer process logs new jobs' events over the intake socket at a fixed rate,
   one event in flight, for C{--seconds}: acknowledgement latency p50/p99 (baseline);
2. the same producer again while C{POST /admin/purge} purges the C{--purge} oldest
   stored jobs (all: 0), chunk by chunk on the store's writer: latency p50/p99 while
   the purge runs;

and prints both, their ratios (same run), the latency during the purge split into the
rounds while jobs were purged and those while the vacuum gave the pages back (from the
file's free-page count), the purge's duration and rate, and the store file's size
before and after (incremental vacuum gives the space back).

Run from the repository root::

    .venv/bin/python -m bench.purge [--jobs 1000000] [--purge 100000] [--runs 3]
        [--rate 200] [--seconds 20] [--chunk 100]

Three runs (C{--runs}) on one filled store, each a baseline then a purge of the next
100,000 oldest of the 1,000,000 stored jobs (C{--purge}; 0: all of them at once, a long
run); the ratios are of the same run, then their medians. Target: p50 and p99 during the purge within
2 x the baseline. The last line is the command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common, storefill
from bench.common import summary
from lbtwist.core.events import parse_event
from lbtwist.core.states import compute_status
from lbtwist.core.states.status import format_iso
from lbtwist.security.devcerts import USER_NAME, ensure_dev_pki
from lbtwist.security.identity import slash_dn
from lbtwist.store.sqlite import connect
from tests.e2e.harness import T0, USER_DN, LBService, cream_direct_trace, cream_jobid, free_port

DEV_DN = slash_dn(USER_NAME)
STATES = ("Done", "Done", "Cleared", "Aborted", "Cancelled", "Running", "Done", "Cleared")
#: Intake jobs are numbered from here (the filled ones from 1).
INTAKE_BASE = 50_000_000


def fill(db: str, jobs: int) -> dict[str, float]:
    """
    C{jobs} jobs, all last updated in 2026's first days, two events each.
    """
    started = time.perf_counter()
    conn = storefill.open_fill(db, vacuum=True)
    steps = cream_direct_trace(cream_jobid(0), T0)
    template = [parse_event(step.line) for step in steps]
    base_status = compute_status((ev, n + 1) for n, ev in enumerate(template)).to_json_dict()
    first_lines = [steps[0].line, steps[-1].line]
    template_id = cream_jobid(0)

    def rows() -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
        event_id = 0
        for i in range(jobs):
            jobid = cream_jobid(i + 1)
            unique = jobid.rsplit("/", 1)[1]
            state = STATES[i % len(STATES)]
            last = format_iso(T0 + i * 1_000)
            status = dict(base_status)
            status.update(jobId=jobid, state=state, cream_id=unique, lastUpdateTime=last)
            events = []
            for seqno, text in enumerate(first_lines):
                line = text.replace(template_id, jobid)
                ev = template[0 if seqno == 0 else -1]
                event_id += 1
                events.append(
                    storefill.event_row(event_id, jobid, seqno + 1, T0 + i * 1_000, line, ev)
                )
            yield storefill.job_row(jobid, USER_DN, state, last, 2, status, unique), events

    storefill.fill_rows(conn, rows())
    return storefill.fill_figures(db, started)


def intake_lines(first: int, count: int) -> list[str]:
    """
    Events of new direct CREAM jobs (dated now), their traces one after the other.
    """
    now = int(time.time() * 1_000_000)
    lines: list[str] = []
    n = first
    while len(lines) < count:
        lines.extend(s.line for s in cream_direct_trace(cream_jobid(n), now + n * 1000))
        n += 1
    return lines[:count]


def producer(socket_path: str, lines: list[str], rate: float, out: Any) -> None:
    """
    One event in flight at C{rate} events/s; the acknowledgement latency of each.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    reader = sock.makefile("rb")
    interval = 1.0 / rate
    latencies = []
    errors = 0
    start = time.perf_counter()
    for i, line in enumerate(lines):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        sock.sendall(line.encode() + b"\n")
        answer = reader.readline()
        latencies.append(time.perf_counter() - sent)
        if not answer.startswith(b"OK"):
            errors += 1
    sock.close()
    out.send((latencies, errors))


def measure(socket_path: str, lines: list[str], rate: float) -> tuple[list[float], int]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=producer, args=(socket_path, lines, rate, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return result  # type: ignore[no-any-return]


def fmt(name: str, r: dict[str, Any]) -> str:
    return common.fmt(name, r, 36)


def free_pages(conn: Any) -> int:
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def grace_for(count: int, jobs: int) -> str:
    """
    The query string that makes the C{count} oldest jobs due (the filled jobs were
    last updated one millisecond apart from T0), or all of them for C{count} 0.
    """
    if count <= 0 or count >= jobs:
        return "aborted=0&cancelled=0&cleared=0&done=0&other=0"
    grace = int(time.time() - (T0 / 1_000_000 + count / 1000))
    return "&".join(
        f"{name}={grace}" for name in ("aborted", "cancelled", "cleared", "done", "other")
    )


def post_purge(port: int, pki_dir: str, query: str, result: dict[str, Any]) -> None:
    started = time.perf_counter()
    conn = http.client.HTTPSConnection(
        "localhost", port, context=storefill.tls_context(pki_dir), timeout=24 * 3600
    )
    conn.request("POST", "/admin/purge?" + query, headers={"Accept": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    result["seconds"] = time.perf_counter() - started
    result["status"] = resp.status
    result["body"] = json.loads(body) if body else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs stored and purged")
    parser.add_argument("--rate", type=float, default=200.0, help="intake events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="baseline duration")
    parser.add_argument("--chunk", type=int, default=100, help="purge-chunk of the service")
    parser.add_argument(
        "--purge",
        type=int,
        default=100_000,
        help="purge the oldest N of the stored jobs (0: all of them)",
    )
    parser.add_argument("--runs", type=int, default=3, help="baseline + purge rounds")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    command = "python -m bench.purge " + " ".join(argv if argv is not None else sys.argv[1:])

    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-purge-")
    port = free_port()
    service = LBService(
        base,
        args=[
            "--query", f"tcp:{port}:interface=127.0.0.1",
            "--purge-interval", "0",
            "--purge-chunk", str(args.chunk),
            "--super-user", DEV_DN,
        ],
    )  # fmt: skip
    os.makedirs(service.state_dir, exist_ok=True)
    pki_dir = str(ensure_dev_pki(service.state_dir, storefill.WallClock()).directory)
    try:
        filled = fill(service.db_path, args.jobs)
        print(fmt(f"fill {args.jobs} jobs", filled), flush=True)
        service.start()
        count = int(args.rate * args.seconds)
        measure(service.socket_path, intake_lines(INTAKE_BASE, 200), args.rate)  # warm-up
        n = INTAKE_BASE + 1000
        ratios: list[tuple[float, float]] = []
        for run in range(1, args.runs + 1):
            base_lat, base_err = measure(service.socket_path, intake_lines(n, count), args.rate)
            n += count // 10 + 1
            baseline = summary(base_lat)
            print(fmt(f"run {run}: intake ack, no purge", {**baseline, "errors": base_err}))
            outcome: dict[str, Any] = {}
            # Each run purges the next --purge oldest jobs (all of them with 0).
            query = grace_for(args.purge * run, args.jobs)
            purge = threading.Thread(target=post_purge, args=(port, pki_dir, query, outcome))
            purge.start()
            during: list[float] = []
            # The rounds while free pages grew (jobs purged) and while they shrank (the
            # vacuum giving them back), from the file's free-page count.
            phases: dict[str, list[float]] = {"chunks": [], "vacuum": []}
            watch = connect(service.db_path, readonly=True)
            free = free_pages(watch)
            errors = 0
            # Rounds of one second each until the purge answers.
            while purge.is_alive():
                got, err = measure(service.socket_path, intake_lines(n, int(args.rate)), args.rate)
                n += int(args.rate) // 10 + 1
                if purge.is_alive():
                    during.extend(got)
                    errors += err
                    now_free = free_pages(watch)
                    phases["vacuum" if now_free < free else "chunks"].extend(got)
                    free = now_free
            watch.close()
            purge.join()
            if outcome.get("status") != 200:
                raise SystemExit(f"purge failed: {outcome}")
            report = outcome["body"]
            purged = summary(during) if during else {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0}
            print(fmt(f"run {run}: intake ack, during the purge", {**purged, "errors": errors}))
            for phase, times in phases.items():
                if times:
                    print(fmt(f"run {run}:   of which {phase}", summary(times)))
            seconds = outcome["seconds"]
            print(
                fmt(
                    f"run {run}: purge",
                    {
                        "jobs": report["count"],
                        "seconds": seconds,
                        "jobs_per_s": report["count"] / seconds if seconds else 0.0,
                        "chunks": report["chunks"],
                        "free_pages_left": report["free_pages"],
                    },
                ),
                flush=True,
            )
            p50 = purged["p50_ms"] / baseline["p50_ms"] if baseline["p50_ms"] else float("nan")
            p99 = purged["p99_ms"] / baseline["p99_ms"] if baseline["p99_ms"] else float("nan")
            ratios.append((p50, p99))
            print(fmt(f"run {run}: ratio during/without purge", {"p50": p50, "p99": p99}))
            if args.purge <= 0 or args.purge * run >= args.jobs:
                break
        service.stop()
        after = os.path.getsize(service.db_path) / 1e6
        print(fmt("store file", {"before_mb": filled["size_mb"], "after_mb": after}), flush=True)
        print(
            fmt(
                f"median of {len(ratios)} runs: ratio",
                {
                    "p50": statistics.median(r[0] for r in ratios),
                    "p99": statistics.median(r[1] for r in ratios),
                },
            )
        )
        with open("/proc/loadavg") as f:
            print(f"load average: {f.read().strip()}")
    finally:
        service.cleanup()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
