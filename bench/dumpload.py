"""
Dump and load: events per second of C{lbtwist load} (a dump through the store's
commit path into an empty store), of a full C{lbtwist dump} (paged by arrival),
the time of an incremental dump of the last 1% of arrivals (the arrival index),
and of C{explain} / C{status --at} for one job, over generated direct CREAM job
traces. Each repetition on a fresh temporary state directory (removed at the end).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench.replay import generated_lines
from lbtwist.cli.common import CLIContext
from lbtwist.cli.dump import write_dump
from lbtwist.cli.load import load_lines
from lbtwist.core.events import parse_event
from lbtwist.core.states.explain import explain, status_at
from lbtwist.core.unparse import dump_line
from lbtwist.store import store_path
from lbtwist.store.sqlite import SQLiteReader


def dump_text(lines: list[str]) -> tuple[str, list[int]]:
    """
    The lines as a dump, arriving 1 ms apart; the arrival times.
    """
    out = []
    arrivals = []
    base = 1_710_000_000_000_000
    for i, line in enumerate(lines):
        arrived = base + i * 1000
        arrivals.append(arrived)
        out.append(dump_line(parse_event(line), arrived))
    return "".join(out), arrivals


def one_run(dump: str, arrivals: list[int], events: int) -> dict[str, float]:
    base = tempfile.mkdtemp(prefix="lbtwist-bench-dl-")
    try:
        state = os.path.join(base, "state")
        t = time.perf_counter()
        counts = load_lines(io.StringIO(dump), state)
        load_s = time.perf_counter() - t
        assert counts.stored == events, counts
        reader = SQLiteReader(store_path(state))
        try:
            sink = io.StringIO()
            ctx = CLIContext(stdout=sink)
            t = time.perf_counter()
            n = write_dump(reader, ctx, None, None)
            dump_s = time.perf_counter() - t
            assert n == events
            low = arrivals[len(arrivals) * 99 // 100]
            t = time.perf_counter()
            tail = write_dump(reader, CLIContext(stdout=io.StringIO()), low, None)
            tail_s = time.perf_counter() - t
            jobid = reader.dump_page(None, None, None, 1)[0][0].jobid
            t = time.perf_counter()
            pairs = [(s.event, s.arrived) for s in reader.events(jobid)]
            explain(pairs)
            explain_s = time.perf_counter() - t
            t = time.perf_counter()
            status_at(pairs, pairs[len(pairs) // 2][0].date)
            at_s = time.perf_counter() - t
        finally:
            reader.close()
        return {
            "load": events / load_s,
            "dump": events / dump_s,
            "tail_ms": tail_s * 1000,
            "tail_events": tail,
            "explain_ms": explain_s * 1000,
            "at_ms": at_s * 1000,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000, help="generated jobs (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args(argv)
    lines = generated_lines(args.jobs)
    dump, arrivals = dump_text(lines)
    runs = [one_run(dump, arrivals, len(lines)) for _ in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{args.jobs} jobs, {len(lines)} events, median of {args.repeat}:")
    print(f"  load (empty store, chunks of 1000): {med['load']:,.0f} events/s")
    print(f"  full dump (pages of 1000):          {med['dump']:,.0f} events/s")
    print(
        f"  dump of the last 1% of arrivals:    {med['tail_ms']:.1f} ms ({med['tail_events']:.0f} events)"
    )
    print(f"  explain one job:                    {med['explain_ms']:.2f} ms")
    print(f"  status --at one job:                {med['at_ms']:.2f} ms")
    command = f".venv/bin/python -m bench.dumpload --jobs {args.jobs} --repeat {args.repeat}"
    print(
        f"load {med['load']:,.0f} ev/s, dump {med['dump']:,.0f} ev/s, 1% tail {med['tail_ms']:.1f} ms,"
        f" explain {med['explain_ms']:.2f} ms (median of {args.repeat}) | {command}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
