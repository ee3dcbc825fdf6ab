# -*- test-case-name: tests.integration.test_store_postgres -*-
"""
The PostgreSQL store against SQLite: events/s from 16 producers through 1 and 2
front ends on one database, and the status query's latency (p50, p99) at C{--jobs}
jobs.

A front end here is a process with its own store (writer thread, reader pool) and
reactor; its producers each store one event and wait for the answer before the
next (as C{lbtwist logevent} callers do), so the group commit batches them. The
network layer (store port, TLS) is not in this figure: it is the store's. The
PostgreSQL server is a private cluster this script starts and removes
(L{tests.integration.pgcluster}); SQLite runs in a temporary directory.

Run: C{.venv/bin/python bench/postgres.py [--jobs N] [--events N] [--runs N]}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

PRODUCERS = 16


def _lines(prefix: str, jobs: int, per_job: int) -> list[str]:
    from tests.e2e import harness

    out = []
    for n in range(jobs):
        jobid = harness.cream_jobid(n).replace("CREAM", f"CREAM{prefix}")
        steps = harness.cream_direct_trace(jobid, harness.T0 + n * 1_000_000)
        out.extend(step.line for step in steps[:per_job])
    return out


def _front_end(url: str, lines: list[str], producers: int, queue: Any) -> None:
    # One front end: a reactor, a store, producers each waiting for its answer.
    from twisted.internet import reactor

    from lbtwist.core.events import parse_event

    store = _open(url, reactor)
    store.start()
    todo = [(line, parse_event(line)) for line in lines]
    chunks = [todo[i::producers] for i in range(producers)]
    done = [0]
    started = time.perf_counter()

    def producer(chunk: list[Any]) -> Any:
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def run() -> Any:
            for item in chunk:
                yield store.store([item])
                done[0] += 1

        return run()

    from twisted.internet.defer import gatherResults

    def finish(_: object) -> None:
        seconds = time.perf_counter() - started
        queue.put((done[0], seconds))
        store.close().addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: gatherResults([producer(c) for c in chunks]).addBoth(finish))
    reactor.run()


def _open(url: str, reactor: Any) -> Any:
    if url.startswith("postgresql://"):
        from lbtwist.store.postgres import PostgresStore

        return PostgresStore(url, clock=reactor)
    from lbtwist.store.sqlite import SQLiteStore

    return SQLiteStore(url, clock=reactor)


def throughput(urls: list[str], events: int) -> float:
    """
    Events/s from L{PRODUCERS} producers split over one front end per URL.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    lines = _lines("9", max(1, events // 8), 8)
    parts = [lines[i :: len(urls)] for i in range(len(urls))]
    procs = [
        ctx.Process(target=_front_end, args=(u, p, PRODUCERS // len(urls), queue))
        for u, p in zip(urls, parts, strict=True)
    ]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    total = sum(r[0] for r in results)
    # The slowest front end's own time (process start-up left out).
    return total / max(r[1] for r in results) if wall > 0 else 0.0


def status_latency(url: str, jobs: int, samples: int) -> tuple[float, float]:
    """
    Fill C{jobs} jobs (2 events each, groups of 2000), then time C{samples} status
    reads of random jobs on a synchronous store.

    @return: p50 and p99 in milliseconds.
    """
    from twisted.internet.task import Clock

    from lbtwist.core.events import parse_event
    from lbtwist.store.batch import run_now

    store = _store_sync(url, Clock(), run_now)
    lines = _lines("7", jobs, 2)
    for first in range(0, len(lines), 2000):
        d = store.store([(ln, parse_event(ln)) for ln in lines[first : first + 2000]])
        d.addErrback(lambda f: sys.stderr.write(str(f)))
    jobids = sorted({parse_event(ln).jobid for ln in lines})
    times = []
    for _ in range(samples):
        jobid = random.choice(jobids)
        t = time.perf_counter()
        store.status(jobid)
        times.append((time.perf_counter() - t) * 1000)
    store.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def _store_sync(url: str, clock: Any, runner: Any) -> Any:
    if url.startswith("postgresql://"):
        from lbtwist.store.postgres import PostgresStore

        return PostgresStore(url, clock=clock, runner=runner)
    from lbtwist.store.sqlite import SQLiteStore

    return SQLiteStore(url, clock=clock, runner=runner)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs for the status p99")
    parser.add_argument("--events", type=int, default=4_000, help="events per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure (median)")
    parser.add_argument("--samples", type=int, default=2_000, help="status reads timed")
    args = parser.parse_args(argv[1:])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.integration.pgcluster import cluster

    pg = cluster()
    figures: dict[str, list[float]] = {"sqlite": [], "pg1": [], "pg2": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            figures["sqlite"].append(throughput([os.path.join(tmp, f"t{run}.sqlite")], args.events))
            figures["pg1"].append(throughput([pg.new_database()], args.events))
            url = pg.new_database()
            figures["pg2"].append(throughput([url, url], args.events))
        sq = status_latency(os.path.join(tmp, "status.sqlite"), args.jobs, args.samples)
        pq = status_latency(pg.new_database(), args.jobs, args.samples)
    med = {k: statistics.median(v) for k, v in figures.items()}
    for name, label in (
        ("sqlite", "SQLite, 1 front end"),
        ("pg1", "PostgreSQL, 1 front end"),
        ("pg2", "PostgreSQL, 2 front ends"),
    ):
        runs = " ".join(f"{v:.0f}" for v in figures[name])
        print(f"{label}: median {med[name]:.0f} events/s (runs: {runs})")
    print(f"PostgreSQL 2/1 front ends: {med['pg2'] / med['pg1']:.2f}")
    print(
        f"status at {args.jobs} jobs: SQLite p50 {sq[0]:.2f} ms p99 {sq[1]:.2f} ms;"
        f" PostgreSQL p50 {pq[0]:.2f} ms p99 {pq[1]:.2f} ms"
    )
    print(f"load: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f".venv/bin/python bench/postgres.py --jobs {args.jobs} --events {args.events}"
        f" --runs {args.runs} --samples {args.samples}"
    )


if __name__ == "__main__":
    main(sys.argv)
