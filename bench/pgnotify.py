# -*- test-case-name: tests.integration.test_store_postgres_parity -*-
"""
Notifications shared by PostgreSQL front ends: what they cost the intake, and how
soon a front end hears of a message another one stored.

1. Events/s from 16 waiting producers through 1 and 2 front ends on one database
   (the processes of L{bench.postgres}), with no registration and with one "all
   jobs" registration every event matches: each commit group then also locks that
   registration's row and writes a message, so the front ends' commits take turns
   on it (the worst case of the shared queues).
2. The wake-up latency across front ends: front end B stores an event (one
   producer, answered after its commit); front end A, whose C{LISTEN} connection
   hears of the message, wakes its stream. Both in one process and reactor, so the
   two moments are read on one clock: p50 and p99 of C{--samples} events.

The PostgreSQL server is a private cluster this script starts and removes.

Run: C{.venv/bin/python -m bench.pgnotify [--events N] [--runs N] [--samples N]}.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

PRODUCERS = 16
#: A validity far in the future (registrations here never expire during a run).
UNTIL = 2**40


def _register(url: str, owner: str) -> None:
    """
    Migrate the database and add one "all jobs" registration of C{owner}.
    """
    from twisted.internet.task import Clock

    from lbtwist.core.notif import Conditions, Flags, Registration
    from lbtwist.store.batch import run_now
    from lbtwist.store.postgres import PostgresStore

    store = PostgresStore(url, clock=Clock(), runner=run_now)
    store.start()
    reg = Registration("bench1", owner, (), Conditions(), Flags(), UNTIL, int(time.time()))
    store.notifications.create(reg, time.time())
    store.close()


def throughput(urls: list[str], events: int, registration: bool) -> float:
    """
    Events/s through one front end per URL (L{bench.postgres.throughput}), after an
    "all jobs" registration when C{registration}.
    """
    from bench import postgres
    from lbtwist.core.events import parse_event

    if registration:
        owner = parse_event(postgres._lines("9", 1, 1)[0]).user
        _register(urls[0], owner)
    return postgres.throughput(urls, events)


def wake_latency(url: str, samples: int) -> tuple[float, float, int]:
    """
    Two threaded front ends on C{url} in this process: B stores events one by
    one, A's listener wakes for each.

    @return: p50 and p99 in milliseconds, and the messages A read.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred

    from bench import postgres
    from lbtwist.core.events import parse_event
    from lbtwist.core.notif import Conditions, Flags, Registration
    from lbtwist.store.postgres import PostgresStore

    lines = postgres._lines("5", max(1, samples // 8 + 1), 8)[:samples]
    owner = parse_event(lines[0]).user
    a = PostgresStore(url, clock=reactor)
    b = PostgresStore(url, clock=reactor)
    times: list[float] = []
    read = [0]
    waiting: list[Deferred[None]] = []

    heard_at = [0.0]

    def woken(uniques: set[str]) -> None:
        if "bench2" in uniques and waiting:
            heard_at[0] = time.perf_counter()
            waiting.pop().callback(None)

    async def run() -> None:
        a.start()
        b.start()
        a.notifications.add_listener(woken)
        reg = Registration("bench2", owner, (), Conditions(), Flags(), UNTIL, int(time.time()))
        await b.notifications.create(reg, time.time())
        while a.notifications.registration("bench2") is None:
            await _later(reactor, 0.01)
        for line in lines:
            heard: Deferred[None] = Deferred()
            heard.addTimeout(10, reactor)
            waiting.append(heard)
            stored: Any = b.store([(line, parse_event(line))])
            stored.addCallback(lambda _: time.perf_counter())
            answered: float = await stored
            await heard
            # From B's answer (after its commit) to A's wake-up; both on this reactor.
            times.append((heard_at[0] - answered) * 1000)
        read[0] = len(await a.notifications.messages("bench2", 0, samples + 10))
        await a.close()
        await b.close()

    def done(result: object) -> None:
        reactor.stop()
        if hasattr(result, "printTraceback"):
            result.printTraceback()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: ensureDeferred(run()).addBoth(done))
    reactor.run()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)], read[0]


def _later(reactor: Any, seconds: float) -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4_000, help="events per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure (median)")
    parser.add_argument("--samples", type=int, default=500, help="wake-ups timed")
    args = parser.parse_args(argv[1:])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.integration.pgcluster import cluster

    pg = cluster()
    names = {
        "pg1": "1 front end, no registration",
        "pg1r": "1 front end, 1 all-jobs registration",
        "pg2": "2 front ends, no registration",
        "pg2r": "2 front ends, 1 all-jobs registration",
    }
    figures: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(args.runs):
        for key in names:
            url = pg.new_database()
            urls = [url, url] if key.startswith("pg2") else [url]
            figures[key].append(throughput(urls, args.events, key.endswith("r")))
    med = {k: statistics.median(v) for k, v in figures.items()}
    for key, label in names.items():
        runs = " ".join(f"{v:.0f}" for v in figures[key])
        print(f"{label}: median {med[key]:.0f} events/s (runs: {runs})")
    print(
        f"with/without the registration: 1 front end {med['pg1r'] / med['pg1']:.2f},"
        f" 2 front ends {med['pg2r'] / med['pg2']:.2f}"
    )
    # In a child process: the reactor runs once per process.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        p50, p99, read = pool.apply(wake_latency, (pg.new_database(), args.samples))
    print(
        f"wake-up across front ends ({args.samples} events, {read} messages):"
        f" p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    print(f"load: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f".venv/bin/python -m bench.pgnotify --events {args.events} --runs {args.runs}"
        f" --samples {args.samples}"
    )


if __name__ == "__main__":
    main(sys.argv)
