# -*- test-case-name: tests.e2e.test_proxy -*-
"""
Benchmark of the pure core on one core: events per second of
L{lbtwist.core.events.parse_event}, of L{lbtwist.core.states.compute_status}, and of the
whole C{lbtwist replay} path (read lines, parse, group by job, fold, JSON),
over generated CREAM traces and, when present, the gLite L&B fixture streams.

Run from the repository root::

    .venv/bin/python -m bench.replay [--jobs 20000] [--repeat 5] [--fixtures DIR]

Prints the medians of C{--repeat} runs; the last line is a one-line summary
with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lbtwist.cli.replay import read_events, status_json
from lbtwist.core.errors import LBError
from lbtwist.core.events import Event, parse_event
from lbtwist.core.states import compute_status
from tests.e2e.harness import ENDINGS, T0, cream_direct_trace, cream_jobid

DEFAULT_FIXTURES = "/work/shared/fixtures/glite-lb-streams"


def generated_lines(jobs: int) -> list[str]:
    """
    The events of C{jobs} direct CREAM jobs, each trace in order, jobs
    interleaved ten at a time as a busy CE would log them.
    """
    traces = [
        [s.line for s in cream_direct_trace(cream_jobid(n), T0 + n * 1000, ENDINGS[n % 3])]
        for n in range(jobs)
    ]
    lines: list[str] = []
    for g in range(0, jobs, 10):
        group = traces[g : g + 10]
        for i in range(max(len(t) for t in group)):
            lines += [t[i] for t in group if i < len(t)]
    return lines


def fixture_lines(directory: str) -> list[str]:
    """
    The valid event lines of the fixture streams (templates without a job id skipped).
    """
    lines = []
    for path in sorted(glob.glob(os.path.join(directory, "*.log"))):
        if path.endswith(".reg.log"):
            continue  # the registrations are repeated in the full streams
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                try:
                    parse_event(line)
                except LBError:
                    continue
                lines.append(line)
    return lines


def median_rate(count: int, run: Callable[[], object], repeat: int) -> float:
    """
    Median events/s of C{repeat} runs of C{run} over C{count} events.
    """
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(lines: list[str], repeat: int) -> dict[str, float]:
    """
    The three rates over C{lines}.
    """
    events = [parse_event(line) for line in lines]
    by_job: dict[str, list[tuple[Event, int]]] = {}
    for n, event in enumerate(events):
        by_job.setdefault(event.jobid, []).append((event, n))

    def parse_all() -> None:
        for line in lines:
            parse_event(line)

    def fold_all() -> None:
        for pairs in by_job.values():
            compute_status(pairs)

    def replay_all() -> None:
        result = read_events([("bench", lines)])
        out = io.StringIO()
        for pairs in result.jobs.values():
            out.write(status_json(compute_status(pairs)) + "\n")

    return {
        "parse_event": median_rate(len(lines), parse_all, repeat),
        "compute_status": median_rate(len(lines), fold_all, repeat),
        "replay": median_rate(len(lines), replay_all, repeat),
        "jobs": float(len(by_job)),
    }


def report(name: str, count: int, rates: dict[str, float]) -> None:
    print(f"{name}: {count} events, {int(rates['jobs'])} jobs")
    for key in ("parse_event", "compute_status", "replay"):
        print(f"  {key:15s} {rates[key]:12,.0f} events/s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20000, help="generated CREAM jobs")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--fixtures", default=DEFAULT_FIXTURES, help="fixture stream directory")
    args = parser.parse_args(argv)

    lines = generated_lines(args.jobs)
    gen = measure(lines, args.repeat)
    report("generated CREAM traces", len(lines), gen)
    summary = (
        f"replay bench: CREAM {len(lines)} events: parse_event {gen['parse_event']:,.0f}/s, "
        f"compute_status {gen['compute_status']:,.0f}/s, replay {gen['replay']:,.0f}/s"
    )
    if os.path.isdir(args.fixtures):
        fixtures = fixture_lines(args.fixtures)
        if fixtures:
            fix = measure(fixtures, args.repeat)
            report(f"fixtures ({args.fixtures})", len(fixtures), fix)
            summary += (
                f"; fixtures {len(fixtures)} events: parse_event {fix['parse_event']:,.0f}/s, "
                f"compute_status {fix['compute_status']:,.0f}/s, replay {fix['replay']:,.0f}/s"
            )
    command = f".venv/bin/python -m bench.replay --jobs {args.jobs} --repeat {args.repeat}"
    print(f"{summary} (median of {args.repeat}, one core) | {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
