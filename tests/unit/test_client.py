# -*- test-case-name: tests.unit.test_client -*-
"""
Tests for L{lbtwist.client.query} and the HTTPS commands of L{lbtwist.cli.query}.

The TLS tests run a real twisted.web site over TLS on loopback with the
real reactor (certificates made in the test), as the client meets servers.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error as ierror
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from lbtwist.client import query as client
from lbtwist.client.query import (
    Credentials,
    QueryClient,
    QueryError,
    VerifyLog,
    check_credentials,
    client_tls,
    event_from_json,
    event_line,
    find_credentials,
    http_error,
)
from lbtwist.core.events import format_event, make_event, parse_event
from lbtwist.core.states.status import JobStatus
from lbtwist.security.identity import dn_of_chain
from lbtwist.security.tls import ServerContextSource, tls_server_endpoint, transport_chain
from tests.certs import Credential, TestCA, proxy_of

JOBID = "https://localhost:9000/Hq3tK8vWZ0bQy1n2m3p4rA"
UNIQUE = "Hq3tK8vWZ0bQy1n2m3p4rA"
USER_DN = "/DC=org/DC=example/OU=People/CN=Test User"


def now() -> datetime:
    return datetime.now(UTC)


class FindCredentialsTests(SynchronousTestCase):
    """
    Credential discovery in the grid tools' order (design section 11).
    """

    def find(
        self,
        env: Mapping[str, str],
        existing: frozenset[str] | set[str] = frozenset(),
        **kw: str,
    ) -> Credentials:
        return find_credentials(env, uid=1234, exists=lambda p: p in existing, **kw)

    def test_user_proxy_env_first(self) -> None:
        creds = self.find(
            {"X509_USER_PROXY": "/p", "X509_USER_CERT": "/c", "X509_CERT_DIR": "/ca"},
            {"/tmp/x509up_u1234"},
        )
        self.assertEqual(creds, Credentials("/p", None, "/ca"))

    def test_default_proxy(self) -> None:
        creds = self.find({"X509_USER_CERT": "/c", "X509_USER_KEY": "/k"}, {"/tmp/x509up_u1234"})
        self.assertEqual(creds, Credentials("/tmp/x509up_u1234", None, client.DEFAULT_CA_DIR))

    def test_user_cert_and_key(self) -> None:
        creds = self.find({"X509_USER_CERT": "/c", "X509_USER_KEY": "/k", "HOME": "/h"})
        self.assertEqual(creds, Credentials("/c", "/k", client.DEFAULT_CA_DIR))

    def test_globus_directory(self) -> None:
        creds = self.find({"HOME": "/h"}, {"/h/.globus/usercert.pem"})
        self.assertEqual(
            creds,
            Credentials("/h/.globus/usercert.pem", "/h/.globus/userkey.pem", client.DEFAULT_CA_DIR),
        )

    def test_options_win(self) -> None:
        creds = self.find(
            {"X509_USER_PROXY": "/p", "X509_CERT_DIR": "/ca"},
            cert="/opt/c",
            key="/opt/k",
            capath="/opt/ca",
        )
        self.assertEqual(creds, Credentials("/opt/c", "/opt/k", "/opt/ca"))

    def test_nothing_found(self) -> None:
        e = self.assertRaises(QueryError, self.find, {"HOME": "/h"})
        self.assertIn("no credentials", str(e))
        self.assertNotIn("\n", str(e))


class CheckCredentialsTests(SynchronousTestCase):
    """
    Expired or missing credentials are refused before connecting.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.ca = TestCA.create(now=now())
        self.user = self.ca.user(USER_DN)

    def test_expired_proxy(self) -> None:
        proxy = proxy_of(self.user, now=now() - timedelta(hours=3), hours=1)
        path = proxy.write(self.dir / "x509up")
        e = self.assertRaises(
            QueryError, check_credentials, Credentials(str(path), None, str(self.dir)), now=now()
        )
        self.assertEqual(str(e), f"your proxy certificate has expired ({path})")

    def test_valid_proxy(self) -> None:
        path = proxy_of(self.user, now=now()).write(self.dir / "x509up")
        check_credentials(Credentials(str(path), None, str(self.dir)), now=now())

    def test_expired_user_certificate(self) -> None:
        path = self.user.write(self.dir / "usercert.pem")
        e = self.assertRaises(
            QueryError,
            check_credentials,
            Credentials(str(path), None, str(self.dir)),
            now=now() + timedelta(days=400),
        )
        self.assertEqual(str(e), f"your certificate has expired ({path})")

    def test_missing_file(self) -> None:
        e = self.assertRaises(
            QueryError, check_credentials, Credentials("/nonexistent/x509up", None, "/"), now=now()
        )
        self.assertIn("cannot read certificate /nonexistent/x509up", str(e))

    def test_missing_ca_dir(self) -> None:
        path = proxy_of(self.user, now=now()).write(self.dir / "x509up")
        e = self.assertRaises(
            QueryError,
            check_credentials,
            Credentials(str(path), None, "/nonexistent/ca"),
            now=now(),
        )
        self.assertIn("CA directory /nonexistent/ca not found", str(e))


class HTTPErrorTests(SynchronousTestCase):
    """
    HTTP errors become one line.
    """

    def test_messages(self) -> None:
        self.assertEqual(str(http_error(403, b"", JOBID)), f"403 not allowed to read job {JOBID}")
        self.assertEqual(str(http_error(404, b"", JOBID)), f"404 no such job {JOBID}")
        self.assertIn("410", str(http_error(410, b"", JOBID)))
        body = json.dumps({"error": 400, "message": "bad condition"}).encode()
        self.assertEqual(str(http_error(400, body, "x")), "400 bad request (bad condition)")
        self.assertEqual(
            str(http_error(500, b'{"error": 500, "message": "boom"}', JOBID)),
            f"HTTP 500 for {JOBID}: boom",
        )
        self.assertEqual(http_error(404, b"", JOBID).status, 404)


def event_json(ev: Any, iso: bool = True) -> dict[str, Any]:
    from lbtwist.core.states.status import format_iso
    from lbtwist.core.ulm import format_date

    data: dict[str, Any] = {
        "type": ev.type,
        "jobid": ev.jobid,
        "date": format_iso(ev.date) if iso else format_date(ev.date),
        "host": ev.host,
        "user": ev.user,
        "source": ev.source,
        "seqcode": ev.seqcode,
        "priority": ev.priority,
        "level": ev.level,
        "src_instance": ev.src_instance,
        "arrived": format_iso(ev.date + 5),
    }
    data.update(ev.fields)
    return data


class EventJSONTests(SynchronousTestCase):
    """
    Events are rebuilt from the server's JSON objects.
    """

    def event(self) -> Any:
        return make_event(
            "CREAMStatus",
            jobid="https://ce.example.org:9000/CREAM123",
            date=1_710_408_413_123_456,
            host="ce.example.org",
            user='/C=CZ/CN=Jana "J" Novakova',
            source="CREAMExecutor",
            seqcode="no_seqcodes_1",
            src_instance="",
            new_state="DONE-OK",
            result="DONE",
            exit_code="0",
        )

    def test_rebuild(self) -> None:
        ev = self.event()
        self.assertEqual(event_from_json(event_json(ev)), ev)
        self.assertEqual(event_line(event_json(ev, iso=False)), format_event(ev))

    def test_line_preferred(self) -> None:
        self.assertEqual(event_line({"line": "DATE=1 X=2\n", "type": "Bogus"}), "DATE=1 X=2")

    def test_nested_fields(self) -> None:
        ev = self.event()
        data = event_json(ev)
        for name in ev.fields:
            del data[name]
        data["fields"] = dict(ev.fields)
        self.assertEqual(event_from_json(data), ev)

    def test_bad_event(self) -> None:
        for bad in ({"type": "NoSuchEvent"}, {"type": "CREAMStatus"}, {}):
            e = self.assertRaises(QueryError, event_from_json, bad)
            self.assertIn("unexpected event", str(e))

    @settings(max_examples=100, deadline=None)
    @given(
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30),
        st.integers(min_value=0, max_value=4_000_000_000_000_000),
    )
    def test_roundtrip_property(self, reason: str, date: int) -> None:
        ev = make_event(
            "CREAMStore",
            jobid=JOBID,
            date=date,
            host="h",
            user="/CN=u",
            source="CREAMInterface",
            seqcode="s",
            command="CMDSTART",
            result="OK",
            reason=reason,
        )
        line = event_line(event_json(ev))
        self.assertEqual(parse_event(line), ev)


class ScriptedClient(QueryClient):
    """
    A client whose GETs are answered from a script: url -> exception or
    (code, headers, body).
    """

    def __init__(self, script: dict[str, Any]) -> None:
        from OpenSSL import SSL
        from twisted.internet.task import Clock

        super().__init__(Clock(), SSL.Context(SSL.TLS_METHOD))
        self.script = script
        self.asked: list[str] = []

    async def _get_once(self, url: str) -> tuple[int, Headers, bytes]:
        self.asked.append(url)
        answer = self.script[url]
        if isinstance(answer, BaseException):
            raise answer
        code, headers, body = answer
        return code, Headers(headers), body


def result_of(testcase: SynchronousTestCase, coroutine: Any) -> Any:
    return testcase.successResultOf(Deferred.fromCoroutine(coroutine))


def failure_of(testcase: SynchronousTestCase, coroutine: Any) -> str:
    f = testcase.failureResultOf(Deferred.fromCoroutine(coroutine), QueryError)
    return str(f.value)


class CandidateTests(SynchronousTestCase):
    """
    Candidates and redirects (design section 3), with scripted answers.
    """

    def test_next_candidate_on_refusal_and_timeout(self) -> None:
        c = ScriptedClient(
            {
                "https://a:1/U": ierror.ConnectionRefusedError(),
                "https://b:2/U": ierror.TimeoutError(),
                "https://c:3/U": (200, {}, b"{}"),
            }
        )
        reply = result_of(
            self, c.get(["https://a:1", "https://b:2", "https://c:3"], "/U", what="j")
        )
        self.assertEqual((reply.url, reply.code), ("https://c:3/U", 200))
        self.assertEqual(c.asked, ["https://a:1/U", "https://b:2/U", "https://c:3/U"])

    def test_all_refused(self) -> None:
        c = ScriptedClient(
            {
                "https://a:1/U": ierror.ConnectionRefusedError(),
                "https://b:2/U": ierror.ConnectionRefusedError(),
            }
        )
        message = failure_of(self, c.get(["https://a:1", "https://b:2"], "/U", what=JOBID))
        self.assertEqual(
            message,
            f"cannot connect to any server for {JOBID}: a:1: connection refused; "
            "b:2: connection refused",
        )

    def test_http_error_stops(self) -> None:
        c = ScriptedClient({"https://a:1/U": (404, {}, b""), "https://b:2/U": (200, {}, b"")})
        message = failure_of(self, c.get(["https://a:1", "https://b:2"], "/U", what=JOBID))
        self.assertEqual(message, f"404 no such job {JOBID}")
        self.assertEqual(c.asked, ["https://a:1/U"])

    def test_redirects_followed(self) -> None:
        c = ScriptedClient(
            {
                "https://a:1/U": (301, {b"Location": [b"https://b:2/U"]}, b""),
                "https://b:2/U": (307, {b"Location": [b"/V"]}, b""),
                "https://b:2/V": (200, {}, b'{"state": "Done"}'),
            }
        )
        reply = result_of(self, c.get(["https://a:1"], "/U", what="j"))
        self.assertEqual(reply.json(), {"state": "Done"})
        self.assertEqual(reply.url, "https://b:2/V")

    def test_redirect_limit(self) -> None:
        script: dict[str, Any] = {
            f"https://h:{i}/U": (302, {b"Location": [f"https://h:{i + 1}/U".encode()]}, b"")
            for i in range(10)
        }
        script["https://h:5/U"] = (200, {}, b"{}")
        self.assertEqual(
            result_of(self, ScriptedClient(script).get(["https://h:0"], "/U", what="j")).url,
            "https://h:5/U",
        )
        script["https://h:5/U"] = (308, {b"Location": [b"https://h:6/U"]}, b"")
        message = failure_of(self, ScriptedClient(script).get(["https://h:0"], "/U", what="j"))
        self.assertEqual(message, "too many redirects (more than 5) for j")

    def test_redirect_to_http_refused(self) -> None:
        c = ScriptedClient({"https://a:1/U": (302, {b"Location": [b"http://a:80/U"]}, b"")})
        message = failure_of(self, c.get(["https://a:1"], "/U", what="j"))
        self.assertIn("refusing a redirect to http://a:80/U", message)

    def test_refused_after_redirect_is_an_error(self) -> None:
        c = ScriptedClient(
            {
                "https://a:1/U": (302, {b"Location": [b"https://b:2/U"]}, b""),
                "https://b:2/U": ierror.ConnectionRefusedError(),
                "https://c:3/U": (200, {}, b"{}"),
            }
        )
        message = failure_of(self, c.get(["https://a:1", "https://c:3"], "/U", what="j"))
        self.assertEqual(message, "b:2: connection refused")

    def test_job_status_path(self) -> None:
        c = ScriptedClient(
            {
                f"https://localhost:9557/{UNIQUE}": ierror.ConnectionRefusedError(),
                f"https://localhost:9000/{UNIQUE}": (200, {}, b'{"state": "Running"}'),
            }
        )
        status = result_of(self, c.job_status(JOBID, [("localhost", 9557), ("localhost", 9000)]))
        self.assertEqual(status, {"state": "Running"})

    def test_jobs_query(self) -> None:
        url = "https://lb:9000/?state=running&limit=5"
        c = ScriptedClient({url: (200, {}, b'{"jobs": [{"jobid": "x", "state": "Running"}, 3]}')})
        jobs = result_of(self, c.jobs(("lb", 9000), [("state", "running"), ("limit", "5")]))
        self.assertEqual(jobs, [{"jobid": "x", "state": "Running"}])

    def test_not_json(self) -> None:
        c = ScriptedClient({f"https://a:1/{UNIQUE}": (200, {}, b"<html>")})
        message = failure_of(self, c.job_status(JOBID, [("a", 1)]))
        self.assertIn("not JSON", message)


# Real TLS on loopback.


class Routes(Resource):
    """
    Answers by path from a table; records the client's DN.
    """

    isLeaf = True

    def __init__(self, table: dict[bytes, Callable[[Request], bytes]]) -> None:
        super().__init__()
        self.table = table
        self.clients: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        self.clients.append(dn_of_chain(transport_chain(request.channel.transport)))
        handler = self.table.get(request.uri)
        if handler is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": 404, "message": "unknown job"}).encode()
        return handler(request)


def json_answer(data: Any) -> Callable[[Request], bytes]:
    def render(request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(data).encode()

    return render


def redirect_to(url: str) -> Callable[[Request], bytes]:
    def render(request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", url.encode())
        return b""

    return render


def free_port() -> int:
    """
    A port nobody listens on (for refused connections).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class TLSQueryTests(TestCase):
    """
    The client against a real twisted.web site over TLS on loopback.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.ca = TestCA.create(now=now())
        self.ca_dir = self.dir / "certificates"
        self.ca.install(self.ca_dir, self.ca.crl())
        self.user = self.ca.user(USER_DN)
        self.proxy_path = proxy_of(self.user, now=now()).write(self.dir / "x509up")
        self.host = self.ca.host("localhost")

    async def serve(
        self,
        table: dict[bytes, Callable[[Request], bytes]],
        host: Credential | None = None,
        ca_dir: Path | None = None,
    ) -> tuple[int, Routes]:
        """
        Start a TLS site; return its port and resource.
        """
        host = host or self.host
        name = f"host{len(list(self.dir.glob('host*.pem')))}.pem"
        path = host.write(self.dir / name)
        source = ServerContextSource(str(path), None, str(ca_dir or self.ca_dir))
        routes = Routes(table)
        endpoint = tls_server_endpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), source
        )
        port = await endpoint.listen(Site(routes))
        self.addCleanup(port.stopListening)
        return port.getHost().port, routes  # type: ignore[attr-defined]

    def client(self, creds: Credentials | None = None) -> QueryClient:
        creds = creds or Credentials(str(self.proxy_path), None, str(self.ca_dir))
        context, log = client_tls(creds)
        return QueryClient(reactor, context, log, connect_timeout=2, timeout=10)

    async def fails(self, coroutine: Any) -> str:
        try:
            await coroutine
        except QueryError as e:
            return str(e)
        self.fail("no QueryError")

    async def test_status_with_proxy(self) -> None:
        status = JobStatus(state="Running", jobId=JOBID, owner=USER_DN).to_json_dict()
        port, routes = await self.serve({f"/{UNIQUE}".encode(): json_answer(status)})
        got = await self.client().job_status(JOBID, [("localhost", port)])
        self.assertEqual(JobStatus.from_json_dict(got).state, "Running")
        # The proxy chain was presented: the server sees the user's DN.
        self.assertEqual(routes.clients, [USER_DN])

    async def test_failover_to_second_candidate(self) -> None:
        port, _ = await self.serve({f"/{UNIQUE}".encode(): json_answer({"state": "Done"})})
        got = await self.client().job_status(
            JOBID, [("localhost", free_port()), ("localhost", port)]
        )
        self.assertEqual(got, {"state": "Done"})

    async def test_all_refused(self) -> None:
        dead = free_port()
        message = await self.fails(self.client().job_status(JOBID, [("127.0.0.1", dead)]))
        self.assertEqual(
            message,
            f"cannot connect to any server for {JOBID}: 127.0.0.1:{dead}: connection refused",
        )

    async def test_redirect_across_servers(self) -> None:
        target, routes_b = await self.serve({f"/{UNIQUE}".encode(): json_answer({"state": "Done"})})
        front, routes_a = await self.serve(
            {f"/{UNIQUE}".encode(): redirect_to(f"https://localhost:{target}/{UNIQUE}")}
        )
        got = await self.client().job_status(JOBID, [("localhost", front)])
        self.assertEqual(got, {"state": "Done"})
        self.assertEqual((routes_a.clients, routes_b.clients), ([USER_DN], [USER_DN]))

    async def test_redirect_to_untrusted_server(self) -> None:
        other = TestCA.create("/DC=org/DC=other/CN=Other CA", now=now())
        target, routes_b = await self.serve(
            {f"/{UNIQUE}".encode(): json_answer({})}, host=other.host("localhost")
        )
        front, _ = await self.serve(
            {f"/{UNIQUE}".encode(): redirect_to(f"https://localhost:{target}/{UNIQUE}")}
        )
        message = await self.fails(self.client().job_status(JOBID, [("localhost", front)]))
        self.assertEqual(message, "server certificate not trusted (unknown CA) at localhost")
        self.assertEqual(routes_b.clients, [])

    async def test_unknown_ca(self) -> None:
        other = TestCA.create("/DC=org/DC=other/CN=Other CA", now=now())
        port, _ = await self.serve({}, host=other.host("localhost"))
        message = await self.fails(self.client().job_status(JOBID, [("localhost", port)]))
        self.assertEqual(message, "server certificate not trusted (unknown CA) at localhost")

    async def test_wrong_host_name(self) -> None:
        port, _ = await self.serve({}, host=self.ca.host("elsewhere.example.org"))
        message = await self.fails(self.client().job_status(JOBID, [("localhost", port)]))
        self.assertEqual(message, "server certificate does not match host name localhost")

    async def test_forbidden_and_missing(self) -> None:
        def forbidden(request: Request) -> bytes:
            request.setResponseCode(403)
            return json.dumps({"error": 403, "message": "not allowed"}).encode()

        port, _ = await self.serve({f"/{UNIQUE}".encode(): forbidden})
        message = await self.fails(self.client().job_status(JOBID, [("localhost", port)]))
        self.assertEqual(message, f"403 not allowed to read job {JOBID}")
        other = "https://localhost:9000/AAAAAAAAAAAAAAAAAAAAAA"
        message = await self.fails(self.client().job_status(other, [("localhost", port)]))
        self.assertEqual(message, f"404 no such job {other}")

    async def test_revoked_client_refused(self) -> None:
        server_ca = self.dir / "server-ca"
        self.ca.install(server_ca, self.ca.crl([self.user.cert]))
        port, routes = await self.serve({f"/{UNIQUE}".encode(): json_answer({})}, ca_dir=server_ca)
        message = await self.fails(self.client().job_status(JOBID, [("localhost", port)]))
        self.assertTrue(
            message.startswith("the server localhost refused our certificate")
            or message.startswith(f"localhost:{port} closed the connection"),
            message,
        )
        self.assertIn("revoked", message)
        self.assertEqual(routes.clients, [])

    async def test_events(self) -> None:
        ev = make_event(
            "CREAMStore",
            jobid=JOBID,
            date=1_710_408_413_123_456,
            host="ce",
            user=USER_DN,
            source="CREAMInterface",
            seqcode="s1",
            command="CMDSTART",
            result="OK",
        )
        data = {
            "type": ev.type,
            "jobid": ev.jobid,
            "date": "2024-03-14T09:26:53.123456Z",
            "host": ev.host,
            "user": ev.user,
            "source": ev.source,
            "seqcode": ev.seqcode,
            "priority": 0,
            "level": "SYSTEM",
            "src_instance": "",
            **ev.fields,
        }
        port, _ = await self.serve({f"/{UNIQUE}/events".encode(): json_answer({"events": [data]})})
        events = await self.client().job_events(JOBID, [("localhost", port)])
        self.assertEqual([event_line(e) for e in events], [format_event(ev)])


class DescribeTLSFailureTests(SynchronousTestCase):
    """
    Handshake failures explained from the verification log or the alert.
    """

    def error(self, text: str) -> Any:
        from OpenSSL import SSL

        return SSL.Error([("SSL routines", "", text)])

    def test_messages(self) -> None:
        describe = client.describe_tls_failure
        err = self.error("certificate verify failed")
        self.assertEqual(
            describe(err, VerifyLog([(20, 0)]), "h"),
            "server certificate not trusted (unknown CA) at h",
        )
        self.assertEqual(
            describe(err, VerifyLog([(10, 0)]), "h"), "server certificate of h has expired"
        )
        self.assertEqual(
            describe(err, VerifyLog([(23, 0)]), "h"), "server certificate of h is revoked"
        )
        self.assertEqual(
            describe(err, VerifyLog([], True), "h"), "server certificate does not match host name h"
        )
        self.assertEqual(
            describe(self.error("sslv3 alert certificate expired"), VerifyLog(), "h"),
            "the server h refused our certificate (sslv3 alert certificate expired)",
        )

    def test_describe_connect_failures(self) -> None:
        c = ScriptedClient({})
        self.assertEqual(
            c._describe(Failure(ierror.ConnectionRefusedError()), "https://a:1/U"),
            (True, "a:1: connection refused"),
        )
        connect, _ = c._describe(Failure(ierror.TimeoutError()), "https://a:1/U")
        self.assertTrue(connect)


def cli_args(argv: list[str]) -> Any:
    from lbtwist.cli.main import build_parser

    args = build_parser().parse_args(argv)
    args.extra = []
    return args


def cli_ctx(env: Mapping[str, str] | None = None) -> Any:
    from io import StringIO

    from lbtwist.cli.common import CLIContext

    return CLIContext(env=dict(env or {}), stdout=StringIO(), stderr=StringIO())


class CommandTests(SynchronousTestCase):
    """
    C{lbtwist status}, C{log} and C{jobs} over a scripted client.
    """

    def run_query(self, query: Any, argv: list[str], script: dict[str, Any], **env: str) -> Any:
        args = cli_args(argv)
        ctx = cli_ctx(env)
        c = ScriptedClient(script)
        status = result_of(self, query(c, args, ctx))
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue(), c.asked

    def test_status_text_and_errors(self) -> None:
        from lbtwist.cli.query import query_status

        other = "https://localhost:9000/BBBBBBBBBBBBBBBBBBBBBB"
        body = json.dumps(
            JobStatus(state="Done", jobId=JOBID, cream_state="Done-ok", done_code=0).to_json_dict()
        ).encode()
        status, out, err, _ = self.run_query(
            query_status,
            ["status", "--lbtwist-layout", JOBID, other],
            {
                f"https://localhost:9000/{UNIQUE}": (200, {}, body),
                f"https://localhost:9000/{other.rsplit('/', 1)[1]}": (403, {}, b""),
            },
        )
        self.assertEqual(status, 1)
        self.assertIn("BOOKKEEPING INFORMATION:", out)
        self.assertIn("state : Done\n", out)
        self.assertIn("cream_state : Done-ok\n", out)
        self.assertEqual(err, f"lbtwist status: 403 not allowed to read job {other}\n")

    def test_status_json_and_endpoint_env(self) -> None:
        from lbtwist.cli.query import query_status

        status, out, err, asked = self.run_query(
            query_status,
            ["status", "--json", JOBID],
            {f"https://lb.example.org:7000/{UNIQUE}": (200, {}, b'{"state": "Running"}')},
            GLITE_WMS_QUERY_SERVER="lb.example.org:7000",
        )
        self.assertEqual((status, out, err), (0, '{"state": "Running"}\n', ""))
        self.assertEqual(asked, [f"https://lb.example.org:7000/{UNIQUE}"])

    def test_status_bad_jobid(self) -> None:
        from lbtwist.cli.query import query_status

        status, out, err, asked = self.run_query(query_status, ["status", "not-a-jobid"], {})
        self.assertEqual((status, out, asked), (1, "", []))
        self.assertTrue(err.startswith("lbtwist status: "), err)
        self.assertEqual(err.count("\n"), 1)

    def test_log(self) -> None:
        from lbtwist.cli.query import query_log

        ev = make_event(
            "CREAMStatus",
            jobid=JOBID,
            date=1_710_408_413_123_456,
            host="proxy",
            user="/CN=u",
            source="LogMonitor",
            seqcode="s",
            new_state="RUNNING",
            result="DONE",
        )
        data = event_json(ev)
        data["generated"] = True
        answer = json.dumps([data]).encode()
        status, out, err, _ = self.run_query(
            query_log,
            ["log", JOBID],
            {f"https://localhost:9000/{UNIQUE}/events": (200, {}, answer)},
        )
        self.assertEqual(status, 0)
        from lbtwist.core.unparse import unparse_event

        # As glite-lb-job_log: the unparsed line, a blank line, then the count.
        line = unparse_event(ev.evolve(extra=(("DG.GENERATED_BY", "lbtwist-proxy"),)))
        self.assertEqual(out, f"{line}\n\n\nFound 1 events\n")
        self.assertEqual(parse_event(out.splitlines()[0]).generated, True)

    def test_jobs_paging(self) -> None:
        from lbtwist.cli.query import query_jobs

        base = "https://localhost:9000/?state=running%2Cdone"
        page1 = {"jobs": [{"jobId": JOBID, "state": "Running"}], "cursor": "c1"}
        page2 = {"jobs": [{"jobId": "https://x:9000/y", "state": "Done"}], "cursor": None}
        status, out, err, asked = self.run_query(
            query_jobs,
            ["jobs", "--state", "running", "--state", "done"],
            {
                base: (200, {}, json.dumps(page1).encode()),
                base + "&cursor=c1": (200, {}, json.dumps(page2).encode()),
            },
        )
        self.assertEqual(status, 0, err)
        self.assertEqual(out, f"{JOBID}  Running\nhttps://x:9000/y  Done\n\nFound 2 jobs\n")
        self.assertEqual(len(asked), 2)

    def test_jobs_limit_and_owner(self) -> None:
        from lbtwist.cli.query import query_jobs

        url = "https://lb:9000/?query=status%3Drunning&owner=%2A&limit=1"
        page = {"jobs": [{"jobId": JOBID, "state": "Running"}], "cursor": "more"}
        status, out, _, asked = self.run_query(
            query_jobs,
            ["jobs", "--json", "--query", "status=running", "--owner", "*", "--limit", "1"],
            {url: (200, {}, json.dumps(page).encode())},
            GLITE_WMS_QUERY_SERVER="lb:9000",
        )
        self.assertEqual((status, asked), (0, [url]))
        self.assertEqual([json.loads(line) for line in out.splitlines()], page["jobs"])

    def test_certs_dev(self) -> None:
        from lbtwist.cli.main import run

        ctx = cli_ctx()
        target = self.mktemp()
        self.assertEqual(run(["certs", "dev", target], ctx), 0)
        self.assertIn("user proxy: ", ctx.stdout.getvalue())
        self.assertTrue(Path(target, "user", "x509up").exists())
        self.assertTrue(Path(target, "hostcert.pem").exists())

    def test_credentials_checked_before_connecting(self) -> None:
        from lbtwist.cli.main import run

        for argv in (["status", JOBID], ["log", JOBID], ["jobs"]):
            ctx = cli_ctx({"X509_USER_PROXY": "/nonexistent/x509up"})
            self.assertEqual(run(argv, ctx), 1)
            self.assertEqual(
                ctx.stderr.getvalue(),
                f"lbtwist {argv[0]}: cannot read certificate /nonexistent/x509up: "
                "No such file or directory\n",
            )
