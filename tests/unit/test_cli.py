# -*- test-case-name: tests.unit.test_cli -*-
"""
Tests for the C{lbtwist} command (L{lbtwist.cli}).
"""

from __future__ import annotations

import datetime
import gc
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli import identity
from lbtwist.cli.common import DEFAULT_SOCKET, CLIContext, default_socket, env_first
from lbtwist.cli.local import parse_time
from lbtwist.cli.logevent import field_key, parse_field_options
from lbtwist.cli.main import build_parser, run
from lbtwist.core.errors import InvalidValue, LBError
from tests import fixtures
from tests.unit.test_producer import LineServer, short_path, start_server

NOW = 1_710_408_413_123_456  # 2024-03-14 09:26:53.123456 UTC
JOBID = "https://lb.example.org:9000/Hq3tK8vWZ0bQy1n2m3p4rA"
CREAM_JOBID = "https://ce.example.org:9000/CREAM812461375"
USER = "/C=CZ/O=Example/CN=Jana Novakova"
PROXY_SEQ = "UI=000000:NS=0000000003:WM=000004:BH=0000000000:JSS=000002:LM=000000:LRMS=000000:APP=000000:LBS=000000"
#: What the test server answers to a sequence-code request, by job id.
PROXY_CODES = {JOBID: b"OK " + PROXY_SEQ.encode()}

#: The type and fields of the events most producer tests log: a UserTag C{a=b}.
USER_TAG = ("-s", "Application", "-e", "UserTag", "--name=a", "--value=b")


def socket_argv(path: str) -> list[str]:
    """
    C{lbtwist logevent} to the socket C{path}: L{JOBID}'s event by L{USER}
    after L{PROXY_SEQ} (its type and fields left to the caller).
    """
    return ["logevent", "-S", path, "-U", USER, "-j", JOBID, "-c", PROXY_SEQ]


class FakeTime:
    """
    Monotonic seconds that only L{sleep} moves; C{on_sleep} runs at each sleep.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: list[Any] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep.pop(0)()


def make_ctx(
    env: Mapping[str, str] | None = None, stdin: str = "", time: FakeTime | None = None
) -> CLIContext:
    """
    A context with fixed time, randomness, host and login, and string streams;
    producer retries wait on C{time} (a fresh L{FakeTime} if none), not for real.
    """
    time = time or FakeTime()
    return CLIContext(
        monotonic=time.clock,
        sleep=time.sleep,
        env=dict(env or {}),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        stdin=io.StringIO(stdin),
        now=lambda: NOW,
        random_bytes=lambda n: bytes(range(n)),
        pid=4242,
        fqdn=lambda: "node.example.org",
        hostname=lambda: "node.example.org",
        login=lambda: "jana",
    )


def call(argv: Sequence[str], ctx: CLIContext | None = None) -> tuple[int, str, str]:
    """
    Run C{lbtwist argv}; return exit status, stdout and stderr.
    """
    ctx = ctx or make_ctx()
    status = run(argv, ctx)
    assert isinstance(ctx.stdout, io.StringIO) and isinstance(ctx.stderr, io.StringIO)
    return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()


def intake_answer(line: bytes) -> bytes | None:
    """
    The intake's answer to a sequence-code request (from L{PROXY_CODES}) or to
    an event it refuses (a parse error as C{ERR}); C{None} for an event it takes.
    """
    from lbtwist.core.events import parse_event

    if line.startswith(b"?SEQCODE "):
        return PROXY_CODES.get(line[9:].decode(), b"ERR 2 unknown job " + line[9:])
    try:
        parse_event(line.decode("utf-8"))
    except LBError as e:
        return f"ERR {e.code} {e.message}".encode()
    return None


def validating_answer() -> object:
    """
    An answer function for L{LineServer} that validates like the intake
    (L{intake_answer}), repeated lines as C{OK duplicate}.
    """
    seen: set[bytes] = set()

    def answer(line: bytes) -> bytes:
        refused = intake_answer(line)
        if refused is not None:
            return refused
        if line in seen:
            return b"OK duplicate"
        seen.add(line)
        return b"OK"

    return answer


def sent_events(server: LineServer, skip: int = 0) -> list[object]:
    from lbtwist.core.events import parse_event

    return [parse_event(line.decode("utf-8")) for line in server.lines[skip:]]


class DispatcherTests(SynchronousTestCase):
    """
    L{run} and L{build_parser}.
    """

    def test_help_lists_commands(self) -> None:
        status, out, err = call(["--help"])
        self.assertEqual(status, 0)
        for name in ["logevent", "job-reg", "status", "log", "dump", "replay"]:
            self.assertIn(name, out)

    def test_parser_has_commands(self) -> None:
        parser = build_parser()
        self.assertIn("replay", parser.format_help())

    def test_no_command(self) -> None:
        status, out, err = call([])
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertIn("usage: lbtwist", err)

    def test_unknown_command(self) -> None:
        status, out, err = call(["frobnicate"])
        self.assertEqual(status, 2)
        self.assertIn("invalid choice", err)

    def test_extra_arguments_refused(self) -> None:
        status, out, err = call(["dump", "--state-dir", "x", "--bogus=1"])
        self.assertEqual(status, 2)
        self.assertIn("unrecognized arguments: --bogus=1", err)

    def test_status_without_state_dir(self) -> None:
        # Without --state-dir the job is asked over HTTPS: a missing proxy is
        # one line, before any connection.
        ctx = make_ctx({"X509_USER_PROXY": "/nonexistent/x509up"})
        status, out, err = call(["status", JOBID], ctx)
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertIn("lbtwist status: cannot read certificate /nonexistent/x509up", err)
        self.assertEqual(err.count("\n"), 1)


class EnvironmentTests(SynchronousTestCase):
    """
    Environment fallbacks and small helpers.
    """

    def test_env_first(self) -> None:
        env = {"A": "", "B": "b", "C": "c"}
        self.assertEqual(env_first(env, "A", "B", "C"), "b")
        self.assertIsNone(env_first(env, "X", "A"))

    def test_default_socket(self) -> None:
        self.assertEqual(default_socket({}), DEFAULT_SOCKET)
        self.assertEqual(DEFAULT_SOCKET, os.path.join("lbtwist-state", "events.sock"))
        env = {"GLITE_WMS_LBPROXY_STORE_SOCK": "/tmp/x.sock"}
        self.assertEqual(default_socket(env), "/tmp/x.sock")

    def test_field_options(self) -> None:
        self.assertEqual(
            parse_field_options(["--new_state=DONE-OK", "--Exit-Code", "0", "--reason="]),
            [("new_state", "DONE-OK"), ("Exit-Code", "0"), ("reason", "")],
        )
        self.assertEqual(field_key("Exit-Code"), "exit_code")
        self.assertRaises(InvalidValue, parse_field_options, ["--reason"])
        self.assertRaises(InvalidValue, parse_field_options, ["stray"])
        self.assertRaises(InvalidValue, parse_field_options, ["-x"])

    def test_parse_time(self) -> None:
        expected = (
            int(datetime.datetime(2024, 3, 14, 9, 26, 53, tzinfo=datetime.UTC).timestamp())
            * 1_000_000
        )
        self.assertEqual(parse_time("20240314092653"), expected)
        self.assertEqual(parse_time("20240314092653.5"), expected + 500_000)
        self.assertEqual(parse_time("2024-03-14T09:26:53Z"), expected)
        self.assertEqual(parse_time("2024-03-14T09:26:53"), expected)
        self.assertEqual(parse_time("2024-03-14T10:26:53+01:00"), expected)
        self.assertEqual(parse_time(str(expected // 1_000_000)), expected)
        self.assertEqual(parse_time("1.25"), 1_250_000)
        self.assertRaises(InvalidValue, parse_time, "yesterday")
        self.assertRaises(InvalidValue, parse_time, "20241314092653")


class IdentityTests(SynchronousTestCase):
    """
    L{identity.default_user} and L{identity.certificate_dn}.
    """

    def make_cert(
        self, names: list[tuple[object, str]], issuer: tuple[object, object] | None = None
    ) -> tuple[object, object]:
        """
        A certificate with subject C{names}, self-signed, or a proxy (RFC 3820
        ProxyCertInfo extension) signed by C{issuer} = (cert, key).
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(oid, value) for oid, value in names])  # type: ignore[arg-type]
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if issuer is None:
            cert = builder.issuer_name(name).sign(key, hashes.SHA256())
        else:
            issuer_cert, issuer_key = issuer
            pci = x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),
                bytes.fromhex("300c300a06082b06010505071501"),
            )
            cert = (
                builder.issuer_name(issuer_cert.subject)  # type: ignore[attr-defined]
                .add_extension(pci, critical=True)
                .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
            )
        return cert, key

    def write_pem(self, *certs: object) -> str:
        from cryptography.hazmat.primitives import serialization

        path = self.mktemp()
        with open(path, "wb") as f:
            for cert in certs:
                f.write(cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
        return path

    def user_names(self) -> list[tuple[object, str]]:
        from cryptography.x509.oid import NameOID

        return [
            (NameOID.COUNTRY_NAME, "CZ"),
            (NameOID.ORGANIZATION_NAME, "Example"),
            (NameOID.COMMON_NAME, "Jana Novakova"),
        ]

    def test_proxy_dn(self) -> None:
        from cryptography.x509.oid import NameOID

        user = self.make_cert(self.user_names())
        proxy, _ = self.make_cert(
            [*self.user_names(), (NameOID.COMMON_NAME, "1234567")], issuer=user
        )
        path = self.write_pem(proxy, user[0])
        self.assertEqual(identity.default_user({"X509_USER_PROXY": path}, lambda: "x"), USER)
        # Without the user's certificate in the file, the proxy CN is dropped.
        alone = self.write_pem(proxy)
        self.assertEqual(identity.default_user({"X509_USER_PROXY": alone}, lambda: "x"), USER)

    def test_cert_fallback(self) -> None:
        cert, _ = self.make_cert(self.user_names())
        env = {"X509_USER_PROXY": "/nonexistent/proxy", "X509_USER_CERT": self.write_pem(cert)}
        self.assertEqual(identity.default_user(env, lambda: "x"), USER)

    def test_login_fallback(self) -> None:
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("not a certificate")
        env = {"X509_USER_PROXY": bad}
        self.assertEqual(identity.default_user(env, lambda: "jana"), "/CN=jana")
        self.assertEqual(identity.default_user({}, lambda: "root"), "/CN=root")


class LogEventTests(SynchronousTestCase):
    """
    C{lbtwist logevent} against a line server on a real UNIX socket.
    """

    def setUp(self) -> None:
        self.server = start_server(self, validating_answer())  # type: ignore[arg-type]

    def argv(self, *extra: str) -> list[str]:
        return ["logevent", "-S", self.server.path, "-U", USER, *extra]

    def test_logs_and_prints_new_seqcode(self) -> None:
        from lbtwist.core.ulm import format_date

        old = "UI=000000:NS=0000000003:WM=000004:BH=0000000000:JSS=000002:LM=000000:LRMS=000000:APP=000000:LBS=000000"
        status, out, err = call(
            self.argv(
                "-j",
                JOBID,
                "-s",
                "LogMonitor",
                "-e",
                "Running",
                "-c",
                old,
                "--Node=wn042.example.org",
                "-i",
                "lm-1",
            )
        )
        self.assertEqual((status, err), (0, ""))
        # As glite-lb-logevent: logged with the next code, the one after it printed.
        new = old.replace("LM=000000", "LM=000001")
        self.assertEqual(out, old.replace("LM=000000", "LM=000002") + "\n")
        [event] = sent_events(self.server)
        self.assertEqual(event.type, "Running")  # type: ignore[attr-defined]
        self.assertEqual(event.jobid, JOBID)  # type: ignore[attr-defined]
        self.assertEqual(event.seqcode, new)  # type: ignore[attr-defined]
        self.assertEqual(event.source, "LogMonitor")  # type: ignore[attr-defined]
        self.assertEqual(event.user, USER)  # type: ignore[attr-defined]
        self.assertEqual(event.host, "node.example.org")  # type: ignore[attr-defined]
        self.assertEqual(event.src_instance, "lm-1")  # type: ignore[attr-defined]
        self.assertEqual(event.get("node"), "wn042.example.org")  # type: ignore[attr-defined]
        self.assertIn(f"DATE={format_date(NOW)} ", self.server.lines[0].decode())

    def test_environment_fallbacks(self) -> None:
        env = {
            "EDG_WL_JOBID": CREAM_JOBID,
            "EDG_WL_SEQUENCE_CODE": "no_seqcodes_with_cream_1",
            "GLITE_WMS_LBPROXY_STORE_SOCK": self.server.path,
        }
        ctx = make_ctx(env)
        status, out, err = call(
            [
                "logevent",
                "-s",
                "CREAMExecutor",
                "-e",
                "CREAMStatus",
                "--new_state",
                "RUNNING",
                "--result=arrived",
                "-H",
                "ce.example.org",
            ],
            ctx,
        )
        self.assertEqual((status, err), (0, ""))
        # Opaque CREAM seqcodes are passed through.
        self.assertEqual(out, "no_seqcodes_with_cream_1\n")
        [event] = sent_events(self.server)
        self.assertEqual(event.jobid, CREAM_JOBID)  # type: ignore[attr-defined]
        self.assertEqual(event.user, "/CN=jana")  # type: ignore[attr-defined]
        self.assertEqual(event.host, "ce.example.org")  # type: ignore[attr-defined]
        self.assertEqual(event.get("result"), "ARRIVED")  # type: ignore[attr-defined]

    def test_glite_env_wins(self) -> None:
        env = {"GLITE_WMS_JOBID": JOBID, "EDG_WL_JOBID": CREAM_JOBID}
        status, out, err = call(
            self.argv("-s", "Application", "-e", "UserTag", "--name", "a", "--value", "b"),
            make_ctx(env),
        )
        self.assertEqual(status, 0, err)
        # No code given: the proxy's last code of the job, APP counter bumped.
        self.assertEqual(out, PROXY_SEQ.replace("APP=000000", "APP=000002") + "\n")
        self.assertEqual(self.server.lines[0], f"?SEQCODE {JOBID}".encode())
        [event] = sent_events(self.server, skip=1)
        self.assertEqual(event.jobid, JOBID)  # type: ignore[attr-defined]

    def test_duplicate_is_success(self) -> None:
        argv = self.argv("-j", JOBID, "-c", PROXY_SEQ, *USER_TAG)
        self.assertEqual(call(argv)[0], 0)
        status, out, err = call(argv)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(self.server.lines), 2)
        self.assertEqual(self.server.lines[0], self.server.lines[1])

    def test_missing_jobid(self) -> None:
        status, out, err = call(self.argv("-s", "Application", "-e", "UserTag"))
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("lbtwist logevent: ERR 1403 "), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertEqual(self.server.lines, [])

    def test_missing_required_field(self) -> None:
        status, out, err = call(self.argv("-j", JOBID, "-s", "LRMS", "-e", "CREAMStatus"))
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("lbtwist logevent: ERR 1403 "), err)

    def test_unknown_field(self) -> None:
        # --strict refuses a field of another event type (--jdl is RegJob's).
        status, out, err = call(
            self.argv("--strict", "-j", JOBID, "-s", "LRMS", "-e", "Running", "--jdl=x")
        )
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("lbtwist logevent: ERR 1405 "), err)
        # A name that is no field of any event type is refused without --strict too.
        status, out, err = call(
            self.argv("-j", JOBID, "-s", "LRMS", "-e", "Running", "--node=n", "--bogus=x")
        )
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("lbtwist logevent: ERR 1405 "), err)

    def test_unknown_event(self) -> None:
        status, out, err = call(self.argv("-j", JOBID, "-s", "LRMS", "-e", "Teleported"))
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("lbtwist logevent: ERR 1402 "), err)

    def test_server_refuses(self) -> None:
        self.server.answer = lambda line: b"ERR 28 disk full"
        status, out, err = call(self.argv("-j", JOBID, *USER_TAG))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "lbtwist logevent: ERR 28 disk full\n")

    def test_no_socket(self) -> None:
        missing = short_path(self)
        status, out, err = call(["logevent", "-S", missing, "-j", JOBID, *USER_TAG])
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("lbtwist logevent: ERR "), err)
        self.assertIn(missing, err)

    def log_argv(self, *extra: str) -> list[str]:
        return self.argv(*USER_TAG, *extra)

    def test_asks_proxy_for_seqcode(self) -> None:
        status, out, err = call(self.log_argv("-j", JOBID, "-s", "LogMonitor"))
        self.assertEqual((status, err), (0, ""))
        new = PROXY_SEQ.replace("LM=000000", "LM=000001")
        # L&B prints the code after the one logged.
        self.assertEqual(out, PROXY_SEQ.replace("LM=000000", "LM=000002") + "\n")
        self.assertEqual(self.server.lines[0], f"?SEQCODE {JOBID}".encode())
        [event] = sent_events(self.server, skip=1)
        self.assertEqual(event.seqcode, new)  # type: ignore[attr-defined]

    def test_unknown_job_without_code(self) -> None:
        other = "https://lb.example.org:9000/unregistered_job_0001"
        status, out, err = call(self.log_argv("-j", other))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"lbtwist logevent: ERR 2 unknown job {other}; "
            "give -c or set GLITE_WMS_SEQUENCE_CODE\n",
        )
        # Asked, and no event with an all-zero code was logged.
        self.assertEqual(self.server.lines, [f"?SEQCODE {other}".encode()])

    def test_malformed_code_refused(self) -> None:
        for code in ["garbage", "UI=1:NS=2", "UI=000000:NS=x:WM=0:BH=0:JSS=0:LM=0:LRMS=0:APP=0"]:
            status, out, err = call(self.log_argv("-j", JOBID, "-c", code))
            self.assertEqual((status, out), (1, ""))
            self.assertTrue(
                err.startswith(
                    "lbtwist logevent: ERR 22 -c: malformed sequence code for a gLite job: "
                ),
                err,
            )
            self.assertEqual(err.count("\n"), 1)
        status, out, err = call(
            self.log_argv("-j", JOBID), make_ctx({"GLITE_WMS_SEQUENCE_CODE": "rubbish"})
        )
        self.assertEqual(status, 1)
        self.assertIn("ERR 22 $GLITE_WMS_SEQUENCE_CODE: malformed sequence code", err)
        self.assertEqual(self.server.lines, [])

    def test_cream_codes(self) -> None:
        # Opaque codes pass for a direct CREAM job; gLite-looking or control
        # characters do not.
        status, out, err = call(self.log_argv("-j", CREAM_JOBID, "-c", "no_seqcodes_with_cream_7"))
        self.assertEqual((status, out), (0, "no_seqcodes_with_cream_7\n"))
        for bad in ["UI=1", "a\tb", " padded", "a b", 'a"b']:
            status, out, err = call(self.log_argv("-j", CREAM_JOBID, "-c", bad))
            self.assertEqual(status, 1, bad)
            self.assertIn("malformed sequence code for a CREAM job", err)
        self.assertEqual(len(self.server.lines), 1)

    def test_cream_without_code(self) -> None:
        # As before: zero counters, bumped for the source; the proxy is not asked.
        status, out, err = call(self.log_argv("-j", CREAM_JOBID))
        self.assertEqual(status, 0, err)
        self.assertEqual(
            out,
            "UI=000000:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000002:LBS=000000\n",
        )
        [event] = sent_events(self.server)
        self.assertEqual(event.jobid, CREAM_JOBID)  # type: ignore[attr-defined]

    def test_retries_until_socket_appears(self) -> None:
        # The socket is missing at first (proxy restarting): retried, not lost.
        path = short_path(self)
        time = FakeTime()
        servers: list[LineServer] = []

        def appear() -> None:
            servers.append(LineServer(path, validating_answer()))  # type: ignore[arg-type]
            self.addCleanup(servers[0].stop)

        time.on_sleep = [lambda: None, appear]
        status, out, err = call([*socket_argv(path), *USER_TAG], make_ctx(time=time))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(time.sleeps), 2)
        [event] = sent_events(servers[0])
        from lbtwist.core.seqcode import next_seqcode

        self.assertEqual(out, next_seqcode(event.seqcode, "Application") + "\n")  # type: ignore[attr-defined]

    def test_busy_retried(self) -> None:
        answers = [b"ERR 11 too many connections", b"OK"]
        self.server.answer = lambda line: answers.pop(0)
        time = FakeTime()
        status, out, err = call(self.log_argv("-j", JOBID, "-c", PROXY_SEQ), make_ctx(time=time))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(self.server.lines), 2)
        self.assertEqual(self.server.lines[0], self.server.lines[1])
        self.assertEqual(len(time.sleeps), 1)

    def test_timeout_option(self) -> None:
        missing = short_path(self)
        time = FakeTime()
        argv = [*socket_argv(missing), *USER_TAG]
        status, out, err = call(argv + ["--timeout", "7.5"], make_ctx(time=time))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"lbtwist logevent: ERR 2 {missing}: gave up after 7.5 s: No such file or directory\n",
        )
        self.assertLessEqual(time.now, 7.5)
        self.assertGreater(time.now, 5.0)
        for bad in ["-1", "soon", "nan"]:
            status, out, err = call(argv + ["--timeout", bad])
            self.assertEqual(status, 2, bad)
            self.assertIn("not a number of seconds", err)

    def test_timeout_from_environment(self) -> None:
        missing = short_path(self)
        argv = [*socket_argv(missing), *USER_TAG]
        for env, options, seconds in [
            ({"GLITE_WMS_LOG_TIMEOUT": "4", "EDG_WL_LOG_TIMEOUT": "9"}, [], "4"),
            ({"EDG_WL_LOG_TIMEOUT": "9"}, [], "9"),
            ({"GLITE_WMS_LOG_TIMEOUT": "4"}, ["--timeout", "2"], "2"),
        ]:
            status, out, err = call(argv + options, make_ctx(env))
            self.assertEqual(status, 1)
            self.assertIn(f"gave up after {seconds} s", err)
        status, out, err = call(argv, make_ctx({"GLITE_WMS_LOG_TIMEOUT": "later"}))
        self.assertEqual(
            err,
            "lbtwist logevent: ERR 22 $GLITE_WMS_LOG_TIMEOUT: not a number of seconds: 'later'\n",
        )

    def test_default_timeout(self) -> None:
        missing = short_path(self)
        time = FakeTime()
        argv = [*socket_argv(missing), *USER_TAG]
        status, out, err = call(argv, make_ctx(time=time))
        self.assertEqual(status, 1)
        self.assertIn("gave up after 60 s", err)
        self.assertGreater(time.now, 57.0)

    def test_does_not_load_twisted(self) -> None:
        import subprocess
        import sys

        missing = short_path(self)
        script = (
            "import sys\n"
            "from lbtwist.cli.main import run\n"
            "from lbtwist.cli.common import CLIContext\n"
            f"run(['logevent', '-S', {missing!r}, '-j', {JOBID!r}, '-s', 'Application',"
            " '-e', 'UserTag', '--name=a', '--value=b', '--timeout', '0'], CLIContext())\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'OpenSSL', 'cryptography'}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
        )
        self.assertEqual(result.stdout, "[]\n")
        self.assertIn("gave up after 0 s", result.stderr)

    def test_event_help(self) -> None:
        status, out, err = call(["logevent", "-e", "help"])
        self.assertEqual(status, 0)
        self.assertIn("CREAMStatus:", out)
        self.assertIn("--new_state*", out)
        self.assertIn("RegJob:", out)

    def test_source_help(self) -> None:
        status, out, err = call(["logevent", "-s", "help"])
        self.assertEqual(status, 0)
        for name in ["UserInterface", "CREAMInterface", "VMSystem"]:
            self.assertIn(f"  {name}\n", out)

    def test_flags_accepted(self) -> None:
        status, out, err = call(
            self.argv(
                "-x",
                "-p",
                "-c",
                "UI=000000:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000",
                "-j",
                JOBID,
                "-c",
                PROXY_SEQ,
                *USER_TAG,
            )
        )
        self.assertEqual(status, 0, err)
        [event] = sent_events(self.server)
        self.assertEqual(event.priority & 2, 2)  # type: ignore[attr-defined]


class JobRegTests(SynchronousTestCase):
    """
    C{lbtwist job-reg}.
    """

    def setUp(self) -> None:
        self.server = start_server(self, validating_answer())  # type: ignore[arg-type]

    def test_simple(self) -> None:
        from lbtwist.core.jobid import JobId

        jdl = self.mktemp()
        with open(jdl, "w") as f:
            f.write('[ Executable = "/bin/date"; ]')
        status, out, err = call(
            ["job-reg", "-m", "lb.example.org", "-X", self.server.path, "-U", USER, "-l", jdl]
        )
        self.assertEqual((status, err), (0, ""))
        [event] = sent_events(self.server)
        jid = JobId.parse(event.jobid)  # type: ignore[attr-defined]
        self.assertEqual((jid.host, jid.port, len(jid.unique)), ("lb.example.org", 9000, 22))
        seq = "UI=000000:NS=0000000001:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
        self.assertEqual(
            out,
            f'new jobid: {jid}\n\nEDG_JOBID="{jid}"\nEDG_WL_SEQUENCE="{seq}"\n'
            f'GLITE_WMS_JOBID="{jid}"\nGLITE_WMS_SEQUENCE_CODE="{seq}"\n',
        )
        self.assertEqual(event.type, "RegJob")  # type: ignore[attr-defined]
        self.assertEqual(event.source, "NetworkServer")  # type: ignore[attr-defined]
        self.assertEqual(event.get("jobtype"), "SIMPLE")  # type: ignore[attr-defined]
        self.assertEqual(event.get("jdl"), '[ Executable = "/bin/date"; ]')  # type: ignore[attr-defined]
        self.assertEqual(event.priority, 8)  # type: ignore[attr-defined]

    def test_cream_exclusive(self) -> None:
        status, out, err = call(
            ["job-reg", "-c", "-E", "-m", "ce.example.org:9000", "-X", self.server.path, "-U", USER]
        )
        self.assertEqual((status, err), (0, ""))
        [event] = sent_events(self.server)
        jobid: str = event.jobid  # type: ignore[attr-defined]
        self.assertRegex(jobid, r"^https://ce\.example\.org:9000/CREAM[0-9]{9}$")
        self.assertIn(f'EDG_JOBID="{jobid}"', out)
        self.assertEqual(event.get("jobtype"), "CREAM")  # type: ignore[attr-defined]
        self.assertEqual(event.source, "CREAMInterface")  # type: ignore[attr-defined]
        self.assertEqual(event.priority & 64, 64)  # type: ignore[attr-defined]

    def test_collection(self) -> None:
        from lbtwist.core.jobid import JobId, subjob

        status, out, err = call(
            [
                "job-reg",
                "-j",
                JOBID,
                "-n",
                "3",
                "-s",
                "UserInterface",
                "-C",
                "-S",
                "-X",
                self.server.path,
                "-U",
                USER,
            ]
        )
        self.assertEqual((status, err), (0, ""))
        events = sent_events(self.server)
        self.assertEqual(len(events), 4)
        parent = events[0]
        self.assertEqual(parent.jobid, JOBID)  # type: ignore[attr-defined]
        self.assertEqual(parent.get("jobtype"), "COLLECTION")  # type: ignore[attr-defined]
        self.assertEqual(parent.get("nsubjobs"), "3")  # type: ignore[attr-defined]
        subs = [str(subjob(JobId.parse(JOBID), "lbtwist", i)) for i in range(3)]
        self.assertEqual([e.jobid for e in events[1:]], subs)  # type: ignore[attr-defined]
        for e in events[1:]:
            self.assertEqual(e.get("parent"), JOBID)  # type: ignore[attr-defined]
        self.assertIn(f'EDG_WL_COLLECTION_JOBID="{JOBID}"\n', out)
        for i, sub in enumerate(subs):
            self.assertIn(f'EDG_WL_SUB_JOBID[{i}]="{sub}"\n', out)
        self.assertIn('EDG_WL_SEQUENCE="UI=000001:', out)

    def test_refused(self) -> None:
        self.server.answer = lambda line: b"ERR 1 producer uid 7 not allowed"
        status, out, err = call(["job-reg", "-j", JOBID, "-X", self.server.path, "-U", USER])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"lbtwist job-reg: {JOBID}: ERR 1 producer uid 7 not allowed\n")

    def test_busy_retried(self) -> None:
        answers = [b"OK", b"ERR 11 over 1024 unanswered events", b"OK", b"OK", b"OK"]
        self.server.answer = lambda line: answers.pop(0)
        time = FakeTime()
        status, out, err = call(
            ["job-reg", "-j", JOBID, "-n", "3", "-S", "-X", self.server.path, "-U", USER],
            make_ctx(time=time),
        )
        self.assertEqual((status, err), (0, ""))
        # The refused sub-job registration went again; nothing else did.
        self.assertEqual(len(self.server.lines), 5)
        self.assertEqual(self.server.lines[1], self.server.lines[4])
        self.assertEqual(len(set(self.server.lines)), 4)

    def test_timeout_option(self) -> None:
        missing = short_path(self)
        time = FakeTime()
        status, out, err = call(
            ["job-reg", "-j", JOBID, "-X", missing, "-U", USER, "--timeout", "3"],
            make_ctx(time=time),
        )
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"lbtwist job-reg: {JOBID}: ERR 2 {missing}: gave up after 3 s: No such file or directory\n",
        )

    def test_bad_jobid(self) -> None:
        status, out, err = call(["job-reg", "-j", "nonsense", "-X", self.server.path])
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith("lbtwist job-reg: ERR 1409 "), err)


class ReplayTests(SynchronousTestCase):
    """
    C{lbtwist replay}.
    """

    def fixture(self, name: str) -> str:
        """
        A file holding the (uncompressed) stream C{name} of C{tests/fixtures}.
        """
        os.mkdir(here := self.mktemp())
        path = os.path.join(here, name)
        with open(path, "wb") as f:
            f.write(fixtures.stream_bytes(name))
        return path

    def test_fixture_simple(self) -> None:
        reg = self.fixture("perf_simple_avg_events.reg.log")
        events = self.fixture("perf_simple_avg_events.log")
        status, out, err = call(["replay", reg, events])
        self.assertEqual((status, err), (0, ""))
        self.assertIn("state : Cleared", out)
        self.assertIn("jobId : https://devel15.cnaf.infn.it:9000/rReV1TpJ5oY0Z1_M4NBfHw", out)

    def test_fixture_json_one_line_per_job(self) -> None:
        path = self.fixture("perf_collection_avg_events.log")
        status, out, err = call(["replay", "--json", path])
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        jobids = []
        with open(path) as f:
            for line in f:
                jid = line.split('DG.JOBID="')[1].split('"')[0]
                if jid not in jobids:
                    jobids.append(jid)
        self.assertEqual(len(lines), len(jobids))
        self.assertEqual([json.loads(line)["jobId"] for line in lines], jobids)

    def test_fixture_template_lines(self) -> None:
        """
        The DAG perf stream holds template lines without DG.JOBID (L&B's perf
        tool injected job ids) between blank lines: each is reported by line.
        """
        path = self.fixture("perf_dag_avg_events.log")
        status, out, err = call(["replay", path])
        self.assertEqual(status, 1)
        with open(path) as f:
            missing = [n for n, line in enumerate(f, 1) if line.strip() and "DG.JOBID=" not in line]
        self.assertEqual(
            err.splitlines(),
            [f"{path}:{n}: ERR 1403 required field DG.JOBID missing" for n in missing],
        )
        self.assertTrue(missing)
        self.assertEqual(out, "")

    def test_example(self) -> None:
        status, out, err = call(["replay", "--example"])
        self.assertEqual((status, err), (0, ""))
        blocks = out.split("\n\n")
        self.assertEqual(len(blocks), 2)
        self.assertIn("CREAM812461375", blocks[0])
        self.assertIn("Hq3tK8vWZ0bQy1n2m3p4rA", blocks[1])
        self.assertIn("cream_state : ", out)

    def test_order_independent(self) -> None:
        from lbtwist.cli.replay import example_lines

        lines = example_lines()
        forward = call(["replay", "--json", "-"], make_ctx(stdin="\n".join(lines)))
        backward = call(["replay", "--json", "-"], make_ctx(stdin="\n".join(reversed(lines))))
        self.assertEqual(forward[0], 0)
        self.assertEqual(
            sorted(json.loads(x)["state"] for x in forward[1].splitlines()),
            sorted(json.loads(x)["state"] for x in backward[1].splitlines()),
        )

    def test_errors_reported_with_line_numbers(self) -> None:
        from lbtwist.cli.replay import example_lines

        good = example_lines()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write((good[0] + "\n\n").encode())
            f.write(b'DATE=x "broken\n')
            f.write(good[1].replace("DG.EVNT=", "DG.NOTEVNT=").encode() + b"\n")
            f.write(b'DG.EVNT="Running" \xff\n')
            f.write((good[1] + "\n").encode())
        status, out, err = call(["replay", path])
        self.assertEqual(status, 1)
        lines = err.splitlines()
        self.assertEqual(len(lines), 3, err)
        self.assertTrue(lines[0].startswith(f"{path}:3: ERR 1401 "), lines[0])
        self.assertTrue(lines[1].startswith(f"{path}:4: ERR 1402 "), lines[1])
        self.assertTrue(lines[2].startswith(f"{path}:5: ERR 1401 "), lines[2])
        # The good lines are still replayed.
        self.assertIn("state : ", out)

    def test_dump_lines(self) -> None:
        from lbtwist.cli.replay import example_lines, parse_line
        from lbtwist.core.ulm import parse_date

        line = example_lines()[0]
        event = parse_line("DG.ARRIVED=20240314092700.000001 " + line)
        self.assertEqual(event.arrived, parse_date("20240314092700.000001"))  # type: ignore[attr-defined]
        dump = "\n".join(
            f"DG.ARRIVED=20240314092700.{i:06d} {x}" for i, x in enumerate(example_lines())
        )
        plain = call(["replay", "--example"])
        dumped = call(["replay", "-"], make_ctx(stdin=dump))
        self.assertEqual(dumped, plain)

    def test_missing_file(self) -> None:
        status, out, err = call(["replay", "/nonexistent/file.log"])
        self.assertEqual((status, out), (1, ""))
        self.assertIn("/nonexistent/file.log", err)

    def test_nothing_to_replay(self) -> None:
        status, out, err = call(["replay"])
        self.assertEqual(status, 2)


def reference_read(sources: Sequence[tuple[str, Sequence[str | bytes]]]) -> tuple[Any, ...]:
    """
    The plain reading of replay's input (one evolve per dump line, no fast
    paths): C{(jobs, errors, count)} as L{lbtwist.cli.replay.read_events} gives them.
    """
    from lbtwist.core.events import parse_event
    from lbtwist.core.ulm import parse_date

    jobs: dict[str, list[tuple[Any, int]]] = {}
    errors: list[str] = []
    count = 0
    for name, lines in sources:
        for lineno, raw in enumerate(lines, 1):
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            except UnicodeDecodeError as e:
                errors.append(f"{name}:{lineno}: ERR 1401 invalid UTF-8 at byte {e.start}")
                continue
            line = text.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                if line[:11].upper() == "DG.ARRIVED=":
                    stamp, _, rest = line[11:].partition(" ")
                    arrived = parse_date(stamp.strip('"'))
                    event = parse_event(rest).evolve(arrived=arrived)
                else:
                    event = parse_event(line)
            except LBError as e:
                errors.append(f"{name}:{lineno}: ERR {e.code} {e.message}")
                continue
            jobs.setdefault(event.jobid, []).append((event, count))
            count += 1
    return jobs, errors, count


class ReplayReadTests(SynchronousTestCase):
    """
    L{lbtwist.cli.replay.read_events}: the fast reading gives what the plain one does.
    """

    def test_arrival_copy_complete(self) -> None:
        """
        The dump arrival copy knows every field of L{Event} and equals C{evolve}.
        """
        from lbtwist.cli.replay import _EVENT_FIELDS, _with_arrived, example_lines
        from lbtwist.core.events import Event, parse_event

        self.assertEqual(tuple(f.name for f in attrs.fields(Event)), _EVENT_FIELDS)
        for line in example_lines():
            event = parse_event(line)
            odd = event.evolve(priority=3, src_instance="x", extra=(("K", "v"),))
            for ev in (event, odd):
                self.assertEqual(_with_arrived(ev, 7), ev.evolve(arrived=7))

    def test_dump_errors_and_line_numbers(self) -> None:
        """
        Bad dump prefixes, bad events after a good prefix, blank and CRLF lines,
        line numbers per source and arrival numbers across sources.
        """
        from lbtwist.cli.replay import example_lines, read_events

        good = example_lines()
        first: list[str | bytes] = [
            "dg.arrived=20240314092700.000001 " + good[0] + "\r\n",
            " \t \r\n",
            "DG.ARRIVED=2024-03-14 " + good[1],
            'DG.ARRIVED=20240314092700.000002 DATE=x "broken',
            'DG.ARRIVED="20240314092700.000003" ' + good[1],
        ]
        second: list[str | bytes] = [b"\xff\n", (good[2] + "\n").encode(), b"", b"\r\n"]
        sources: list[tuple[str, Sequence[str | bytes]]] = [("a", first), ("b", second)]
        result = read_events(sources)
        jobs, errors, count = reference_read(sources)
        self.assertEqual((result.jobs, result.errors, result.count), (jobs, errors, count))
        self.assertEqual([e.split(" ERR ")[0] for e in result.errors], ["a:3:", "a:4:", "b:1:"])
        self.assertEqual(result.count, 3)
        arrivals = [ev.arrived for pairs in result.jobs.values() for ev, _ in pairs]
        self.assertEqual(arrivals.count(1_710_408_420_000_003), 1)
        self.assertEqual(
            [n for pairs in result.jobs.values() for _, n in pairs], list(range(result.count))
        )

    def test_collector_restored(self) -> None:
        """
        The garbage collector is on again after reading, also when reading fails,
        and stays off when it was off.
        """
        from lbtwist.cli.replay import example_lines, read_events

        def failing() -> Iterator[str]:
            yield example_lines()[0]
            raise OSError("disk gone")

        self.assertTrue(gc.isenabled())
        self.assertEqual(read_events([("x", example_lines())]).count, len(example_lines()))
        self.assertTrue(gc.isenabled())
        self.assertRaises(OSError, read_events, [("x", failing())])
        self.assertTrue(gc.isenabled())
        gc.disable()
        try:
            read_events([("x", example_lines())])
            self.assertFalse(gc.isenabled())
        finally:
            gc.enable()

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_same_as_plain_reading(self, data: st.DataObject) -> None:
        """
        Any mix of ULM, dump, blank, broken and non-UTF-8 lines, as text or bytes
        and in one or two sources, reads as the plain reading does.
        """
        from lbtwist.cli.replay import example_lines, read_events

        good = example_lines()
        line = st.one_of(
            st.sampled_from(good),
            st.tuples(
                st.sampled_from(["DG.ARRIVED=", "dg.Arrived=", 'DG.ARRIVED="']),
                st.sampled_from(["20240314092700.000001", "20240314092701.5", "x", ""]),
                st.sampled_from(['" ', " ", ""]),
                st.sampled_from(good + ["DATE=x", ""]),
            ).map("".join),
            st.sampled_from(["", " ", "\t", 'DATE=x "broken', "DG.EVNT=Nope"]),
        )
        ending = st.sampled_from(["", "\n", "\r\n"])
        entry = st.tuples(line, ending, st.booleans(), st.booleans()).map(
            lambda t: (t[0] + t[1]).encode() + (b"\xfe" if t[3] else b"") if t[2] else t[0] + t[1]
        )
        lines = data.draw(st.lists(entry, max_size=12))
        cut = data.draw(st.integers(0, len(lines)))
        sources: list[tuple[str, Sequence[str | bytes]]] = [
            ("one", lines[:cut]),
            ("two", lines[cut:]),
        ]
        result = read_events(sources)
        self.assertEqual((result.jobs, result.errors, result.count), reference_read(sources))


class LocalStoreTests(SynchronousTestCase):
    """
    C{lbtwist status}, C{log} and C{dump} on a SQLite store.
    """

    def setUp(self) -> None:
        from lbtwist.cli.replay import example_lines
        from lbtwist.core.events import parse_event
        from lbtwist.core.translate import proxy_policy
        from lbtwist.store.batch import run_now
        from lbtwist.store.sqlite import SQLiteStore

        self.state_dir = self.mktemp()
        os.makedirs(self.state_dir)
        clock = Clock()
        clock.advance(NOW / 1e6)
        store = SQLiteStore(
            os.path.join(self.state_dir, "lbtwist.sqlite"),
            clock=clock,
            runner=run_now,
            policy=proxy_policy((), "ce.example.org"),
        )
        self.lines = example_lines()
        for line in self.lines:
            results = self.successResultOf(store.store([(line, parse_event(line))]))
            self.assertNotIsInstance(results[0], LBError)
            clock.advance(1)
        self.successResultOf(store.close())
        self.direct = "https://cream-ce01.example.org:9000/CREAM812461375"
        self.wms = "https://lb01.example.org:9000/Hq3tK8vWZ0bQy1n2m3p4rA"

    def test_status_text(self) -> None:
        status, out, err = call(
            ["status", "--lbtwist-layout", "--state-dir", self.state_dir, self.direct]
        )
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("\nBOOKKEEPING INFORMATION:\n\n"))
        self.assertIn(f"jobId : {self.direct}\n", out)
        self.assertIn("state : ", out)

    def test_status_json_and_cream_resolution(self) -> None:
        status, out, err = call(
            [
                "status",
                "--json",
                "--state-dir",
                self.state_dir,
                self.wms,
                "https://cream-ce01.example.org:8443/CREAM294117530",
            ]
        )
        self.assertEqual((status, err), (0, ""))
        first, second = (json.loads(x) for x in out.splitlines())
        self.assertEqual(first["jobId"], self.wms)
        self.assertEqual(second, first)

    def test_status_unknown(self) -> None:
        status, out, err = call(["status", "--state-dir", self.state_dir, self.direct, JOBID])
        self.assertEqual(status, 1)
        self.assertIn(self.direct, out)
        self.assertEqual(err, f"lbtwist status: {JOBID}: no such job\n")

    def test_no_store(self) -> None:
        status, out, err = call(["status", "--state-dir", "/nonexistent", JOBID])
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no lbtwist store", err)

    def test_log(self) -> None:
        status, out, err = call(["log", "--raw", "--state-dir", self.state_dir, self.direct])
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        n = sum(1 for x in self.lines if self.direct in x)
        self.assertEqual(lines[-1], f"Found {n} events")
        self.assertEqual(len([x for x in lines if x.startswith("DATE=")]), n)

    def test_status_lb_layout_default(self) -> None:
        status, out, err = call(["status", "--state-dir", self.state_dir, self.direct])
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("\nstate : "), out[:40])
        lines = out.splitlines()
        self.assertIn("suspended : 0", lines)
        self.assertIn("matched_jdl : (null)", lines)
        self.assertTrue(any(x.startswith("cream_state : ") for x in lines))

    def test_status_all(self) -> None:
        status, out, err = call(["status", "-all", "--state-dir", self.state_dir])
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"jobId : {self.direct}\n", out)
        self.assertIn(f"jobId : {self.wms}\n", out)

    def test_log_lb_layout(self) -> None:
        status, out, err = call(["log", "--state-dir", self.state_dir, self.direct])
        self.assertEqual((status, err), (0, ""))
        events = [x for x in out.split("\n") if x.startswith("DATE=")]
        self.assertTrue(events and all(x.endswith(" ") for x in events))
        self.assertIn("\n\nDATE=", out)

    def test_dump_lines_unparsed(self) -> None:
        from lbtwist.core.events import parse_event
        from lbtwist.core.unparse import unparse_event

        status, out, err = call(["dump", "--state-dir", self.state_dir])
        first, blank = out.split("\n")[:2]
        arrived, _, rest = first.partition(" ")
        self.assertEqual(rest, unparse_event(parse_event(self.lines[0])))
        self.assertEqual(blank, "")

    def test_dump_all_and_window(self) -> None:
        from lbtwist.cli.replay import parse_line

        status, out, err = call(["dump", "--state-dir", self.state_dir])
        self.assertEqual((status, err), (0, ""))
        dumped = [x for x in out.splitlines() if x]
        self.assertGreaterEqual(len(dumped), len(self.lines))
        arrivals = [parse_line(x).arrived for x in dumped]  # type: ignore[attr-defined]
        self.assertEqual(arrivals, sorted(arrivals))
        self.assertTrue(all(x.startswith("DG.ARRIVED=") for x in dumped))
        # The dump replays to the same states as the store holds.
        replayed = call(["replay", "--json", "-"], make_ctx(stdin=out))
        self.assertEqual(replayed[0], 0)
        # A window by arrival time.
        start = datetime.datetime.fromtimestamp(NOW // 1_000_000 + 5, datetime.UTC)
        status, out, err = call(
            [
                "dump",
                "--state-dir",
                self.state_dir,
                "--from",
                start.strftime("%Y%m%d%H%M%S"),
                "--to",
                str(NOW // 1_000_000 + 10),
            ]
        )
        self.assertEqual((status, err), (0, ""))
        window = [x for x in out.splitlines() if x]
        self.assertTrue(0 < len(window) < len(dumped))
        self.assertTrue(all(x in dumped for x in window))


class LBCompatTests(SynchronousTestCase):
    """
    Behaviour of the C{glite-lb-*} tools that L&B's test scripts rely on.
    """

    def setUp(self) -> None:
        self.server = start_server(self, validating_answer())  # type: ignore[arg-type]

    def argv(self, *extra: str) -> list[str]:
        return ["logevent", "-S", self.server.path, "-U", USER, *extra]

    def test_foreign_fields_dropped(self) -> None:
        """
        As lb-test-cream.sh logs them: CREAMAccepted with Accepted's --from fields.
        """
        status, out, err = call(
            self.argv(
                "-j", CREAM_JOBID, "-c", "no_seqcodes_with_CREAM", "-s", "CREAMExecutor",
                "-e", "CREAMAccepted", "--from=CREAMExecutor", "--from_host=h",
                "--from_instance=i", "--local_jobid=CREAM-test-1",
            )
        )  # fmt: skip
        self.assertEqual((status, out), (0, "no_seqcodes_with_CREAM\n"))
        self.assertEqual(err.count("warning: --from"), 3, err)
        [event] = sent_events(self.server)
        self.assertEqual(event.get("local_jobid"), "CREAM-test-1")  # type: ignore[attr-defined]

    def test_unparser_line_priority_host(self) -> None:
        call(
            self.argv("-c", "no_seq", "-j", CREAM_JOBID, "-s", "Application", "-e", "UserTag",
                      "--name=a", "--value=b")
        )  # fmt: skip
        line = self.server.lines[0].decode()
        self.assertIn(' LVL=SYSTEM DG.PRIORITY=8 DG.SOURCE="Application" DG.SRC_INSTANCE="" ', line)
        self.assertIn('HOST="node.example.org"', line)
        self.assertTrue(line.endswith('DG.USERTAG.VALUE="b" '), line)

    def test_dont_increment(self) -> None:
        code = "UI=000003:NS=0000000000:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000"
        status, out, err = call(
            self.argv("-I", "-c", code, "-j", JOBID, "-s", "UserInterface", "-e", "UserTag",
                      "--name=a", "--value=b")
        )  # fmt: skip
        self.assertEqual(status, 0, err)
        [event] = sent_events(self.server)
        self.assertEqual(event.seqcode, code)  # type: ignore[attr-defined]
        self.assertEqual(out, code.replace("UI=000003", "UI=000004") + "\n")

    def test_job_reg_prints_new_jobid(self) -> None:
        status, out, err = call(
            ["job-reg", "-m", "lb.example.org:9000", "-s", "application", "-X", self.server.path]
        )
        self.assertEqual(status, 0, err)
        first = out.splitlines()[0]
        self.assertTrue(first.startswith("new jobid: https://lb.example.org:9000/"), out)
        # lb-test-cream.sh: grep "new jobid" | awk '{ print $3 }'
        self.assertEqual(first.split()[2], sent_events(self.server)[0].jobid)  # type: ignore[attr-defined]

    def test_job_reg_dag_without_subjob_registration(self) -> None:
        status, out, err = call(["job-reg", "-j", JOBID, "-n", "2", "-X", self.server.path])
        self.assertEqual(status, 0, err)
        [event] = sent_events(self.server)
        self.assertEqual(event.get("jobtype"), "DAG")  # type: ignore[attr-defined]
        self.assertIn(f'EDG_WL_DAG_JOBID="{JOBID}"', out)
        self.assertNotIn("new jobid", out)

    def test_subcommand_usage_on_unknown_option(self) -> None:
        status, out, err = call(["job-reg", "-Q"])
        self.assertEqual(status, 2)
        self.assertTrue(err.startswith("usage: lbtwist job-reg "), err)
        status, out, err = call(["status", "--bogus", JOBID])
        self.assertTrue(err.startswith("usage: lbtwist status "), err)
