# -*- test-case-name: tests.e2e.test_spool -*-
"""
Benchmark of the interlogger-compatible intake (C{--il-spool}, C{--il-socket})
beside the socket intake, each on a fresh C{twistd lbproxy} in the same run.

Runs (the three intakes in turn, C{--rounds} times; medians reported), each with C{--writers} producer processes (16) logging direct CREAM jobs'
traces (the events of L{bench.intake}):

  - the socket intake: the line framing, pipelined (window 64), as L{bench.intake};
  - the spool with pokes: each event appended to its job's file under a lock and
    poked, as L&B's Java C{ContextIL} does with a socket;
  - the spool without pokes (CREAM's C{LBLogger} never pokes): inotify finds them;
  - poke latency: one producer logs one poked event at a time while the others
    are idle, and waits until it is in the store (polled every 1 ms).

The spool runs count an event when it is in the store (polled every 5 ms). The
writers make their lines and file names before the start (as the socket
producers make their payload) and start together once all are ready; in the
timed loop each does only what ContextIL does with a message: append under a
lock and, with a socket, poke (one socket, up to three non-blocking connects).

Every run prints the CPU per event of the service (its reactor thread and its
store threads, from C{/proc}) and of the producers (all their CPU, set-up
included, from the kernel's accounting of the finished processes; for the
writers also their timed loop alone), and the load average before and after.
C{--backlog} sets the proxy's C{--il-socket-backlog}.

Run from the repository root::

    .venv/bin/python -m bench.spool [--count 32000] [--writers 16]

Targets: spool rates >= 0.8 x the socket intake's; median poked-event latency
<= 50 ms. The last line is a one-line summary and the command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.intake import connection_lines, drive
from tests.e2e.contextil import ContextILWriter, java_form, spool_file
from tests.e2e.harness import T0, LBService, cream_jobid, ulm_line


class Counter:
    """
    The number of events in a service's store, read on one read-only connection
    (opened once the service has made its schema).
    """

    def __init__(self, db: str) -> None:
        self.db = db
        self.conn: sqlite3.Connection | None = None

    def __call__(self) -> int:
        if self.conn is None:
            if not os.path.exists(self.db):
                # Not made yet: the service is still starting.
                return 0
            self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]
            )
        except sqlite3.OperationalError:
            # Opened before the service had made its schema: open again.
            self.close()
            return 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def stored(db: str) -> int:
    counter = Counter(db)
    try:
        return counter()
    finally:
        counter.close()


def proxy_cpu(svc: LBService) -> float:
    """
    CPU seconds (user and system, all threads) the service's process used so far.
    """
    assert svc.process is not None
    with open(f"/proc/{svc.process.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(svc: LBService) -> dict[str, float]:
    """
    CPU seconds of each thread of the service so far, by thread name (the
    reactor's is C{twistd}; the store's writer C{PoolThread-lbtwi...}).
    """
    assert svc.process is not None
    result: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    base = f"/proc/{svc.process.pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        name = "reactor" if tid == str(svc.process.pid) else head.split("(", 1)[1]
        fields = tail.split()
        result[name] = result.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return result


def children_cpu() -> float:
    """
    CPU seconds of this process's children that have been waited for.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Costs:
    """
    CPU seconds of the service (by thread) and of the producers over one run.
    """

    def __init__(self, svc: LBService) -> None:
        self.svc = svc
        self.proxy = proxy_cpu(svc)
        self.threads = thread_cpu(svc)
        self.producers = children_cpu()

    def done(self, events: int) -> dict[str, float]:
        """
        Microseconds of CPU per event: the service's (C{proxy_us}; its reactor
        thread's C{reactor_us}, the other threads' C{threads_us}) and the producers'.
        """
        threads = thread_cpu(self.svc)
        reactor = threads.get("reactor", 0.0) - self.threads.get("reactor", 0.0)
        proxy = proxy_cpu(self.svc) - self.proxy
        return {
            "proxy_us": proxy / events * 1e6,
            "reactor_us": reactor / events * 1e6,
            "threads_us": (proxy - reactor) / events * 1e6,
            "producers_us": (children_cpu() - self.producers) / events * 1e6,
        }


def writer(
    prefix: str, sock: str | None, conn: int, count: int, run: int, start: Any, out: Any
) -> None:
    # Made before the start, as the socket producers' payload: in the timed loop
    # only what ContextIL does once it has its message (append, poke).
    lines = [java_form(line) for line in connection_lines(conn, count, run)]
    made = [(spool_file(prefix, line), (line + "\n").encode()) for line in lines]
    w = ContextILWriter(prefix, sock)
    append = w.append
    # Every writer is ready (its setup is not in the timed window): go together.
    start.wait()
    cpu = time.process_time()
    for name, data in made:
        append(name, data)
    out.put((w.poke_errors, time.process_time() - cpu))


def spool_run(svc: LBService, prefix: str, sock: str | None, writers: int, count: int, run: int):
    """
    C{count} events from C{writers} processes appending (and poking if C{sock});
    the time until all are stored.
    """
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(writers + 1)
    out = ctx.Queue()
    per = count // writers
    procs = [
        ctx.Process(target=writer, args=(prefix, sock, c, per, run, start, out))
        for c in range(writers)
    ]
    for p in procs:
        p.start()
    counter = Counter(svc.db_path)
    before = counter()
    costs = Costs(svc)
    # Released when the last writer has made its lines.
    start.wait(timeout=600)
    t0 = time.perf_counter()
    total = per * writers
    written_at = None
    stored_then = 0
    while True:
        n = counter() - before
        if written_at is None and not any(p.is_alive() for p in procs):
            written_at = time.perf_counter()
            stored_then = n
        if n >= total:
            break
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"only {n} of {total} events stored")
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    if written_at is None:
        written_at = time.perf_counter()
        stored_then = total
    counter.close()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    return {
        "events": total,
        "seconds": seconds,
        "rate": total / seconds,
        "write_seconds": written_at - t0,
        # Stored while the writers ran, and the rate once they were done.
        "stored_while_writing": stored_then,
        "rate_after": (total - stored_then) / max(1e-9, seconds - (written_at - t0)),
        # Pokes the kernel refused (listen queue full); ContextIL ignores that.
        "pokes_lost": sum(r[0] for r in results),
        # The writers' CPU in their timed loop only (append and poke).
        "loop_us": sum(r[1] for r in results) / total * 1e6,
        **costs.done(total),
    }


def _poke_cost_child(n: int, lean: bool, out: Any) -> None:
    """
    In a child process (its own reactor): C{n} pokes queued on a UNIX socket
    (each a connection: connect, send, close), then the service side's CPU
    seconds until all are decoded and handed to the scanner (a counting stub).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from lbtwist.core.ilspool import encode_poke
    from lbtwist.service.ilspool import PokeEndpoint, PokeFactory

    class Scanner:
        count = 0

        def poked(self, offset: int, line: bytes) -> None:
            self.count += 1
            if self.count == n:
                reactor.stop()

    directory = tempfile.mkdtemp(prefix="lbtwist-pokes-")
    path = os.path.join(directory, "il.sock")
    factory = PokeFactory(
        Scanner(),  # type: ignore[arg-type]
        clock=reactor,
        allowed_uids=[os.getuid()],
        max_connections=n + 1,
    )
    endpoint: Any = serverFromString(reactor, f"unix:{path}:backlog={n + 16}")
    if lean:
        endpoint = PokeEndpoint(endpoint, reactor)
    endpoint.listen(factory)
    line = java_form(connection_lines(0, 1, 0)[0]).encode() + b"\n"
    message = encode_poke(0, line)
    started: list[float] = []

    def producers() -> None:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.sendall(message)
            s.close()
        started.append(time.process_time())

    reactor.callWhenRunning(producers)
    reactor.run()
    out.put(time.process_time() - started[0])
    shutil.rmtree(directory, ignore_errors=True)


def poke_cost(n: int, rounds: int) -> dict[str, float]:
    """
    Median service-side CPU microseconds per poke: Twisted's transport and
    protocol per connection, and the lean acceptor of the UNIX poke socket.
    """
    ctx = multiprocessing.get_context("fork")
    figures: dict[str, list[float]] = {"transport": [], "lean": []}
    for _ in range(rounds):
        for name, lean in (("transport", False), ("lean", True)):
            out = ctx.Queue()
            p = ctx.Process(target=_poke_cost_child, args=(n, lean, out))
            p.start()
            figures[name].append(out.get(timeout=120) / n * 1e6)
            p.join()
    return {name: statistics.median(values) for name, values in figures.items()}


def latency(svc: LBService, prefix: str, sock: str, probes: int) -> list[float]:
    """
    Seconds from the append (and poke) of one event to its row in the store.
    """
    w = ContextILWriter(prefix, sock)
    jobid = cream_jobid(999_000_001)
    waited = time.perf_counter()
    while not os.path.exists(svc.db_path):
        # A loaded box: the service may not have made its store yet.
        if time.perf_counter() - waited > 60:
            raise RuntimeError(f"no store {svc.db_path} after 60 s")
        time.sleep(0.05)
    conn = sqlite3.connect(f"file:{svc.db_path}?mode=ro", uri=True, timeout=5)
    result = []
    try:
        for n in range(probes):
            date = T0 + 10**12 + n * 1000
            line = ulm_line(
                "CREAMStatus",
                jobid=jobid,
                date=date,
                source="CREAMExecutor",
                seqcode=f"no_seqcodes_with_cream_probe_{n}",
                result="DONE",
                new_state="RUNNING",
            )
            t0 = time.perf_counter()
            w.log(java_form(line))
            while True:
                try:
                    if conn.execute(
                        "SELECT 1 FROM events WHERE jobid = ? AND date = ?", (jobid, date)
                    ).fetchone():
                        break
                except sqlite3.OperationalError:
                    # Opened before the service had made its schema: open again.
                    conn.close()
                    conn = sqlite3.connect(f"file:{svc.db_path}?mode=ro", uri=True, timeout=5)
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError("probe event not stored in 10 s")
                time.sleep(0.001)
            result.append(time.perf_counter() - t0)
            time.sleep(0.02)
    finally:
        conn.close()
    return result


def load() -> str:
    """
    The load averages (1, 5, 15 minutes) and the CPUs of the box.
    """
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def _cpu(r: dict[str, float]) -> tuple[float, float, float, float]:
    return (r["proxy_us"], r["reactor_us"], r["threads_us"], r["producers_us"])


def _fmt_cpu(v: Sequence[float]) -> str:
    return (
        f"service {v[0]:.0f} us (reactor thread {v[1]:.0f}, store threads {v[2]:.0f}), "
        f"producers {v[3]:.0f} us"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Spool intake benchmark.")
    parser.add_argument("--count", type=int, default=32_000, help="events per run")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--window", type=int, default=64, help="socket run: unanswered events")
    parser.add_argument("--probes", type=int, default=100, help="latency probes")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three intakes")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--poke-cost", type=int, default=3000, help="pokes of the per-poke CPU run (0: none)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=None,
        help="the service's --il-socket-backlog (default: the service's default)",
    )
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-spool-")
    sock_dir = tempfile.mkdtemp(prefix="lbtwist-il-")
    try:
        return run(args, base, sock_dir)
    finally:
        # The state directories and spool files of every run (hundreds of MB).
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def run(args: argparse.Namespace, base: str, sock_dir: str) -> int:
    """
    The runs, the figures and the summary line (see L{main}).
    """

    def service(run: int, *extra: str) -> tuple[LBService, str, str]:
        spool = os.path.join(base, f"spool{run}")
        os.makedirs(spool)
        prefix = os.path.join(spool, "dglogd.log")
        sock = os.path.join(sock_dir, f"il{run}.sock")
        if args.backlog is not None:
            extra = (*extra, "--il-socket-backlog", str(args.backlog))
        svc = LBService(
            os.path.join(base, f"run{run}"),
            ["--il-spool", prefix, "--il-socket", sock, "--il-keep-files", *extra],
        )
        svc.start()
        return svc, prefix, sock

    print(f"load before: {load()}", flush=True)
    rates: dict[str, list[float]] = {"socket": [], "spool, poked": [], "spool, no pokes": []}
    cpu: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in rates}
    run = 0
    # The three intakes take turns, --rounds times: a busy box slows them alike.
    for _ in range(args.rounds):
        svc, prefix, sock = service(run)
        try:
            costs = Costs(svc)
            r = drive(svc.socket_path, args.writers, args.count, run, args.window, None)
            r.update(costs.done(int(r["events"])))
        finally:
            svc.cleanup()
        run += 1
        rates["socket"].append(r["rate"])
        cpu["socket"].append(_cpu(r))
        print(
            f"socket intake, {args.writers} connections (window {args.window}): "
            f"{r['rate']:,.0f} events/s; CPU per event: {_fmt_cpu(_cpu(r))}",
            flush=True,
        )
        for name, poke in (("spool, poked", True), ("spool, no pokes", False)):
            svc, prefix, sock = service(run)
            try:
                r = spool_run(svc, prefix, sock if poke else None, args.writers, args.count, run)
            finally:
                svc.cleanup()
            run += 1
            rates[name].append(r["rate"])
            cpu[name].append(_cpu(r))
            lost = f", {int(r['pokes_lost'])} pokes refused by the kernel" if poke else ""
            print(
                f"{name}, {args.writers} writers: {r['rate']:,.0f} events/s stored "
                f"({int(r['events'])} events in {r['seconds']:.2f} s; appended in "
                f"{r['write_seconds']:.2f} s, {int(r['stored_while_writing'])} stored by then, "
                f"then {r['rate_after']:,.0f} events/s); CPU per event: {_fmt_cpu(_cpu(r))} "
                f"(of which their append{' and poke' if poke else ''}: "
                f"{r['loop_us']:.0f} us){lost}",
                flush=True,
            )
    figures = {name: {"rate": statistics.median(values)} for name, values in rates.items()}
    svc, prefix, sock = service(run)
    try:
        lat = sorted(latency(svc, prefix, sock, args.probes))
    finally:
        svc.cleanup()
    median = statistics.median(lat) * 1000
    p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
    print(f"poked event stored: median {median:.1f} ms, p99 {p99:.1f} ms ({len(lat)} probes)")
    for name, values in cpu.items():
        medians = tuple(statistics.median(v[i] for v in values) for i in range(4))
        print(f"{name}: median CPU per event: {_fmt_cpu(medians)}")
    if args.poke_cost:
        cost = poke_cost(args.poke_cost, args.rounds)
        print(
            f"service CPU per poke (socket side, {args.poke_cost} pokes, median of "
            f"{args.rounds}): Twisted transport and protocol {cost['transport']:.1f} us, "
            f"lean acceptor {cost['lean']:.1f} us ({cost['transport'] / cost['lean']:.1f}x less)"
        )
    socket_rate = figures["socket"]["rate"]
    ratios = {k: figures[k]["rate"] / socket_rate for k in ("spool, poked", "spool, no pokes")}
    met = min(ratios.values()) >= 0.8 and median <= 50
    print(f"load after: {load()}")
    backlog = "" if args.backlog is None else f" --backlog {args.backlog}"
    command = (
        f".venv/bin/python -m bench.spool --count {args.count} --writers {args.writers} "
        f"--window {args.window} --probes {args.probes} --rounds {args.rounds} "
        f"--poke-cost {args.poke_cost}{backlog}"
    )
    print(
        f"spool bench (medians of {args.rounds}): socket {socket_rate:,.0f} ev/s; spool poked "
        f"{figures['spool, poked']['rate']:,.0f} ev/s ({ratios['spool, poked']:.2f}x), no pokes "
        f"{figures['spool, no pokes']['rate']:,.0f} ev/s ({ratios['spool, no pokes']:.2f}x); "
        f"poked p50 {median:.1f} ms; target {'met' if met else 'NOT met'} | {command}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
