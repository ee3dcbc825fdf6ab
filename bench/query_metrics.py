# -*- test-case-name: tests.unit.test_metrics -*-
"""
Benchmark of the query port's per-request metric (C{lbtwist_query_seconds}): the
cost of observing each answered request, in process.

One query site (L{lbtwist.service.web.make_site}) on a memory store holding one
direct CREAM job, driven through an in-memory transport with keep-alive GET
requests for the job's status (JSON), in alternating rounds without and with the
observer (L{lbtwist.service.metrics.ServiceMetrics.observe_query}); then the
observer alone. Prints the medians of the rounds (microseconds per request), the
with/without ratio measured in the same run, and as its last line the command.

Run from the repository root::

    .venv/bin/python -m bench.query_metrics [--requests 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from lbtwist.core.events import parse_event
from lbtwist.security.identity import Identity
from lbtwist.service.metrics import ServiceMetrics
from lbtwist.service.web import make_site
from lbtwist.testing import MemoryStore
from tests import traces


def build(observed: bool) -> tuple[object, StringTransport]:
    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryStore(clock, relay=False)
    lines = traces.cream_done_ok()
    store.store([(line, parse_event(line)) for line in lines])
    metrics = ServiceMetrics(
        store, clock, role="lbproxy", version="bench", store_path="/nonexistent"
    )
    owner = Identity(traces.CREAM_USER)
    site = make_site(
        store,
        clock=clock,
        identify=lambda request: owner,
        observer=metrics.observe_query if observed else None,
    )
    site.doStart()
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def round_us(observed: bool, requests: int, unique: str) -> float:
    """
    Microseconds per request of one round of C{requests} keep-alive status requests.
    """
    channel, transport = build(observed)
    request = f"GET /{unique} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    feed = channel.dataReceived  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(requests):
        feed(request)
        transport.clear()
    elapsed = time.perf_counter() - started
    return elapsed / requests * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each case (>= 3)")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    from lbtwist.store.query import unique_of

    unique = unique_of(traces.DIRECT_JOBID)
    # Check that the requests are answered (200), once, before timing them.
    channel, transport = build(True)
    channel.dataReceived(f"GET /{unique} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())  # type: ignore[attr-defined]
    status = transport.value().split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        raise SystemExit(f"the status request was answered {status!r}")
    without: list[float] = []
    with_: list[float] = []
    for _ in range(args.rounds):
        without.append(round_us(False, args.requests, unique))
        with_.append(round_us(True, args.requests, unique))
    clock = Clock()
    metrics = ServiceMetrics(
        MemoryStore(clock, relay=False), clock, role="lbproxy", version="b", store_path="/x"
    )
    path = f"/{unique}".encode()
    n = 200_000
    started = time.perf_counter()
    for _ in range(n):
        metrics.observe_query(path, 200, 0.001)
    alone = (time.perf_counter() - started) / n * 1e6
    m0, m1 = statistics.median(without), statistics.median(with_)
    print(f"status request, no observer:   median {m0:.1f} us/request over {args.rounds} rounds")
    print(f"status request, with observer: median {m1:.1f} us/request over {args.rounds} rounds")
    print(f"ratio with/without: {m1 / m0:.3f}; observe_query alone: {alone:.2f} us/call")
    print(f"rounds without: {', '.join(f'{v:.1f}' for v in without)}")
    print(f"rounds with:    {', '.join(f'{v:.1f}' for v in with_)}")
    print(
        f".venv/bin/python -m bench.query_metrics --requests {args.requests} --rounds {args.rounds}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
