# -*- test-case-name: tests.unit.test_store -*-
"""
In-process CPU profile of the intake path, stage by stage, in microseconds per event.

Over the same CREAM event mix as C{bench/intake.py} (direct CREAM jobs, 14 events a
job, 16 connections of 8 interleaved jobs each, merged into commit groups of
C{--batch} events), it times on one core:

 - C{parse_fields}: the ULM split alone;
 - C{parse_event}: ULM split plus catalogue validation;
 - C{intake}: the line protocol (framing, validation, answers) over a
   C{StringTransport} with a store that answers at once;
 - C{states}: C{advance} per event plus C{to_json_dict}/C{json.dumps} per job and group;
 - C{batch}: L{BatchProcessor.process} over a backend that writes nothing;
 - C{sqlite}: the same with the real SQLite backend, C{synchronous=OFF} (CPU, not fsync);
 - C{sqlite-full}: the same with C{synchronous=FULL} (what the service does; wall time).

Run from the repository root::

    .venv/bin/python -m bench.profile_intake [--events 50000] [--batch 256]
    .venv/bin/python -m bench.profile_intake --cprofile batch   # cProfile of one stage
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bench.intake import connection_lines
from lbtwist.core.events import Event, parse_event
from lbtwist.core.states import advance
from lbtwist.core.states.status import JobStatus
from lbtwist.core.translate import proxy_policy
from lbtwist.core.ulm import parse_fields
from lbtwist.service.intake import IntakeFactory
from lbtwist.store.batch import BatchPlan, BatchProcessor, Identity
from lbtwist.store.interface import StoreResult
from lbtwist.store.sqlite import SQLiteBackend, connect, migrate

STAGES = ("parse_fields", "parse_event", "intake", "states", "batch", "sqlite", "sqlite-full")


def mix(events: int, connections: int = 16) -> list[str]:
    """
    C{events} lines: each connection's lines, merged round-robin in chunks of 8.
    """
    per = [connection_lines(c, events // connections, 0) for c in range(connections)]
    out: list[str] = []
    pos = 0
    while len(out) < events and any(pos < len(p) for p in per):
        for p in per:
            out.extend(p[pos : pos + 8])
        pos += 8
    return out[:events]


class NullBackend:
    """
    A backend that stores nothing: the pure CPU cost of the batch logic.
    """

    def max_event_id(self) -> int:
        return 0

    def load_job(self, jobid: str) -> tuple[dict[str, Any], int] | None:
        return None

    def load_lines(self, jobid: str) -> list[tuple[int, str]]:
        return []

    def find_identities(self, jobid: str, key: int) -> list[Identity]:
        return []

    def write(self, plan: BatchPlan) -> None:
        pass

    def translate_error(self, error: Exception) -> None:
        return None


_NO_STATUS = JobStatus()


class _AtOnceStore:
    def store(self, items: list[tuple[str, Event]]) -> Any:
        return succeed(
            [
                StoreResult(duplicate=False, jobid=ev.jobid, seqno=1, status=_NO_STATUS)
                for _, ev in items
            ]
        )


def _groups(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def stage_runner(name: str, lines: list[str], batch: int, tmp: str) -> Callable[[], None]:
    """
    A function doing stage C{name} once over C{lines} (fresh state each call).
    """
    if name == "parse_fields":

        def fields_only() -> None:
            for line in lines:
                parse_fields(line)

        return fields_only

    if name == "parse_event":

        def events_only() -> None:
            for line in lines:
                parse_event(line)

        return events_only

    if name == "intake":
        chunks = [b"".join(line.encode() + b"\n" for line in g) for g in _groups(lines, 64)]

        def intake() -> None:
            factory = IntakeFactory(
                _AtOnceStore(), clock=Clock(), peer_credentials=lambda t: (1, 0, 0)
            )
            proto = factory.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            for chunk in chunks:
                proto.dataReceived(chunk)
            assert transport.value().count(b"OK\n") == len(lines), transport.value()[-200:]

        return intake

    events = [parse_event(line) for line in lines]
    items = list(zip(lines, events, range(len(lines)), strict=True))
    groups = _groups(items, batch)

    if name == "states":

        def states() -> None:
            statuses: dict[str, JobStatus] = {}
            counts: dict[str, int] = {}
            for group in groups:
                touched = set()
                for _line, ev, _ in group:
                    st = statuses.get(ev.jobid) or JobStatus()
                    n = counts[ev.jobid] = counts.get(ev.jobid, 0) + 1
                    new = advance(st, ev, n)
                    assert new is not None
                    statuses[ev.jobid] = new
                    touched.add(ev.jobid)
                for jobid in touched:
                    json.dumps(statuses[jobid].to_json_dict(), separators=(",", ":"))

        return states

    if name == "batch":

        def batch_only() -> None:
            proc = BatchProcessor(NullBackend(), policy=proxy_policy((), "proxy.example.org"))
            for group in groups:
                proc.process(group)
            assert proc.recomputes == 0

        return batch_only

    if name in ("sqlite", "sqlite-full"):
        counter = [0]

        def sqlite_run() -> None:
            counter[0] += 1
            path = os.path.join(tmp, f"{name}-{counter[0]}.sqlite")
            conn = connect(path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if name == 'sqlite-full' else 'OFF'}")
            migrate(conn)
            proc = BatchProcessor(SQLiteBackend(conn), policy=proxy_policy((), "proxy.example.org"))
            for group in groups:
                proc.process(group)
            conn.close()

        return sqlite_run

    raise ValueError(f"unknown stage {name}")


def measure(run: Callable[[], None], repeat: int) -> float:
    """
    @return: the best wall time in seconds of C{repeat} calls.
    """
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-stage CPU cost of the intake path.")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256, help="events per commit group")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--cprofile", metavar="STAGE", help="print a cProfile of one stage")
    args = parser.parse_args(argv)
    lines = mix(args.events)
    n = len(lines)
    tmp = tempfile.mkdtemp(prefix="lbtwist-prof-")
    if args.cprofile:
        run = stage_runner(args.cprofile, lines, args.batch, tmp)
        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    figures = []
    for name in args.stages.split(","):
        run = stage_runner(name, lines, args.batch, tmp)
        us = measure(run, args.repeat) / n * 1e6
        figures.append(f"{name} {us:.1f}")
        print(f"{name:>12}: {us:7.1f} us/event ({1e6 / us:,.0f} events/s)", flush=True)
    print(
        f"profile_intake ({n} events, groups of {args.batch}; us/event): {'; '.join(figures)}"
        f" | .venv/bin/python -m bench.profile_intake --events {args.events} --batch {args.batch}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
