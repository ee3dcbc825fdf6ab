# -*- test-case-name: tests.unit.test_cli_fast -*-
"""
Tests for the producer commands' fast lane (L{lbtwist.cli.fast}) and the light
imports of the command line: the lane answers exactly as the full path does,
handles the usual calls, and a producer call loads neither Twisted nor the
event model.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli import fast, identity, main
from lbtwist.cli.common import CLIContext
from lbtwist.cli.logevent import parse_field_options
from lbtwist.core import catalogue, jobid, seqcode, ulm
from lbtwist.core.events import CATALOGUE, COMMON_FIELDS, SOURCES
from tests.unit.test_cli import CREAM_JOBID, JOBID, FakeTime, intake_answer, make_ctx
from tests.unit.test_producer import LineServer, short_path

GLITE_CODE = "UI=000002:NS=0000000003:WM=000004:BH=0000000000:JSS=000002:LM=000001:LRMS=000000:APP=000000:LBS=000000"


def answer(line: bytes) -> bytes:
    """
    Validate like the intake (the same answer to the same line, every time).
    """
    return intake_answer(line) or b"OK"


@contextmanager
def full_path_only() -> Iterator[None]:
    saved = dict(main.FAST_LANES)
    main.FAST_LANES.clear()
    try:
        yield
    finally:
        main.FAST_LANES.update(saved)


class Differential:
    """
    Runs one call by the dispatcher (fast lane first) and by the full path
    alone, against one line server, and records what each did.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.path = short_path(case)
        self.server = LineServer(self.path, answer)
        case.addCleanup(self.server.stop)
        self.handled: list[bool] = []
        self.case = case

    def run(self, argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str, list[bytes]]:
        start = len(self.server.lines)
        ctx = make_ctx(env, time=FakeTime())
        status = main.run(argv, ctx)
        assert isinstance(ctx.stdout, io.StringIO) and isinstance(ctx.stderr, io.StringIO)
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue(), self.server.lines[start:]

    def compare(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
        """
        Assert that both paths answer C{argv} alike; return whether the fast
        lane handled it.
        """
        env = dict(env or {})
        command = argv[0]
        function = "logevent" if command == "logevent" else "job_reg"
        original = getattr(fast, function)
        took: list[bool] = []

        def spy(args: Sequence[str], ctx: CLIContext) -> int | None:
            took.append(True)  # handled, unless it hands over (an error raised is its answer)
            status = original(args, ctx)
            took[-1] = status is not None
            return status

        setattr(fast, function, spy)
        try:
            got = self.run(argv, env)
        finally:
            setattr(fast, function, original)
        with full_path_only():
            expected = self.run(argv, env)
        self.case.assertEqual(got, expected, argv)
        self.handled.append(bool(took and took[0]))
        return self.handled[-1]


class FastLaneTests(SynchronousTestCase):
    """
    The usual calls take the fast lane and answer as the full path does.
    """

    def setUp(self) -> None:
        self.diff = Differential(self)

    def logevent(self, *extra: str) -> list[str]:
        return ["logevent", "-x", "-S", self.diff.path, "-U", "/CN=u", *extra]

    def test_usual_calls_are_fast(self) -> None:
        calls = [
            self.logevent("-j", CREAM_JOBID, "-s", "CREAMExecutor", "-e", "CREAMStatus")
            + ["--new_state=RUNNING", "--result=DONE"],
            self.logevent("-j", CREAM_JOBID, "-s", "creamexecutor", "-e", "creamstatus")
            + ["--new_state", "Done-OK", "--result=done", "--exit_code=0", "-i", "x", "-p"],
            self.logevent("-j", JOBID, "-s", "LogMonitor", "-e", "Running", "-c", GLITE_CODE)
            + ["--Node=wn042.example.org"],
            # A gLite job without a code: the proxy is asked.
            self.logevent("-j", JOBID, "-s", "Application", "-e", "UserTag", "--name=a")
            + ["--value", "b c"],
            self.logevent("-j", JOBID, "-s", "Application", "-e", "UserTag", "-I")
            + ["-c", GLITE_CODE, "--name=a", '--value=q"uo\\te', "--timeout", "5"],
            self.logevent("-j", CREAM_JOBID, "-s", "CREAMExecutor", "-e", "CREAMStatus")
            + ["-c", "cream_opaque_42", "--new_state=IDLE", "--result=ARRIVED", "-H", "h"],
            ["job-reg", "-x", "-c", "-X", self.diff.path, "-j", CREAM_JOBID],
            ["job-reg", "-c", "-X", self.diff.path, "-m", "ce.example.org:8443", "-U", "/CN=u"],
            ["job-reg", "-X", self.diff.path, "-m", "https://lb.example.org:9000/", "-E"],
            ["job-reg", "-X", self.diff.path, "-j", "https://lb.example.org/abc", "-P"]
            + ["--ns", "https://ns:7443/x", "-W", "/CN=wms", "-s", "UserInterface"],
        ]
        for argv in calls:
            self.assertTrue(self.diff.compare(argv), argv)
        self.assertEqual(len(self.diff.server.lines), 2 * len(calls) + 2)

    def test_unusual_calls_take_the_full_path(self) -> None:
        calls = [
            ["logevent", "-e", "help"],
            ["logevent", "-s", "help"],
            ["logevent", "--help"],
            # A field of another event type: a warning on the full path.
            self.logevent("-j", CREAM_JOBID, "-s", "CREAMExecutor", "-e", "CREAMStatus")
            + ["--new_state=RUNNING", "--result=DONE", "--node=x"],
            self.logevent("-j", CREAM_JOBID, "-s", "CREAMExecutor", "-e", "CREAMStatus")
            + ["--new_state=RUNNING", "--result=BOGUS"],
            self.logevent("-j", JOBID, "-s", "LRMS", "-e", "Done", "-c", GLITE_CODE)
            + ["--status_code=OK", "--exit_code=abc"],
            self.logevent("-j", CREAM_JOBID, "-s", "CREAMExecutor", "-e", "CREAMStatus")
            + ["--result=DONE"],
            self.logevent("-j", "https://[::1]:9000/CREAM1", "-s", "LRMS", "-e", "Running"),
            self.logevent("-j", JOBID, "-s", "LRMS", "-e", "Running", "-c", "opaque"),
            self.logevent("-jX", "-s", "LRMS", "-e", "Running"),
            self.logevent("-j", JOBID, "-s", "LRMS", "-e", "Running", "--timeout", "never"),
            ["job-reg", "-X", self.diff.path, "-n", "2", "-S"],
            ["job-reg", "-X", self.diff.path, "-j", "http://bad/x"],
            ["job-reg", "-X", self.diff.path, "extra"],
        ]
        for argv in calls:
            self.assertFalse(self.diff.compare(argv), argv)

    def test_environment(self) -> None:
        env = {
            "GLITE_WMS_JOBID": JOBID,
            "GLITE_WMS_SEQUENCE_CODE": GLITE_CODE,
            "GLITE_WMS_LBPROXY_STORE_SOCK": self.diff.path,
            "GLITE_WMS_LOG_TIMEOUT": "3",
        }
        argv = ["logevent", "-s", "LRMS", "-e", "Running", "--node=n", "-U", "/CN=u"]
        self.assertTrue(self.diff.compare(argv, env))
        self.assertFalse(self.diff.compare(argv, dict(env, GLITE_WMS_LOG_TIMEOUT="x")))

    def test_refused_and_unknown_job(self) -> None:
        # The server's ERR answers are reported alike.
        job = "https://lb.example.org:9000/unknownjob"
        self.assertTrue(
            self.diff.compare(self.logevent("-j", job, "-s", "LRMS", "-e", "Running", "--node=n"))
        )
        self.assertTrue(
            self.diff.compare(
                self.logevent("-j", CREAM_JOBID, "-s", "CREAMExecutor", "-e", "CREAMStatus")
                + ["--new_state=RUNNING", "--result=DONE", f"--failure_reason={'x' * 70000}"]
            )
        )

    @settings(
        max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=st.data())
    def test_logevent_calls_alike(self, data: st.DataObject) -> None:
        argv, env = data.draw(logevent_calls(self.diff.path))
        self.diff.compare(argv, env)

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(data=st.data())
    def test_job_reg_calls_alike(self, data: st.DataObject) -> None:
        argv = data.draw(job_reg_calls(self.diff.path, self.mktemp()))
        self.diff.compare(argv)


VALUES = st.sampled_from(
    [
        "",
        "RUNNING",
        "running",
        "Done-OK",
        "UNDEFINED",
        "42",
        "+7",
        "-1",
        "1.5e3",
        ".5",
        "5.",
        "e3",
        "x y",
        'q"uote',
        "back\\slash",
        "line\nfeed",
        "null",
        CREAM_JOBID,
        "https://h:99999/u",
        "LRMS",
        "logmonitor",
        "\u00e9t\u00e9",
        "--x",
    ]
)


@st.composite
def logevent_calls(draw: Any, path: str) -> tuple[list[str], dict[str, str]]:
    types = ["CREAMStatus", "UserTag", "Running", "Done", "Transfer", "CREAMAccepted", "Purge"]
    etype = draw(st.sampled_from(types + ["Bogus"]))
    fields = [f.name for f in CATALOGUE[etype].fields] if etype in CATALOGUE else []
    fields += ["node", "new_state", "bogus", "Exit-Code", "seqcode", "timeout"]
    groups: list[list[str]] = []
    case = draw(st.sampled_from([str, str.lower, str.upper]))
    groups.append(["-e", case(etype)])
    groups.append(["-s", case(draw(st.sampled_from([*SOURCES[:12], "Nobody"])))])
    job = draw(st.sampled_from([CREAM_JOBID, JOBID, "https://h/u", "https://h:0/u", "x", None]))
    env: dict[str, str] = {}
    if job is not None:
        groups.append([draw(st.sampled_from(["-j", "--jobid"])), job])
    else:
        env["GLITE_WMS_JOBID"] = CREAM_JOBID
    code = draw(
        st.sampled_from([None, GLITE_CODE, " " + GLITE_CODE, GLITE_CODE[:-11], "opaque", "a b"])
    )
    if code is not None:
        if draw(st.booleans()):
            groups.append(["-c", code])
        else:
            env["EDG_WL_SEQUENCE_CODE"] = code
    for name in draw(st.lists(st.sampled_from(fields), max_size=4)):
        value = draw(VALUES)
        if draw(st.booleans()):
            groups.append([f"--{name}={value}"])
        else:
            groups.append([f"--{name}", value])
    for flag in draw(st.lists(st.sampled_from(["-x", "-p", "-I", "--strict", "--lbproxy"]))):
        groups.append([flag])
    for option in draw(st.lists(st.sampled_from(["-i", "-H", "--timeout", "-U"]), max_size=2)):
        groups.append([option, draw(st.sampled_from(["7", "", "h", "/CN=x", "-v"]))])
    groups.append(["-S", path])
    order = draw(st.permutations(range(len(groups))))
    argv = ["logevent"] + [token for i in order for token in groups[i]]
    return argv, env


@st.composite
def job_reg_calls(draw: Any, path: str, jdl_path: str) -> list[str]:
    with open(jdl_path, "w", encoding="utf-8") as f:
        f.write('[ Executable = "/bin/true"; ]\n')
    groups: list[list[str]] = [["-X", path]]
    if draw(st.booleans()):
        groups.append(["-j", draw(st.sampled_from([CREAM_JOBID, JOBID, "https://h/u", "x"]))])
    else:
        server = ["lb.example.org:9000", "https://lb:9000/", "lb", "[::1]:9000", "a/b", " x "]
        groups.append(["-m", draw(st.sampled_from(server))])
    for flag in draw(st.lists(st.sampled_from(["-c", "-P", "-E", "-x", "-C", "--cream"]))):
        groups.append([flag])
    options = ["-s", "-W", "--ns", "-U", "--timeout", "-e", "-l", "-n"]
    for option in draw(st.lists(st.sampled_from(options), max_size=3)):
        value = jdl_path if option == "-l" else draw(st.sampled_from(["LRMS", "5", "", "x y"]))
        groups.append([option, value])
    order = draw(st.permutations(range(len(groups))))
    return ["job-reg"] + [token for i in order for token in groups[i]]


class ScanTests(SynchronousTestCase):
    """
    L{fast.scan} reads what it accepts as the subcommand's argparse parser does.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    *fast.LOGEVENT_OPTIONS,
                    "--jobid=J",
                    "--timeout=",
                    "--strict=1",
                    "--node=n",
                    "--node",
                    "--Exit-Code",
                    "-xp",
                    "-jJ",
                    "--",
                    "-",
                    "--jo",
                    "value",
                    "",
                    "-1",
                    "a b",
                    "--x=a b",
                ]
            ),
            max_size=8,
        )
    )
    def test_same_as_argparse(self, tokens: list[str]) -> None:
        scanned = fast.scan(tokens, fast.LOGEVENT_OPTIONS, True)
        if scanned is None:
            return
        values, fields = scanned
        parser = main.subparser(main.build_parser("lbtwist.cli.logevent"), "logevent")
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            args, extra = parser.parse_known_args(tokens)
        except SystemExit:
            self.fail(f"argparse refuses {tokens!r}: {sys.stderr.getvalue()}")
        finally:
            sys.stderr = stderr
        for dest, takes in {o for o in fast.LOGEVENT_OPTIONS.values() if o[0] is not None}:
            default = None if takes else False
            self.assertEqual(values.get(dest, default), getattr(args, dest), dest)
        self.assertEqual(parse_field_options(extra), fields)


class PureTests(SynchronousTestCase):
    """
    The lane's own small readers and writers agree with the core's.
    """

    def test_catalogue_rows(self) -> None:
        common, rows = catalogue.load()
        self.assertEqual(list(rows), list(CATALOGUE))
        for name, (row_name, code, group, fields) in rows.items():
            etype = CATALOGUE[name]
            self.assertEqual((row_name, code, group), (etype.name, etype.code, etype.group))
            self.assertEqual(
                fields,
                tuple(
                    (f.name, f.wire_key, f.type, f.required, f.codes, f.null_value)
                    for f in etype.fields
                ),
            )
        self.assertEqual([f[0] for f in common], [f.name for f in COMMON_FIELDS])
        self.assertEqual(catalogue.SOURCES, SOURCES)

    def test_find_event(self) -> None:
        text = catalogue._table_text()
        for name, row in catalogue.load()[1].items():
            for spelling in (name, name.lower(), name.upper()):
                self.assertEqual(catalogue.parse_table(text, spelling.upper())[1], {name: row})
                self.assertEqual(catalogue.find_event(spelling), row)
        self.assertIsNone(catalogue.find_event("NoSuchEvent"))

    def test_seqcode_tables(self) -> None:
        self.assertEqual(fast.COUNTERS, seqcode.COUNTERS)
        self.assertEqual(fast.WIDTHS, seqcode._WIDTHS)
        self.assertEqual(
            fast.SOURCE_COUNTER,
            {k.lower(): seqcode.COUNTERS.index(v) for k, v in seqcode.SOURCE_COUNTER.items()},
        )

    @given(
        st.one_of(
            st.none(),
            st.text(max_size=12),
            st.lists(st.integers(0, 10**12), min_size=8, max_size=9).map(
                lambda c: ":".join(f"{n}={v}" for n, v in zip(seqcode.COUNTERS, c, strict=False))
            ),
            st.sampled_from([GLITE_CODE, f" {GLITE_CODE}\t", GLITE_CODE + ":", "UI=1"]),
        ),
        st.sampled_from(SOURCES),
    )
    def test_next_seqcode(self, text: str | None, source: str) -> None:
        self.assertEqual(fast.next_seqcode(text, source), seqcode.next_seqcode(text, source))
        if text is not None:
            self.assertEqual(
                fast.parse_glite(text) is not None, seqcode.parse_seqcode(text) is not None
            )

    @given(st.integers(0, fast._MAX_DATE - 1))
    def test_format_date(self, us: int) -> None:
        self.assertEqual(fast.format_date(us), ulm.format_date(us))

    @given(st.text(alphabet="0123456789+-.eE x", max_size=8))
    def test_numbers(self, text: str) -> None:
        double = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
        self.assertEqual(fast._is_double(text), double.fullmatch(text) is not None)
        self.assertEqual(fast._is_int(text), re.fullmatch(r"[+-]?[0-9]+", text) is not None)

    @given(
        st.one_of(
            st.text(max_size=30).map(lambda t: "https://" + t),
            st.sampled_from([JOBID, CREAM_JOBID, "https://h:65536/u", "https://h:0/u"]),
            st.from_regex(r"https://[a-z.]{1,5}(:[0-9]{1,6})?/[A-Za-z0-9/ ]{1,5}", fullmatch=True),
        )
    )
    def test_plain_jobid_is_valid(self, text: str) -> None:
        from lbtwist.core.events import _JOBID_RE

        found = fast.plain_jobid(text)
        if found is not None:
            self.assertIsNotNone(_JOBID_RE.fullmatch(text))
            parsed = jobid.JobId.parse(text)
            self.assertEqual((parsed.host, parsed.port), found[:2])

    @given(st.binary(max_size=40))
    def test_md5(self, data: bytes) -> None:
        self.assertEqual(fast._b64_md5(data), jobid._b64_md5(data))


def _cert(
    names: list[tuple[Any, str, Any]],
    issuer: tuple[Any, Any] | None = None,
    *,
    proxy_info: bool = False,
    ca: bool | None = None,
) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    rdns = [
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(oid, value, kind) for oid, value, kind in group]
        )
        for group in _grouped(names)
    ]
    subject = x509.Name(rdns)
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .issuer_name(subject if issuer is None else issuer[0].subject)
    )
    if proxy_info:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),
                bytes.fromhex("300c300a06082b06010505071501"),
            ),
            critical=True,
        )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca, None), critical=True)
    cert = builder.sign(key if issuer is None else issuer[1], hashes.SHA256())
    return cert, key


def _grouped(names: list[tuple[Any, str, Any]]) -> list[list[tuple[Any, str, Any]]]:
    # A "+" value starts a multi-valued RDN with the previous attribute.
    groups: list[list[tuple[Any, str, Any]]] = []
    for oid, value, kind in names:
        if value.startswith("+") and groups:
            if all(o != oid or v != (value[1:] or "v") for o, v, _ in groups[-1]):
                # (An RDN cannot hold the same attribute twice.)
                groups[-1].append((oid, value[1:] or "v", kind))
        else:
            groups.append([(oid, value, kind)])
    return groups


@st.composite
def name_parts(draw: Any) -> list[tuple[Any, str, Any]]:
    from cryptography.x509 import ObjectIdentifier
    from cryptography.x509.name import _ASN1Type
    from cryptography.x509.oid import NameOID

    oids = [
        NameOID.COMMON_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.DOMAIN_COMPONENT,
        NameOID.EMAIL_ADDRESS,
        NameOID.USER_ID,
        ObjectIdentifier("1.2.3.4.5"),
    ]
    kinds = [
        _ASN1Type.UTF8String,
        _ASN1Type.PrintableString,
        _ASN1Type.IA5String,
        _ASN1Type.BMPString,
    ]
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        oid = draw(st.sampled_from(oids))
        kind = draw(st.sampled_from(kinds))
        if oid in (NameOID.EMAIL_ADDRESS, NameOID.DOMAIN_COMPONENT):
            kind = _ASN1Type.IA5String
        alphabet = "abcXYZ 09'()+,-./:=?" if kind != _ASN1Type.UTF8String else "ab Z9/=\u00e9\u4e2d"
        value = draw(st.text(alphabet=alphabet, min_size=1, max_size=8))
        parts.append((oid, value, kind))
    return parts


class LightDNTests(SynchronousTestCase):
    """
    L{identity.light_certificate_dn} gives L{identity.certificate_dn}'s DN, or
    hands over.
    """

    def pem(self, *certs: Any) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def check(self, pem: bytes) -> str | None:
        light = identity.light_certificate_dn(pem)
        try:
            full: str | None = identity.certificate_dn(pem)
        except ValueError:
            full = None
        if light is not None:
            self.assertEqual(light, full)
        return light

    def test_dev_pki_proxies(self) -> None:
        from tests.certs import TestCA, proxy_of

        ca = TestCA.create()
        user = ca.user("/DC=org/DC=example/OU=People/CN=Test User")
        for proxy in (
            proxy_of(user),
            proxy_of(proxy_of(user)),
            proxy_of(user, legacy=True),
            proxy_of(user, legacy=True, limited=True),
        ):
            self.assertEqual(self.check(proxy.pem()), "/DC=org/DC=example/OU=People/CN=Test User")
        # Proxies alone: the leaf's DN without its proxy components.
        self.assertEqual(
            self.check(self.pem(proxy_of(user).cert)), "/DC=org/DC=example/OU=People/CN=Test User"
        )
        self.assertEqual(self.check(self.pem(ca.cert)), "/DC=org/DC=example/CN=Test CA")

    def test_not_certificates(self) -> None:
        for text in (b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n"):
            self.assertIsNone(identity.light_certificate_dn(text))
        broken = b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
        self.assertIsNone(self.check(broken))

    @settings(max_examples=60, deadline=None)
    @given(name_parts(), st.sampled_from(["self", "proxy", "legacy", "ca-legacy"]), st.booleans())
    def test_names(self, parts: list[tuple[Any, str, Any]], kind: str, alone: bool) -> None:
        from cryptography.x509.name import _ASN1Type
        from cryptography.x509.oid import NameOID

        user = _cert(parts)
        if kind == "self":
            self.check(self.pem(user[0]))
            return
        last = (NameOID.COMMON_NAME, "proxy" if kind != "proxy" else "123", _ASN1Type.UTF8String)
        leaf, _ = _cert(
            [*parts, last],
            user,
            proxy_info=kind == "proxy",
            ca=True if kind == "ca-legacy" else None,
        )
        self.check(self.pem(leaf) if alone else self.pem(leaf, user[0]))


class LightImportTests(SynchronousTestCase):
    """
    A producer call loads no Twisted, and in its fast lane none of the heavy
    modules of the full path.
    """

    HEAVY = [
        "twisted",
        "OpenSSL",
        "cryptography",
        "asn1crypto",
        "attr",
        "attrs",
        "argparse",
        "typing",
        "re",
    ]

    def modules_of(self, argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
        script = (
            "import sys\n"
            "from lbtwist.cli.main import run\n"
            "from lbtwist.cli.common import CLIContext\n"
            f"status = run({argv!r}, CLIContext())\n"
            "print(status)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 3 if argv[0] == "logevent" else 8, result.stderr)
        return int(lines[-2]), json.loads(lines[-1].replace("'", '"'))

    def test_producer_calls_load_no_heavy_module(self) -> None:
        from tests.certs import TestCA, proxy_of

        server = LineServer(short_path(self))
        self.addCleanup(server.stop)
        proxy = self.mktemp()
        with open(proxy, "wb") as f:
            f.write(proxy_of(TestCA.create().user()).pem())
        env = {"X509_USER_PROXY": proxy}
        logevent = ["logevent", "-S", server.path, "-j", CREAM_JOBID, "-s", "CREAMExecutor"]
        logevent += ["-e", "CREAMStatus", "--new_state=RUNNING", "--result=DONE"]
        for argv in (logevent, ["job-reg", "-c", "-X", server.path]):
            status, modules = self.modules_of(argv, env)
            self.assertEqual(status, 0)
            self.assertEqual(sorted(set(self.HEAVY) & set(modules)), [], argv)
        self.assertIn(b'DG.USER="/DC=org/DC=example/OU=People/CN=Test User"', server.lines[0])

    def test_full_path_loads_no_twisted(self) -> None:
        # Even a call the fast lane hands over (a warning) loads no Twisted.
        server = LineServer(short_path(self))
        self.addCleanup(server.stop)
        argv = ["logevent", "-S", server.path, "-j", CREAM_JOBID, "-s", "CREAMExecutor"]
        argv += ["-e", "CREAMStatus", "--new_state=RUNNING", "--result=DONE", "--node=x"]
        script = (
            "import sys\n"
            "from lbtwist.cli.main import run\n"
            "from lbtwist.cli.common import CLIContext\n"
            f"status = run({argv!r}, CLIContext())\n"
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'OpenSSL'}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.stdout.splitlines()[-1], "0 []", result.stderr)


class ParserImportTests(SynchronousTestCase):
    """
    Building the parsers of every subcommand (C{lbtwist --help}, C{lbtwist
    status ...}) loads no Twisted: the HTTPS client is imported when a query runs.
    """

    def test_parsers_load_no_twisted(self) -> None:
        script = (
            "import sys\n"
            "from lbtwist.cli.main import build_parser\n"
            "build_parser()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'OpenSSL'}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.stdout, "[]\n", result.stderr)

    def test_connect_timeout_default(self) -> None:
        from lbtwist.cli import query
        from lbtwist.client.query import DEFAULT_CONNECT_TIMEOUT

        self.assertEqual(query.DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)


class DispatchTableTests(SynchronousTestCase):
    """
    L{main.COMMANDS} makes a run build one module's parser; a stale line does
    not break the subcommand.
    """

    def test_every_command_listed_is_registered_there(self) -> None:
        for command, module in main.COMMANDS.items():
            parser = main.build_parser(module)
            self.assertIsNot(main.subparser(parser, command), parser, command)

    def test_stale_line_falls_back_to_every_module(self) -> None:
        self.patch(main, "COMMANDS", {**main.COMMANDS, "replay": "lbtwist.cli.jobreg"})
        status, out, err = self.call(["replay", "--example"])
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Running", out)

    def call(self, argv: list[str]) -> tuple[int, str, str]:
        ctx = make_ctx()
        status = main.run(argv, ctx)
        assert isinstance(ctx.stdout, io.StringIO) and isinstance(ctx.stderr, io.StringIO)
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()
