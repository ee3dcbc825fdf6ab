# -*- test-case-name: tests.unit.test_web -*-
"""
Benchmark of a long job's history page: the reactor time, the page size and the
memory of one request for the job page (HTML), the JSON and the text history of a
direct CREAM job with many events, read from a SQLite store.

Two ways are measured on the same store:

  - C{whole}: the history as it was served before paging (every event read,
    parsed and rendered: C{store.events} and one render of all of it);
  - C{paged}: the query resource as it is (one page of C{--page-events} events,
    read with C{events_range}).

and the rows of one HTML page (C{--page-events} events) rendered as the job page writes
them (escaped strings) and as twisted.web.template trees (how it was written before).

Run from the repository root::

    .venv/bin/python -m bench.history_page [--events 30000] [--page-events 500]

The last line is a one-line summary and the command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock
from twisted.web.template import tags
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.core.events import parse_event
from lbtwist.core.translate import proxy_policy
from lbtwist.security.authz import Policy
from lbtwist.security.identity import Identity
from lbtwist.service.web import render
from lbtwist.service.web.resources import QueryResource
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from tests import traces
from tests.unit.test_web_render import flat, template_event_row

UNIQUE = "CREAM900000001"
JOBID = f"https://{traces.CE_HOST}:9000/{UNIQUE}"


def fill(path: str, n: int) -> SQLiteStore:
    job = traces._Direct(JOBID, UNIQUE)
    job.start()
    while len(job.lines) < n:
        job.store("CMDSTART", "START")
    store = SQLiteStore(
        path, clock=Clock(), runner=run_now, policy=proxy_policy((), "proxy.example.org")
    )
    lines = job.lines[:n]
    for i in range(0, n, 2000):
        store.store([(line, parse_event(line)) for line in lines[i : i + 2000]])
    return store


def result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def whole(store: SQLiteStore, fmt: str) -> bytes:
    found = result(store.find_status(UNIQUE))
    events = result(store.events(JOBID))
    if fmt == "html":
        return render.status_html(found[1], events)
    if fmt == "text":
        return render.events_text(events).encode()
    return render.to_json([render.event_dict(e) for e in events])


def paged(resource: QueryResource, fmt: str) -> bytes:
    target = f"/{UNIQUE}" if fmt == "html" else f"/{UNIQUE}/events?{fmt}"
    req = DummyRequest([UNIQUE.encode()] if fmt == "html" else [UNIQUE.encode(), b"events"])
    req.uri = target.encode()
    if fmt == "html":
        req.requestHeaders.setRawHeaders(b"accept", [b"text/html"])
    resource.render(req)  # type: ignore[arg-type]
    assert req.finished and req.responseCode in (None, 200), req.responseCode
    return b"".join(req.written)


def measure(fn: Any, repeat: int) -> tuple[float, int, int]:
    """
    @return: median seconds, bytes of the answer, peak traced memory in bytes.
    """
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        body = fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), len(body), peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--page-events", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lbtwist-bench-history-") as tmp:
        store = fill(os.path.join(tmp, "lbtwist.sqlite"), args.events)
        clock = Clock()
        resource = QueryResource(
            store,
            clock=clock,
            policy=Policy(),
            super_users=(traces.CREAM_USER,),
            identify=lambda request: Identity(traces.CREAM_USER),
            page_events=args.page_events,
        )
        summary = []
        rows = result(store.events_range(JOBID, 0, args.page_events))
        strings = measure(lambda: "".join(render._event_row(e) for e in rows), args.repeat)
        template = measure(
            lambda: flat(tags.tbody([template_event_row(e) for e in rows])), args.repeat
        )
        print(
            f"html rows of one page ({len(rows)} events): twisted.web.template"
            f" {template[0] * 1000:.1f} ms, strings {strings[0] * 1000:.2f} ms"
            f" ({template[0] / strings[0]:.0f} x)"
        )
        summary.append(
            f"rows template {template[0] * 1000:.1f} ms -> strings {strings[0] * 1000:.2f} ms"
        )
        for fmt in ("html", "json", "text"):
            w = measure(lambda f=fmt: whole(store, f), args.repeat)
            p = measure(lambda f=fmt: paged(resource, f), args.repeat)
            print(
                f"{fmt}: whole {w[0] * 1000:.0f} ms, {w[1] / 1e6:.1f} MB, peak {w[2] / 1e6:.0f} MB;"
                f" paged {p[0] * 1000:.1f} ms, {p[1] / 1e3:.0f} kB, peak {p[2] / 1e6:.1f} MB"
            )
            summary.append(f"{fmt} {w[0] * 1000:.0f}->{p[0] * 1000:.1f} ms")
        store.close()
    print(
        f"history page of {args.events} events, {args.page_events} a page: "
        + ", ".join(summary)
        + f" | .venv/bin/python -m bench.history_page --events {args.events}"
        + f" --page-events {args.page_events} --repeat {args.repeat}"
    )


if __name__ == "__main__":
    main()
