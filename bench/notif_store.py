"""
The store side of notifications: how much matching and queueing cost the commit path.

Drives the SQLite store directly (WAL, synchronous=FULL, its own writer thread
replaced by a synchronous runner, so what is measured is the commit path's CPU
and fsyncs, not the socket) with direct CREAM job traces in commit groups of
C{--group} events, three times per run, on fresh stores:

1. no registrations;
2. C{--registrations} registrations (default 10,000), C{--matching} of them
   (1,000) for jobs that are logged, the others for jobs that never are;

Prints events/s of each (median of C{--repeat} runs), the ratios to run 1 measured
in the same runs, and the messages queued.

    .venv/bin/python -m bench.notif_store
    .venv/bin/python -m bench.notif_store --jobs 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock

from bench.intake import job_lines
from lbtwist.core.events import parse_event
from lbtwist.core.notif import Conditions, Flags, Registration
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from tests.e2e.harness import USER_DN, cream_jobid


def _done(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def run(
    directory: str, jobs: int, group: int, registrations: int, matching: int, mode: str
) -> tuple[float, int]:
    path = os.path.join(directory, f"{mode}.sqlite")
    clock = Clock()
    clock.advance(time.time())
    store = SQLiteStore(path, clock=clock, runner=run_now)
    store.start()
    n = store.notifications
    until = int(time.time()) + 3600
    if mode != "none":
        # Set-up only: the registrations without an fsync each.
        store.backend.conn.execute("PRAGMA synchronous = OFF")
        for i in range(registrations):
            if i < matching and mode == "jobs":
                cond = Conditions(jobids=(cream_jobid(i * max(jobs // matching, 1)),))
            else:
                cond = Conditions(jobids=(f"https://elsewhere.example.org:9000/CREAM9{i:09d}",))
            _done(
                n.create(Registration(f"r{i}", USER_DN, (), cond, Flags(), until, 0), time.time())
            )
        store.backend.conn.execute("PRAGMA synchronous = FULL")
    # The set-up's pages out of the WAL: the measured commits start alike.
    store.backend.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    items = []
    for j in range(jobs):
        items.extend((line, parse_event(line)) for line in job_lines(j))
    # The set-up's garbage collected now, not in the measured commits.
    gc.collect()
    start = time.perf_counter()
    for at in range(0, len(items), group):
        results = _done(store.store(items[at : at + group]))
        assert not any(isinstance(r, Exception) for r in results), results[:3]
    elapsed = time.perf_counter() - start
    queued = n.matcher.matched
    _done(store.close())
    return len(items) / elapsed, queued


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--group", type=int, default=256)
    parser.add_argument("--registrations", type=int, default=10_000)
    parser.add_argument("--matching", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {"none": [], "jobs": []}
    ratios: dict[str, list[float]] = {"jobs": []}
    queued: dict[str, int] = {}
    for _ in range(args.repeat):
        directory = tempfile.mkdtemp(prefix="lbtwist-bench-notif-")
        try:
            got = {}
            for mode in ("none", "jobs"):
                rate, q = run(
                    directory, args.jobs, args.group, args.registrations, args.matching, mode
                )
                got[mode] = rate
                rates[mode].append(rate)
                queued[mode] = q
            for mode in ("jobs",):
                ratios[mode].append(got[mode] / got["none"])
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    events = args.jobs * len(job_lines(0))
    print(f"{events} events per run ({args.jobs} direct CREAM jobs), commit groups of {args.group}")
    print(f"no registrations:                     {statistics.median(rates['none']):9.0f} events/s")
    print(
        f"{args.registrations} registrations, {args.matching} by job: "
        f"{statistics.median(rates['jobs']):9.0f} events/s, ratio {statistics.median(ratios['jobs']):.2f},"
        f" {queued['jobs']} messages"
    )
    print(
        "median of",
        args.repeat,
        "runs; command: .venv/bin/python -m bench.notif_store"
        + "".join(f" --{k} {v}" for k, v in vars(args).items()),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
