# -*- test-case-name: tests.e2e.test_proxy -*-
"""
Benchmark of the durable intake (docs/reference.md, Performance targets): a real C{twistd lbproxy}
on a temporary state directory (SQLite WAL, synchronous=FULL), driven by producer processes
over the UNIX socket with the line framing, logging direct CREAM jobs' traces (RegJob,
CREAMAccepted, CREAMStore, CREAMCall, CREAMStatus x6 with their ARRIVED halves, CREAMPurge).

Each round measures this disk's raw SQLite commit rates (L{bench.sqlite_ceiling}), then runs,
each on a fresh service:

 1. C{--connections} pipelining producers (at most C{--window} events unanswered each), as
    fast as the service answers: the throughput, also as a ratio to the 256-row SQLite
    rate of the same round;
 2. the same number of realistic producers, as fast as they go: each sends one event and
    waits for its answer before the next (as CREAM's and L&B's C producers do);
 3. C{--wait-connections} realistic producers (default 64: 16 waiting producers can
    offer at most 16 events per acknowledgement time) offered half the rate of run 1
    between them: the acknowledgement latency;
 4. C{--fair-connections} waiting producers (default 256, C{--per-process} connections per
    producer process) offered the same half rate: each idles between its events, so the
    latency is the service's answer time rather than the queue of closed-loop producers;
 5. pipelining producers at half the rate of run 1.

A waiting producer whose answer comes after its next send time is behind its schedule:
the run then measures closed-loop producers, whose median latency is about their number
over the achieved rate (Little's law), whatever the service does. Each waiting run at a
rate prints the share of sends behind schedule and that bound.

Rated producers send on a schedule shifted by a fraction of their send interval, so the
connections do not all send at the same instants; a realistic producer whose answer comes
after its next send time sends at once (the achieved rate is printed). Latency is from
sending an event to reading its answer. Each run prints the service's CPU time per event
(C{/proc}); the summary gives the medians of C{--repeat} rounds, the load average, and
the reproducing command as its last line.

Run from the repository root::

    .venv/bin/python -m bench.intake [--count 60000] [--seconds 4] [--repeat 3]
    .venv/bin/python -m bench.intake --repeat 1 --spy /tmp/spy   # py-spy of every run

Targets: run 1 at least 0.3 x the 256-row SQLite rate; run 3 median under 5 ms, p99
under 20 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
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


def _lines_payload(conn: int, count: int, run: int) -> list[bytes]:
    return [line.encode() + b"\n" for line in connection_lines(conn, count, run)]


def _wait_producer(
    sock: socket.socket,
    payload: list[bytes],
    rate: float | None,
    t0: float,
    phase: float,
    conn: int,
) -> tuple[int, int, list[float]]:
    """
    The realistic producer (CREAM's, the C library's): send one event, wait for its
    answer, then send the next (at its scheduled time if a rate is given).
    """
    latencies: list[float] = []
    ok = errors = 0
    buf = b""
    due0 = t0 + (phase / rate if rate is not None else 0.0)
    clock = time.perf_counter
    for n, line in enumerate(payload):
        if rate is not None:
            wait = due0 + n / rate - clock()
            if wait > 0:
                time.sleep(wait)
            elif n:
                LATE[0] += 1
        sent = clock()
        sock.sendall(line)
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection {conn} closed by the service")
            buf += chunk
        latencies.append(clock() - sent)
        answer, _, buf = buf.partition(b"\n")
        if answer.startswith(b"OK"):
            ok += 1
        else:
            errors += 1
            if errors <= 3:
                print(f"connection {conn}: {answer[:200]!r}", file=sys.stderr)
    return ok, errors, latencies


#: Sends of this producer process that were due before the previous answer came (a
#: waiting producer behind its schedule: the run is then closed-loop, not paced).
LATE = [0]


def _wait_many(
    socks: list[socket.socket],
    payloads: list[list[bytes]],
    rate: float | None,
    t0: float,
    phases: list[float],
    conn: int,
) -> tuple[int, int, list[float]]:
    """
    Several waiting producers in one process (one selector): each connection sends
    one event, waits for its answer, then sends its next at its scheduled time.
    """
    clock = time.perf_counter
    sel = selectors.DefaultSelector()
    count = [0] * len(socks)
    sent_at = [0.0] * len(socks)
    bufs = [b""] * len(socks)
    due0 = [t0 + (ph / rate if rate is not None else 0.0) for ph in phases]
    waiting: list[tuple[float, int]] = []  # (due, connection) not yet sent
    latencies: list[float] = []
    ok = errors = 0
    for i, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, i)
        waiting.append((due0[i], i))
    left = len(socks)
    while left:
        now = clock()
        waiting.sort()
        while waiting and waiting[0][0] <= now:
            _due, i = waiting.pop(0)
            sent_at[i] = clock()
            socks[i].sendall(payloads[i][count[i]])
        timeout = max(0.0, waiting[0][0] - clock()) if waiting else None
        for key, _mask in sel.select(timeout):
            i = key.data
            chunk = socks[i].recv(4096)
            if not chunk:
                raise ConnectionError(f"connection {conn + i} closed by the service")
            got = clock()
            bufs[i] += chunk
            if b"\n" not in bufs[i]:
                continue
            answer, _, bufs[i] = bufs[i].partition(b"\n")
            latencies.append(got - sent_at[i])
            if answer.startswith(b"OK"):
                ok += 1
            else:
                errors += 1
                if errors <= 3:
                    print(f"connection {conn + i}: {answer[:200]!r}", file=sys.stderr)
            count[i] += 1
            if count[i] == len(payloads[i]):
                left -= 1
                continue
            due = due0[i] + count[i] / rate if rate is not None else got
            if due < got:
                LATE[0] += 1
            waiting.append((max(due, got), i))
    sel.close()
    return ok, errors, latencies


def _pipelined_producer(
    sock: socket.socket,
    payload: list[bytes],
    window: int,
    rate: float | None,
    t0: float,
    phase: float,
    conn: int,
) -> tuple[int, int, list[float]]:
    """
    A pipelining producer: at most C{window} events unanswered, each sent as soon
    as the window (and the rate, if given) allows.
    """
    count = len(payload)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sent_at: list[float] = []
    latencies: list[float] = []
    ok = errors = 0
    buf = b""
    pending = b""
    clock = time.perf_counter
    # Send times are t0 + (n + phase) / rate: spread the producers evenly.
    due0 = t0 + (phase / rate if rate is not None else 0.0)
    nxt = 0
    while len(latencies) < count:
        now = clock()
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
        if pending:
            sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            timeout: float | None = None
        else:
            sel.modify(sock, selectors.EVENT_READ)
            timeout = None
            # With the window full only an answer can make progress: wait for it.
            if rate is not None and nxt < count and nxt - len(latencies) < window:
                timeout = max(0.0, due0 + nxt / rate - clock())
        for _key, mask in sel.select(timeout):
            if not mask & selectors.EVENT_READ:
                continue
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"connection {conn} closed by the service")
            got = clock()
            buf += chunk
            answers = buf.split(b"\n")
            buf = answers.pop()
            for answer in answers:
                latencies.append(got - sent_at[len(latencies)])
                if answer.startswith(b"OK"):
                    ok += 1
                else:
                    errors += 1
                    if errors <= 3:
                        print(f"connection {conn}: {answer[:200]!r}", file=sys.stderr)
    sel.close()
    return ok, errors, latencies


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
    many: int = 0,
    spread: int = 0,
) -> None:
    """
    One producer process: C{count} events with at most C{window} unanswered (1:
    wait for each answer before the next event), at most C{rate} events/s if
    given; put the results on C{out}.

    @param phase: with a rate, the fraction of one send interval this producer's
        schedule is shifted by, so that producers of one run do not all send at
        the same instants (a burst of one event per connection at once).
    @param many: if not 0, this process drives C{many} waiting connections
        (C{conn} to C{conn + many - 1}), C{count} events and C{rate} each, the
        schedule of the k-th shifted by C{phase + k / spread}.
    """
    if many:
        conns = list(range(conn, conn + many))
        payloads = [_lines_payload(c, count, run) for c in conns]
        socks = []
        for _ in conns:
            socks.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            socks[-1].connect(path)
        phases = [phase + k / (spread or many) for k in range(many)]
        start.wait()
        t0 = time.perf_counter()
        ok, errors, latencies = _wait_many(socks, payloads, rate, t0, phases, conn)
        out.put((ok, errors, t0, time.perf_counter(), latencies, LATE[0]))
        for sock in socks:
            sock.close()
        return
    payload = _lines_payload(conn, count, run)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    start.wait()
    t0 = time.perf_counter()
    if window <= 1:
        ok, errors, latencies = _wait_producer(sock, payload, rate, t0, phase, conn)
    else:
        ok, errors, latencies = _pipelined_producer(sock, payload, window, rate, t0, phase, conn)
    out.put((ok, errors, t0, time.perf_counter(), latencies, LATE[0]))
    sock.close()


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU seconds a process has used so far (0 when unknown).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(
    path: str,
    connections: int,
    count: int,
    run: int,
    window: int,
    rate: float | None,
    *,
    pid: int | None = None,
    per_process: int = 1,
) -> dict[str, float]:
    """
    C{count} events in total from C{connections} producer connections, each its own
    process, or C{per_process} waiting connections per process.

    @param window: unanswered events per connection; 1 waits for each answer.
    @param rate: total events/s, or None for as fast as possible.
    @param pid: the service's, to report its CPU time per event.
    """
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    out = ctx.Queue()
    per = count // connections
    per_rate = None if rate is None else rate / connections
    if per_process > 1:
        assert window <= 1 and connections % per_process == 0
        procs = [
            ctx.Process(
                target=producer,
                args=(path, c * per_process, per, run, 1, per_rate, start, out),
                kwargs={
                    "phase": c * per_process / connections,
                    "many": per_process,
                    "spread": connections,
                },
            )
            for c in range(connections // per_process)
        ]
    else:
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
    cpu0 = cpu_seconds(pid) if pid else 0.0
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    for p in procs:
        p.join()
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    seconds = max(r[3] for r in results) - min(r[2] for r in results)
    lat = sorted(x for r in results for x in r[4])
    late = sum(r[5] for r in results)
    events = ok + errors
    return {
        "events": events,
        "ok": ok,
        "errors": errors,
        "seconds": seconds,
        "rate": events / seconds,
        "median_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
        "cpu_us": cpu / events * 1e6 if events else 0.0,
        "cpu_share": cpu / seconds,
        "late": late / events if events else 0.0,
        "connections": connections,
        "waiting_rated": 1.0 if window <= 1 and rate is not None else 0.0,
        # Little's law: the latency of this many closed-loop producers at this rate.
        "little_ms": connections / (events / seconds) * 1000,
    }


def sqlite_ceiling(directory: str) -> dict[str, float]:
    """
    Raw SQLite group-commit figures on this disk (fsync per commit).
    """
    try:
        from bench.sqlite_ceiling import measure
    except ImportError:
        return {}
    single = measure(os.path.join(directory, "ceiling1.sqlite"), 1, 1000)
    grouped = measure(os.path.join(directory, "ceiling256.sqlite"), 256, 50_000)
    return {
        "commits_per_s": single["commits_per_s"],
        "rows_per_s_batch256": grouped["rows_per_s"],
    }


def fmt(name: str, r: dict[str, float]) -> str:
    return (
        f"{name}: {r['rate']:,.0f} events/s ({int(r['events'])} events in {r['seconds']:.2f} s, "
        f"{int(r['errors'])} errors), ack latency median {r['median_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms; service CPU {r['cpu_us']:.0f} us/event "
        f"({r['cpu_share']:.2f} cores)"
        + (
            f"; {r['late'] * 100:.0f} % of sends behind schedule (closed loop:"
            f" {r['connections']:.0f} producers / rate = {r['little_ms']:.2f} ms)"
            if r.get("waiting_rated")
            else ""
        )
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Durable intake benchmark.")
    parser.add_argument(
        "--count", type=int, default=60_000, help="events of the full-rate pipelined run"
    )
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="length of the other runs (at their rate)"
    )
    parser.add_argument(
        "--window", type=int, default=64, help="unanswered events per pipelining connection"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--wait-connections",
        type=int,
        default=64,
        help="waiting producers of the half-rate latency run (16 waiting producers can"
        " offer at most 16 events per acknowledgement time)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (figures are medians)")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--service-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an option of lbproxy for every run (repeatable), e.g."
        " --service-option=--thread-switch-interval=5000",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="run twistd under cProfile, stats to FILE.<run>"
    )
    parser.add_argument(
        "--fair-connections",
        type=int,
        default=256,
        help="waiting producers of the paced half-rate run (0: none): enough that each"
        " idles between events, so the latency is the service's, not the queue of"
        " closed-loop producers",
    )
    parser.add_argument(
        "--per-process",
        type=int,
        default=32,
        help="waiting connections per producer process in that run",
    )
    parser.add_argument(
        "--spy",
        metavar="FILE",
        help="record every thread of the service with py-spy (raw format) to FILE.<run>",
    )
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-")
    try:
        return run(args, base)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, base: str) -> int:
    """
    The benchmark's runs, in C{base} (a work directory).
    """
    conns = args.connections
    number = [0]

    def one(
        name: str,
        window: int,
        count: int,
        rate: float | None,
        conns: int = conns,
        per_process: int = 1,
    ) -> dict[str, float]:
        run = number[0]
        number[0] += 1
        twistd_args = []
        if args.profile:
            twistd_args = [f"--profile={args.profile}.{run}", "--profiler=cprofile", "--savestats"]
        svc = LBService(
            os.path.join(base, f"run{run}"), args.service_option, twistd_args=twistd_args
        )
        svc.start()
        spy = None
        try:
            assert svc.process is not None
            pid = svc.process.pid
            if args.spy:
                spy = subprocess.Popen(
                    [
                        os.path.join(os.path.dirname(sys.executable), "py-spy"),
                        "record",
                        "-p",
                        str(pid),
                        "--threads",
                        "--idle",
                        "-f",
                        "raw",
                        "-r",
                        "250",
                        "-o",
                        f"{args.spy}.{run}",
                    ],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            result = drive(
                svc.socket_path, conns, count, run, window, rate, pid=pid, per_process=per_process
            )
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            svc.cleanup()
        print(f"  {fmt(name, result)}", flush=True)
        return result

    rounds: list[dict[str, dict[str, float]]] = []
    pipe = f"{conns} connections pipelined (window {args.window})"
    wait = f"{conns} connections waiting for each answer"
    for r in range(args.repeat):
        print(f"round {r + 1} of {args.repeat}:", flush=True)
        figures: dict[str, dict[str, float]] = {}
        ceiling = sqlite_ceiling(base)
        figures["sqlite"] = ceiling
        print(
            f"  raw SQLite (WAL, synchronous=FULL) on this disk: {ceiling['commits_per_s']:,.0f}"
            f" commits/s of 1 row; {ceiling['rows_per_s_batch256']:,.0f} rows/s in commits of 256",
            flush=True,
        )
        full = one(pipe, args.window, args.count, None)
        full["ratio"] = full["rate"] / ceiling["rows_per_s_batch256"]
        figures["pipe"] = full
        half = full["rate"] / 2
        figures["wait"] = one(wait, 1, max(conns, int(half * args.seconds / 3)), None)
        waiting = args.wait_connections
        figures["wait_half"] = one(
            f"{waiting} connections waiting for each answer, at {half:,.0f}/s",
            1,
            max(waiting, int(half * args.seconds)),
            half,
            waiting,
        )
        fair = args.fair_connections
        if fair:
            figures["fair_half"] = one(
                f"{fair} connections waiting for each answer, at {half:,.0f}/s"
                f" ({args.per_process} a producer process)",
                1,
                max(fair, int(half * args.seconds)),
                half,
                fair,
                args.per_process,
            )
        figures["pipe_half"] = one(
            f"{pipe}, at {half:,.0f}/s", args.window, max(conns, int(half * args.seconds)), half
        )
        rounds.append(figures)

    def med(run: str, key: str) -> float:
        return _median([f[run][key] for f in rounds])

    rate = med("pipe", "rate")
    ratio = med("pipe", "ratio")
    p50, p99 = med("wait_half", "median_ms"), med("wait_half", "p99_ms")
    pp50, pp99 = med("pipe_half", "median_ms"), med("pipe_half", "p99_ms")
    fair = args.fair_connections
    f50 = med("fair_half", "median_ms") if fair else 0.0
    f99 = med("fair_half", "p99_ms") if fair else 0.0
    print(f"medians of {len(rounds)} rounds:")
    print(
        f"  raw SQLite: {med('sqlite', 'commits_per_s'):,.0f} commits/s of 1 row,"
        f" {med('sqlite', 'rows_per_s_batch256'):,.0f} rows/s in commits of 256"
    )
    print(
        f"  {pipe}: {rate:,.0f} events/s = {ratio:.2f} x the 256-row SQLite rate of the same"
        f" round (target >= 0.30); p50 {med('pipe', 'median_ms'):.1f} ms,"
        f" p99 {med('pipe', 'p99_ms'):.1f} ms; CPU {med('pipe', 'cpu_us'):.0f} us/event"
    )
    print(
        f"  {wait}: {med('wait', 'rate'):,.0f} events/s; p50 {med('wait', 'median_ms'):.2f} ms,"
        f" p99 {med('wait', 'p99_ms'):.2f} ms"
    )
    print(
        f"  {args.wait_connections} connections waiting for each answer, at half rate:"
        f" {med('wait_half', 'rate'):,.0f} events/s achieved;"
        f" p50 {p50:.2f} ms, p99 {p99:.2f} ms (targets < 5, < 20);"
        f" {med('wait_half', 'late') * 100:.0f} % of sends behind schedule, closed loop"
        f" {args.wait_connections} / rate = {med('wait_half', 'little_ms'):.2f} ms"
    )
    if fair:
        print(
            f"  {fair} connections waiting for each answer, at half rate (the paced case:"
            f" {fair} / rate leaves each producer idle between events):"
            f" {med('fair_half', 'rate'):,.0f} events/s achieved; p50 {f50:.2f} ms,"
            f" p99 {f99:.2f} ms; {med('fair_half', 'late') * 100:.0f} % of sends behind schedule"
        )
    print(
        f"  {pipe}, at half rate: {med('pipe_half', 'rate'):,.0f} events/s achieved;"
        f" p50 {pp50:.2f} ms, p99 {pp99:.2f} ms"
    )
    met = ratio >= 0.3 and p50 < 5 and p99 < 20
    print(
        f"intake: {rate:,.0f} ev/s ({ratio:.2f} x sqlite-256); half rate, waiting producers"
        f" p50 {p50:.2f} ms p99 {p99:.2f} ms"
        + (f" ({fair} waiting: p50 {f50:.2f} ms p99 {f99:.2f} ms)" if fair else "")
        + f", pipelined p50 {pp50:.2f} ms p99 {pp99:.2f} ms;"
        f" targets {'met' if met else 'NOT met'}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f".venv/bin/python -m bench.intake --count {args.count} --seconds {args.seconds:g}"
        f" --window {args.window} --connections {conns}"
        f" --wait-connections {args.wait_connections} --fair-connections {fair}"
        f" --per-process {args.per_process} --repeat {args.repeat}"
        + "".join(f" --service-option={o}" for o in args.service_option)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
