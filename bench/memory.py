# -*- test-case-name: tests.e2e.test_bench_memory -*-
"""
Benchmark of the services' memory (docs/reference.md, Performance targets): the resident
set (VmRSS, and its peak VmHWM) of a real C{twistd lbproxy} and C{twistd lbserver}, each
on a store of 1,000,000 jobs, at start and during minutes of mixed load:

  - intake: producer processes log the events of new WMS jobs to the proxy's socket at a
    fixed rate (each waits for its answers, a few events in flight);
  - relay: the proxy relays them (and the gLite events it generates) to the server over
    TLS on loopback;
  - queries: client processes ask both services for job statuses (random jobs among the
    million, over kept-alive HTTPS with the development user's proxy) and job list pages.

Every job touched is a new one to the proxy's and the server's caches, so what grows with
the jobs shows here; each such cache is bounded by an option (C{--job-cache},
C{--query-cache}, C{--sqlite-cache}; pass others with C{--service-arg}).

Run from the repository root::

    .venv/bin/python -m bench.memory                       # 1,000,000 jobs, 1 minute
    .venv/bin/python -m bench.memory --minutes 10          # the 10-minute soak
    .venv/bin/python -m bench.memory --jobs 100000 --minutes 0.5
    .venv/bin/python -m bench.memory --dir /tmp/mb         # keep the filled stores...
    .venv/bin/python -m bench.memory --dir /tmp/mb --reuse # ...and run on them again

Target: RSS under 300 MB for each service, at start and after the load. The last line
is a one-line summary and the command.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import shutil
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from bench.common import IntakePipe
from bench.query import cpu_seconds, fill
from lbtwist.security.devcerts import make_dev_pki
from tests.e2e import harness
from tests.e2e.harness import free_port
from tests.e2e.test_relay import ACTIONS, LB_HOST, RoleService

#: Seconds between two samples of the services' memory.
SAMPLE_EVERY = 2.0


def memory_mb(pid: int) -> dict[str, float]:
    """
    @return: C{rss} (VmRSS) and C{hwm} (VmHWM, the peak so far) of C{pid}, in MB.
    """
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key[2:].lower()] = int(value.split()[0]) / 1024
    return found


#: Tells the jobs of one run from those of earlier runs on a reused store.
RUN_TAG = f"{int(time.time()) % 1_000_000:06d}"


def job_lines(run: int, n: int) -> list[str]:
    """
    The events of the C{n}th new WMS job of producer C{run} (a job not in the filled store).
    """
    jobid = f"https://{LB_HOST}:9000/mem{RUN_TAG}p{run}x{n:07d}"
    wms, cream = harness.wms_job_trace(jobid, harness.cream_jobid(n), harness.T0 + n * 10_000)
    return wms + cream


def producer(path: str, run: int, rate: float, seconds: float, window: int, out: Any) -> None:
    """
    Log new jobs' events at C{rate} events/s for C{seconds}, at most C{window}
    unanswered; put (sent, answered, errors) on C{out}.
    """
    pipe = IntakePipe(path)
    queue: list[bytes] = []
    job = sent = answered = errors = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end and answered == sent:
            break
        if now < end:
            due = int((now - start) * rate)
            while sent < due and sent - answered < window:
                if not queue:
                    queue = [line.encode() + b"\n" for line in job_lines(run, job)]
                    queue.reverse()
                    job += 1
                pipe.pending += queue.pop()
                sent += 1
        pipe.send()
        for answer in pipe.receive(0.0 if pipe.pending else 0.005)[1]:
            answered += 1
            if not answer.startswith(b"OK"):
                errors += 1
        if time.monotonic() > end + 120:
            break
    pipe.close()
    out.put(("intake", sent, answered, errors))


def tls_context(pki: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(capath=str(pki.ca_dir))
    ctx.load_cert_chain(str(pki.user_proxy), str(pki.user_proxy))
    return ctx


def querier(
    port: int, pki: Any, jobs: int, rate: float, seconds: float, seed: int, out: Any
) -> None:
    """
    Ask for job statuses (every tenth a job list page) at C{rate} requests/s for
    C{seconds}, over one kept-alive connection; put (done, errors, latencies) on C{out}.
    """
    rnd = random.Random(seed)
    conn = http.client.HTTPSConnection("localhost", port, context=tls_context(pki), timeout=30)
    done = errors = 0
    times: list[float] = []
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        wait = start + done / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if done % 10 == 9:
            path = "/?limit=100"
        else:
            # The development user's jobs (every tenth) of the filled store.
            path = "/" + harness.cream_jobid(rnd.randrange(0, jobs, 10) + 1).rsplit("/", 1)[1]
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        resp.read()
        times.append(time.perf_counter() - t0)
        done += 1
        if resp.status != 200:
            errors += 1
    conn.close()
    out.put(("query", done, errors, times))


def count_rows(path: str, sql: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def services(base: str, extra: Sequence[str]) -> tuple[RoleService, RoleService, Any, int, int]:
    """
    A server and a proxy relaying to it, on one development PKI (not started).

    @return: server, proxy, the PKI, the server's and the proxy's query ports.
    """
    pki = make_dev_pki(
        os.path.join(base, "pki"), now=datetime.now(UTC), hostnames=("localhost", LB_HOST)
    )
    host_dn, creds = harness.host_credentials(pki)
    policy = harness.write_policy(os.path.join(base, "policy.conf"), host_dn, ACTIONS)
    store_port, server_query, proxy_query = free_port(), free_port(), free_port()
    server = RoleService(
        os.path.join(base, "server"),
        "lbserver",
        harness.server_args(creds, LB_HOST, store_port, policy, *extra, query_port=server_query),
        store_port,
    )
    proxy = RoleService(
        os.path.join(base, "proxy"),
        "lbproxy",
        harness.proxy_args(creds, {f"{LB_HOST}:9001": store_port}, *extra, query_port=proxy_query),
        None,
    )
    return server, proxy, pki, server_query, proxy_query


def wait_answering(port: int, pki: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPSConnection(
                "localhost", port, context=tls_context(pki), timeout=10
            )
            conn.request("GET", "/?limit=1")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def fill_stores(server: RoleService, proxy: RoleService, jobs: int, reuse: bool) -> float:
    """
    A store of C{jobs} jobs for each service (the server's a copy of the proxy's).

    @return: seconds spent.
    """
    started = time.perf_counter()
    for svc in (server, proxy):
        os.makedirs(svc.state_dir, exist_ok=True)
    if reuse and os.path.exists(proxy.db_path) and os.path.exists(server.db_path):
        return 0.0
    fill(proxy.db_path, jobs, min(10_000, jobs))
    shutil.copyfile(proxy.db_path, server.db_path)
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs in each store")
    parser.add_argument("--minutes", type=float, default=1.0, help="minutes of mixed load")
    parser.add_argument("--rate", type=float, default=1000, help="events/s logged in all")
    parser.add_argument("--producers", type=int, default=4, help="producer connections")
    parser.add_argument("--window", type=int, default=8, help="events in flight per producer")
    parser.add_argument("--query-rate", type=float, default=100, help="requests/s per query client")
    parser.add_argument("--clients", type=int, default=2, help="query clients per service")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--reuse", action="store_true", help="keep the stores already in --dir")
    parser.add_argument(
        "--service-arg",
        action="append",
        default=[],
        help="an option for both services, e.g. --service-arg=--job-cache=5000 (repeatable)",
    )
    args = parser.parse_args(argv)
    command = "python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-memory-")
    server, proxy, pki, server_query, proxy_query = services(base, args.service_arg)
    seconds = args.minutes * 60
    filled = fill_stores(server, proxy, args.jobs, args.reuse)
    print(f"stores of {args.jobs} jobs ready in {filled:.1f} s", flush=True)
    samples: dict[str, list[tuple[float, float]]] = {"proxy": [], "server": []}
    try:
        server.start()
        proxy.start()
        wait_answering(server_query, pki)
        wait_answering(proxy_query, pki)
        assert server.process is not None and proxy.process is not None
        pids = {"proxy": proxy.process.pid, "server": server.process.pid}
        at_start = {name: memory_mb(pid)["rss"] for name, pid in pids.items()}
        print(
            f"RSS at start: proxy {at_start['proxy']:.0f} MB, server {at_start['server']:.0f} MB",
            flush=True,
        )
        server_events = count_rows(server.db_path, "SELECT COUNT(*) FROM events")
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        procs = [
            ctx.Process(
                target=producer,
                args=(proxy.socket_path, p, args.rate / args.producers, seconds, args.window, out),
            )
            for p in range(args.producers)
        ]
        procs += [
            ctx.Process(
                target=querier,
                args=(port, pki, args.jobs, args.query_rate, seconds, 1000 * i + c, out),
            )
            for i, port in enumerate((proxy_query, server_query))
            for c in range(args.clients)
        ]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        next_sample = t0
        while any(p.is_alive() for p in procs) and out.qsize() < len(procs):
            if time.monotonic() >= next_sample:
                now = time.monotonic() - t0
                for name, pid in pids.items():
                    samples[name].append((now, memory_mb(pid)["rss"]))
                next_sample += SAMPLE_EVERY
            time.sleep(0.1)
        results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join()
        wall = time.monotonic() - t0
        cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
        logged = sum(r[2] for r in results if r[0] == "intake")
        intake_errors = sum(r[3] for r in results if r[0] == "intake")
        queries = sum(r[1] for r in results if r[0] == "query")
        query_errors = sum(r[2] for r in results if r[0] == "query")
        latencies = [t for r in results if r[0] == "query" for t in r[3]]
        # The relay's backlog after the load: drained within a bounded wait.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if count_rows(proxy.db_path, "SELECT COUNT(*) FROM outbox") == 0:
                break
            time.sleep(0.2)
        backlog = count_rows(proxy.db_path, "SELECT COUNT(*) FROM outbox")
        relayed = count_rows(server.db_path, "SELECT COUNT(*) FROM events") - server_events
        after = {name: memory_mb(pid) for name, pid in pids.items()}
        print(
            f"load: {wall:.0f} s; {logged} events logged ({intake_errors} refused),"
            f" {relayed} stored at the server, relay backlog {backlog};"
            f" {queries} queries ({query_errors} not 200), p50"
            f" {statistics.median(latencies) * 1000:.2f} ms p99"
            f" {percentile(latencies, 0.99) * 1000:.2f} ms;"
            f" CPU s: proxy {cpu['proxy']:.1f}, server {cpu['server']:.1f}",
            flush=True,
        )
        for name in ("proxy", "server"):
            series = samples[name]
            print(
                f"{name}: RSS start {at_start[name]:.0f} MB, during load max"
                f" {max((r for _, r in series), default=float('nan')):.0f} MB,"
                f" after {after[name]['rss']:.0f} MB, peak (VmHWM) {after[name]['hwm']:.0f} MB;"
                " samples (s: MB) "
                + " ".join(f"{t:.0f}:{r:.0f}" for t, r in series[:: max(1, len(series) // 12)]),
                flush=True,
            )
    except Exception:
        print(proxy.log_text()[-3000:], file=sys.stderr)
        print(server.log_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proxy.cleanup()
        server.cleanup()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    peak = {name: after[name]["hwm"] for name in after}
    print(
        f"memory: {args.jobs} jobs, {args.minutes:g} min mixed load ({logged} events,"
        f" {queries} queries): proxy RSS {at_start['proxy']:.0f} -> {after['proxy']['rss']:.0f}"
        f" MB (peak {peak['proxy']:.0f}), server RSS {at_start['server']:.0f} ->"
        f" {after['server']['rss']:.0f} MB (peak {peak['server']:.0f})  [{command}]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
