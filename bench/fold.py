# -*- test-case-name: tests.unit.test_store -*-
"""
Benchmark of late and future-dated events in big jobs (docs/reference.md, Performance targets, "no
pathological cases"): a real C{twistd lbproxy} (SQLite, WAL, synchronous=FULL) on a
temporary state directory, driven over its UNIX socket with the line framing.

Run A: one direct CREAM job gets C{--events} events in order; then, for C{--seconds},
a hostile producer sends that job one event dated far ahead (9999-12-31), then events
after a backward clock step of 10 s, every 20th dated before the job began, while
an unrelated producer logs one event at a time for other jobs and times each round
trip. Prints the round trip p50/p99 (from each probe's scheduled time, so a stall
counts for every probe it delays; probes not answered by the end of the phase count
up to its end) and the hostile events answered.

Run B: one job of C{--big} events in order, pipelined; prints the rate of its first
1,000 and last 1,000 events and their ratio.

Run from the repository root::

    .venv/bin/python -m bench.fold [--events 30000] [--big 50000] [--seconds 20]

Targets: round trip p99 < 50 ms; last/first >= 0.8. The last line is a one-line
summary and the command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import IntakePipe
from tests.e2e.harness import LBService, cream_jobid, ulm_line

#: 9999-12-31T00:00:00Z in microseconds.
FAR_FUTURE = 253402214400 * 1_000_000
CREAM_NS = "https://localhost:8443/ce-cream/services/CREAM2"


def job_event(jobid: str, i: int, date: int) -> str:
    """
    Event C{i} of a big direct CREAM job: its RegJob, then status notifications.
    """
    creamid = jobid.rsplit("/", 1)[1]
    seqcode = f"no_seqcodes_with_cream_{creamid}_{i}"
    if i == 0:
        return ulm_line(
            "RegJob",
            jobid=jobid,
            date=date,
            source="CREAMInterface",
            seqcode=seqcode,
            jobtype="CREAM",
            ns=CREAM_NS,
            jdl='[ Executable = "/bin/true"; ]',
        )
    states = ("IDLE", "RUNNING", "REALLY-RUNNING", "HELD")
    old, new = states[i % 4], states[(i + 1) % 4]
    return ulm_line(
        "CREAMStatus",
        jobid=jobid,
        date=date,
        source="CREAMExecutor",
        seqcode=seqcode,
        result="DONE" if i % 10 == 0 else "ARRIVED",
        old_state=old,
        new_state=new,
    )


def pipeline(path: str, lines: list[bytes], window: int, until: float | None = None) -> list[float]:
    """
    Send C{lines} with at most C{window} unanswered; stop sending at C{until}.

    @return: the time each answer came (perf_counter), in order.
    """
    pipe = IntakePipe(path)
    answers: list[float] = []
    nxt = 0
    while len(answers) < nxt or nxt < len(lines):
        now = time.perf_counter()
        if until is not None and now > until:
            break
        while nxt < len(lines) and nxt - len(answers) < window:
            pipe.pending += lines[nxt]
            nxt += 1
        pipe.send()
        got, received = pipe.receive(0.0 if pipe.pending else 0.05)
        for answer in received:
            if not answer.startswith(b"OK"):
                print(f"answer: {answer[:200]!r}", file=sys.stderr)
            answers.append(got)
    pipe.close()
    return answers


def hostile_lines(jobid: str, first: int, last_date: int, count: int) -> list[bytes]:
    """
    Late and future-dated events for the big job: one dated 9999-12-31, then events
    after a backward clock step of 10 s (each sorting before the job's last events),
    every 20th dated a day before the job began.
    """
    lines = [job_event(jobid, first, FAR_FUTURE)]
    step = last_date - 10_000_000
    for k in range(1, count):
        date = step - 86_400_000_000 + k if k % 20 == 0 else step + k * 10_000
        lines.append(job_event(jobid, first + k, date))
    return [line.encode() + b"\n" for line in lines]


def hostile(path: str, lines: list[bytes], until: float, out: Any) -> None:
    """
    Send C{lines} pipelined until C{until}; puts the count answered, and whether
    the phase ended with lines still to send (the load lasted the whole phase).
    """
    answered = len(pipeline(path, lines, 64, until))
    out.put((answered, answered < len(lines)))


def probe(path: str, until: float, interval: float) -> list[float]:
    """
    One event at a time for other jobs, on a schedule of one every C{interval} s until
    C{until}: each scheduled event's latency from its scheduled time to its answer (so a
    stall counts for every event it delays); those not answered by C{until} count
    C{until} minus their scheduled time.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    trips: list[float] = []
    n = 0
    base = int(time.time() * 1_000_000)
    t0 = time.perf_counter()
    while True:
        due = t0 + n * interval
        if due >= until:
            break
        time.sleep(max(0.0, due - time.perf_counter()))
        jobid = cream_jobid(900_000_000 + n // 10)
        sock.sendall(job_event(jobid, n % 10, base + n).encode() + b"\n")
        buf = b""
        sock.settimeout(max(0.001, until - time.perf_counter()))
        try:
            while b"\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed by the service")
                buf += chunk
        except TimeoutError:
            break
        trips.append(time.perf_counter() - due)
        n += 1
    # Scheduled but not answered (or not sent) by the end of the phase.
    while t0 + n * interval < until:
        trips.append(until - (t0 + n * interval))
        n += 1
    sock.close()
    return trips


def run_stall(
    base: str, events: int, seconds: float, interval: float, args: list[str]
) -> dict[str, float]:
    svc = LBService(os.path.join(base, "stall"), args=args)
    svc.start()
    try:
        jobid = cream_jobid(1)
        start = int(time.time() * 1_000_000) - events * 1_000
        lines = [job_event(jobid, i, start + i * 1_000).encode() + b"\n" for i in range(events)]
        t = time.perf_counter()
        pipeline(svc.socket_path, lines, 64)
        fill = time.perf_counter() - t
        bad = hostile_lines(jobid, events, start + events * 1_000, 400_000)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        until = time.perf_counter() + seconds
        proc = ctx.Process(target=hostile, args=(svc.socket_path, bad, until, out))
        proc.start()
        time.sleep(0.5)
        trips = sorted(probe(svc.socket_path, until, interval))
        answered, lasted = out.get(timeout=seconds + 60)
        if not lasted:
            print("warning: the hostile events ran out before the phase ended", file=sys.stderr)
        proc.join()
    finally:
        svc.kill()
        svc.cleanup()
    return {
        "fill_rate": events / fill,
        "p50_ms": statistics.median(trips) * 1000,
        "p99_ms": trips[max(0, int(len(trips) * 0.99) - 1)] * 1000,
        "probes": len(trips),
        "hostile": answered,
    }


def run_growth(base: str, big: int, args: list[str]) -> dict[str, float]:
    svc = LBService(os.path.join(base, "growth"), args=args)
    svc.start()
    try:
        jobid = cream_jobid(2)
        start = int(time.time() * 1_000_000) - big * 1_000
        lines = [job_event(jobid, i, start + i * 1_000).encode() + b"\n" for i in range(big)]
        answers = pipeline(svc.socket_path, lines, 64)
    finally:
        svc.cleanup()
    first = 999 / (answers[999] - answers[0])
    last = 999 / (answers[-1] - answers[-1000])
    return {"first": first, "last": last, "ratio": last / first}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Late and future events in big jobs.")
    parser.add_argument("--events", type=int, default=30_000, help="size of run A's job")
    parser.add_argument("--big", type=int, default=50_000, help="size of run B's job")
    parser.add_argument("--seconds", type=float, default=20.0, help="run A's hostile phase")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    parser.add_argument(
        "--service-arg", action="append", default=[], help="an lbproxy option (repeatable)"
    )
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="lbtwist-bench-fold-")
    runs = [
        run_stall(
            os.path.join(base, f"a{r}"), args.events, args.seconds, args.interval, args.service_arg
        )
        for r in range(args.repeat)
    ]
    a = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("A runs: " + "; ".join(f"p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms" for r in runs))
    print(
        f"A (median of {args.repeat}): {args.events}-event job filled at {a['fill_rate']:,.0f} events/s; during"
        f" {args.seconds:.0f} s of late/future events ({int(a['hostile'])} answered) the"
        f" unrelated producer's round trip p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms"
        f" ({int(a['probes'])} round trips)",
        flush=True,
    )
    growth = [
        run_growth(os.path.join(base, f"b{r}"), args.big, args.service_arg)
        for r in range(args.repeat)
    ]
    b = {k: statistics.median(r[k] for r in growth) for k in growth[0]}
    print("B runs: " + "; ".join(f"x{r['ratio']:.2f}" for r in growth))
    print(
        f"B (median of {args.repeat}): {args.big}-event job: first 1,000 at {b['first']:,.0f} events/s, last 1,000 at"
        f" {b['last']:,.0f} events/s (x{b['ratio']:.2f})",
        flush=True,
    )
    command = " ".join(["python -m bench.fold", *(argv if argv is not None else sys.argv[1:])])
    print(
        f"summary: round trip p50 {a['p50_ms']:.1f} ms p99 {a['p99_ms']:.1f} ms (target p99"
        f" < 50); last/first {b['ratio']:.2f} (target >= 0.8); command: .venv/bin/{command}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
