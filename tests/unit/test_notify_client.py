# -*- test-case-name: tests.unit.test_notify_client -*-
"""
Tests for L{lbtwist.client.notify}: notification ids, the SSE decoder, the
request/answer client and the consumer (stream, reconnection, polling,
pausing), against a small fake HTTP agent driven by a L{Clock}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from lbtwist.client.notify import (
    Notification,
    NotificationStream,
    NotifId,
    NotifyClient,
    Registration,
    SSEDecoder,
    SSEError,
    SSEEvent,
    lb_time,
    notif_error,
    registration_body,
    stream,
)
from lbtwist.client.query import QueryClient, QueryError

NID = "https://localhost:9000/NOTIF:abc123"
JOB = "https://localhost:9000/CREAM000000001"
OWNER = "/DC=org/DC=lbtwist/OU=Development/CN=lbtwist dev user"


# The fake HTTP side.


class BodyTransport:
    """
    What a response body's protocol sees as its transport (a push producer).
    """

    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True
        self.response.finish(Failure(ResponseFailed([Failure(ierror.ConnectionLost())])))

    def abortConnection(self) -> None:
        self.stopProducing()


class FakeResponse:
    """
    An L{IResponse}: a whole body, or (C{stream=True}) one the test sends
    piece by piece with L{send} and ends with L{finish}.
    """

    def __init__(
        self,
        code: int,
        body: bytes | Any = b"",
        *,
        content_type: bytes = b"application/json",
        stream: bool = False,
    ) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.code = code
        self.phrase = b"OK"
        self.headers = Headers({b"Content-Type": [content_type]})
        self.length = len(body)
        self.body = body
        self.stream = stream
        self.protocol: Any = None
        self.transport: BodyTransport | None = None
        self.finished = False

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport = BodyTransport(self)
        protocol.makeConnection(self.transport)
        if not self.stream:
            if self.body:
                protocol.dataReceived(self.body)
            self.finish()

    def send(self, data: bytes | str) -> None:
        assert self.protocol is not None and not self.finished
        self.protocol.dataReceived(data.encode() if isinstance(data, str) else data)

    def finish(self, reason: Failure | None = None) -> None:
        if not self.finished:
            self.finished = True
            self.protocol.connectionLost(reason or Failure(ResponseDone()))


def sse(seq: int, state: str = "Running", jobid: str = JOB, **extra: Any) -> str:
    data = {"seq": seq, "kind": "status", "jobid": jobid, "status": {"jobId": jobid,
            "state": state, "owner": OWNER, **extra}}  # fmt: skip
    return f"id: {seq}\nevent: status\ndata: {json.dumps(data)}\n\n"


class Sent:
    """
    One request the agent was asked for; answer it with L{answer} or L{fail}.
    """

    def __init__(self, method: bytes, url: str, headers: Headers, body: bytes | None) -> None:
        self.method = method.decode()
        self.url = url
        self.headers = headers
        self.body = body
        self.deferred: Deferred[Any] = Deferred()
        parts = urlsplit(url)
        self.path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.base = f"{parts.scheme}://{parts.netloc}"

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode() if values else None

    def json(self) -> Any:
        assert self.body is not None
        return json.loads(self.body)

    def answer(self, response: FakeResponse) -> FakeResponse:
        self.deferred.callback(response)
        return response

    def fail(self, error: Exception) -> None:
        self.deferred.errback(Failure(error))


class FakeAgent:
    """
    An L{IAgent} that records requests; the test answers each. With
    C{routes} (method, path) -> function(Sent) -> FakeResponse, requests are
    answered at once.
    """

    def __init__(self, routes: dict[tuple[str, str], Callable[[Sent], Any]] | None = None) -> None:
        self.sent: list[Sent] = []
        self.routes = routes or {}

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        body = None
        if bodyProducer is not None:
            body = bodyProducer._inputFile.read()
        request = Sent(method, uri.decode(), headers or Headers(), body)
        self.sent.append(request)
        route = self.routes.get((request.method, request.path))
        if route is not None:
            request.answer(route(request))
        return request.deferred

    def last(self) -> Sent:
        return self.sent[-1]


def make_client(
    clock: Clock, routes: dict[tuple[str, str], Callable[[Sent], Any]] | None = None
) -> tuple[NotifyClient, FakeAgent]:
    """
    A L{NotifyClient} whose query client talks to a L{FakeAgent}.
    """
    query = QueryClient(clock, SSL.Context(SSL.TLS_METHOD))
    agent = FakeAgent(routes)
    query.agent = agent  # type: ignore[assignment]
    return NotifyClient(query), agent


def registration(**kw: Any) -> dict[str, Any]:
    data = {
        "id": NID,
        "unique": "abc123",
        "owner": OWNER,
        "conditions": {"jobid": [JOB]},
        "flags": {},
        "valid_until": 1_800_000_000,
        "last_seq": 0,
        "dropped": 0,
    }
    data.update(kw)
    return data


def result_of(testcase: SynchronousTestCase, coroutine: Any) -> Any:
    return testcase.successResultOf(Deferred.fromCoroutine(coroutine))


# The tests.


class NotifIdTests(SynchronousTestCase):
    """
    L&B's notification ids.
    """

    def test_full_id(self) -> None:
        nid = NotifId.parse(NID)
        self.assertEqual((nid.host, nid.port, nid.unique), ("localhost", 9000, "abc123"))
        self.assertEqual(str(nid), NID)
        self.assertEqual(nid.path, "/notif/abc123")
        self.assertEqual(nid.base, "https://localhost:9000")

    def test_endpoint_wins_and_short_forms(self) -> None:
        self.assertEqual(str(NotifId.parse(NID, endpoint="lb.example.org:9555")),
                         "https://lb.example.org:9555/NOTIF:abc123")  # fmt: skip
        self.assertEqual(NotifId.parse("NOTIF:abc123", endpoint="h:1").unique, "abc123")
        self.assertEqual(NotifId.parse("abc123", endpoint="h:1").port, 1)

    def test_ipv6(self) -> None:
        nid = NotifId.parse("https://[::1]:9000/NOTIF:x-y_z")
        self.assertEqual(nid.host, "::1")
        self.assertEqual(str(nid), "https://[::1]:9000/NOTIF:x-y_z")

    def test_malformed(self) -> None:
        for text in (
            "https://localhost:9000/abc",
            "https://localhost:9000/NOTIF:",
            "https://localhost:9000/NOTIF:a/b",
            "https://localhost:9000/NOTIF:a?x=1",
            "https://localhost:99999/NOTIF:a",
            "NOTIF:a b",
            "x" * 200,
        ):
            e = self.assertRaises(QueryError, NotifId.parse, text, endpoint="h:1")
            self.assertNotIn("\n", str(e))
        e = self.assertRaises(QueryError, NotifId.parse, "NOTIF:abc")
        self.assertIn("names no server", str(e))


class FormatTests(SynchronousTestCase):
    """
    Validity as L&B prints it; request bodies; error lines.
    """

    def test_lb_time(self) -> None:
        self.assertEqual(lb_time(1241074758), "'2009-04-30 06:59:18 UTC'")

    def test_body_only_what_is_given(self) -> None:
        self.assertEqual(registration_body(), {})
        body = registration_body(
            jobids=[JOB], owner="self", states=["Running"], flags={"history": True,
            "jdl": False}, validity=60,
        )  # fmt: skip
        self.assertEqual(
            body,
            {
                "conditions": {"jobid": [JOB], "owner": "self", "states": ["Running"]},
                "flags": {"history": True},
                "validity": 60,
            },
        )

    def test_errors(self) -> None:
        self.assertEqual(str(notif_error(404, b"", NID)), f"404 no such notification {NID}")
        self.assertEqual(str(notif_error(410, b"", NID)), f"410 notification {NID} has expired")
        self.assertEqual(
            str(notif_error(400, b'{"message": "unknown state Foo"}', "x")),
            "400 bad request (unknown state Foo)",
        )
        self.assertEqual(notif_error(403, b"", NID).status, 403)
        self.assertEqual(str(notif_error(503, b"{}", "x")), "HTTP 503 for x")


class SSEDecoderTests(SynchronousTestCase):
    """
    The event-stream format.
    """

    def test_events_comments_and_line_ends(self) -> None:
        d = SSEDecoder()
        events = d.feed(b": keep-alive\n\nid: 1\nevent: status\ndata: a\ndata: b\n\n")
        events += d.feed(b"id: 2\r\ndata:c\r\n\r\nid: 3\rdata: d\r\r")
        self.assertEqual(
            events,
            [SSEEvent("1", "status", "a\nb"), SSEEvent("2", "message", "c"),
             SSEEvent("3", "message", "d")],
        )  # fmt: skip
        self.assertEqual(d.comments, 1)

    def test_split_anywhere(self) -> None:
        d = SSEDecoder()
        text = b"id: 7\r\nevent: gap\r\ndata: {}\r\n\r\n"
        out: list[SSEEvent] = []
        for i in range(len(text)):
            out += d.feed(text[i : i + 1])
        self.assertEqual(out, [SSEEvent("7", "gap", "{}")])

    def test_cr_at_chunk_end_then_lf(self) -> None:
        d = SSEDecoder()
        self.assertEqual(d.feed(b"data: x\r"), [])
        self.assertEqual(d.feed(b"\n\r"), [SSEEvent(None, "message", "x")])
        # The LF after that CR ends no second line.
        self.assertEqual(d.feed(b"\n"), [])
        self.assertEqual(d.feed(b"data: y\n\n"), [SSEEvent(None, "message", "y")])

    def test_id_kept_retry_read_empty_ignored(self) -> None:
        d = SSEDecoder()
        events = d.feed(b"id: 5\nretry: 1500\n\ndata: y\n\nid: bad\0id\ndata: z\n\n")
        self.assertEqual(events, [SSEEvent("5", "message", "y"), SSEEvent("5", "message", "z")])
        self.assertEqual(d.retry, 1500)

    def test_bound(self) -> None:
        d = SSEDecoder(max_event_bytes=32)
        d.feed(b"data: " + b"x" * 20 + b"\n")
        self.assertRaises(SSEError, d.feed, b"data: " + b"y" * 20 + b"\n")
        d = SSEDecoder(max_event_bytes=32)
        self.assertRaises(SSEError, d.feed, b"data: " + b"z" * 40)
        self.assertRaises(ValueError, SSEDecoder, 0)

    @given(
        st.lists(st.text(alphabet="abc{}\"' :", max_size=20), min_size=1, max_size=5),
        st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=30),
        st.sampled_from([b"\n", b"\r\n", b"\r"]),
    )
    def test_chunking_changes_nothing(self, datas: list[str], cuts: list[int], eol: bytes) -> None:
        text = b"".join(
            b"id: %d" % i + eol + b"data: " + data.encode() + eol + eol
            for i, data in enumerate(datas)
        )
        whole = SSEDecoder().feed(text)
        d = SSEDecoder()
        pieces: list[SSEEvent] = []
        pos, i = 0, 0
        while pos < len(text):
            step = cuts[i % len(cuts)]
            pieces += d.feed(text[pos : pos + step])
            pos, i = pos + step, i + 1
        self.assertEqual(pieces, whole)
        self.assertEqual([e.data for e in whole], datas)


class NotifyClientTests(SynchronousTestCase):
    """
    The request/answer operations of the contract.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_create(self) -> None:
        client, agent = make_client(
            self.clock, {("POST", "/notif"): lambda r: FakeResponse(201, registration())}
        )
        reg = result_of(self, client.create(["https://localhost:9000"], {"validity": 60}))
        self.assertEqual(reg, Registration.from_json(registration()))
        sent = agent.last()
        self.assertEqual((sent.method, sent.url), ("POST", "https://localhost:9000/notif"))
        self.assertEqual(sent.json(), {"validity": 60})
        self.assertEqual(sent.header("content-type"), "application/json")

    def test_next_candidate_when_refused(self) -> None:
        client, agent = make_client(self.clock)
        d = Deferred.fromCoroutine(client.create(["https://a:1", "https://b:2"], {}))
        agent.sent[0].fail(ierror.ConnectionRefusedError())
        agent.sent[1].answer(FakeResponse(201, registration()))
        self.assertEqual(self.successResultOf(d).id, NID)
        self.assertEqual([s.base for s in agent.sent], ["https://a:1", "https://b:2"])

    def test_all_refused(self) -> None:
        client, agent = make_client(self.clock)
        d = Deferred.fromCoroutine(client.create(["https://a:1"], {}))
        agent.sent[0].fail(ierror.ConnectionRefusedError())
        e = self.failureResultOf(d, QueryError).value
        self.assertIn("cannot connect", str(e))
        self.assertIn("a:1: connection refused", str(e))

    def test_update_drop_show_list_messages(self) -> None:
        page = {"messages": [json.loads(sse(3).split("data: ")[1]), {"seq": 4, "kind": "gap",
                "dropped": 9}], "next": 4, "valid_until": 5, "expired": False}  # fmt: skip
        client, agent = make_client(
            self.clock,
            {
                ("PUT", "/notif/abc123"): lambda r: FakeResponse(200, registration(last_seq=4)),
                ("DELETE", "/notif/abc123"): lambda r: FakeResponse(200, {"dropped": NID}),
                ("GET", "/notif/abc123"): lambda r: FakeResponse(200, registration()),
                ("GET", "/notif"): lambda r: FakeResponse(200, {"registrations": [registration()]}),
                ("GET", "/notif/abc123/messages"): lambda r: FakeResponse(200, page),
            },
        )
        nid = NotifId.parse(NID)
        self.assertEqual(result_of(self, client.update(nid, {})).last_seq, 4)
        self.assertEqual(agent.last().json(), {})
        result_of(self, client.drop(nid))
        self.assertEqual(agent.last().method, "DELETE")
        self.assertEqual(result_of(self, client.show(nid)).unique, "abc123")
        regs = result_of(self, client.registrations(["https://localhost:9000"]))
        self.assertEqual([r.id for r in regs], [NID])
        got = result_of(self, client.messages(nid, 2, 10))
        self.assertEqual(agent.last().query, {"after": "2", "limit": "10"})
        self.assertEqual([m.seq for m in got.messages], [3, 4])
        self.assertEqual(got.messages[1], Notification(seq=4, kind="gap", dropped=9))
        self.assertEqual(got.messages[0].status["state"], "Running")  # type: ignore[index]
        self.assertEqual((got.next, got.valid_until, got.expired), (4, 5, False))

    def test_http_errors(self) -> None:
        for code, text in ((404, "404 no such notification"), (410, "has expired"),
                           (403, "403 not allowed"), (400, "400 bad request")):  # fmt: skip
            client, agent = make_client(
                self.clock, {("PUT", "/notif/abc123"): lambda r, c=code: FakeResponse(c, {})}
            )
            d = Deferred.fromCoroutine(client.update(NotifId.parse(NID), {}))
            self.assertIn(text, str(self.failureResultOf(d, QueryError).value))

    def test_not_json_or_not_a_registration(self) -> None:
        client, agent = make_client(
            self.clock, {("GET", "/notif/abc123"): lambda r: FakeResponse(200, b"<html>")}
        )
        d = Deferred.fromCoroutine(client.show(NotifId.parse(NID)))
        self.assertIn("not JSON", str(self.failureResultOf(d, QueryError).value))
        self.assertRaises(QueryError, Registration.from_json, {"id": NID})
        self.assertRaises(QueryError, Registration.from_json, [])
        self.assertRaises(QueryError, Notification.from_json, {"seq": 1, "kind": "status"})


class Consumer:
    """
    Collects the messages a stream hands over; C{hold=True} answers each with
    a Deferred the test fires (a slow consumer).
    """

    def __init__(self, hold: bool = False) -> None:
        self.messages: list[Notification] = []
        self.hold = hold
        self.pending: list[Deferred[None]] = []

    def __call__(self, message: Notification) -> Deferred[None] | None:
        self.messages.append(message)
        if self.hold:
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            return d
        return None

    @property
    def seqs(self) -> list[int]:
        return [m.seq for m in self.messages]


class StreamTests(SynchronousTestCase):
    """
    L{NotificationStream}: order, exactly once, reconnection, pausing, polling.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client, self.agent = make_client(self.clock)
        self.nid = NotifId.parse(NID)
        self.consumer = Consumer()

    def start(self, after: int = 0, **kw: Any) -> tuple[NotificationStream, Deferred[str]]:
        kw.setdefault("retry", lambda attempt: 2.0**attempt)
        s = NotificationStream(self.client, self.nid, self.consumer, after=after,
                               clock=self.clock, **kw)  # fmt: skip
        return s, s.start()

    def open(self, after: int) -> FakeResponse:
        sent = self.agent.last()
        self.assertEqual(sent.path, "/notif/abc123/stream")
        self.assertEqual(sent.header("last-event-id"), str(after))
        self.assertEqual(sent.query, {"after": str(after)})
        self.assertEqual(sent.header("accept"), "text/event-stream")
        return sent.answer(FakeResponse(200, stream=True, content_type=b"text/event-stream"))

    def test_in_order_then_end(self) -> None:
        s, done = self.start(after=2)
        body = self.open(after=2)
        body.send(": keep-alive\n\n" + sse(3) + sse(4, "Done")[:20])
        self.assertEqual(self.consumer.seqs, [3])
        body.send(sse(4, "Done")[20:] + 'event: end\ndata: {"reason": "expired"}\n\n')
        self.assertEqual(self.consumer.seqs, [3, 4])
        self.assertEqual(self.consumer.messages[1].status["state"], "Done")  # type: ignore[index]
        self.assertEqual(s.last_seq, 4)
        body.finish()
        self.assertEqual(self.successResultOf(done), "expired")

    def test_reconnects_with_last_event_id_exactly_once(self) -> None:
        s, done = self.start()
        body = self.open(after=0)
        body.send(sse(1) + sse(2))
        body.finish(Failure(ResponseFailed([Failure(ierror.ConnectionLost())])))
        self.assertEqual(len(self.agent.sent), 1)
        self.clock.advance(1.0)  # the first retry: 2 ** 0
        # The service restarts: first refused, then up again.
        self.agent.last().fail(ierror.ConnectionRefusedError())
        self.clock.advance(1.9)
        self.assertEqual(len(self.agent.sent), 2)
        self.clock.advance(0.1)
        body = self.open(after=2)
        # A server resending what was read already: skipped.
        body.send(sse(2) + sse(3))
        self.assertEqual(self.consumer.seqs, [1, 2, 3])
        self.assertEqual(s.duplicates, 1)
        self.assertEqual(s.connects, 2)
        s.stop()
        self.assertEqual(self.successResultOf(done), "stopped")
        self.assertTrue(body.transport.stopped)  # type: ignore[union-attr]

    def test_backoff_resets_after_an_answer(self) -> None:
        delays: list[int] = []

        def retry(attempt: int) -> float:
            delays.append(attempt)
            return 1.0

        s, done = self.start(retry=retry)
        self.agent.last().fail(ierror.ConnectionRefusedError())
        self.clock.advance(1)
        self.agent.last().fail(ierror.ConnectionRefusedError())
        self.clock.advance(1)
        self.open(after=0).finish()
        self.clock.advance(1)
        self.assertEqual(delays, [0, 1, 0])

    def test_slow_consumer_pauses_the_stream(self) -> None:
        self.consumer.hold = True
        s, done = self.start()
        body = self.open(after=0)
        body.send(sse(1) + sse(2) + sse(3))
        assert body.transport is not None
        self.assertTrue(body.transport.paused)
        self.assertEqual(self.consumer.seqs, [1])
        self.consumer.pending[0].callback(None)
        self.assertEqual(self.consumer.seqs, [1, 2])
        self.assertEqual(s.last_seq, 1)
        self.consumer.pending[1].callback(None)
        self.consumer.pending[2].callback(None)
        self.assertFalse(body.transport.paused)
        self.assertEqual(s.last_seq, 3)

    def test_lost_while_consumer_busy_resumes_after_last_taken(self) -> None:
        self.consumer.hold = True
        s, done = self.start(retry=lambda n: 1.0)
        body = self.open(after=0)
        body.send(sse(1) + sse(2))
        body.finish(Failure(ResponseFailed([Failure(ierror.ConnectionLost())])))
        self.clock.advance(5)
        self.assertEqual(len(self.agent.sent), 1)  # waits for the consumer first
        self.consumer.pending[0].callback(None)
        self.consumer.pending[1].callback(None)
        self.clock.advance(1)
        self.open(after=2)

    def test_idle_stream_is_dropped_and_opened_again(self) -> None:
        s, done = self.start(idle_timeout=30.0, retry=lambda n: 1.0)
        body = self.open(after=0)
        self.clock.advance(20)
        body.send(": keep-alive\n\n")
        self.clock.advance(29)
        self.assertFalse(body.finished)
        self.clock.advance(1)
        self.assertTrue(body.finished)
        self.clock.advance(1)
        self.open(after=0)

    def test_permanent_errors(self) -> None:
        for code in (404, 403, 400):
            self.agent.sent.clear()
            s, done = self.start()
            self.agent.last().answer(FakeResponse(code, {}))
            self.assertEqual(self.failureResultOf(done, QueryError).value.status, code)

    def test_gone_is_an_end(self) -> None:
        s, done = self.start()
        self.agent.last().answer(FakeResponse(410, {}))
        self.assertEqual(self.successResultOf(done), "expired")

    def test_server_errors_retried(self) -> None:
        s, done = self.start(retry=lambda n: 1.0)
        self.agent.last().answer(FakeResponse(503, {}))
        self.assertNoResult(done)
        self.clock.advance(1)
        self.open(after=0)

    def test_oversize_or_bad_message_fails(self) -> None:
        s, done = self.start(max_message_bytes=64)
        self.open(after=0).send(sse(1))
        self.assertIn("more than 64 bytes", str(self.failureResultOf(done, QueryError).value))
        self.agent.sent.clear()
        s, done = self.start()
        self.open(after=0).send("id: 1\nevent: status\ndata: {not json\n\n")
        self.assertIn("not JSON", str(self.failureResultOf(done, QueryError).value))

    def test_consumer_error_stops(self) -> None:
        def broken(message: Notification) -> None:
            raise BrokenPipeError()

        s = NotificationStream(self.client, self.nid, broken, clock=self.clock)
        done = s.start()
        body = self.open(after=0)
        body.send(sse(1))
        self.failureResultOf(done, BrokenPipeError)
        self.assertTrue(body.finished)

    def test_falls_back_to_polling(self) -> None:
        s, done = self.start(after=5, poll_interval=10.0, page_size=2)
        self.agent.last().answer(FakeResponse(406, {}))
        poll = self.agent.last()
        self.assertEqual((poll.path, poll.query), ("/notif/abc123/messages",
                                                   {"after": "5", "limit": "2"}))  # fmt: skip
        msgs = [json.loads(sse(n).split("data: ")[1]) for n in (6, 7)]
        poll.answer(FakeResponse(200, {"messages": msgs, "next": 7, "expired": False}))
        # A full page: the next one at once.
        poll = self.agent.last()
        self.assertEqual(poll.query["after"], "7")
        poll.answer(FakeResponse(200, {"messages": [], "next": 7, "expired": False}))
        self.assertEqual(len(self.agent.sent), 3)
        self.clock.advance(10)
        poll = self.agent.last()
        poll.answer(FakeResponse(200, {"messages": [], "next": 7, "expired": True}))
        self.assertEqual(self.successResultOf(done), "expired")
        self.assertEqual(self.consumer.seqs, [6, 7])

    def test_non_sse_answer_means_polling(self) -> None:
        s, done = self.start(mode="auto")
        self.agent.last().answer(FakeResponse(200, {"hello": 1}))
        self.assertEqual(self.agent.last().path, "/notif/abc123/messages")
        self.assertEqual(s.mode, "poll")

    def test_poll_mode_retries_refused(self) -> None:
        s, done = self.start(mode="poll", retry=lambda n: 3.0)
        self.agent.last().fail(ierror.ConnectionRefusedError())
        self.clock.advance(3)
        self.assertEqual(len(self.agent.sent), 2)
        self.agent.last().answer(FakeResponse(404, {}))
        self.failureResultOf(done, QueryError)

    def test_stop_while_waiting(self) -> None:
        s, done = self.start(retry=lambda n: 100.0)
        self.agent.last().fail(ierror.ConnectionRefusedError())
        s.stop()
        self.assertEqual(self.successResultOf(done), "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_options(self) -> None:
        self.assertRaises(ValueError, NotificationStream, self.client, self.nid, self.consumer,
                          mode="push")  # fmt: skip
        self.assertRaises(ValueError, NotificationStream, self.client, self.nid, self.consumer,
                          page_size=0)  # fmt: skip


class IteratorTests(SynchronousTestCase):
    """
    C{async for message in stream(...)}.
    """

    def test_async_for(self) -> None:
        clock = Clock()
        client, agent = make_client(clock)
        it = stream(client, NotifId.parse(NID), after=0, clock=clock, max_buffered=2)
        seen: list[int] = []

        async def read() -> str | None:
            async for message in it:
                seen.append(message.seq)
            return it.ended

        done = Deferred.fromCoroutine(read())
        body = agent.last().answer(FakeResponse(200, stream=True,
                                                content_type=b"text/event-stream"))  # fmt: skip
        body.send(sse(1) + sse(2) + sse(3) + sse(4))
        body.send("event: end\ndata: dropped\n\n")
        body.finish()
        self.assertEqual(self.successResultOf(done), "dropped")
        self.assertEqual(seen, [1, 2, 3, 4])

    def test_buffer_bound_pauses(self) -> None:
        clock = Clock()
        client, agent = make_client(clock)
        it = stream(client, NotifId.parse(NID), clock=clock, max_buffered=2)
        first = Deferred.fromCoroutine(it.__anext__())
        body = agent.last().answer(FakeResponse(200, stream=True,
                                                content_type=b"text/event-stream"))  # fmt: skip
        body.send(sse(1) + sse(2) + sse(3) + sse(4))
        self.assertEqual(self.successResultOf(first).seq, 1)
        assert body.transport is not None
        self.assertTrue(body.transport.paused)
        self.assertEqual(len(it._queue), 2)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(it.__anext__())).seq, 2)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(it.__anext__())).seq, 3)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(it.__anext__())).seq, 4)
        self.assertFalse(body.transport.paused)
        it.close()
        nxt = Deferred.fromCoroutine(it.__anext__())
        self.failureResultOf(nxt, StopAsyncIteration)

    def test_error_raised(self) -> None:
        clock = Clock()
        client, agent = make_client(clock)
        it = stream(client, NotifId.parse(NID), clock=clock)
        d = Deferred.fromCoroutine(it.__anext__())
        agent.last().answer(FakeResponse(404, {}))
        self.failureResultOf(d, QueryError)
