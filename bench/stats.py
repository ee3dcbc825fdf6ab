"""
Benchmark of statistics and traceability (docs/lifecycle.md) with a million jobs.

Fills a fresh store directly (jobs rows in bulk with a compact status each, their
state-entry and trace rows as the first statistics schema had them), the jobs spread
over 30 days, 500 worker nodes, 1000 users, 5 VOs, 4 queues, then migrates it to the
current schema (the statistics counters and kept durations filled from the entries,
as an existing store is: its duration is printed); then times the queries the query
port's reader thread runs for C{GET /stats} and C{GET /trace}
(L{lbtwist.store.sqlite.Queries.stats}, C{trace}) on a read-only connection, each
repeated C{--repeat} times per run, C{--runs} runs: the median of the runs' medians in
milliseconds. Each statistics case is also timed, in the same runs, as the plain scan
of the entries (L{lbtwist.store.lifecycle.stats_scan}, what the counters replaced),
its answer checked equal, and the ratio printed.

Last, the cost on the write path: C{--write-jobs} jobs' state entries written as
intake writes them (five status changes per job, 50 jobs per commit) into a fresh
store, with the counters and kept durations (L{lifecycle.write}) and without (the
first schema's writer), same run: microseconds per entry and the ratio.

Run from the repository root::

    .venv/bin/python -m bench.stats [--jobs 1000000] [--repeat 15] [--runs 3]

Targets: statistics < 50 ms (issue: < 200 ms), trace < 50 ms. The last line is the
command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.storefill import insert, open_fill
from lbtwist.core.states.status import JobStatus
from lbtwist.core.stats import StatsRequest, entries
from lbtwist.core.trace import TraceRequest, trace_row
from lbtwist.store import lifecycle
from lbtwist.store.query import owner_key
from lbtwist.store.sqlite import (
    MIGRATIONS,
    SQLiteReader,
    _migrate_stats_counters,
    connect,
    migrate,
)

S = 1_000_000
T0 = 1_764_547_200 * S  # 2025-12-01T00:00:00Z
SPAN = 30 * 86_400 * S
NODES, USERS, VOS, QUEUES = 500, 1000, 5, 4


def job(i: int, jobs: int) -> tuple[str, JobStatus]:
    submitted = T0 + (i * SPAN) // jobs
    running = submitted + (600 + (i % 97) * 7) * S
    done = running + (60 + (i % 1013) * 3) * S
    unique = f"CREAM{100000000 + i}"
    jobid = f"https://cream-ce{i % QUEUES}.example.org:8443/{unique}"
    owner = f"/DC=org/DC=example/OU=People/CN=User {i % USERS:04d}"
    status = JobStatus(
        state="Done",
        jobId=jobid,
        owner=owner,
        jobtype="CREAM",
        destination=f"cream-ce{i % QUEUES}.example.org:8443/cream-pbs-q{i % QUEUES}",
        cream_id=unique,
        cream_lrms_id=f"{i}.batch.example.org",
        cream_node=f"wn{i % NODES:03d}.example.org",
        user_fqans=[f"/vo{i % VOS}/Role=NULL/Capability=NULL"],
        stateEnterTimes={
            "Submitted": submitted,
            "Waiting": submitted + S,
            "Scheduled": submitted + 5 * S,
            "Running": running,
            "Done": done,
        },
        stateEnterTime=done,
        lastUpdateTime=done,
        machine="cream",
        event_count=6,
    )
    return jobid, status


def fill(db: str, jobs: int) -> tuple[float, float]:
    """
    The store at the schema before the counters, filled; then migrated.

    @return: the seconds of the fill and of the migration.
    """
    started = time.perf_counter()
    conn = open_fill(db, target=MIGRATIONS.index(_migrate_stats_counters))
    rows: list[Any] = []
    entry_rows: list[Any] = []
    trace_rows: list[Any] = []
    for i in range(jobs):
        jobid, status = job(i, jobs)
        text = status.to_json()
        rows.append(
            (
                jobid,
                status.owner,
                "Done",
                "CREAM",
                None,
                "cream",
                6,
                text,
                jobid.rsplit("/", 1)[1],
                owner_key(status.owner),
                "",
            )
        )
        entry_rows.extend(entries(jobid, None, status))
        trace_rows.append(trace_row(jobid, status))
        if len(rows) >= 20_000:
            _flush(conn, rows, entry_rows, trace_rows)
            rows, entry_rows, trace_rows = [], [], []
    _flush(conn, rows, entry_rows, trace_rows)
    conn.execute("COMMIT")
    filled = time.perf_counter()
    migrate(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return filled - started, time.perf_counter() - filled


def _flush(conn: Any, rows: list[Any], entry_rows: list[Any], trace_rows: list[Any]) -> None:
    insert(conn, rows)
    lifecycle._write_v1(conn, entry_rows, trace_rows)


def write_cost(work: str, jobs: int, repeat: int) -> dict[str, float]:
    """
    Process CPU microseconds per state entry written as intake writes them, with and
    without the counters and kept durations (fresh stores, no syncs), medians of
    C{repeat} alternating rounds; and SQLite virtual machine steps per entry (the same
    on any box: the load of other processes does not change it).
    """
    import attrs

    changes: list[list[tuple[list[Any], list[Any]]]] = []
    for k in range(1, 6):
        commits = []
        for first in range(0, jobs, 50):
            entry_rows: list[Any] = []
            trace_rows: list[Any] = []
            for i in range(first, min(first + 50, jobs)):
                jobid, status = job(i, jobs)
                times = list(status.stateEnterTimes.items())
                before = attrs.evolve(status, stateEnterTimes=dict(times[: k - 1]))
                after = attrs.evolve(status, stateEnterTimes=dict(times[:k]))
                entry_rows.extend(entries(jobid, before if k > 1 else None, after))
                trace_rows.append(trace_row(jobid, after))
            commits.append((entry_rows, trace_rows))
        changes.append(commits)
    n_entries = sum(len(e) for commits in changes for e, _ in commits)
    times: dict[str, list[float]] = {"with": [], "without": []}
    steps: dict[str, int] = {}
    for r in range(repeat):
        for name, target, write in (
            ("without", MIGRATIONS.index(_migrate_stats_counters), lifecycle._write_v1),
            ("with", len(MIGRATIONS), lifecycle.write),
        ):
            db = os.path.join(work, f"write-{name}-{r}.sqlite")
            conn = connect(db)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = OFF")
            migrate(conn, target)
            ticks = [0]

            def tick(ticks: list[int] = ticks) -> int:
                ticks[0] += 1
                return 0

            conn.set_progress_handler(tick, 100)
            started = time.process_time()
            for commits in changes:
                for entry_rows, trace_rows in commits:
                    conn.execute("BEGIN IMMEDIATE")
                    write(conn, entry_rows, trace_rows)
                    conn.execute("COMMIT")
            times[name].append((time.process_time() - started) / n_entries * 1e6)
            steps[name] = ticks[0] * 100 // n_entries
            conn.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
    without = statistics.median(times["without"])
    with_ = statistics.median(times["with"])
    return {
        "entries": n_entries,
        "without_us": without,
        "with_us": with_,
        "ratio": with_ / without,
        "without_steps": steps["without"],
        "with_steps": steps["with"],
    }


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    times = []
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), result


def iso(us: int) -> str:
    return str(us / S)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs stored")
    parser.add_argument("--repeat", type=int, default=15, help="timings of each query per run")
    parser.add_argument("--runs", type=int, default=3, help="runs over the cases (medians of)")
    parser.add_argument(
        "--write-jobs", type=int, default=20_000, help="jobs of the write-path measure"
    )
    parser.add_argument("--dir", help="work directory (default: a new temporary one, removed)")
    args = parser.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-stats-")
    db = os.path.join(work, "lbtwist.sqlite")
    try:
        if os.path.exists(db):
            os.remove(db)
        seconds, migration = fill(db, args.jobs)
        print(
            f"filled {args.jobs} jobs in {seconds:.1f} s, migrated (counters, durations)"
            f" in {migration:.1f} s, {os.path.getsize(db) / 1e6:.0f} MB",
            flush=True,
        )
        reader = SQLiteReader(db)
        mid = T0 + SPAN // 2
        day, hour = 86_400 * S, 3600 * S

        scans: dict[str, Callable[[], Any]] = {}

        def stats(*params: tuple[str, str]) -> Callable[[], Any]:
            request = StatsRequest.parse(params, now=mid, max_buckets=1000)
            fn = lambda: reader.stats(request, 100_000)  # noqa: E731
            scans[repr(fn)] = lambda: lifecycle.stats_scan(reader.conn, request, max_jobs=100_000)
            return fn

        def trace(*params: tuple[str, str]) -> Callable[[], Any]:
            request = TraceRequest.parse(params)
            return lambda: reader.trace(request, 1000)

        day_window = (("from", iso(mid)), ("to", iso(mid + day)))
        hour_window = (("from", iso(mid)), ("to", iso(mid + hour)))
        i = args.jobs // 2
        probe_id, probe = job(i, args.jobs)
        at = iso(probe.stateEnterTimes["Running"] + 30 * S)
        cases = [
            ("stats rate Running, 1 day", "stats", stats(("state", "Running"), *day_window)),
            (
                "stats rate Running, 30 days",
                "stats",
                stats(("state", "Running"), ("from", iso(T0)), ("to", iso(T0 + SPAN))),
            ),
            (
                "stats rate Running, 1 day, per hour",
                "stats",
                stats(("state", "Running"), *day_window, ("step", "3600")),
            ),
            (
                "stats rate Running, 1 day, by ce_node",
                "stats",
                stats(("state", "Running"), *day_window, ("group", "ce_node")),
            ),
            (
                "stats Running->Done, 1 hour",
                "stats",
                stats(("state", "Running"), ("to_state", "Done"), *hour_window),
            ),
            (
                "stats Running->Done, 1 day",
                "stats",
                stats(("state", "Running"), ("to_state", "Done"), *day_window),
            ),
            (
                "stats Running->Done, 1 day, by vo",
                "stats",
                stats(("state", "Running"), ("to_state", "Done"), *day_window, ("group", "vo")),
            ),
            ("trace lrms_id", "trace", trace(("lrms_id", f"{i}.batch.example.org"))),
            ("trace cream_id", "trace", trace(("cream_id", probe_id.rsplit("/", 1)[1]))),
            ("trace jobid", "trace", trace(("jobid", probe_id))),
            ("trace node + at", "trace", trace(("node", probe.cream_node or ""), ("at", at))),
            ("trace dn, 1 hour", "trace", trace(("dn", probe.owner or ""), *hour_window)),
            (
                "trace fqan, 1 minute",
                "trace",
                trace(("fqan", probe.user_fqans[0]), ("from", iso(mid)), ("to", iso(mid + 60 * S))),
            ),
        ]
        worst = {"stats": 0.0, "trace": 0.0, "stats_scan": 0.0}
        medians: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        scan_medians: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        sizes: dict[str, str] = {}
        for run in range(args.runs):
            for name, kind, fn in cases:
                median, top, result = timed(fn, args.repeat)
                medians[name].append(median)
                line = f"run {run + 1} {name:40s} median {median:7.2f} ms  max {top:7.2f} ms"
                if kind == "stats":
                    sizes[name] = f"{result['count']} entries"
                    scan, _, expected = timed(scans[repr(fn)], max(1, args.repeat // 3))
                    if expected != result:
                        raise SystemExit(f"{name}: the counters and the scan differ")
                    scan_medians[name].append(scan)
                    line += f"  scan {scan:7.2f} ms"
                else:
                    sizes[name] = f"{len(result[0])} jobs"
                print(line, flush=True)
        print(f"medians of {args.runs} runs of {args.repeat} timings each (scan: of fewer):")
        for name, kind, _ in cases:
            value = statistics.median(medians[name])
            worst[kind] = max(worst[kind], value)
            line = f"{name:42s} {value:7.2f} ms  ({sizes[name]})"
            if kind == "stats":
                scan = statistics.median(scan_medians[name])
                worst["stats_scan"] = max(worst["stats_scan"], scan)
                line += f"  scan {scan:7.2f} ms, {scan / value:5.1f} x"
            print(line)
        reader.close()
        cost = write_cost(work, args.write_jobs, 3)
        print(
            f"write path, {cost['entries']} state entries in commits of 50 jobs: without"
            f" counters {cost['without_us']:.1f} us CPU/entry, with {cost['with_us']:.1f},"
            f" {cost['ratio']:.2f} x (medians of 3 rounds); SQLite steps/entry"
            f" {cost['without_steps']} and {cost['with_steps']}"
        )
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "worst_median_ms": worst,
                    "write_us_per_entry": cost,
                    "load": os.getloadavg(),
                }
            )
        )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f".venv/bin/python -m bench.stats --jobs {args.jobs} --repeat {args.repeat}"
        f" --runs {args.runs} --write-jobs {args.write_jobs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
