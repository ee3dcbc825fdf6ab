# -*- test-case-name: tests.unit.test_notif_web -*-
"""
Tests for L{lbtwist.service.web.notif}: the C{/notif} routes over the memory store,
driven with in-memory requests and an injected identity.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.core.events import parse_event
from lbtwist.core.notif import QueueBounds, ValidityRules
from lbtwist.security.authz import parse_policy
from lbtwist.security.identity import Identity
from lbtwist.service.notify import NotifyService, NotifySettings
from lbtwist.service.web import make_site
from lbtwist.service.web.notif import NotifResource, NotifRoot
from lbtwist.service.web.resources import QueryResource
from lbtwist.testing import MemoryStore
from tests import traces

OWNER = traces.CREAM_USER
STRANGER = "/DC=org/DC=example/O=People/CN=Eve Stranger"
ADMIN = "/DC=org/DC=example/O=People/CN=Ada Admin"
READER = "/DC=org/DC=example/O=People/CN=Rita Reader"
NOW_S = 1710408413 + 3600
JOBID = traces.DIRECT_JOBID


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


class Harness:
    """
    The notification routes in front of the query tree, on a memory store.
    """

    def __init__(
        self,
        *,
        policy: str = "",
        settings: NotifySettings | None = None,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.store = MemoryStore(self.clock, relay=False)
        self.who: Identity | None = Identity(OWNER)
        parsed = parse_policy(policy)
        self.service = NotifyService(
            self.store,
            clock=self.clock,
            policy=parsed,
            super_users=(ADMIN,),
            settings=settings or NotifySettings(),
        )
        self.notif = NotifResource(self.service, clock=self.clock, identify=lambda r: self.who)
        query = QueryResource(
            self.store,
            clock=self.clock,
            policy=parsed,
            super_users=(ADMIN,),
            identify=lambda r: self.who,
        )
        self.root = NotifRoot(query, self.notif)

    def request(
        self,
        method: str,
        target: str,
        body: object = None,
        *,
        as_dn: str | None = OWNER,
        headers: dict[str, str] | None = None,
        not_after: int | None = None,
        finish: bool = True,
    ) -> DummyRequest:
        self.who = Identity(as_dn, not_after=not_after) if as_dn is not None else None
        path, _, _ = target.partition("?")
        req = DummyRequest([seg.encode() for seg in path[1:].split("/")])
        req.method = method.encode()
        req.uri = target.encode()
        req.requestHeaders.setRawHeaders(b"host", [b"lb.example.org:9000"])
        for name, value in (headers or {}).items():
            req.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            req.content = BytesIO(data)
        else:
            req.content = BytesIO(b"")
        self.root.render(req)  # type: ignore[arg-type]
        if finish:
            assert req.finished, f"{method} {target} not answered"
        return req

    def log(self, lines: list[str]) -> None:
        results = _result(self.store.store([(line, parse_event(line)) for line in lines]))
        assert not [r for r in results if isinstance(r, Exception)], results

    def register(self, body: object = None, **kw: Any) -> dict[str, Any]:
        req = self.request("POST", "/notif", body if body is not None else {}, **kw)
        assert req.responseCode == 201, (req.responseCode, req.written)
        return as_json(req)  # type: ignore[no-any-return]


def policy_for(action: str, dn: str) -> str:
    return f'resource "LB" {{ action "{action}" {{ rule permit {{ subject = "{dn}" }} }} }}'


def as_json(req: DummyRequest) -> Any:
    return json.loads(b"".join(req.written))


def code(req: DummyRequest) -> int:
    return int(req.responseCode or 200)


class RegisterTests(SynchronousTestCase):
    def test_register_for_job(self) -> None:
        h = Harness()
        reg = h.register({"conditions": {"jobid": [JOBID]}, "validity": 600})
        self.assertEqual(reg["owner"], OWNER)
        self.assertEqual(reg["id"], f"https://lb.example.org:9000/NOTIF:{reg['unique']}")
        self.assertEqual(reg["conditions"], {"jobid": [JOBID]})
        self.assertEqual(reg["valid_until"], NOW_S + 600)
        self.assertEqual((reg["last_seq"], reg["dropped"]), (0, 0))
        self.assertFalse(any(reg["flags"].values()))

    def test_default_validity_and_maximum(self) -> None:
        h = Harness(settings=NotifySettings(validity=ValidityRules(default=100, maximum=1000)))
        self.assertEqual(h.register()["valid_until"], NOW_S + 100)
        self.assertEqual(h.register({"validity": 10**6})["valid_until"], NOW_S + 1000)

    def test_validity_capped_by_proxy(self) -> None:
        h = Harness()
        reg = h.register({"validity": 3600}, not_after=NOW_S + 60)
        self.assertEqual(reg["valid_until"], NOW_S + 60)

    def test_own_jobs_implied(self) -> None:
        """
        A plain user's registration without job or owner condition is for the user's jobs.
        """
        h = Harness()
        self.assertEqual(h.register()["conditions"], {"owner": OWNER})
        self.assertEqual(
            h.register({"conditions": {"owner": "self"}})["conditions"]["owner"], OWNER
        )
        self.assertEqual(h.register(as_dn=ADMIN)["conditions"], {})

    def test_bad_bodies(self) -> None:
        h = Harness()
        for body, words in [
            (b"{not json", "not JSON"),
            ([1], "JSON object"),
            ({"nope": 1}, "unknown keys nope"),
            ({"conditions": {"colour": "red"}}, "unknown conditions colour"),
            ({"flags": {"loud": True}}, "unknown flags loud"),
            ({"flags": {"history": "yes"}}, "true or false"),
            ({"validity": -5}, "positive"),
            ({"validity": "long"}, "number of seconds"),
            ({"conditions": {"owner": "Jana"}}, "slash-form DN"),
            ({"conditions": {"jobid": []}}, "non-empty"),
        ]:
            req = h.request("POST", "/notif", body)
            self.assertEqual(code(req), 400, body)
            self.assertIn(words, as_json(req)["message"], body)

    def test_expired_proxy_refused(self) -> None:
        h = Harness()
        req = h.request("POST", "/notif", {}, not_after=NOW_S - 1)
        self.assertEqual(code(req), 400)
        self.assertIn("expired", as_json(req)["message"])

    def test_max_per_user(self) -> None:
        h = Harness(settings=NotifySettings(max_per_user=2))
        h.register()
        h.register()
        req = h.request("POST", "/notif", {})
        self.assertEqual(code(req), 403)
        self.assertIn("notify-max-per-user", as_json(req)["message"])
        h.register(as_dn=STRANGER)  # others are not counted against it

    def test_no_certificate(self) -> None:
        h = Harness()
        self.assertEqual(code(h.request("POST", "/notif", {}, as_dn=None)), 403)

    def test_body_too_big(self) -> None:
        h = Harness(settings=NotifySettings(max_body=100))
        self.assertEqual(code(h.request("POST", "/notif", b" " * 100 + b"{}")), 413)
        self.assertEqual(code(h.request("POST", "/notif", b" " * 98 + b"{}")), 201)

    def test_query_tree_still_served(self) -> None:
        h = Harness()
        h.log(traces.cream_done_ok_unpurged())
        req = h.request("GET", "/CREAM812461376")
        self.assertEqual(code(req), 200)
        self.assertEqual(as_json(req)["state"], "Done")

    def test_make_site_hooks_routes(self) -> None:
        h = Harness()
        site = make_site(h.store, clock=h.clock, identify=lambda r: h.who, notify=h.service)
        self.assertIsInstance(site.resource, NotifRoot)


class OperateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(policy=policy_for("READ_ALL", READER))
        self.reg = self.h.register({"conditions": {"jobid": [JOBID]}})
        self.unique = self.reg["unique"]

    def test_get(self) -> None:
        req = self.h.request("GET", f"/notif/{self.unique}")
        self.assertEqual(as_json(req)["id"], self.reg["id"])
        # L&B's id form is a URL of the registration too.
        req = self.h.request("GET", f"/NOTIF:{self.unique}")
        self.assertEqual(as_json(req)["unique"], self.unique)

    def test_unknown(self) -> None:
        self.assertEqual(code(self.h.request("GET", "/notif/nosuch")), 404)

    def test_stranger_sees_nothing(self) -> None:
        for method, target, body in [
            ("GET", f"/notif/{self.unique}", None),
            ("PUT", f"/notif/{self.unique}", {"validity": 10}),
            ("DELETE", f"/notif/{self.unique}", None),
            ("GET", f"/notif/{self.unique}/messages", None),
            ("GET", f"/notif/{self.unique}/stream", None),
        ]:
            req = self.h.request(method, target, body, as_dn=STRANGER)
            self.assertEqual(code(req), 404, (method, target))
            # the very answer an unknown registration gets
            unknown = self.h.request(method, target.replace(self.unique, "nosuch"), body)
            self.assertEqual(
                b"".join(req.written),
                b"".join(unknown.written).replace(b"nosuch", self.unique.encode()),
            )
        listed = as_json(self.h.request("GET", "/notif", as_dn=STRANGER))
        self.assertEqual(listed, {"registrations": []})

    def test_reader_may_look_not_operate(self) -> None:
        self.assertEqual(code(self.h.request("GET", f"/notif/{self.unique}", as_dn=READER)), 200)
        req = self.h.request("DELETE", f"/notif/{self.unique}", as_dn=READER)
        self.assertEqual(code(req), 403)

    def test_refresh(self) -> None:
        self.h.clock.advance(100)
        req = self.h.request("PUT", f"/notif/{self.unique}", {"validity": 500})
        self.assertEqual(code(req), 200)
        self.assertEqual(as_json(req)["valid_until"], NOW_S + 100 + 500)

    def test_change_conditions_and_flags(self) -> None:
        req = self.h.request(
            "PUT",
            f"/notif/{self.unique}",
            {"conditions": {"states": ["Running"]}, "flags": {"terminal_only": True}},
        )
        obj = as_json(req)
        self.assertEqual(obj["conditions"], {"owner": OWNER, "states": ["Running"]})
        self.assertTrue(obj["flags"]["terminal_only"])
        self.assertEqual(obj["valid_until"], self.reg["valid_until"])

    def test_bind_by_super_user(self) -> None:
        req = self.h.request("PUT", f"/notif/{self.unique}", {}, as_dn=ADMIN)
        self.assertEqual(as_json(req)["owner"], ADMIN)
        # the former owner no longer sees it
        self.assertEqual(code(self.h.request("GET", f"/notif/{self.unique}")), 404)

    def test_drop(self) -> None:
        req = self.h.request("DELETE", f"/notif/{self.unique}")
        self.assertEqual(as_json(req), {"dropped": self.reg["id"]})
        self.assertEqual(code(self.h.request("GET", f"/notif/{self.unique}")), 404)

    def test_expired_refuses_change(self) -> None:
        self.h.clock.advance(3 * 3600)
        req = self.h.request("PUT", f"/notif/{self.unique}", {"validity": 10})
        self.assertEqual(code(req), 410)

    def test_method_not_allowed(self) -> None:
        self.assertEqual(code(self.h.request("PATCH", f"/notif/{self.unique}", {})), 405)

    def test_list_formats(self) -> None:
        listed = as_json(self.h.request("GET", "/notif"))
        self.assertEqual([r["unique"] for r in listed["registrations"]], [self.unique])
        text = b"".join(self.h.request("GET", "/notif?format=text").written).decode()
        self.assertIn(f"notification ID: {self.reg['id']}", text)
        self.assertIn(f"({self.reg['valid_until']})", text)
        text2 = self.h.request("GET", "/notif", headers={"accept": "text/plain"})
        self.assertIn(b"notification ID:", b"".join(text2.written))
        html = b"".join(self.h.request("GET", "/notif", headers={"accept": "text/html"}).written)
        self.assertIn(b"<table", html)
        self.assertIn(f'href="/NOTIF:{self.unique}"'.encode(), html)


class MessagesTests(SynchronousTestCase):
    def test_job_states_in_order(self) -> None:
        h = Harness()
        reg = h.register({"conditions": {"jobid": [JOBID]}, "flags": {"state_changes_only": True}})
        h.log(traces.cream_done_ok())
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages?limit=100"))
        states = [m["status"]["cream_state"] for m in got["messages"]]
        self.assertEqual(
            states,
            ["Registered", "Pending", "Idle", "Running", "Really-running", "Done-ok", "Purged"],
        )
        seqs = [m["seq"] for m in got["messages"]]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(got["next"], seqs[-1])
        self.assertFalse(got["expired"])
        self.assertEqual({m["kind"] for m in got["messages"]}, {"status"})
        self.assertEqual({m["jobid"] for m in got["messages"]}, {JOBID})
        self.assertNotIn("jdl", got["messages"][0]["status"])

    def test_after_acknowledges(self) -> None:
        h = Harness()
        reg = h.register({"conditions": {"jobid": [JOBID]}, "flags": {"state_changes_only": True}})
        h.log(traces.cream_done_ok())
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages?after=3&limit=2"))
        self.assertEqual([m["seq"] for m in got["messages"]], [4, 5])
        self.assertEqual(got["next"], 5)
        obj = as_json(h.request("GET", f"/notif/{reg['unique']}"))
        self.assertEqual((obj["acked"], obj["queued"], obj["last_seq"]), (3, 4, 7))
        # without after: from the acknowledged point on
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages"))
        self.assertEqual(got["messages"][0]["seq"], 4)

    def test_after_beyond_the_newest(self) -> None:
        """
        An C{after} past the newest message acknowledges what there is, no more:
        later messages are not lost to it.
        """
        h = Harness()
        reg = h.register({"conditions": {"jobid": [JOBID]}, "flags": {"state_changes_only": True}})
        h.log(traces.cream_done_ok()[:4])
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages?after=1000"))
        self.assertEqual((got["messages"], got["next"]), ([], 2))
        h.log(traces.cream_done_ok()[4:])
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages?after=2"))
        self.assertEqual(got["messages"][0]["seq"], 3)

    def test_bad_parameters(self) -> None:
        h = Harness(settings=NotifySettings(page_messages=50))
        unique = h.register()["unique"]
        for query in ("after=-1", "limit=0", "limit=51", "colour=red", "after=x"):
            req = h.request("GET", f"/notif/{unique}/messages?{query}")
            self.assertEqual(code(req), 400, query)

    def test_history_and_jdl(self) -> None:
        h = Harness()
        reg = h.register(
            {
                "conditions": {"jobid": [JOBID], "states": ["Registered"]},
                "flags": {"history": True, "jdl": True},
            }
        )
        h.log(traces.cream_done_ok()[:3])
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages"))
        first = got["messages"][0]
        self.assertIn("history", first)
        self.assertNotIn("history_upto", first)
        self.assertEqual(
            len(first["history"]),
            first["status"]["event_count"]
            if "event_count" in first["status"]
            else len(first["history"]),
        )
        self.assertGreaterEqual(len(first["history"]), 1)
        self.assertIn("jdl", first)

    def test_expired_flag_and_sweep(self) -> None:
        h = Harness()
        reg = h.register({"conditions": {"jobid": [JOBID]}, "validity": 60})
        h.log(traces.cream_done_ok()[:4])
        h.clock.advance(61)
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages"))
        self.assertTrue(got["expired"])
        self.assertTrue(got["messages"], "messages queued before expiry stay readable")
        self.assertEqual(_result(h.service.sweep()), 1)
        self.assertEqual(code(h.request("GET", f"/notif/{reg['unique']}/messages")), 404)
        self.assertEqual(h.store.backend.notif_tables.regs, {})

    def test_gap_marker(self) -> None:
        h = Harness(settings=NotifySettings(bounds=QueueBounds(max_messages=3)))
        reg = h.register({"conditions": {"jobid": [JOBID]}, "flags": {"state_changes_only": True}})
        h.log(traces.cream_done_ok())
        got = as_json(h.request("GET", f"/notif/{reg['unique']}/messages"))
        kinds = [(m["seq"], m["kind"]) for m in got["messages"]]
        self.assertEqual(kinds, [(4, "gap"), (5, "status"), (6, "status"), (7, "status")])
        self.assertEqual(got["messages"][0]["dropped"], 4)
        self.assertEqual(as_json(h.request("GET", f"/notif/{reg['unique']}"))["dropped"], 4)


class StreamRequest(DummyRequest):
    """
    A request that keeps its push producer (as a transport does) and can play a
    client that stops reading after some writes.
    """

    pause_after: int | None = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.pause_after is not None and b"event: status" in data:
            self.pause_after -= 1
            if self.pause_after <= 0:
                self.pause_after = None
                self.producer.pauseProducing()


class StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(settings=NotifySettings(keepalive=15, page_messages=1000))
        self.reg = self.h.register(
            {"conditions": {"jobid": [JOBID]}, "flags": {"state_changes_only": True}}
        )
        self.unique = self.reg["unique"]
        self.lines = traces.cream_done_ok()

    def open(self, query: str = "", headers: dict[str, str] | None = None) -> StreamRequest:
        target = f"/notif/{self.unique}/stream{query}"
        req = StreamRequest([b"notif", self.unique.encode(), b"stream"])
        req.method = b"GET"
        req.uri = target.encode()
        for name, value in (headers or {}).items():
            req.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
        req.content = BytesIO(b"")
        self.h.who = Identity(OWNER)
        self.h.root.render(req)  # type: ignore[arg-type]
        return req

    def events(self, req: DummyRequest) -> list[tuple[int, str, dict[str, Any]]]:
        out = []
        for block in b"".join(req.written).decode().split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if line and not line.startswith(":")
            )
            if "id" in fields:
                out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
        return out

    def test_headers_and_live_messages(self) -> None:
        req = self.open()
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(
            req.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/event-stream; charset=utf-8"],
        )
        self.assertTrue(req.streaming)
        self.assertFalse(req.finished)
        self.assertEqual(b"".join(req.written), b": keep-alive\n\n")
        self.h.log(self.lines[:4])
        got = self.events(req)
        self.assertEqual([(s, k) for s, k, _ in got], [(1, "status"), (2, "status")])
        self.assertEqual(got[1][2]["status"]["cream_state"], "Pending")
        self.assertEqual(got[1][2]["seq"], 2)
        self.h.log(self.lines[4:])
        self.assertEqual([s for s, _, _ in self.events(req)], list(range(1, 8)))

    def test_resume_with_last_event_id(self) -> None:
        self.h.log(self.lines)
        req = self.open(headers={"last-event-id": "4"})
        got = self.events(req)
        self.assertEqual([s for s, _, _ in got], [5, 6, 7])
        self.assertEqual(got[0][2]["status"]["cream_state"], "Really-running")
        # what it resumed after is acknowledged
        obj = as_json(self.h.request("GET", f"/notif/{self.unique}"))
        self.assertEqual((obj["acked"], obj["queued"]), (4, 3))
        self.assertEqual([s for s, _, _ in self.events(self.open("?after=6"))], [7])

    def test_bad_last_event_id(self) -> None:
        req = self.open(headers={"last-event-id": "x"})
        self.assertEqual(req.responseCode, 400)
        self.assertTrue(req.finished)

    def test_paused_reader_is_not_fed(self) -> None:
        req = self.open()
        req.producer.pauseProducing()
        self.h.log(self.lines)
        self.assertEqual(self.events(req), [])
        req.producer.resumeProducing()
        self.assertEqual([s for s, _, _ in self.events(req)], list(range(1, 8)))

    def test_pause_holds_at_most_a_page(self) -> None:
        self.h.service.settings = NotifySettings(page_messages=2)
        self.h.log(self.lines)
        req = StreamRequest([b"notif", self.unique.encode(), b"stream"])
        req.pause_after = 1
        req.method = b"GET"
        req.uri = f"/notif/{self.unique}/stream".encode()
        req.content = BytesIO(b"")
        self.h.root.render(req)  # type: ignore[arg-type]
        self.assertEqual([s for s, _, _ in self.events(req)], [1, 2])
        self.h.clock.advance(60)  # keep-alive ticks read nothing while paused
        self.assertEqual([s for s, _, _ in self.events(req)], [1, 2])
        req.producer.resumeProducing()
        self.assertEqual([s for s, _, _ in self.events(req)], list(range(1, 8)))

    def test_keepalive(self) -> None:
        req = self.open()
        self.h.clock.advance(15)
        self.assertEqual(b"".join(req.written), b": keep-alive\n\n" * 2)
        self.h.clock.advance(15)
        self.assertEqual(b"".join(req.written).count(b": keep-alive"), 3)

    def test_drop_ends_stream(self) -> None:
        req = self.open()
        self.h.request("DELETE", f"/notif/{self.unique}")
        self.assertTrue(req.finished)
        self.assertTrue(
            b"".join(req.written).endswith(b'event: end\ndata: {"reason": "dropped"}\n\n')
        )
        self.assertEqual(self.h.notif.streams, {})

    def test_expiry_ends_stream_after_messages(self) -> None:
        req = self.open()
        self.h.log(self.lines[:4])
        self.h.clock.advance(3 * 3600)
        self.assertTrue(req.finished)
        written = b"".join(req.written)
        self.assertEqual([s for s, _, _ in self.events(req)], [1, 2])
        self.assertTrue(written.endswith(b'event: end\ndata: {"reason": "expired"}\n\n'))

    def test_expired_refused(self) -> None:
        self.h.clock.advance(3 * 3600)
        req = self.open()
        self.assertEqual(req.responseCode, 410)

    def test_client_gone(self) -> None:
        req = self.open()
        req.processingFailed(Exception("connection lost"))
        self.assertEqual(self.h.notif.streams, {})
        self.h.log(self.lines)  # nothing written to a closed stream
        self.h.clock.advance(60)
