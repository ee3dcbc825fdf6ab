# -*- test-case-name: tests.unit.test_cli_fast -*-
"""
Benchmark of the producer command line (docs/reference.md, Performance targets): one
C{lbtwist logevent} and one C{lbtwist job-reg} call, process start to exit with the
event acknowledged, against a real C{twistd lbproxy} on a temporary state directory
(SQLite WAL, synchronous=FULL, so every call includes one durable commit).

Beside them, in the same run and interleaved with them (one run of each command per
round, so load on the machine falls on all alike):

  - C{python -c pass} (the bare interpreter start of the same virtualenv, the
    reference of the target ratio),
  - C{python -c "import lbtwist"},
  - C{lbtwist logevent} with C{$X509_USER_PROXY} set (as the Job Wrapper runs it:
    the DN logged is read from the proxy file),
  - C{python -m lbtwist logevent ...} (the same call without the console script),
  - C{glite-lb-logevent -x} when such a binary is on C{PATH} (L&B's own C tool,
    against the same proxy socket).

Prints median and p90 wall milliseconds of each and the ratio of each median to
C{python -c pass}; with C{--importtime} also the slowest imports of one logevent
call (C{python -X importtime}). Target: logevent and job-reg median under 60 ms and
at most 2 x C{python -c pass}.

Run from the repository root::

    .venv/bin/python -m bench.cli [--runs 30] [--importtime]

The last line is the command that reproduces the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e.harness import BIN_DIR, LBService

PYTHON = sys.executable
LBTWIST = os.path.join(BIN_DIR, "lbtwist")

#: The targets: median milliseconds and ratio to the bare interpreter start.
TARGET_MS = 60.0
TARGET_RATIO = 2.0


def percentile(values: Sequence[float], q: float) -> float:
    """
    The C{q}-quantile (0..1) of C{values}, nearest rank.
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def timed(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, str]:
    """
    Run C{argv} once; wall milliseconds from spawn to exit and its stdout.

    @raise RuntimeError: it failed.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv), env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    elapsed = (time.perf_counter() - start) * 1000.0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.strip()}")
    return elapsed, proc.stdout


#: The label of the run with $X509_USER_PROXY set.
WITH_PROXY = "lbtwist logevent, X509_USER_PROXY"


def commands(sock: str, glite: str | None, lbtwist: str) -> dict[str, list[str]]:
    """
    The commands measured, by label. Job ids are filled in per run (L{argv_for}).
    """
    logevent = ["logevent", "-x", "-S", sock, "-s", "CREAMExecutor", "-e", "CREAMStatus"]
    logevent += ["--new_state=RUNNING", "--result=DONE", "-j"]
    cmds = {
        "python -c pass": [PYTHON, "-c", "pass"],
        'python -c "import lbtwist"': [PYTHON, "-c", "import lbtwist"],
        "lbtwist job-reg": [lbtwist, "job-reg", "-x", "-c", "-X", sock, "-j"],
        "lbtwist logevent": [lbtwist, *logevent],
        WITH_PROXY: [lbtwist, *logevent],
        "python -m lbtwist logevent": [PYTHON, "-m", "lbtwist", *logevent],
    }
    if glite is not None:
        cmds["glite-lb-logevent -x"] = [
            glite,
            "-x",
            "-s",
            "CREAMExecutor",
            "-e",
            "CREAMStatus",
            "--new_state=RUNNING",
            "--result=DONE",
            "-c",
            "no_seqcodes_with_cream",
            "-j",
        ]
    return cmds


def argv_for(label: str, base: list[str], round_: int, jobid: str) -> list[str]:
    """
    C{base} with the job id of this round where the command takes one: job-reg
    registers a new job each round, the loggers log to the job registered first.
    """
    if base[-1] != "-j":
        return base
    if "job-reg" in label:
        return [*base, f"https://localhost:9000/CREAM{900000000 + round_:09d}"]
    return [*base, jobid]


def importtime(argv: Sequence[str], env: Mapping[str, str], top: int) -> str:
    """
    The C{top} slowest imports (cumulative microseconds) of one run of C{argv}
    under C{python -X importtime}.
    """
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", *argv],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    rows: list[tuple[int, int, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line[len("import time:") :].split("|", 2)
        rows.append((int(cumulative), int(self_us), name.rstrip()))
    total = sum(r[1] for r in rows)
    lines = [f"  imports of one call: {len(rows)} modules, {total / 1000:.1f} ms in all"]
    for cumulative, self_us, name in sorted(rows, reverse=True)[:top]:
        lines.append(
            f"  {cumulative / 1000:8.1f} ms cumulative {self_us / 1000:6.1f} ms self {name}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    parser.add_argument(
        "--importtime", action="store_true", help="also print the slowest imports of logevent"
    )
    parser.add_argument(
        "--glite", default=None, help="path of glite-lb-logevent (default: looked up on PATH)"
    )
    parser.add_argument(
        "--lbtwist",
        default=LBTWIST,
        metavar="PATH",
        help="the lbtwist command to measure (default: the one beside this Python)",
    )
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help=(
            "keep $PYTHONDONTWRITEBYTECODE as it is (default: the runs write and read "
            "bytecode in a temporary PYTHONPYCACHEPREFIX, as an installed package has it)"
        ),
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    glite = args.glite
    if glite is None:
        glite = shutil.which("glite-lb-logevent")
        if glite is not None and _is_script(glite):
            # Such as tests/e2e/lbtools' wrapper, which runs lbtwist itself.
            glite = None
    base = tempfile.mkdtemp(prefix="lbtwist-bench-cli-")
    service = LBService(base)
    try:
        service.start()
        sock = service.socket_path
        env = dict(os.environ)
        if not args.no_bytecode:
            # An installed package has its .pyc files; a checkout run with
            # PYTHONDONTWRITEBYTECODE would compile every module on every call.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = os.path.join(base, "pycache")
        env["GLITE_WMS_LBPROXY_STORE_SOCK"] = sock
        for name in ("GLITE_WMS_SEQUENCE_CODE", "EDG_WL_SEQUENCE_CODE", "X509_USER_PROXY"):
            env.pop(name, None)
        env.pop("X509_USER_CERT", None)
        with_proxy = dict(env, X509_USER_PROXY=_user_proxy(service.state_dir, base))
        jobid = "https://localhost:9000/CREAM800000000"
        timed([args.lbtwist, "job-reg", "-x", "-c", "-X", sock, "-j", jobid], env)
        cmds = commands(sock, glite, args.lbtwist)
        samples: dict[str, list[float]] = {label: [] for label in cmds}
        # One warm-up round (page cache, .pyc files), not counted.
        for round_ in range(args.runs + 1):
            for label, cmd in cmds.items():
                run_env = with_proxy if label == WITH_PROXY else env
                ms, _ = timed(argv_for(label, cmd, round_, jobid), run_env)
                if round_ > 0:
                    samples[label].append(ms)
        report = [
            f"lbtwist CLI, {args.runs} runs each, interleaved; load before: {_load()}",
            f"{'command':<34} {'median ms':>10} {'p90 ms':>8} {'x python -c pass':>17}",
        ]
        bare = statistics.median(samples["python -c pass"])
        for label, values in samples.items():
            med = statistics.median(values)
            report.append(
                f"{label:<34} {med:10.1f} {percentile(values, 0.9):8.1f} {med / bare:17.2f}"
            )
        if glite is None:
            report.append("(no glite-lb-logevent binary on PATH: the C tool not measured)")
        verdicts = []
        for label in ("lbtwist logevent", WITH_PROXY, "lbtwist job-reg"):
            med = statistics.median(samples[label])
            ok = med < TARGET_MS and med <= TARGET_RATIO * bare
            verdicts.append(
                f"{label}: {'meets' if ok else 'MISSES'} the target "
                f"(< {TARGET_MS:g} ms and <= {TARGET_RATIO:g} x python -c pass)"
            )
        report += verdicts
        report.append(f"load after: {_load()}")
        if args.importtime:
            report.append(importtime([*cmds["lbtwist logevent"], jobid], with_proxy, 15))
        print("\n".join(report))
    finally:
        service.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    command = ".venv/bin/python -m bench.cli" + (f" --runs {args.runs}" if args.runs != 30 else "")
    if args.importtime:
        command += " --importtime"
    if args.no_bytecode:
        command += " --no-bytecode"
    if args.lbtwist != LBTWIST:
        command += f" --lbtwist {args.lbtwist}"
    print(command)
    return 0


def _user_proxy(state_dir: str, base: str) -> str:
    """
    A user proxy file: the development one the proxy made in its state
    directory, else a fresh development PKI's.
    """
    path = os.path.join(state_dir, "devcerts", "user", "x509up")
    if os.path.exists(path):
        return path
    from datetime import UTC, datetime

    from lbtwist.security.devcerts import make_dev_pki

    return str(make_dev_pki(os.path.join(base, "pki"), now=datetime.now(UTC)).user_proxy)


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"#!"


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


if __name__ == "__main__":
    sys.exit(main())
