"""
The cost of metrics on the intake: C{bench.intake} runs alternating between a proxy with
C{--metrics none} and one with C{/metrics} and C{/health} scraped every C{--scrape-interval}
seconds (outbox figures refreshed as often), in the same session, so the box's load hits
both alike. Prints each round, the medians of the pipelined rate and of the service CPU per
event, their ratios (on / off), the load average, and as its last line the reproducing
command.

Run from the repository root::

    .venv/bin/python -m bench.metrics_intake [--rounds 3] [--count 30000]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence

from tests.e2e.harness import free_port

RATE = re.compile(r"16 connections pipelined \(window \d+\): ([\d,]+) events/s.*CPU (\d+) us/event")


def scraper(port: int, interval: float, stop: threading.Event, count: list[int]) -> None:
    while not stop.wait(interval):
        for path in ("/metrics", "/health"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as a:
                    a.read()
                count[0] += 1
            except OSError:
                pass


def one(count: int, options: Sequence[str]) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "bench.intake", "--repeat", "1", "--count", str(count)]
    cmd += ["--seconds", "2", *(f"--service-option={o}" for o in options)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = RATE.search(out)
    if match is None:
        raise SystemExit(f"no pipelined figure in:\n{out}")
    return float(match.group(1).replace(",", "")), float(match.group(2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for n in range(args.rounds):
        results["off"].append(one(args.count, ["--metrics=none"]))
        port = free_port()
        stop = threading.Event()
        scrapes = [0]
        thread = threading.Thread(
            target=scraper, args=(port, args.scrape_interval, stop, scrapes), daemon=True
        )
        thread.start()
        try:
            results["on"].append(
                one(
                    args.count,
                    [
                        f"--metrics=tcp:{port}:interface=127.0.0.1",
                        f"--metrics-refresh-interval={args.scrape_interval}",
                    ],
                )
            )
        finally:
            stop.set()
            thread.join()
        off, on = results["off"][-1], results["on"][-1]
        print(
            f"round {n + 1}: off {off[0]:,.0f} ev/s {off[1]:.0f} us/event; on {on[0]:,.0f} ev/s"
            f" {on[1]:.0f} us/event ({scrapes[0]} scrapes)",
            flush=True,
        )
    med = {
        k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
        for k, v in results.items()
    }
    print(
        f"medians of {args.rounds}: off {med['off'][0]:,.0f} ev/s {med['off'][1]:.0f} us/event;"
        f" on {med['on'][0]:,.0f} ev/s {med['on'][1]:.0f} us/event; rate on/off"
        f" {med['on'][0] / med['off'][0]:.2f}, CPU on/off {med['on'][1] / med['off'][1]:.2f};"
        f" load {os.getloadavg()[0]:.1f} at {time.strftime('%H:%M:%S')}"
    )
    print(
        f".venv/bin/python -m bench.metrics_intake --rounds {args.rounds} --count {args.count}"
        f" --scrape-interval {args.scrape_interval}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
