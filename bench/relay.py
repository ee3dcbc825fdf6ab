# -*- test-case-name: tests.e2e.test_relay -*-
"""
Benchmark of the relay (design section 14): a real C{twistd lbproxy} relaying
over TLS on loopback to a real C{twistd lbserver}, both durable (SQLite WAL,
synchronous=FULL), a fixed count of events of many WMS jobs (RegJob ...
CREAMStatus Done-ok, plus the gLite events the proxy generates).

Two runs:
 - live: producers log to the proxy (8 connections, pipelined) while it relays;
   end-to-end events/s and, per logged event, the time from the proxy's intake
   acknowledgement to the server storing it (its C{arrived} stamp, taken when the
   event enters the server's commit group: the fsync of that group comes after);
 - backlog: the server is stopped, the events are logged, the server started:
   the relay's drain rate alone.

Run from the repository root::

    .venv/bin/python -m bench.relay [--count 60000] [--window 64]

Target: >= 15,000 events/s proxy -> server. The last line is the summary and
the command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from lbtwist.security.devcerts import make_dev_pki
from lbtwist.security.identity import slash_dn
from tests.e2e import harness
from tests.e2e.test_relay import ACTIONS, LB_HOST, RoleService, free_port

CONNECTIONS = 8


def job_lines(run: int, n: int) -> list[str]:
    jobid = f"https://{LB_HOST}:9000/bench{run}x{n:07d}"
    wms, cream = harness.wms_job_trace(jobid, harness.cream_jobid(n), harness.T0 + n * 10_000)
    return wms + cream


def connection_lines(run: int, conn: int, count: int) -> list[str]:
    lines: list[str] = []
    k = 0
    while len(lines) < count:
        lines += job_lines(run, conn * 1_000_000 + k)
        k += 1
    return lines[:count]


def producer(path: str, lines: list[str], window: int, start: Any, out: Any) -> None:
    """
    Pipeline C{lines} with at most C{window} unanswered; report the wall-clock
    acknowledgement time of each.
    """
    payload = [line.encode() + b"\n" for line in lines]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    acked: list[float] = []
    errors = 0
    buf = pending = b""
    nxt = 0
    start.wait()
    while len(acked) < len(payload):
        while nxt < len(payload) and nxt - len(acked) < window:
            pending += payload[nxt]
            nxt += 1
        if pending:
            try:
                pending = pending[sock.send(pending) :]
            except BlockingIOError:
                pass
        for _key, _mask in sel.select(0.0 if pending else 0.05):
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("intake closed the connection")
            buf += chunk
            now = time.time()
            while b"\n" in buf:
                answer, _, buf = buf.partition(b"\n")
                acked.append(now)
                if not answer.startswith(b"OK"):
                    errors += 1
    out.put((lines, acked, errors))
    sock.close()


def log_events(path: str, run: int, count: int, window: int) -> tuple[dict[str, float], int]:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    per = count // CONNECTIONS
    procs = [
        ctx.Process(target=producer, args=(path, connection_lines(run, c, per), window, start, out))
        for c in range(CONNECTIONS)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    acks: dict[str, float] = {}
    errors = 0
    for lines, acked, errs in results:
        acks.update(zip(lines, acked, strict=True))
        errors += errs
    return acks, errors


def count_rows(path: str, sql: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


def wait_drained(proxy: RoleService, server: RoleService, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_rows(proxy.db_path, "SELECT COUNT(*) FROM outbox") == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("relay did not drain in time")


def server_arrivals(server: RoleService, like: str) -> list[tuple[str, int]]:
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(
            "SELECT line, arrived FROM events WHERE jobid LIKE ? ORDER BY id", (like,)
        ).fetchall()
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay")
    parser.add_argument("--count", type=int, default=60_000, help="events logged per run")
    parser.add_argument("--window", type=int, default=64, help="relay window")
    parser.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-relay-")
    pki = make_dev_pki(
        os.path.join(base, "pki"), now=datetime.now(UTC), hostnames=("localhost", LB_HOST)
    )
    host_dn = slash_dn(x509.load_pem_x509_certificate(pki.host_cert.read_bytes()).subject)
    policy = os.path.join(base, "policy.conf")
    with open(policy, "w") as f:
        body = "".join(
            f'  action "{a}" {{ rule permit {{ subject = "{host_dn}" }} }}\n' for a in ACTIONS
        )
        f.write(f'resource "LB" {{\n{body}}}\n')
    creds = ["--cert", str(pki.host_cert), "--key", str(pki.host_key), "--ca-dir", str(pki.ca_dir)]
    store_port = free_port()
    server = RoleService(
        os.path.join(base, "server"),
        "lbserver",
        [
            *creds,
            "--hostname",
            LB_HOST,
            "--store",
            f"tcp:{store_port}:interface=127.0.0.1",
            "--query",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--policy",
            policy,
        ],
        store_port,
    )
    proxy = RoleService(
        os.path.join(base, "proxy"),
        "lbproxy",
        [
            *creds,
            "--hostname",
            "localhost",
            "--query",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--relay-window",
            str(args.window),
            "--relay-map",
            f"{LB_HOST}:9001=tcp:host=127.0.0.1:port={store_port}",
        ],
        None,
    )
    try:
        server.start()
        proxy.start()
        # Live run.
        t0 = time.time()
        acks, errors = log_events(proxy.socket_path, 1, args.count, 64)
        intake_done = time.time()
        wait_drained(proxy, server)
        arrivals = server_arrivals(server, f"https://{LB_HOST}:9000/bench1x%")
        last = max(a for _, a in arrivals) / 1e6
        live_rate = len(arrivals) / (last - t0)
        lat = sorted(a / 1e6 - acks[line] for line, a in arrivals if line in acks)
        median = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        print(
            f"live: {len(acks)} logged ({errors} errors) in {intake_done - t0:.2f} s,"
            f" {len(arrivals)} stored at the server (generated included) by"
            f" {last - t0:.2f} s: {live_rate:.0f} events/s end to end;"
            f" intake ack -> server: median {median:.1f} ms, p99 {p99:.1f} ms"
        )
        # Backlog run.
        server.stop()
        acks2, errors2 = log_events(proxy.socket_path, 2, args.count, 64)
        pending = count_rows(proxy.db_path, "SELECT COUNT(*) FROM outbox")
        server.start()
        wait_drained(proxy, server)
        arrivals2 = server_arrivals(server, f"https://{LB_HOST}:9000/bench2x%")
        times = [a / 1e6 for _, a in arrivals2]
        drain_rate = len(arrivals2) / max(max(times) - min(times), 1e-6)
        print(
            f"backlog: {pending} waiting events drained at {drain_rate:.0f} events/s"
            f" ({errors2} intake errors)"
        )
    except Exception:
        print(proxy.log_text()[-5000:], file=sys.stderr)
        print(server.log_text()[-5000:], file=sys.stderr)
        raise
    finally:
        proxy.cleanup()
        server.cleanup()
    print(
        f"relay: live {live_rate:.0f} events/s end to end, backlog drain {drain_rate:.0f}"
        f" events/s, intake ack -> server median {median:.1f} ms p99 {p99:.1f} ms"
        f" (window {args.window}, {args.count} events); command:"
        f" .venv/bin/python -m bench.relay --count {args.count} --window {args.window}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
