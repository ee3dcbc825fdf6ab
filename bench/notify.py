# -*- test-case-name: tests.e2e.test_notify -*-
"""
Benchmark of notifications (docs/notifications.md): a real C{twistd lbproxy}
on its development PKI, registrations made over HTTPS with the development
user's proxy (L{lbtwist.client.notify}), and the intake driven as
C{bench/intake.py} drives it (16 producer connections, CREAM traces).

1. Intake rate with no registrations and with C{--registrations} (10,000) of
   which C{--matching} (1,000) match jobs of the run (one registration per
   job: each of those jobs' events queues a message), each run on a fresh
   state directory, alternating, C{--repeat} times (medians and the ratio of
   each pair, measured in the same run of this script), and the service's
   CPU time per event. Each service is first left to open its store (its
   sockets listen before: loading the registrations is start-up, not intake).
2. Event acknowledgement to client receipt: with the registrations in place
   and the intake loaded at half the rate measured with them, a probe logs
   events of its own jobs one at a time and a L{NotificationStream} receives
   their messages; latency = receipt - acknowledgement (median, p99).
3. Memory: C{--registrations} registrations, 100 of them for all the user's
   jobs, and C{--messages} messages queued for them (events x 100, none
   read): the service's RSS, then its RSS and start-up time after a restart.

Run from the repository root::

    .venv/bin/python -m bench.notify                      # defaults, a few minutes
    .venv/bin/python -m bench.notify --messages 1000000   # the 1,000,000-message RSS

Targets: intake with registrations >= 0.8 x without; latency median < 50 ms,
p99 < 200 ms; RSS < 300 MB with 10,000 registrations and 1,000,000 messages.
The last line is a summary and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.intake import cpu_seconds, drive, fmt, job_lines
from lbtwist.security.devcerts import USER_NAME
from lbtwist.security.identity import slash_dn
from tests.e2e.harness import LBService, cream_jobid

DEV_DN = slash_dn(USER_NAME)

#: Jobs of the intake's run C{r}, connection C{c}: C{r * 10_000_000 + c * 100_000 + k}.
EVENTS_PER_JOB = len(job_lines(0))
#: Job numbers never logged (the registrations that match nothing).
UNRELATED_BASE = 90_000_000
PROBE_BASE = 95_000_000
ALL_JOBS_REGISTRATIONS = 100
#: The run number of the intake's jobs (their ids; every run has its own store).
RUN = 1
#: Validity asked for (the service's maximum, 24 h by default, is granted).
VALIDITY = 86400


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def settle(pid: int, timeout: float = 60.0) -> float:
    """
    Wait until a service started is idle: its socket listens before its store
    has opened (twistd binds ports first), and loading 10,000 registrations
    would otherwise be measured as intake. Idle: under 10 ms of CPU in 0.2 s,
    twice in a row.

    @return: the seconds waited.
    """
    t0 = time.monotonic()
    quiet = 0
    last = cpu_seconds(pid)
    while quiet < 2 and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.01 else 0
        last = now
    return time.monotonic() - t0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Service:
    """
    A proxy with its query port, raised notification limits, and the paths
    of its development credentials.
    """

    def __init__(
        self, base: str, registrations: int, queue_messages: int, template: str | None = None
    ) -> None:
        self.port = free_port()
        if template is not None:
            # The registrations made once, copied for each run (a stopped service's state).
            shutil.copytree(template, os.path.join(base, "state"))
        self.svc = LBService(
            base,
            [
                # The traces' jobs belong to the harness's user: the registrant reads all.
                "--super-user", DEV_DN,
                "--query", f"tcp:{self.port}:interface=127.0.0.1",
                "--notify-max-per-user", str(registrations + 1000),
                "--notify-queue-max-messages", str(queue_messages),
                "--notify-queue-max-bytes", str(1 << 40),
                # The registering client opens --concurrency connections at once.
                "--max-handshakes-per-address", "64",
            ],
        )  # fmt: skip
        self.started = 0.0

    def start(self) -> None:
        t0 = time.perf_counter()
        self.svc.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(self.svc.log_text()[-3000:]) from None
                time.sleep(0.02)
        self.started = time.perf_counter() - t0

    @property
    def devcerts(self) -> Path:
        return Path(self.svc.state_dir) / "devcerts"

    def helper(self, *args: str, timeout: float = 3600) -> Any:
        """
        Run this module's Twisted helper against the service; its JSON answer.
        """
        cmd = [sys.executable, "-m", "bench.notify", "--helper", *args,
               "--port", str(self.port), "--devcerts", str(self.devcerts)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"helper {args[0]} failed: {out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        self.svc.cleanup()


def run_jobs(run: int, connections: int, count: int) -> list[str]:
    """
    The job ids the intake logs in run C{run} (see L{bench.intake.connection_lines}).
    """
    per = count // connections
    jobs_per_conn = -(-per // EVENTS_PER_JOB)
    return [
        cream_jobid(run * 10_000_000 + c * 100_000 + k)
        for k in range(jobs_per_conn)
        for c in range(connections)
    ]


def registration_specs(total: int, matching: list[str]) -> list[dict[str, Any]]:
    """
    C{total} registrations: one per job of C{matching}, the rest for jobs never logged.
    """
    specs = [{"conditions": {"jobid": [j]}, "validity": VALIDITY} for j in matching]
    specs += [
        {"conditions": {"jobid": [cream_jobid(UNRELATED_BASE + i)]}, "validity": VALIDITY}
        for i in range(total - len(specs))
    ]
    return specs


# The Twisted helper (a subprocess: the measuring process forks producers).


def _client(reactor: Any, port: int, devcerts: str, concurrency: int) -> Any:
    from twisted.web.client import Agent, HTTPConnectionPool

    from lbtwist.client.notify import NotifyClient
    from lbtwist.client.query import Credentials, LBPolicy, QueryClient, client_tls

    creds = Credentials(
        os.path.join(devcerts, "user", "x509up"), None, os.path.join(devcerts, "certificates")
    )
    context, log = client_tls(creds)
    query = QueryClient(reactor, context, log, timeout=300)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    query.agent = Agent(reactor, contextFactory=LBPolicy(context), pool=pool)
    return NotifyClient(query)


async def _register(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet.defer import Deferred, gatherResults

    client = _client(reactor, args.port, args.devcerts, args.concurrency)
    specs = json.loads(Path(args.specs).read_text())
    base = [f"https://localhost:{args.port}"]
    t0 = time.perf_counter()
    ids: list[str] = []
    queue = list(reversed(specs))

    async def worker() -> None:
        while queue:
            spec = queue.pop()
            reg = await Deferred.fromCoroutine(client.create(base, spec))
            ids.append(reg.id)

    await gatherResults(
        [Deferred.fromCoroutine(worker()) for _ in range(args.concurrency)], consumeErrors=True
    )
    seconds = time.perf_counter() - t0
    return {"registered": len(ids), "seconds": seconds, "ids": ids[:1]}


async def _probe(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """
    One registration for the probe jobs; log their events one at a time,
    each acknowledged, and time its message's arrival on the stream.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread

    from lbtwist.client.notify import NotificationStream, NotifId
    from tests.e2e.harness import connect, read_line

    client = _client(reactor, args.port, args.devcerts, 4)
    probes = [cream_jobid(PROBE_BASE + i) for i in range(-(-args.probes // EVENTS_PER_JOB))]
    lines = []
    for i in range(len(probes)):
        lines += [(probes[i], line) for line in job_lines(PROBE_BASE + i)]
    lines = lines[: args.probes]
    reg = await Deferred.fromCoroutine(
        client.create([f"https://localhost:{args.port}"], {"conditions": {"jobid": probes}})
    )
    arrived: dict[int, float] = {}
    got: list[int] = [0]
    events: dict[int, threading.Event] = {}

    def on_message(message: Any) -> None:
        got[0] += 1
        arrived[got[0]] = time.perf_counter()
        e = events.get(got[0])
        if e is not None:
            e.set()

    stream = NotificationStream(client, NotifId.parse(reg.id), on_message, clock=reactor)
    finished = stream.start()
    acks: dict[int, float] = {}

    def produce() -> None:
        sock = connect(args.socket, 30)
        time.sleep(0.5)
        for n, (_, line) in enumerate(lines, 1):
            events[n] = threading.Event()
            sock.sendall(line.encode() + b"\n")
            answer = read_line(sock)
            acks[n] = time.perf_counter()
            if not answer.startswith(b"OK"):
                raise RuntimeError(f"probe event refused: {answer!r}")
            events[n].wait(10)
            time.sleep(args.probe_gap)
        sock.close()

    await deferToThread(produce)
    stream.stop()
    await finished
    lat = sorted((arrived[n] - acks[n]) * 1000 for n in acks if n in arrived)
    return {
        "probes": len(acks),
        "received": len(lat),
        "median_ms": statistics.median(lat) if lat else None,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] if lat else None,
        "max_ms": lat[-1] if lat else None,
    }


def helper_main(args: argparse.Namespace) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    result: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        work = _register if args.helper == "register" else _probe
        result.update(await work(reactor, args))

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    print(json.dumps(result))
    return 0


# The measurements.


def register(svc: Service, specs: list[dict[str, Any]], base: str, concurrency: int) -> float:
    path = os.path.join(base, f"specs.{svc.port}.json")
    Path(path).write_text(json.dumps(specs))
    answer = svc.helper("register", "--specs", path, "--concurrency", str(concurrency))
    if answer["registered"] != len(specs):
        raise RuntimeError(f"registered {answer['registered']} of {len(specs)}")
    return float(answer["registered"] / answer["seconds"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Notifications benchmark.")
    parser.add_argument("--count", type=int, default=30_000, help="events per intake run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--registrations", type=int, default=10_000)
    parser.add_argument("--matching", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3, help="pairs of intake runs")
    parser.add_argument("--probes", type=int, default=300, help="latency probe events")
    parser.add_argument("--probe-gap", type=float, default=0.02, help="seconds between probes")
    parser.add_argument(
        "--messages", type=int, default=100_000, help="messages queued for the RSS figure"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="registering requests")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument(
        "--skip-intake", action="store_true", help="only the RSS figure (e.g. --messages 1000000)"
    )
    parser.add_argument("--helper", choices=("register", "probe"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--devcerts", help=argparse.SUPPRESS)
    parser.add_argument("--specs", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.helper:
        return helper_main(args)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-notify-")
    os.makedirs(base, exist_ok=True)
    queue_bound = max(10_000, args.messages // ALL_JOBS_REGISTRATIONS + 100)
    run = 0

    def service(name: str, template: str | None = None) -> Service:
        nonlocal run
        run += 1
        s = Service(
            os.path.join(base, f"{run}-{name}"), args.registrations + ALL_JOBS_REGISTRATIONS,
            queue_bound, template,
        )  # fmt: skip
        s.start()
        return s

    def finish(svc: Service) -> None:
        svc.stop()
        shutil.rmtree(svc.svc.base, ignore_errors=True)

    # The registrations, made once over HTTPS: one per matching job of the
    # intake's runs, the others for jobs never logged.
    jobs = run_jobs(RUN, args.connections, args.count)
    step = max(1, len(jobs) // max(1, args.matching))
    specs = registration_specs(args.registrations, jobs[::step][: args.matching])
    svc = service("template")
    reg_rate = register(svc, specs, base, args.concurrency)
    svc.svc.stop()
    template = os.path.join(base, "template-state")
    shutil.copytree(svc.svc.state_dir, template)
    finish(svc)
    print(f"registered {args.registrations} at {reg_rate:,.0f}/s", flush=True)

    without: list[float] = []
    with_regs: list[float] = []
    ratios: list[float] = []
    cpu_without: list[float] = []
    cpu_with: list[float] = []
    cpu_ratios: list[float] = []
    result: dict[str, Any] = {}
    if not args.skip_intake:
        # 1. Intake with and without registrations, alternating.
        rss_after: list[float] = []
        for rep in range(args.repeat):
            for kind in ("none", "regs"):
                svc = service(kind, template if kind == "regs" else None)
                try:
                    settle(svc.svc.process.pid)  # type: ignore[union-attr]
                    figures = drive(
                        svc.svc.socket_path, args.connections, args.count, RUN, args.window,
                        None, pid=svc.svc.process.pid,  # type: ignore[union-attr]
                    )  # fmt: skip
                    if kind == "regs":
                        rss_after.append(rss_mb(svc.svc.process.pid))  # type: ignore[union-attr]
                finally:
                    finish(svc)
                (without if kind == "none" else with_regs).append(figures["rate"])
                (cpu_without if kind == "none" else cpu_with).append(figures["cpu_us"])
                print(fmt(f"run {rep + 1}, {kind}", figures), flush=True)
            print(
                f"  ratio {with_regs[-1] / without[-1]:.2f}"
                f" (service CPU per event: {cpu_without[-1] / cpu_with[-1]:.2f})",
                flush=True,
            )
        ratios += [w / n for w, n in zip(with_regs, without, strict=True)]
        cpu_ratios = [n / w for w, n in zip(cpu_with, cpu_without, strict=True)]
        print(f"RSS after a run with the registrations {statistics.median(rss_after):.0f} MB")

        # 2. Latency at half the intake rate with the registrations.
        half = statistics.median(with_regs) / 2
        svc = service("latency", template)
        try:
            settle(svc.svc.process.pid)  # type: ignore[union-attr]

            def probe() -> None:
                result.update(svc.helper("probe", "--probes", str(args.probes), "--probe-gap",
                                         str(args.probe_gap), "--socket", svc.svc.socket_path))  # fmt: skip

            t = threading.Thread(target=probe)
            t.start()
            time.sleep(2.0)  # the probe's registration and stream first
            load = drive(svc.svc.socket_path, args.connections, args.count, RUN, args.window, half)
            t.join()
        finally:
            finish(svc)
        print(fmt(f"load at {half:,.0f}/s", load), flush=True)
        if not result.get("received"):
            raise RuntimeError(f"no probe message received: {result}")
        print(
            f"ack to receipt over {result['received']}/{result['probes']} probes: median "
            f"{result['median_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms",
            flush=True,
        )

    # 3. RSS with the registrations plus 100 for all jobs, and queued messages.
    svc = service("rss", template)
    try:
        everything = [{"validity": VALIDITY} for _ in range(ALL_JOBS_REGISTRATIONS)]
        register(svc, everything, base, args.concurrency)
        # At least one event per producer connection (each sends count // connections).
        events = max(args.connections, -(-args.messages // ALL_JOBS_REGISTRATIONS))
        drive(svc.svc.socket_path, args.connections, events, RUN + 1, args.window, None)
        pid = svc.svc.process.pid  # type: ignore[union-attr]
        rss_full = rss_mb(pid)
        svc.svc.stop()
        svc.start()
        restart = svc.started
        rss_restart = rss_mb(svc.svc.process.pid)  # type: ignore[union-attr]
        size = os.path.getsize(svc.svc.db_path) / 2**20
    finally:
        finish(svc)
    queued = events * ALL_JOBS_REGISTRATIONS
    print(
        f"RSS with {args.registrations + ALL_JOBS_REGISTRATIONS} registrations and "
        f"{queued:,} queued messages: "
        f"{rss_full:.0f} MB; after a restart {rss_restart:.0f} MB (start-up {restart:.2f} s); "
        f"store {size:.0f} MB",
        flush=True,
    )
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    command = (
        f".venv/bin/python -m bench.notify --count {args.count} --registrations "
        f"{args.registrations} --matching {args.matching} --repeat {args.repeat} "
        f"--probes {args.probes} --messages {args.messages}"
        + (" --skip-intake" if args.skip_intake else "")
    )
    parts = []
    met = max(rss_full, rss_restart) < 300
    if ratios:
        ratio = statistics.median(ratios)
        met = met and ratio >= 0.8 and result["median_ms"] < 50 and result["p99_ms"] < 200
        parts.append(
            f"intake {statistics.median(without):,.0f} ev/s without, "
            f"{statistics.median(with_regs):,.0f} with {args.registrations} registrations "
            f"(ratio median {ratio:.2f}, runs {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"service CPU per event ratio median {statistics.median(cpu_ratios):.2f})"
        )
        parts.append(f"latency p50 {result['median_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms")
    parts.append(f"RSS {max(rss_full, rss_restart):.0f} MB with {queued:,} messages")
    print(f"notify bench: {'; '.join(parts)}; targets {'met' if met else 'NOT met'} | {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
