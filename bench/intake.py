# -*- test-case-name: tests.e2e.test_proxy -*-
"""
Benchmark of the durable intake (docs/reference.md, Performance targets): a real C{twistd lbproxy}
on a temporary state directory (SQLite WAL, synchronous=FULL), driven by
producer processes over the UNIX socket with the line framing, pipelining with
a window, logging direct CREAM jobs' traces (RegJob, CREAMAccepted, CREAMStore,
CREAMCall, CREAMStatus x6, CREAMPurge ...).

Runs: 1 connection, 16 connections (throughput and acknowledgement latency),
then 16 connections rate-limited to half the 16-connection rate (latency), and
this machine's raw SQLite group-commit rates for comparison. In the rate-limited
run each producer writes one event per write, on a schedule shifted by a
fraction of its send interval so the connections do not all send at the same
instants (unshifted, every tick was a burst of one event from each of the 16
connections, and the median latency measured the queue behind that burst).

Run from the repository root::

    .venv/bin/python -m bench.intake [--count 100000] [--window 64]

Target: >= 25,000 events/s from 16 connections; median latency < 5 ms at half
that rate. The last line is a one-line summary and the command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e.harness import T0, LBService, cream_direct_trace, cream_jobid, ulm_line


def job_lines(n: int) -> list[str]:
    """
    The events CREAM logs for one direct job: the CREAM trace, two ARRIVED
    status notifications and the purge.
    """
    jobid = cream_jobid(n)
    steps = cream_direct_trace(jobid, T0 + n * 10_000)
    lines = [s.line for s in steps]
    last = steps[-1].date
    creamid = jobid.rsplit("/", 1)[1]

    def extra(i: int, date: int, event: str, source: str, **fields: str) -> str:
        return ulm_line(
            event,
            jobid=jobid,
            date=date,
            source=source,
            seqcode=f"no_seqcodes_with_cream_{creamid}_x{i}",
            **fields,
        )

    # CREAM also logs the ARRIVED half of status changes (no state effect),
    # each just before the DONE half.
    arrived_idle = extra(
        1, steps[6].date - 500, "CREAMStatus", "CREAMExecutor", result="ARRIVED", new_state="IDLE"
    )
    arrived_running = extra(
        2,
        steps[7].date - 500,
        "CREAMStatus",
        "CREAMExecutor",
        result="ARRIVED",
        new_state="RUNNING",
    )
    lines[7:7] = [arrived_running]
    lines[6:6] = [arrived_idle]
    lines.append(
        extra(
            3,
            last + 1000,
            "CREAMCall",
            "CREAMExecutor",
            callee="LRMS",
            command="CMDPURGE",
            result="OK",
        )
    )
    lines.append(extra(4, last + 2000, "CREAMPurge", "CREAMInterface"))
    return lines


def connection_lines(conn: int, count: int, run: int) -> list[str]:
    """
    C{count} events for connection C{conn}: jobs of its own, eight interleaved.
    """
    traces: list[list[str]] = []
    total = 0
    k = 0
    while total < count:
        trace = job_lines(run * 10_000_000 + conn * 100_000 + k)
        traces.append(trace)
        total += len(trace)
        k += 1
    lines: list[str] = []
    for g in range(0, len(traces), 8):
        group = traces[g : g + 8]
        for i in range(max(len(t) for t in group)):
            lines += [t[i] for t in group if i < len(t)]
    return lines[:count]


def producer(
    path: str,
    conn: int,
    count: int,
    run: int,
    window: int,
    rate: float | None,
    start: Any,
    out: Any,
    phase: float = 0.0,
) -> None:
    """
    One producer process: pipeline C{count} events with at most C{window}
    unanswered, at most C{rate} events/s if given; put the results on C{out}.

    @param phase: with a rate, the fraction of one send interval this producer's
        schedule is shifted by, so that producers of one run do not all send at
        the same instants (a burst of one event per connection at once).
    """
    payload = [line.encode() + b"\n" for line in connection_lines(conn, count, run)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sent_at: list[float] = []
    latencies: list[float] = []
    ok = errors = 0
    buf = b""
    pending = b""
    start.wait()
    t0 = time.perf_counter()
    # Send times are t0 + (n + phase) / rate: spread the producers evenly.
    due0 = t0 + (phase / rate if rate is not None else 0.0)
    nxt = 0
    while len(latencies) < count:
        now = time.perf_counter()
        # Queue what the window and the rate allow.
        while nxt < count and nxt - len(latencies) < window:
            if rate is not None and now < due0 + nxt / rate:
                break
            pending += payload[nxt]
            sent_at.append(now)
            nxt += 1
        if pending:
            try:
                n = sock.send(pending)
                pending = pending[n:]
            except BlockingIOError:
                pass
        timeout = 0.0 if pending else 0.05
        # With the window full only an answer can make progress: wait for it rather than
        # spin on a rate deadline that has already passed.
        window_full = nxt - len(latencies) >= window
        if rate is not None and nxt < count and not pending and not window_full:
            timeout = max(0.0, min(timeout, due0 + nxt / rate - time.perf_counter()))
        for _key, _mask in sel.select(timeout):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"connection {conn} closed by the service")
            buf += chunk
            got = time.perf_counter()
            while b"\n" in buf:
                answer, _, buf = buf.partition(b"\n")
                latencies.append(got - sent_at[len(latencies)])
                if answer.startswith(b"OK"):
                    ok += 1
                else:
                    errors += 1
                    if errors <= 3:
                        print(f"connection {conn}: {answer[:200]!r}", file=sys.stderr)
    out.put((ok, errors, t0, time.perf_counter(), latencies))
    sock.close()


def drive(
    path: str, connections: int, count: int, run: int, window: int, rate: float | None
) -> dict[str, float]:
    """
    C{count} events in total from C{connections} producer processes.

    @param rate: total events/s, or None for as fast as possible.
    """
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    out = ctx.Queue()
    per = count // connections
    per_rate = None if rate is None else rate / connections
    procs = [
        ctx.Process(
            target=producer,
            args=(path, c, per, run, window, per_rate, start, out, c / connections),
        )
        for c in range(connections)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let them build their events and connect
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    seconds = max(r[3] for r in results) - min(r[2] for r in results)
    lat = sorted(x for r in results for x in r[4])
    return {
        "events": ok + errors,
        "ok": ok,
        "errors": errors,
        "seconds": seconds,
        "rate": (ok + errors) / seconds,
        "median_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
    }


def sqlite_ceiling(directory: str) -> dict[str, float]:
    """
    Raw SQLite group-commit figures on this disk (fsync per commit).
    """
    try:
        from bench.sqlite_ceiling import measure
    except ImportError:
        return {}
    single = measure(os.path.join(directory, "ceiling1.sqlite"), 1, 2000)
    grouped = measure(os.path.join(directory, "ceiling256.sqlite"), 256, 100_000)
    return {
        "commits_per_s": single["commits_per_s"],
        "rows_per_s_batch256": grouped["rows_per_s"],
    }


def fmt(name: str, r: dict[str, float]) -> str:
    return (
        f"{name}: {r['rate']:,.0f} events/s ({int(r['events'])} events in {r['seconds']:.2f} s, "
        f"{int(r['errors'])} errors), ack latency median {r['median_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Durable intake benchmark.")
    parser.add_argument("--count", type=int, default=100_000, help="events per run")
    parser.add_argument("--window", type=int, default=64, help="unanswered events per connection")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--profile", metavar="FILE", help="run twistd under cProfile, stats to FILE.<run>"
    )
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-")

    def service(run: int) -> LBService:
        twistd_args = []
        if args.profile:
            twistd_args = [f"--profile={args.profile}.{run}", "--profiler=cprofile", "--savestats"]
        svc = LBService(os.path.join(base, f"run{run}"), twistd_args=twistd_args)
        svc.start()
        return svc

    figures: dict[str, dict[str, float]] = {}
    plan = [
        ("1 connection", 1, None),
        (f"{args.connections} connections", args.connections, None),
    ]
    for run, (name, conns, rate) in enumerate(plan):
        svc = service(run)
        try:
            figures[name] = drive(svc.socket_path, conns, args.count, run, args.window, rate)
        finally:
            svc.cleanup()
        print(fmt(name, figures[name]), flush=True)
    full = figures[f"{args.connections} connections"]["rate"]
    half = full / 2
    name = f"{args.connections} connections at {half:,.0f}/s"
    svc = service(len(plan))
    try:
        figures[name] = drive(
            svc.socket_path, args.connections, args.count // 2, len(plan), args.window, half
        )
    finally:
        svc.cleanup()
    print(fmt(name, figures[name]), flush=True)
    ceiling = sqlite_ceiling(base)
    if ceiling:
        print(
            f"raw SQLite (WAL, synchronous=FULL) on this disk: {ceiling['commits_per_s']:,.0f} "
            f"commits/s of 1 row; {ceiling['rows_per_s_batch256']:,.0f} rows/s in commits of 256"
        )
    met = full >= 25_000 and figures[name]["median_ms"] < 5
    command = (
        f".venv/bin/python -m bench.intake --count {args.count} --window {args.window} "
        f"--connections {args.connections}"
    )
    print(
        f"intake bench: 1 conn {figures['1 connection']['rate']:,.0f} ev/s; "
        f"{args.connections} conns {full:,.0f} ev/s (p50 "
        f"{figures[f'{args.connections} connections']['median_ms']:.1f} ms); at half rate "
        f"p50 {figures[name]['median_ms']:.2f} ms p99 {figures[name]['p99_ms']:.2f} ms; "
        f"sqlite {ceiling.get('commits_per_s', 0):,.0f} commits/s; "
        f"target {'met' if met else 'NOT met'} | {command}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
