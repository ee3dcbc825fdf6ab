# -*- test-case-name: tests.e2e.test_relay -*-
"""
Benchmark of the relay (docs/relay.md, Benchmark): a real C{twistd lbproxy}
relaying over TLS on loopback to a real C{twistd lbserver}, both durable (SQLite
WAL, synchronous=FULL), the events of many WMS jobs (RegJob ... CREAMStatus
Done-ok, plus the gLite events the proxy generates), logged by producer processes
over the proxy's UNIX socket, each pipelining up to C{--pipeline} unanswered events.

Each repetition starts a fresh pair and runs four phases:

 1. intake alone: the server is down, the events are logged as fast as the proxy
    answers: the proxy's intake rate without relaying (they wait in the outbox);
 2. drain: the server is started: the rate at which the relay empties that
    backlog (first to last arrival at the server), nothing else running;
 3. live: the events are logged as fast as the proxy answers while it relays:
    the intake rate of this phase, the relay rate (relayed events over their
    own span, first to last commit at the server), their ratio, the largest
    backlog seen (rows created at the proxy less rows committed at the server,
    sampled every 50 ms) and the latency at full rate;
 4. half rate: producers paced at half the rate of phase 1: the latency from
    the proxy's intake acknowledgement to the server's commit of each event
    (the time a poller of the server's database, every 2 ms, first sees it: the
    server answers right after that commit), split into the part up to the
    event's arrival in the server's commit group and the commit itself.

Rates count relayed events (generated ones included) for the relay and the drain,
and the same relayed events over the intake's span for the intake ("rows/s"), so
the ratios compare like with like; the logged events/s are printed beside them.

Run from the repository root::

    .venv/bin/python -m bench.relay [--count 40000] [--repeat 3] [--window N]

Targets: live relay rate >= 1.0 x the intake rate of the same phase (no backlog
builds), drain >= 1.5 x the intake alone, median intake-ack -> server-ack under
50 ms at half rate. The last line is the summary and the command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bench.common import IntakePipe
from lbtwist.security.devcerts import make_dev_pki
from tests.e2e import harness
from tests.e2e.harness import free_port
from tests.e2e.test_relay import ACTIONS, LB_HOST, RoleService

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def job_lines(run: str, n: int) -> list[str]:
    jobid = f"https://{LB_HOST}:9000/bench{run}x{n:07d}"
    wms, cream = harness.wms_job_trace(jobid, harness.cream_jobid(n), harness.T0 + n * 10_000)
    return wms + cream


def connection_lines(run: str, conn: int, count: int) -> list[str]:
    lines: list[str] = []
    k = 0
    while len(lines) < count:
        lines += job_lines(run, conn * 1_000_000 + k)
        k += 1
    return lines[:count]


def producer(path: str, lines: list[str], window: int, rate: float, start: Any, out: Any) -> None:
    """
    Pipeline C{lines} with at most C{window} unanswered, at most C{rate} a second
    if C{rate} (0: as fast as answered); report the wall-clock acknowledgement
    time of each.
    """
    payload = [line.encode() + b"\n" for line in lines]
    pipe = IntakePipe(path)
    acked: list[float] = []
    errors = 0
    nxt = 0
    start.wait()
    t0 = time.time()
    while len(acked) < len(payload):
        due = len(payload) if not rate else min(len(payload), int((time.time() - t0) * rate) + 1)
        while nxt < due and nxt - len(acked) < window:
            pipe.pending += payload[nxt]
            nxt += 1
        pipe.send()
        if pipe.pending:
            timeout = 0.0
        elif rate and nxt < len(payload) and nxt - len(acked) < window:
            timeout = max(0.0, t0 + nxt / rate - time.time())
        else:
            timeout = 0.05
        now, answers = pipe.receive(timeout, time.time)
        for answer in answers:
            acked.append(now)
            if not answer.startswith(b"OK"):
                errors += 1
    out.put((lines, acked, errors))
    pipe.close()


def log_events(
    path: str, run: str, count: int, connections: int, window: int, rate: float = 0.0
) -> tuple[float, dict[str, float], int]:
    """
    @return: the start time, the acknowledgement time of each line, the errors.
    """
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    per = count // connections
    procs = [
        ctx.Process(
            target=producer,
            args=(path, connection_lines(run, c, per), window, rate / connections, start, out),
        )
        for c in range(connections)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t0 = time.time()
    start.set()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    acks: dict[str, float] = {}
    errors = 0
    for lines, acked, errs in results:
        acks.update(zip(lines, acked, strict=True))
        errors += errs
    return t0, acks, errors


def ro_connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)


def count_rows(path: str, sql: str) -> int:
    conn = ro_connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


def wait_drained(proxy: RoleService, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_rows(proxy.db_path, "SELECT COUNT(*) FROM outbox") == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("relay did not drain in time")


def server_arrivals(server: RoleService, run: str) -> dict[str, int]:
    """
    @return: the server's arrival stamp (microseconds) of each line of run C{run}.
    """
    conn = ro_connect(server.db_path)
    try:
        rows = conn.execute(
            "SELECT line, arrived FROM events WHERE jobid LIKE ?",
            (f"https://{LB_HOST}:9000/bench{run}x%",),
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


def cpu_seconds(service: RoleService) -> float:
    """
    User and system CPU seconds the service's process used so far.
    """
    assert service.process is not None
    with open(f"/proc/{service.process.pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu(service: RoleService) -> tuple[float, float]:
    """
    CPU seconds so far of the service's reactor (main) thread and of all its other
    threads together (the store's writer and reader threads).
    """
    assert service.process is not None
    pid = service.process.pid
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if int(tid) == pid:
            main += used
        else:
            other += used
    return main, other


def thread_share(before: tuple[float, float], after: tuple[float, float], span: float) -> str:
    """
    The reactor's and the other threads' CPU between two L{thread_cpu} samples, as
    fractions of a core over C{span} seconds.
    """
    span = max(span, 1e-6)
    return (
        f"reactor {(after[0] - before[0]) / span:.2f} core,"
        f" store threads {(after[1] - before[1]) / span:.2f} core"
    )


class Sampler:
    """
    A thread that calls C{sample()} every C{interval} seconds until stopped.
    """

    def __init__(self, interval: float, sample: Callable[[], None]) -> None:
        self.interval = interval
        self.sample = sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
        self.sample()


class CommitPoller:
    """
    When each event of the server's database became visible (its commit): a
    read-only connection polled every C{interval} seconds.
    """

    def __init__(self, server: RoleService, interval: float = 0.002) -> None:
        self.seen: dict[str, float] = {}
        self._conn = ro_connect(server.db_path)
        self._after = int(
            self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        )
        self.sampler = Sampler(interval, self._poll)

    def _poll(self) -> None:
        rows = self._conn.execute(
            "SELECT id, line FROM events WHERE id > ? ORDER BY id", (self._after,)
        ).fetchall()
        now = time.time()
        for _id, line in rows:
            self.seen.setdefault(line, now)
        if rows:
            self._after = rows[-1][0]

    def __enter__(self) -> CommitPoller:
        self.sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.__exit__()
        self._conn.close()


class DepthSampler(Sampler):
    """
    The largest backlog seen: outbox rows the proxy created in this phase (its
    AUTOINCREMENT counter) less the events the server committed in it (the
    poller's count). Rows delivered but not yet removed do not count.
    """

    def __init__(self, proxy: RoleService, poller: CommitPoller, interval: float = 0.05) -> None:
        self.deepest = 0
        self._poller = poller
        self._conn = ro_connect(proxy.db_path)
        self._start = self._created()
        super().__init__(interval, self._depth)

    def _created(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return 0 if row is None else int(row[0])

    def current(self) -> int:
        return self._created() - self._start - len(self._poller.seen)

    def _depth(self) -> None:
        self.deepest = max(self.deepest, self.current())


class Spy:
    """
    C{py-spy record --threads} of the services in C{services} while the block runs
    (nothing without a directory), into C{DIR/<role>.<run>.<phase>.txt}: every
    thread, idle ones too, or (C{gil}) only the thread holding the interpreter lock.
    """

    def __init__(
        self, directory: str | None, phase: str, rep: int, *services: RoleService, gil: bool = False
    ):
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gil = gil
        #: The recording of each service, by role.
        self.outputs: dict[str, str] = {}
        self.started = self.seconds = 0.0
        if directory is None:
            return
        spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        for service in services:
            assert service.process is not None
            out = self.outputs[service.role] = os.path.join(
                directory, f"{service.role}.{rep}.{phase}.txt"
            )
            self.procs.append(
                subprocess.Popen(
                    [spy, "record", "-p", str(service.process.pid), "--threads"]
                    + ["--gil" if gil else "--idle"]
                    + ["-f", "raw", "-r", "200", "-o", out],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)
        self.started = time.time()

    def __enter__(self) -> Spy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.time() - self.started
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(60)

    def report(self, rep: int, phase: str) -> None:
        """
        Print L{lock_holders} of each service (C{--spy-gil} recordings only).
        """
        if not self.gil:
            return
        for role, path in self.outputs.items():
            print(f"  [{rep}] {phase}, {role}: {lock_holders(path, self.seconds)}", flush=True)


def lock_holders(path: str, seconds: float, rate: int = 200) -> str:
    """
    What a C{--spy-gil} recording of C{seconds} says: the share of the time some
    thread held the interpreter lock (samples over C{rate} a second: a lower bound,
    py-spy misses samples while it waits for a core itself), by thread, and the
    functions that held it longest (own time, shares of the samples).
    """
    threads: dict[str, int] = {}
    functions: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            thread = frames[0].partition(": ")[2] or frames[0]
            threads[thread] = threads.get(thread, 0) + n
            leaf = frames[-1].partition(" (")[0]
            functions[leaf] = functions.get(leaf, 0) + n
    total = sum(threads.values())
    if not total:
        return "no samples"
    span = max(seconds * rate, total)
    by_thread = ", ".join(
        f"{name} {n / span:.0%}" for name, n in sorted(threads.items(), key=lambda kv: -kv[1])
    )
    top = ", ".join(
        f"{name} {n / total:.0%}"
        for name, n in sorted(functions.items(), key=lambda kv: -kv[1])[:5]
    )
    return f"lock held {total / span:.0%} of the time ({by_thread}); longest: {top}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]


def make_pair(
    base: str, window: int | None, profile: str | None = None, rep: int = 0
) -> tuple[RoleService, RoleService]:
    pki = make_dev_pki(
        os.path.join(base, "pki"), now=datetime.now(UTC), hostnames=("localhost", LB_HOST)
    )
    host_dn, creds = harness.host_credentials(pki)
    policy = harness.write_policy(os.path.join(base, "policy.conf"), host_dn, ACTIONS)
    store_port = free_port()

    def profiled(role: str) -> list[str]:
        if not profile:
            return []
        path = os.path.join(os.path.abspath(profile), f"{role}.{rep}.prof")
        return ["--profile", path, "--profiler", "cprofile", "--savestats"]

    server = RoleService(
        os.path.join(base, "server"),
        "lbserver",
        harness.server_args(creds, LB_HOST, store_port, policy),
        store_port,
        profiled("lbserver"),
    )
    proxy = RoleService(
        os.path.join(base, "proxy"),
        "lbproxy",
        harness.proxy_args(
            creds,
            {f"{LB_HOST}:9001": store_port},
            *(["--relay-window", str(window)] if window else []),
        ),
        None,
        profiled("lbproxy"),
    )
    return proxy, server


def one_run(base: str, args: argparse.Namespace, rep: int) -> dict[str, float]:
    proxy, server = make_pair(base, args.window, args.profile, rep)
    fig: dict[str, float] = {}
    conns, pipe, count = args.connections, args.pipeline, args.count
    try:
        proxy.start()
        # 1. Intake alone (the server is down: the events wait in the outbox).
        cpu0 = cpu_seconds(proxy)
        t0, acks, errors = log_events(proxy.socket_path, f"{rep}a", count, conns, pipe)
        span = max(acks.values()) - t0
        fig["alone_cpu_ms"] = (cpu_seconds(proxy) - cpu0) * 1000 / len(acks)
        alone_logged = len(acks) / span
        # 2. Drain.
        pending = count_rows(proxy.db_path, "SELECT COUNT(*) FROM outbox")
        server.start()
        pcpu0, scpu0 = cpu_seconds(proxy), cpu_seconds(server)
        pth0, sth0, d0 = thread_cpu(proxy), thread_cpu(server), time.time()
        with Spy(args.spy, "drain", rep, proxy, server, gil=args.spy_gil) as spy:
            wait_drained(proxy)
        pth1, sth1, d1 = thread_cpu(proxy), thread_cpu(server), time.time()
        arrived = list(server_arrivals(server, f"{rep}a").values())
        fig["alone"] = len(arrived) / span
        fig["alone_logged"] = alone_logged
        fig["drain"] = len(arrived) / max((max(arrived) - min(arrived)) / 1e6, 1e-6)
        fig["drain_proxy_cpu_ms"] = (cpu_seconds(proxy) - pcpu0) * 1000 / len(arrived)
        fig["drain_server_cpu_ms"] = (cpu_seconds(server) - scpu0) * 1000 / len(arrived)
        print(
            f"  [{rep}] intake alone: {len(acks)} logged ({errors} errors) in {span:.2f} s:"
            f" {alone_logged:.0f} logged/s, {fig['alone']:.0f} relayed rows/s;"
            f" drain of {pending} rows: {fig['drain']:.0f} rows/s"
            f" (proxy {thread_share(pth0, pth1, d1 - d0)};"
            f" server {thread_share(sth0, sth1, d1 - d0)})",
            flush=True,
        )
        spy.report(rep, "drain")
        # 3. Live, as fast as the intake answers.
        pcpu0, scpu0 = cpu_seconds(proxy), cpu_seconds(server)
        with CommitPoller(server) as poller, DepthSampler(proxy, poller) as depth:
            t0, acks, errors = log_events(proxy.socket_path, f"{rep}b", count, conns, pipe)
            intake_end = max(acks.values())
            backlog = depth.current()
            wait_drained(proxy)
        rows = server_arrivals(server, f"{rep}b")
        seen = [poller.seen[line] for line in rows if line in poller.seen]
        span = intake_end - t0
        fig["live_intake"] = len(rows) / span
        fig["live_intake_logged"] = len(acks) / span
        fig["live"] = len(seen) / max(max(seen) - min(seen), 1e-6)
        fig["live_proxy_cpu_ms"] = (cpu_seconds(proxy) - pcpu0) * 1000 / len(rows)
        fig["live_server_cpu_ms"] = (cpu_seconds(server) - scpu0) * 1000 / len(rows)
        lat = [poller.seen[line] - acks[line] for line in acks if line in poller.seen]
        fig["live_p50"] = statistics.median(lat) * 1000
        fig["live_p99"] = percentile(lat, 0.99) * 1000
        fig["live_deepest"] = depth.deepest
        print(
            f"  [{rep}] live: {len(acks)} logged ({errors} errors) in {span:.2f} s:"
            f" {fig['live_intake_logged']:.0f} logged/s, {fig['live_intake']:.0f} relayed rows/s"
            f" into the outbox; relay {fig['live']:.0f} rows/s"
            f" ({fig['live'] / fig['live_intake']:.2f} x); backlog at most {depth.deepest} rows"
            f" ({backlog} by the end of the intake); ack -> server commit median"
            f" {fig['live_p50']:.1f} ms, p99 {fig['live_p99']:.1f} ms",
            flush=True,
        )
        # 4. Half the rate of the intake alone: latency.
        rate = alone_logged / 2
        pth0, sth0 = thread_cpu(proxy), thread_cpu(server)
        with (
            CommitPoller(server) as poller,
            Spy(args.spy, "half", rep, proxy, server, gil=args.spy_gil) as spy,
        ):
            t0, acks, errors = log_events(proxy.socket_path, f"{rep}c", count, conns, pipe, rate)
            pth1, sth1, h1 = thread_cpu(proxy), thread_cpu(server), time.time()
            wait_drained(proxy)
        arrivals = server_arrivals(server, f"{rep}c")
        lat = [poller.seen[line] - acks[line] for line in acks if line in poller.seen]
        to_server = [arrivals[line] / 1e6 - acks[line] for line in acks if line in arrivals]
        commit = [
            poller.seen[line] - arrivals[line] / 1e6 for line in arrivals if line in poller.seen
        ]
        fig["half_rate"] = len(acks) / (max(acks.values()) - t0)
        fig["half_p50"] = statistics.median(lat) * 1000
        fig["half_p99"] = percentile(lat, 0.99) * 1000
        fig["half_arrive_p50"] = statistics.median(to_server) * 1000
        fig["half_commit_p50"] = statistics.median(commit) * 1000
        print(
            f"  [{rep}] half rate: {fig['half_rate']:.0f} logged/s ({errors} errors):"
            f" intake ack -> server commit median {fig['half_p50']:.1f} ms,"
            f" p99 {fig['half_p99']:.1f} ms (to the server's commit group"
            f" {fig['half_arrive_p50']:.1f} ms, its commit {fig['half_commit_p50']:.1f} ms);"
            f" proxy {thread_share(pth0, pth1, h1 - t0)}; server {thread_share(sth0, sth1, h1 - t0)}",
            flush=True,
        )
        spy.report(rep, "half rate")
        print(
            f"  [{rep}] CPU per relayed row: intake alone {fig['alone_cpu_ms']:.3f} ms (proxy);"
            f" drain proxy {fig['drain_proxy_cpu_ms']:.3f} ms, server"
            f" {fig['drain_server_cpu_ms']:.3f} ms; live proxy {fig['live_proxy_cpu_ms']:.3f} ms,"
            f" server {fig['live_server_cpu_ms']:.3f} ms",
            flush=True,
        )
    except Exception:
        print(proxy.log_text()[-5000:], file=sys.stderr)
        print(server.log_text()[-5000:], file=sys.stderr)
        raise
    finally:
        proxy.cleanup()
        server.cleanup()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("--count", type=int, default=40_000, help="events logged per phase")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians)")
    parser.add_argument("--window", type=int, default=None, help="--relay-window (default: its)")
    parser.add_argument("--connections", type=int, default=16, help="producer connections")
    parser.add_argument("--pipeline", type=int, default=64, help="unanswered events a connection")
    parser.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--spy",
        default=None,
        metavar="DIR",
        help="record every thread of both services with py-spy (raw, per phase) into DIR",
    )
    parser.add_argument(
        "--spy-gil",
        action="store_true",
        help="with --spy: record only the thread holding the interpreter lock (what a drain"
        " waits on), not every thread",
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="cProfile both services' reactor threads (twistd --profile) into DIR",
    )
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-relay-")
    for directory in (args.profile, args.spy):
        if directory:
            os.makedirs(directory, exist_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"relay bench: {args.count} events a phase, {args.repeat} runs; {load}", flush=True)
    figs: list[dict[str, float]] = []
    try:
        for rep in range(args.repeat):
            figs.append(one_run(os.path.join(base, f"run{rep}"), args, rep))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(f[key] for f in figs)

    live_ratio = statistics.median(f["live"] / f["live_intake"] for f in figs)
    alone_ratio = statistics.median(f["live"] / f["alone"] for f in figs)
    drain_ratio = statistics.median(f["drain"] / f["alone"] for f in figs)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"medians of {len(figs)} runs (load after: {load}):")
    print(
        f"  intake alone {med('alone_logged'):.0f} logged/s = {med('alone'):.0f} relayed rows/s;"
        f" drain {med('drain'):.0f} rows/s = {drain_ratio:.2f} x the intake alone"
    )
    print(
        f"  live: intake {med('live_intake_logged'):.0f} logged/s = {med('live_intake'):.0f}"
        f" rows/s, relay {med('live'):.0f} rows/s = {live_ratio:.2f} x the live intake,"
        f" {alone_ratio:.2f} x the intake alone; largest backlog {med('live_deepest'):.0f} rows;"
        f" ack -> server commit median {med('live_p50'):.1f} ms p99 {med('live_p99'):.1f} ms"
    )
    print(
        f"  half rate ({med('half_rate'):.0f} logged/s): intake ack -> server commit median"
        f" {med('half_p50'):.1f} ms, p99 {med('half_p99'):.1f} ms (to the server's commit group"
        f" {med('half_arrive_p50'):.1f} ms, its commit {med('half_commit_p50'):.1f} ms)"
    )
    print(
        f"relay: live {med('live'):.0f} rows/s ({live_ratio:.2f} x intake {med('live_intake'):.0f}),"
        f" drain {med('drain'):.0f} rows/s ({drain_ratio:.2f} x intake alone {med('alone'):.0f}),"
        f" half-rate ack -> server p50 {med('half_p50'):.1f} ms p99 {med('half_p99'):.1f} ms;"
        f" command: .venv/bin/python -m bench.relay --count {args.count} --repeat {args.repeat}"
        + (f" --window {args.window}" if args.window else "")
        + f" --connections {args.connections} --pipeline {args.pipeline}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
