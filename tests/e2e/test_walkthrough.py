# -*- test-case-name: tests.e2e.test_walkthrough -*-
"""
End-to-end: the new admin's walkthrough of C{docs/operations.md}, from the wheel.

The wheel is built once per test module (C{pip wheel --no-deps}) and installed
into a fresh virtualenv in a temporary directory. To stay fast and offline the
new virtualenv borrows the dependencies (Twisted, pyOpenSSL...) of the one that
runs the tests through a C{.pth} line: the project itself, its console scripts,
its twistd plugin, the sample configurations, the systemd units and the docs all
come from the wheel. The admin then copies a sample configuration, runs the
systemd unit's C{ExecStart=} line as it is written (the paths moved under the
temporary directory) for a proxy and a server, sees the one summary line,
scrapes C{/metrics}, runs C{lbtwist probe} (OK, then WARNING once a backlog to
a dead destination ages past C{-w}), and re-queues a rejected event with
C{lbtwist relay retry} after fixing its cause.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509

from lbtwist.security.devcerts import make_dev_pki
from lbtwist.security.identity import slash_dn
from tests.e2e import harness
from tests.e2e.harness import E2ECase, free_port, wait_for
from tests.e2e.test_opsmetrics import metric_value
from tests.e2e.test_relay import ACTIONS, LB_HOST, OTHER_HOST, query

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clean_env() -> dict[str, str]:
    """
    The environment of what runs from the new virtualenv: without C{PYTHONPATH} (trial's
    workers get the test environment's path through it, the work tree included), so
    that the installed files are the ones imported.
    """
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    for name in ("GLITE_WMS_JOBID", "GLITE_WMS_SEQUENCE_CODE", "GLITE_WMS_LBPROXY_STORE_SOCK"):
        env.pop(name, None)
    return env


#: The built wheel and the virtualenv it is installed in, made once per module.
_INSTALLED: dict[str, str] = {}


def installed() -> dict[str, str]:
    """
    Build the wheel and install it into a fresh virtualenv (once per process).

    @return: C{venv} (its directory), C{wheel} (the file), C{bin}, C{prefix}.
    """
    if _INSTALLED:
        return _INSTALLED
    base = tempfile.mkdtemp(prefix="lbtwist-wheel-")
    import atexit

    atexit.register(shutil.rmtree, base, True)
    out = os.path.join(base, "dist")
    # Built from a copy of the sources: setuptools' build/ directory in the work tree
    # could carry files the sources no longer have.
    source = os.path.join(base, "src")
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "_trial_temp*",
            "*.egg-info",
            ".hypothesis",
            ".mypy_cache",
            ".ruff_cache",
            "__pycache__",
            "dropin.cache",
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0:
        raise AssertionError(f"pip wheel failed:\n{built.stderr[-3000:]}")
    (wheel,) = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".whl")]
    venv = os.path.join(base, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = os.path.join(venv, "bin", "python")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise AssertionError(f"pip install failed:\n{done.stderr[-3000:]}")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies, from the test's own environment (after the wheel's files on
    # sys.path; that environment's own .pth files, such as an editable lbtwist, are
    # not read from there).
    with open(os.path.join(purelib, "zz-lbtwist-test-deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # Twisted's twistd console script, as installing Twisted would make it.
    twistd = os.path.join(venv, "bin", "twistd")
    with open(twistd, "w") as f:
        f.write(
            f"#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n"
        )
    os.chmod(twistd, 0o755)
    _INSTALLED.update(
        venv=venv, wheel=wheel, bin=os.path.join(venv, "bin"), prefix=venv, purelib=purelib
    )
    return _INSTALLED


def set_options(text: str, values: dict[str, str]) -> str:
    """
    An INI text with each C{key = value} set: the key's first line (commented out
    or not) replaced, or a line added at the end.
    """
    for key, value in values.items():
        pattern = re.compile(rf"^#?\s*{re.escape(key)}\s*=.*$", re.MULTILINE)
        line = f"{key} = {value}"
        text, n = pattern.subn(line.replace("\\", "\\\\"), text, count=1)
        if not n:
            text += f"\n{line}\n"
    return text


class Unit:
    """
    One role run as its installed systemd unit runs it (C{ExecStart=}, with the
    configuration, state and log directories moved under C{base}).
    """

    def __init__(self, bin_dir: str, prefix: str, role: str, base: str) -> None:
        self.role = role
        self.base = base
        self.etc = os.path.join(base, "etc", "lbtwist")
        self.state_dir = os.path.join(base, "var", "lib", f"lbtwist-{role}")
        self.log_dir = os.path.join(base, "var", "log", f"lbtwist-{role}")
        for d in (self.etc, self.state_dir, self.log_dir):
            os.makedirs(d, mode=0o750)
        self.config = os.path.join(self.etc, f"{role}.conf")
        shutil.copy(os.path.join(prefix, "share", "lbtwist", "etc", f"{role}.conf"), self.config)
        with open(
            os.path.join(prefix, "share", "lbtwist", "systemd", f"lbtwist-{role}.service")
        ) as f:
            unit = f.read()
        (exec_start,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
        line = exec_start[len("ExecStart=") :]
        for old, new in (
            ("/usr/local/bin/", bin_dir + "/"),
            ("/etc/lbtwist/", self.etc + "/"),
            (f"/var/lib/lbtwist-{role}", self.state_dir),
            (f"/var/log/lbtwist-{role}", self.log_dir),
        ):
            line = line.replace(old, new)
        self.argv = shlex.split(line)
        self.logfile = os.path.join(self.log_dir, "twistd.log")
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, values: dict[str, str]) -> None:
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(set_options(text, values))

    def log_text(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, ready_port: int) -> None:
        out = open(os.path.join(self.base, f"{self.role}.out"), "ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.base,
                env=clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            out.close()
        deadline = time.monotonic() + harness.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(os.path.join(self.base, f"{self.role}.out"), errors="replace") as f:
                    raise AssertionError(f"{self.role} exited\n{f.read()}{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", ready_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.role} did not listen\n{self.log_text()}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(harness.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(harness.STOP_TIMEOUT)


class WalkthroughTests(E2ECase):
    def setUp(self) -> None:
        self.inst = installed()
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.sockets = tempfile.mkdtemp(prefix="lbtwist-walk-")  # Unix socket paths are short
        self.addCleanup(shutil.rmtree, self.sockets, True)
        self.pki = make_dev_pki(
            os.path.join(self.base, "pki"), now=datetime.now(UTC), hostnames=("localhost", LB_HOST)
        )
        self.host_dn = slash_dn(
            x509.load_pem_x509_certificate(self.pki.host_cert.read_bytes()).subject
        )

    def lbtwist(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        The installed C{lbtwist} command.
        """
        return subprocess.run(
            [os.path.join(self.inst["bin"], "lbtwist"), *args],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def write_policy(self, path: str, actions: Sequence[str]) -> None:
        body = "".join(
            f'  action "{a}" {{ rule permit {{ subject = "{self.host_dn}" }} }}\n' for a in actions
        )
        with open(path, "w") as f:
            f.write(f'resource "LB" {{\n{body}}}\n')

    def test_installed_files(self) -> None:
        """
        The wheel installs the code, the console script, the sample configurations,
        the systemd units and the docs where the docs say (under the prefix).
        """
        prefix = self.inst["prefix"]
        for name in (
            "share/lbtwist/etc/lbproxy.conf",
            "share/lbtwist/etc/lbserver.conf",
            "share/lbtwist/systemd/lbtwist-lbproxy.service",
            "share/lbtwist/systemd/lbtwist-lbserver.service",
            "share/lbtwist/systemd/lbtwist.sysusers.conf",
            "share/doc/lbtwist/README.md",
            "share/doc/lbtwist/operations.md",
            "bin/lbtwist",
        ):
            self.assertTrue(os.path.isfile(os.path.join(prefix, name)), name)
        where = subprocess.run(
            [
                os.path.join(self.inst["bin"], "python"),
                "-c",
                "import lbtwist; print(lbtwist.__file__)",
            ],
            env=clean_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.assertTrue(where.startswith(self.inst["purelib"]), where)
        self.assertTrue(
            os.path.isfile(os.path.join(os.path.dirname(where), "core", "data", "events.tsv"))
        )

    def test_walkthrough(self) -> None:
        server = Unit(
            self.inst["bin"], self.inst["prefix"], "lbserver", os.path.join(self.base, "srv")
        )
        proxy = Unit(
            self.inst["bin"], self.inst["prefix"], "lbproxy", os.path.join(self.base, "px")
        )
        self.addCleanup(proxy.stop)
        self.addCleanup(server.stop)
        creds = {
            "cert": str(self.pki.host_cert),
            "key": str(self.pki.host_key),
            "ca-dir": str(self.pki.ca_dir),
        }
        store_port, metrics_port, query_port = free_port(), free_port(), free_port()
        policy = os.path.join(server.etc, "policy.conf")
        # The server lets the proxy's host register jobs and log WMS and CE events,
        # not general ones (a UserTag): those are rejected.
        self.write_policy(policy, ACTIONS[:3])
        server.configure(
            {
                **creds,
                "hostname": LB_HOST,
                "events": f"unix:{self.sockets}/srv-events.sock:mode=660",
                "serve": f"unix:{self.sockets}/srv-serve.sock:mode=660",
                "store": f"tcp:{store_port}:interface=127.0.0.1",
                "query": f"tcp:{free_port()}:interface=127.0.0.1",
                "metrics": "none",
                "policy": policy,
            }
        )
        user = slash_dn(x509.load_pem_x509_certificate(self.pki.user_cert.read_bytes()).subject)
        events = f"{self.sockets}/px-events.sock"
        proxy.configure(
            {
                **creds,
                "hostname": "localhost",
                "events": f"unix:{events}:mode=660",
                "serve": f"unix:{self.sockets}/px-serve.sock:mode=660",
                "query": f"tcp:{query_port}:interface=127.0.0.1",
                "metrics": f"tcp:{metrics_port}:interface=127.0.0.1",
                "metrics-refresh-interval": "0.2",
                "relay-sweep-interval": "0.5",
                "super-user": user,
                # The server, and a destination nobody listens on.
                "relay-map": f"{LB_HOST}:9001=tcp:host=127.0.0.1:port={store_port},"
                f" {OTHER_HOST}:9001=tcp:host=127.0.0.1:port={free_port()}",
            }
        )
        server.start(store_port)
        proxy.start(metrics_port)

        # One summary line.
        wait_for("the summary line", lambda: "lbproxy started:" in proxy.log_text(), timeout=15)
        summary = [ln for ln in proxy.log_text().splitlines() if "lbproxy started:" in ln]
        self.assertEqual(len(summary), 1, proxy.log_text())
        self.assertIn(f"state {proxy.state_dir}, 0 jobs", summary[0])
        self.assertIn(f"query=tcp:{query_port}", summary[0])

        def scrape(path: str = "/metrics") -> str:
            url = f"http://127.0.0.1:{metrics_port}{path}"
            with urllib.request.urlopen(url, timeout=10) as answer:
                return str(answer.read().decode())

        def probe() -> tuple[int, str]:
            result = self.lbtwist("probe", "-p", str(metrics_port), "-w", "2", "-c", "3600")
            return result.returncode, result.stdout.strip()

        # A query over HTTPS with the user's proxy: observed by route and code.
        context = ssl.create_default_context(capath=str(self.pki.ca_dir))
        context.load_cert_chain(str(self.pki.user_proxy))
        for path in ("/health", "/CREAM000000404"):
            try:
                urllib.request.urlopen(
                    f"https://localhost:{query_port}{path}", timeout=10, context=context
                )
            except urllib.error.HTTPError:
                pass

        def scraped_families() -> bool:
            text = scrape()
            return (
                metric_value(text, "lbtwist_query_seconds_count", route="health", code="200") == 1
                and metric_value(text, "lbtwist_query_seconds_count", route="status", code="404")
                == 1
                and metric_value(text, "lbtwist_notifications_registrations", state="active") == 0
            )

        wait_for("the query and notification metrics", scraped_families, timeout=15)
        text = scrape()
        for family in (
            "lbtwist_info",
            "lbtwist_intake_events_total",
            "lbtwist_commit_group_events",
            "lbtwist_store_size_bytes",
            "lbtwist_tls_connections",
            "lbtwist_notifications_queued",
            "lbtwist_notifications_dropped",
        ):
            self.assertIn(f"\n{family}", text)

        # The state directory's one lock: the offline writers are refused while it runs.
        locks = sorted(n for n in os.listdir(proxy.state_dir) if n.endswith(".lock"))
        self.assertEqual(locks, ["lbtwist.lock"])
        dump = os.path.join(self.base, "empty.dump")
        open(dump, "w").close()
        for offline in (
            ["load", "--state-dir", proxy.state_dir, dump],
            ["purge", "--state-dir", proxy.state_dir, "-l"],
        ):
            busy = self.lbtwist(*offline)
            self.assertEqual(busy.returncode, 1, busy.stdout + busy.stderr)
            self.assertIn(f"ERR 16 another lbtwist uses {proxy.state_dir}", busy.stderr)
            self.assertEqual(len(busy.stderr.splitlines()), 1, busy.stderr)

        # Nothing waits: OK.
        code, line = probe()
        self.assertEqual((code, line[:11]), (0, "LBTWIST OK "), line)

        # A job for the server with a UserTag the server refuses, and one for the dead
        # destination: the first is delivered but for the tag, the second waits.
        jobid = f"https://{LB_HOST}:9000/e2eWalkJob000001"
        wms, cream = harness.wms_job_trace(jobid, harness.cream_jobid(1), harness.T0)
        tag = harness.foreign_tag(jobid)
        stuck, _ = harness.wms_job_trace(
            f"https://{OTHER_HOST}:9000/e2eWalkJob000002", harness.cream_jobid(2), harness.T0
        )
        lines = [*wms, tag, *cream, *stuck[:2]]
        sock = harness.connect(events)
        try:
            sock.sendall("".join(ln + "\n" for ln in lines).encode())
            for ln in lines:
                self.assertTrue(harness.read_line(sock).startswith(b"OK"), ln)
        finally:
            sock.close()

        results: list[tuple[int, str]] = []

        def warned() -> bool:
            results.append(probe())
            return results[-1][0] == 1

        wait_for("the probe to warn", warned, timeout=30)
        self.assertTrue(
            results[-1][1].startswith("LBTWIST WARNING - relay backlog of"), results[-1]
        )

        db = os.path.join(proxy.state_dir, "lbtwist.sqlite")
        wait_for("the rejection", lambda: query(db, "SELECT COUNT(*) FROM rejected") == [(1,)])
        result = self.lbtwist("relay", "rejected", "--state-dir", proxy.state_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"of {jobid} to {LB_HOST}:9001: 600/", result.stdout)

        # The cause fixed: the server may now take general events; re-queued, delivered.
        self.write_policy(policy, ACTIONS)
        server.stop()
        server.start(store_port)
        result = self.lbtwist("relay", "retry", "--state-dir", proxy.state_dir, "--all")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("re-queued 1 rejected event", result.stdout)
        server_db = os.path.join(server.state_dir, "lbtwist.sqlite")
        wait_for(
            "the re-queued event at the server",
            lambda: any(str(r[0]) == tag for r in query(server_db, "SELECT line FROM events")),
        )
        self.assertEqual(query(db, "SELECT COUNT(*) FROM rejected"), [(0,)])
        health = json.loads(scrape("/health"))
        self.assertEqual(health["role"], "lbproxy")
