# -*- test-case-name: tests.unit.test_web -*-
"""
Tests for L{lbtwist.service.web}: the query resources over the memory store, driven with
in-memory requests and an injected identity.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.core.events import parse_event
from lbtwist.core.states import compute_status
from lbtwist.core.states.status import DONE_CODE_NAMES, JobStatus, done_code_value, public_dict
from lbtwist.security.authz import parse_policy
from lbtwist.security.identity import Identity
from lbtwist.service.web import (
    ACCESS_LOG_DELAY,
    BufferedLog,
    dev_commands,
    endpoint_port,
    make_site,
)
from lbtwist.service.web.resources import QueryResource, choose_format, split_query
from lbtwist.store.query import unique_of
from lbtwist.testing import MemoryStore
from tests import traces
from tests.logcapture import capture_log
from tests.unit import test_states

OWNER = traces.CREAM_USER
WMS_OWNER = traces.WMS_USER
STRANGER = "/DC=org/DC=example/O=People/CN=Eve Stranger"
ADMIN = "/DC=org/DC=example/O=People/CN=Ada Admin"
NOW_S = 1710408413 + 3600  # an hour after the traces' base date
DIRECT_UNIQUE = "CREAM812461376"  # traces.cream_done_ok_unpurged()
DIRECT_JOBID = f"https://{traces.CE_HOST}:9000/{DIRECT_UNIQUE}"
ABORTED_JOBID = f"https://{traces.CE_HOST}:9000/CREAM812461379"  # traces.cream_aborted()
#: The internal fields of a status at their defaults (what the public JSON reads back as).
PUBLIC_DEFAULTS: dict[str, Any] = {
    "machine": None,
    "last_key": None,
    "event_count": 0,
    "branch_wm": None,
}


def store_with(*line_lists: list[str]) -> MemoryStore:
    store = MemoryStore(Clock())
    for lines in line_lists:
        items = [(line, parse_event(line)) for line in lines]
        results = store.store(items)
        results.addCallback(lambda r: [x for x in r if isinstance(x, Exception)])
        assert not _result(results)
    return store


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


class Harness:
    """
    The resource with a settable caller.
    """

    def __init__(self, store: Any, *, policy: str = "", super_users: tuple[str, ...] = ()):
        self.who: Identity | None = Identity(OWNER)
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.resource = QueryResource(
            store,
            clock=self.clock,
            policy=parse_policy(policy),
            super_users=super_users,
            identify=lambda request: self.who,
        )

    def get(
        self, target: str, *, as_dn: str | None = OWNER, accept: str | None = None
    ) -> DummyRequest:
        self.who = Identity(as_dn) if as_dn is not None else None
        path, _, _ = target.partition("?")
        req = DummyRequest([seg.encode() for seg in path[1:].split("/")])
        req.uri = target.encode()
        if accept is not None:
            req.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
        self.resource.render(req)  # type: ignore[arg-type]
        assert req.finished, f"{target} not answered"
        return req


def body(req: DummyRequest) -> bytes:
    return b"".join(req.written)


def as_json(req: DummyRequest) -> Any:
    return json.loads(body(req))


def ctype(req: DummyRequest) -> bytes:
    values = req.responseHeaders.getRawHeaders(b"content-type")
    assert values is not None
    return values[0]


class StatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = store_with(traces.cream_done_ok_unpurged(), traces.wms_on_cream())
        self.h = Harness(self.store, super_users=(ADMIN,))
        self.unique = DIRECT_UNIQUE

    def test_owner_gets_status(self) -> None:
        req = self.h.get(f"/{self.unique}")
        self.assertEqual(req.responseCode, 200)
        self.assertEqual(ctype(req), b"application/json; charset=utf-8")
        data = as_json(req)
        self.assertEqual(data["state"], "Done")
        self.assertEqual(data["cream_state"], "Done-ok")
        self.assertEqual(data["jobId"], DIRECT_JOBID)
        self.assertEqual(data["owner"], OWNER)
        self.assertEqual(data["done_code"], "OK")
        for internal in ("machine", "last_key", "event_count", "branch_wm"):
            self.assertNotIn(internal, data)
        # The JSON is the status' public part: it reads back into a status equal
        # to the stored one but for the internal fields.
        stored = _result(self.store.status(DIRECT_JOBID))
        self.assertEqual(JobStatus.from_json_dict(data), attrs.evolve(stored, **PUBLIC_DEFAULTS))
        self.assertEqual(data, public_dict(stored))

    def test_owner_dn_compared_as_lb_does(self) -> None:
        req = self.h.get(f"/{self.unique}", as_dn=OWNER.upper())
        self.assertEqual(req.responseCode, 200)

    def test_stranger_forbidden(self) -> None:
        req = self.h.get(f"/{self.unique}", as_dn=STRANGER)
        self.assertEqual(req.responseCode, 403)
        self.assertEqual(as_json(req)["error"], 403)
        self.assertIn(STRANGER, as_json(req)["message"])

    def test_no_identity_forbidden(self) -> None:
        req = self.h.get(f"/{self.unique}", as_dn=None)
        self.assertEqual(req.responseCode, 403)

    def test_super_user_reads(self) -> None:
        self.assertEqual(self.h.get(f"/{self.unique}", as_dn=ADMIN).responseCode, 200)

    def test_read_all_policy(self) -> None:
        h = Harness(
            self.store,
            policy=f'resource "LB" {{ action "READ_ALL" {{ rule permit {{ subject = "{STRANGER}" }} }} }}',
        )
        self.assertEqual(h.get(f"/{self.unique}", as_dn=STRANGER).responseCode, 200)

    def test_unknown_job(self) -> None:
        req = self.h.get("/CREAM000000001")
        self.assertEqual(req.responseCode, 404)
        self.assertEqual(as_json(req), {"error": 404, "message": "no job 'CREAM000000001'"})

    def test_bad_unique(self) -> None:
        self.assertEqual(self.h.get("/a%20b").responseCode, 404)
        self.assertEqual(self.h.get("/x/y/z").responseCode, 404)

    def test_cream_id_of_wms_job(self) -> None:
        """
        The CREAM id of a mapped WMS job answers for the gLite job.
        """
        req = self.h.get(f"/{traces.WMS_CREAM_ID}", as_dn=WMS_OWNER)
        self.assertEqual(req.responseCode, 200)
        data = as_json(req)
        self.assertEqual(data["jobId"], traces.WMS_JOBID)
        self.assertEqual(data["glite_jobid"], traces.WMS_JOBID)
        self.assertEqual(data["state"], "Done")
        gl = self.h.get(f"/{unique_of(traces.WMS_JOBID)}", as_dn=WMS_OWNER)
        self.assertEqual(as_json(gl), data)

    def test_events(self) -> None:
        req = self.h.get(f"/{self.unique}/events")
        self.assertEqual(req.responseCode, 200)
        events = as_json(req)
        lines = traces.cream_done_ok_unpurged()
        self.assertEqual(len(events), len(lines))
        first = events[0]
        self.assertEqual(first["type"], "RegJob")
        self.assertEqual(first["jobid"], DIRECT_JOBID)
        self.assertEqual(first["source"], "CREAMInterface")
        self.assertEqual(first["date"], "2024-03-14T09:26:53.001000Z")
        for key in ("host", "src_instance", "seqcode", "user", "priority", "level", "arrived"):
            self.assertIn(key, first)
        self.assertEqual(first["jobtype"], "CREAM")
        self.assertNotIn("generated", first)
        history = self.h.get(f"/{self.unique}?flags=history")
        self.assertEqual(as_json(history), events)

    def test_generated_events_marked(self) -> None:
        events = as_json(self.h.get(f"/{traces.WMS_CREAM_ID}/events", as_dn=WMS_OWNER))
        generated = [e for e in events if e.get("generated")]
        self.assertTrue(generated)
        self.assertEqual({e["src_instance"] for e in generated}, {"lbtwist-proxy"})

    def test_events_forbidden_to_stranger(self) -> None:
        self.assertEqual(self.h.get(f"/{self.unique}/events", as_dn=STRANGER).responseCode, 403)

    def test_text(self) -> None:
        req = self.h.get(f"/{self.unique}?text")
        self.assertEqual(ctype(req), b"text/plain; charset=utf-8")
        lines = body(req).decode().splitlines()
        self.assertIn("done_code=OK", lines)
        for internal in ("machine", "last_key", "event_count", "branch_wm"):
            self.assertFalse([ln for ln in lines if ln.startswith(internal + "=")])
        self.assertIn("state=Done", lines)
        self.assertIn("cream_state=Done-ok", lines)
        self.assertIn(f"jobId={DIRECT_JOBID}", lines)
        ev = self.h.get(f"/{self.unique}/events", accept="text/plain")
        self.assertEqual(
            body(ev).decode().splitlines(), [line for line in traces.cream_done_ok_unpurged()]
        )

    def test_html(self) -> None:
        req = self.h.get(f"/{self.unique}", accept="text/html,application/xhtml+xml,*/*;q=0.8")
        self.assertEqual(ctype(req), b"text/html; charset=utf-8")
        page = body(req).decode()
        self.assertIn("<!DOCTYPE html>", page)
        self.assertIn(">Done<", page)
        self.assertIn("CREAM: Done-ok", page)
        self.assertIn('<th>done_code</th><td class="v">OK</td>', page)
        self.assertNotIn("event_count", page)
        self.assertIn("CREAMStatus", page)
        self.assertNotIn("http://", page.replace(DIRECT_JOBID, ""))
        self.assertNotIn("<script", page)
        csp = req.responseHeaders.getRawHeaders(b"content-security-policy")
        self.assertEqual(csp, [b"default-src 'none'; style-src 'unsafe-inline'"])

    def test_html_event_fields_one_per_line(self) -> None:
        """
        The fields column of the event history shows each field on its own line
        (a C{<br />} between them), never a literal backslash-n.
        """
        page = body(self.h.get(f"/{self.unique}?format=html")).decode()
        self.assertNotIn("\\n", page)
        self.assertRegex(page, r"new_state=[A-Z_-]+<br />")
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
            if len(cells) == 6:
                for line in cells[5].split("<br />"):
                    self.assertRegex(line, r"^[A-Za-z_]+=")

    def test_html_escapes(self) -> None:
        evil = "<script>alert(1)</script>&"
        tagged = traces.ulm_line(
            "UserTag",
            date=traces.date_text(500),
            host=traces.CE_HOST,
            source="CREAMExecutor",
            jobid=DIRECT_JOBID,
            seqcode="no_seqcodes_with_cream_execute_99_0",
            name="note",
            value=evil,
        )
        store = store_with(traces.cream_done_ok_unpurged() + [tagged])
        page = body(Harness(store).get(f"/{self.unique}?format=html")).decode()
        self.assertNotIn("<script>", page)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;&amp;", page)

    def test_format_unknown(self) -> None:
        req = self.h.get(f"/{self.unique}?format=xml")
        self.assertEqual(req.responseCode, 400)
        self.assertEqual(as_json(req)["error"], 400)

    def test_unknown_parameter(self) -> None:
        self.assertEqual(self.h.get(f"/{self.unique}?bogus=1").responseCode, 400)
        self.assertEqual(self.h.get(f"/{self.unique}?flags=nope").responseCode, 400)

    def test_uri_too_long(self) -> None:
        req = self.h.get(f"/{self.unique}?flags=" + "x" * 9000)
        self.assertEqual(req.responseCode, 414)
        self.assertEqual(as_json(req)["error"], 414)

    def test_head(self) -> None:
        self.h.who = Identity(OWNER)
        req = DummyRequest([self.unique.encode()])
        req.method = b"HEAD"
        req.uri = f"/{self.unique}".encode()
        self.h.resource.render(req)  # type: ignore[arg-type]
        self.assertEqual(req.responseCode, 200)


class PublicDictTests(SynchronousTestCase):
    """
    L{public_dict}: the one public view of a status (web JSON, text, HTML, CLI).
    """

    def test_strips_internal_fields(self) -> None:
        status = JobStatus(
            state="Done",
            jobId=DIRECT_JOBID,
            machine="cream",
            last_key=[1, 2],
            event_count=7,
            branch_wm=3,
        )
        data = public_dict(status)
        self.assertEqual(data["state"], "Done")
        for internal in PUBLIC_DEFAULTS:
            self.assertNotIn(internal, data)
        # The status' own dict keeps them (the stores persist it).
        self.assertEqual(status.to_json_dict()["event_count"], 7)
        # A dict works too and is not changed.
        full = status.to_json_dict()
        self.assertEqual(public_dict(full), data)
        self.assertIn("machine", full)

    def test_done_codes_by_name(self) -> None:
        for code, name in DONE_CODE_NAMES.items():
            status = JobStatus(state="Done", done_code=code, cream_done_code=code)
            data = public_dict(status)
            self.assertEqual((data["done_code"], data["cream_done_code"]), (name, name))
            back = JobStatus.from_json_dict(json.loads(json.dumps(data)))
            self.assertEqual((back.done_code, back.cream_done_code), (code, code))
        self.assertIsNone(public_dict(JobStatus())["done_code"])
        self.assertEqual(public_dict(JobStatus(done_code=9))["done_code"], 9)
        self.assertEqual(done_code_value("failed"), 1)
        self.assertRaises(ValueError, done_code_value, "BOGUS")

    def test_cli_json(self) -> None:
        """
        C{lbtwist status --json} and C{lbtwist replay --json} print the public view.
        """
        from lbtwist.cli.replay import status_json

        status = JobStatus(state="Done", done_code=1, machine="cream", event_count=3)
        self.assertEqual(json.loads(status_json(status)), public_dict(status))
        self.assertEqual(json.loads(status_json(status))["done_code"], "FAILED")

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(["Submitted", "Running", "Done", "Aborted"]),
        st.one_of(st.none(), st.integers(0, 2)),
        st.integers(0, 10**6),
        st.one_of(st.none(), st.lists(st.integers(0, 100), max_size=4)),
    )
    def test_public_round_trip(
        self, state: str, done: int | None, count: int, key: list[int] | None
    ) -> None:
        """
        The public JSON reads back into the status without its internal fields.
        """
        status = JobStatus(
            state=state, done_code=done, event_count=count, last_key=key, machine="glite"
        )
        back = JobStatus.from_json_dict(json.loads(json.dumps(public_dict(status))))
        self.assertEqual(back, attrs.evolve(status, **PUBLIC_DEFAULTS))


class PurgedStore:
    """
    A store double whose one job was purged.
    """

    def find_status(self, unique: str) -> Any:
        jobid = "https://ce.example.org:9000/" + unique
        return succeed((jobid, JobStatus(state="Purged", jobId=jobid, owner=OWNER)))


class FailingStore(PurgedStore):
    def find_status(self, unique: str) -> Any:
        raise RuntimeError("disk on fire")


class ErrorTests(SynchronousTestCase):
    def test_purged_is_gone(self) -> None:
        req = Harness(PurgedStore()).get("/CREAM123")
        self.assertEqual(req.responseCode, 410)
        self.assertEqual(as_json(req)["error"], 410)

    def test_internal_error(self) -> None:
        req = Harness(FailingStore()).get("/CREAM123")
        self.assertEqual(req.responseCode, 500)
        self.assertEqual(as_json(req), {"error": 500, "message": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_gone_before_answer(self) -> None:
        """
        A request whose connection is lost while the store works is not answered.
        """
        from twisted.internet.defer import Deferred

        pending: Deferred[tuple[str, JobStatus] | None] = Deferred()

        class Slow(PurgedStore):
            def find_status(self, unique: str) -> Any:
                return pending

        h = Harness(Slow())
        req = DummyRequest([b"CREAM1"])
        req.uri = b"/CREAM1"
        h.resource.render(req)  # type: ignore[arg-type]
        req.processingFailed(Exception("lost"))  # fires notifyFinish's errback
        pending.callback(None)
        self.assertEqual(req.written, [])


class ListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = store_with(
            traces.cream_done_ok_unpurged(), traces.cream_aborted(), traces.wms_on_cream()
        )
        self.h = Harness(self.store, super_users=(ADMIN,))

    def test_own_jobs(self) -> None:
        req = self.h.get("/")
        self.assertEqual(req.responseCode, 200)
        data = as_json(req)
        self.assertEqual(data["cursor"], None)
        self.assertEqual({j["owner"] for j in data["jobs"]}, {OWNER})
        self.assertEqual(
            sorted(j["jobId"] for j in data["jobs"]), sorted([DIRECT_JOBID, ABORTED_JOBID])
        )
        self.assertEqual(
            set(data["jobs"][0]), {"jobId", "owner", "state", "jobtype", "lastUpdateTime"}
        )

    def test_stranger_sees_nothing(self) -> None:
        self.assertEqual(as_json(self.h.get("/", as_dn=STRANGER))["jobs"], [])

    def test_other_owner_forbidden(self) -> None:
        req = self.h.get(f"/?owner={WMS_OWNER}")
        self.assertEqual(req.responseCode, 403)
        req = self.h.get("/?query=owner%3D" + WMS_OWNER)
        self.assertEqual(req.responseCode, 403)

    def test_super_user_lists_everyone(self) -> None:
        data = as_json(self.h.get("/?owner=*", as_dn=ADMIN))
        self.assertEqual({j["owner"] for j in data["jobs"]}, {OWNER, WMS_OWNER})
        data = as_json(self.h.get(f"/?owner={WMS_OWNER.lower()}", as_dn=ADMIN))
        self.assertEqual([j["jobId"] for j in data["jobs"]], [traces.WMS_JOBID])

    def test_query_conditions(self) -> None:
        q = "/?owner=*&query=status%3Ddone|%3Drunning%26jobtype%3Dcream"
        data = as_json(self.h.get(q, as_dn=ADMIN))
        self.assertEqual([j["jobId"] for j in data["jobs"]], [DIRECT_JOBID])
        data = as_json(self.h.get("/?owner=*&state=aborted,cleared", as_dn=ADMIN))
        self.assertEqual([j["jobId"] for j in data["jobs"]], [ABORTED_JOBID])

    def test_unencoded_ampersand(self) -> None:
        """
        C{&} inside C{?query=} left unencoded still reads as more conditions.
        """
        q = "/?owner=*&query=status=done&lastupdatetime>0&exit_code=0"
        data = as_json(self.h.get(q, as_dn=ADMIN))
        self.assertEqual(
            sorted(j["jobId"] for j in data["jobs"]), sorted([DIRECT_JOBID, traces.WMS_JOBID])
        )
        data = as_json(self.h.get("/?owner=*&query=status=done&exit_code>0", as_dn=ADMIN))
        self.assertEqual(data["jobs"], [])

    def test_since_until(self) -> None:
        base = 1710408413
        data = as_json(self.h.get(f"/?owner=*&since={base}&until={base + 86400}", as_dn=ADMIN))
        self.assertEqual(len(data["jobs"]), 3)
        data = as_json(self.h.get(f"/?owner=*&until={base}", as_dn=ADMIN))
        self.assertEqual(data["jobs"], [])
        data = as_json(self.h.get("/?owner=*&since=last60", as_dn=ADMIN))
        self.assertEqual(data["jobs"], [])

    def test_bad_queries(self) -> None:
        for q in (
            "/?query=colour%3Dred",
            "/?query=status%3Dsleeping",
            "/?query=status",
            "/?limit=0",
            "/?limit=1001",
            "/?limit=ten",
            "/?cursor=!!!",
            "/?since=yesterday",
            "/?nonsense",
            "/?query=" + "%26".join(["status%3Ddone"] * 33),
        ):
            req = self.h.get(q)
            self.assertEqual(req.responseCode, 400, q)
            self.assertEqual(as_json(req)["error"], 400, q)

    def test_paging(self) -> None:
        pages = [as_json(self.h.get("/?owner=*&limit=2", as_dn=ADMIN))]
        self.assertEqual(len(pages[0]["jobs"]), 2)
        self.assertIsNotNone(pages[0]["cursor"])
        pages.append(
            as_json(self.h.get(f"/?owner=*&limit=2&cursor={pages[0]['cursor']}", as_dn=ADMIN))
        )
        self.assertEqual(len(pages[1]["jobs"]), 1)
        self.assertIsNone(pages[1]["cursor"])
        every = as_json(self.h.get("/?owner=*", as_dn=ADMIN))["jobs"]
        self.assertEqual(pages[0]["jobs"] + pages[1]["jobs"], every)
        times = [j["lastUpdateTime"] for j in every]
        self.assertEqual(times, sorted(times, reverse=True))

    def test_text_and_html(self) -> None:
        text = body(self.h.get("/?owner=*&limit=1&text", as_dn=ADMIN)).decode().splitlines()
        self.assertEqual(len(text), 2)
        self.assertTrue(text[0].startswith("jobId="))
        self.assertTrue(text[1].startswith("cursor="))
        page = body(self.h.get("/?owner=*&limit=1", as_dn=ADMIN, accept="text/html")).decode()
        self.assertIn('<table class="jobs">', page)
        self.assertIn('href="/?owner=%2A&amp;limit=1&amp;cursor=', page)
        self.assertRegex(page, r'<a href="/[A-Za-z0-9_-]+">https://')


class FormatTests(SynchronousTestCase):
    def test_choose_format(self) -> None:
        self.assertEqual(choose_format([], ""), "json")
        self.assertEqual(choose_format([], "*/*"), "json")
        self.assertEqual(choose_format([], "text/html,*/*;q=0.8"), "html")
        self.assertEqual(choose_format([], "text/plain;q=0.5, application/json"), "json")
        self.assertEqual(choose_format([("text", "")], "text/html"), "text")
        self.assertEqual(choose_format([("format", "html")], ""), "html")

    def test_split_query(self) -> None:
        self.assertEqual(split_query(b"a=1&b=x%3Dy+z&&c"), [("a", "1"), ("b", "x=y z"), ("c", "")])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_hostile_query_strings(self, raw: bytes) -> None:
        """
        Whatever the query string, the answer is a JSON error or a page, never a crash.
        """
        h = Harness(store_with(traces.cream_done_ok_unpurged()))
        for path in ([b""], [traces.DIRECT_CREAM_ID.encode()]):
            req = DummyRequest(path)
            req.uri = b"/" + path[0] + b"?" + raw
            h.resource.render(req)  # type: ignore[arg-type]
            self.assertTrue(req.finished)
            self.assertIn(req.responseCode, (200, 400, 403, 404))
            if req.responseCode != 200:
                self.assertEqual(as_json(req)["error"], req.responseCode)


class SiteTests(SynchronousTestCase):
    def test_make_site(self) -> None:
        clock = Clock()
        seen: list[Request] = []

        def identify(request: Request) -> Identity | None:
            seen.append(request)
            return Identity(OWNER)

        site = make_site(store_with(), clock=clock, identify=identify)
        self.assertIsInstance(site.resource, QueryResource)
        self.assertFalse(site.displayTracebacks)
        self.assertIs(site.resource.identify, identify)  # type: ignore[attr-defined]

    def test_access_log_file(self) -> None:
        """
        With C{access_log}, each request is a line of that file (rotated), not an
        event of the global log.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        path = self.mktemp()
        events = capture_log(self)
        clock = Clock()
        site = make_site(store_with(), clock=clock, identify=lambda r: None, access_log=path)
        site.doStart()
        self.addCleanup(site.doStop)
        channel = site.buildProtocol(None)
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /CREAM1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertIn(b"403", transport.value().split(b"\r\n")[0])
        # Written in batches: a second later at most.
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "")
        clock.advance(ACCESS_LOG_DELAY)
        site.doStop()
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertIn('"GET /CREAM1 HTTP/1.1" 403', lines[0])
        self.assertFalse([e for e in events if "GET /CREAM1" in str(e.get("log_io", ""))])
        channel.connectionLost(Failure(ConnectionDone()))

    def test_buffered_log(self) -> None:
        """
        L{BufferedLog} writes waiting lines once, after its delay, when its limit is
        reached, or on close.
        """
        clock = Clock()
        written: list[str] = []
        closed: list[bool] = []

        class File:
            def write(self, data: str) -> None:
                written.append(data)

            def close(self) -> None:
                closed.append(True)

        buffered = BufferedLog(File(), clock, delay=1.0, limit=10)
        buffered.write("a\n")
        buffered.write("b\n")
        self.assertEqual(written, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(1.0)
        self.assertEqual(written, ["a\nb\n"])
        self.assertEqual(clock.getDelayedCalls(), [])
        buffered.write("0123\n")
        buffered.write("4567\n")  # 10 characters: written at once
        self.assertEqual(written, ["a\nb\n", "0123\n4567\n"])
        self.assertEqual(clock.getDelayedCalls(), [])
        buffered.write("c\n")
        buffered.close()
        self.assertEqual(written[-1], "c\n")
        self.assertEqual(closed, [True])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(5)
        self.assertEqual(len(written), 3)

    def test_endpoint_port(self) -> None:
        """
        The port the development commands name, from the query endpoint description.
        """
        table = [
            ("ssl:9000", 9000),
            ("tcp:9010", 9010),
            ("tcp:port=9020:interface=\\:\\:1", 9020),
            ("tcp:interface=127.0.0.1:9030", 9030),
            ("unix:/run/q.sock", 9000),
        ]
        self.assertEqual([endpoint_port(e) for e, _ in table], [p for _, p in table])

    def test_dev_commands(self) -> None:
        class PKI:
            user_proxy = "/s/devcerts/user/x509up"
            ca_dir = "/s/devcerts/certificates"

        lines = dev_commands(PKI(), 9000)
        self.assertEqual(
            lines[0],
            "X509_USER_PROXY=/s/devcerts/user/x509up X509_CERT_DIR=/s/devcerts/certificates "
            "lbtwist status https://localhost:9000/<unique>",
        )
        self.assertIn("curl --cert /s/devcerts/user/x509up --key /s/devcerts/user/x509up", lines[1])


class StatusJsonTests(SynchronousTestCase):
    """
    L{render.status_json}, the generated writer of status answers, gives the same
    bytes as L{render.to_json} of L{render.status_dict}.
    """

    def check(self, status: JobStatus) -> None:
        from lbtwist.service.web import render

        self.assertEqual(render.status_json(status), render.to_json(render.status_dict(status)))

    def test_all_traces(self) -> None:
        for _name, lines in traces.iter_all():
            status = compute_status((ev, n) for n, ev in enumerate(traces.parse_lines(lines)))
            status.acl.append({"z": "1", "a": "\u00e9\n\"'"})
            status.user_fqans.append("/vo/\u2603")
            status.failure_reasons.append("tab\there")
            self.check(status)
        self.check(JobStatus())

    @settings(max_examples=200, deadline=None)
    @given(test_states.statuses)
    def test_random(self, status: JobStatus) -> None:
        self.check(status)

    def test_odd_types(self) -> None:
        """
        Values of unexpected types give the same bytes too (or the same error).
        """
        from lbtwist.service.web import render

        for status in (
            JobStatus(exit_code=True),  # type: ignore[arg-type]
            JobStatus(reason=3),  # type: ignore[arg-type]
            JobStatus(suspended=1),  # type: ignore[arg-type]
            JobStatus(children_num=2.5),  # type: ignore[arg-type]
            JobStatus(done_code=True, cream_done_code="OK"),  # type: ignore[arg-type]
            JobStatus(done_code=2, cream_done_code=9),
            JobStatus(user_tags=[("a", "b")]),  # type: ignore[arg-type]
            JobStatus(acl=[[("a", "b")]]),  # type: ignore[list-item]
            JobStatus(failure_reasons=("x", 1)),  # type: ignore[arg-type]
            JobStatus(jobId=["nested", {"k": None}]),  # type: ignore[arg-type]
            JobStatus(cpuTime=float("nan")),  # type: ignore[arg-type]
        ):
            self.check(status)
        for status in (
            JobStatus(reason=object()),  # type: ignore[arg-type]
            JobStatus(lastUpdateTime="x"),  # type: ignore[arg-type]
            JobStatus(stateEnterTimes=[1]),  # type: ignore[arg-type]
        ):
            try:
                expected: Any = render.to_json(render.status_dict(status))
            except Exception as e:
                expected = type(e)
            try:
                got: Any = render.status_json(status)
            except Exception as e:
                got = type(e)
            self.assertEqual(got, expected)


#: Events of the long job of L{PagingTests} (measured: a 7 MB page before paging).
LONG_EVENTS = 30_000
LONG_UNIQUE = "CREAM900000001"
LONG_JOBID = f"https://{traces.CE_HOST}:9000/{LONG_UNIQUE}"
_long: list[MemoryStore] = []


def long_job_store() -> MemoryStore:
    """
    A store holding one direct CREAM job of L{LONG_EVENTS} events (built once).
    """
    if not _long:
        job = traces._Direct(LONG_JOBID, LONG_UNIQUE)
        job.start()
        while len(job.lines) < LONG_EVENTS:
            job.store("CMDSTART", "START")
        store = MemoryStore(Clock())
        lines = job.lines[:LONG_EVENTS]
        for i in range(0, len(lines), 5000):
            batch = [(line, parse_event(line)) for line in lines[i : i + 5000]]
            assert all(not isinstance(r, Exception) for r in _result(store.store(batch)))
        _long.append(store)
    return _long[0]


class CountingStore:
    """
    A store that records the history reads asked of it and refuses full loads.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.ranges: list[tuple[int, int, int]] = []

    def find_status(self, unique: str) -> Any:
        return self.store.find_status(unique)

    def events(self, jobid: str) -> Any:
        raise AssertionError("the whole history was loaded")

    def events_range(self, jobid: str, after: int, limit: int) -> Any:
        d = self.store.events_range(jobid, after, limit)
        d.addCallback(lambda got: self.ranges.append((after, limit, len(got))) or got)
        return d


class PagingTests(SynchronousTestCase):
    """
    Long histories are paged: the store is asked for one page (+1 event), the page
    holds at most C{page_events} events and links to the next.
    """

    def setUp(self) -> None:
        self.store = CountingStore(long_job_store())
        self.h = Harness(self.store)

    def test_html_page_bounded(self) -> None:
        """
        The job page of a 30,000-event job holds 500 event rows, the store was asked
        for 501 events, and the page links to the next events.
        """
        status = as_json(self.h.get(f"/{LONG_UNIQUE}"))
        self.assertEqual(status["jobId"], LONG_JOBID)
        self.assertEqual(self.store.ranges, [])
        req = self.h.get(f"/{LONG_UNIQUE}", accept="text/html")
        self.assertEqual(req.responseCode, 200)
        page = body(req).decode()
        self.assertEqual(page.count("<tr><td>") + page.count('<tr class="generated"><td>'), 500)
        self.assertEqual(self.store.ranges, [(0, 501, 501)])
        self.assertIn("Events 1&#8211;500 by arrival, more follow", page)
        self.assertIn('<a href="?events_from=501">next events</a>', page)
        self.assertNotIn("first events", page)
        self.assertLess(len(page), 300_000)

    def test_html_following_pages(self) -> None:
        req = self.h.get(f"/{LONG_UNIQUE}?events_from=501", accept="text/html")
        page = body(req).decode()
        self.assertIn("Events 501&#8211;1000 by arrival, more follow", page)
        self.assertIn('<a href="?events_from=1001">next events</a>', page)
        self.assertIn('<a href="?events_from=1">first events</a>', page)
        last = self.h.get(f"/{LONG_UNIQUE}/events?events_from=29801&html")
        page = body(last).decode()
        self.assertIn("Events 29801&#8211;30000 by arrival</h2>", page)
        self.assertNotIn("next events", page)
        self.assertEqual(self.store.ranges, [(500, 501, 501), (29800, 501, 200)])

    def test_json_pages_cover_history(self) -> None:
        """
        Following C{next_events_from} through the JSON pages gives every event once;
        no page holds more than 500 events or reads more than 501.
        """
        seen = 0
        target = f"/{LONG_UNIQUE}/events"
        while True:
            data = as_json(self.h.get(target))
            self.assertLessEqual(len(data["events"]), 500)
            self.assertEqual(data["events_from"], seen + 1)
            seen += len(data["events"])
            if data["next_events_from"] is None:
                break
            target = f"/{LONG_UNIQUE}/events?events_from={data['next_events_from']}"
        self.assertEqual(seen, LONG_EVENTS)
        self.assertEqual(len(self.store.ranges), LONG_EVENTS // 500)
        self.assertEqual({limit for _, limit, _ in self.store.ranges}, {501})

    def test_text_pages(self) -> None:
        text = body(self.h.get(f"/{LONG_UNIQUE}/events?text")).decode()
        lines = text.splitlines()
        self.assertEqual(len(lines), 501)
        self.assertEqual(lines[-1], "events_from=501")
        self.assertTrue(all(line.startswith("DATE=") for line in lines[:-1]))
        last = body(self.h.get(f"/{LONG_UNIQUE}/events?text&events_from=29501")).decode()
        self.assertEqual(len(last.splitlines()), 500)
        self.assertNotIn("events_from=", last)

    def test_page_size_option(self) -> None:
        h = Harness(self.store)
        h.resource.page_events = 7
        data = as_json(h.get(f"/{LONG_UNIQUE}/events?events_from=3"))
        self.assertEqual(len(data["events"]), 7)
        self.assertEqual(data["next_events_from"], 10)
        self.assertEqual(self.store.ranges, [(2, 8, 8)])

    def test_small_job_unchanged(self) -> None:
        """
        A history that fits one page keeps its old forms: a JSON list in event
        order, ULM lines only, the HTML count.
        """
        store = CountingStore(store_with(traces.cream_done_ok_unpurged()))
        h = Harness(store)
        lines = traces.cream_done_ok_unpurged()
        events = as_json(h.get(f"/{DIRECT_UNIQUE}/events"))
        self.assertIsInstance(events, list)
        self.assertEqual(len(events), len(lines))
        expected = _result(store.store.events(DIRECT_JOBID))
        self.assertEqual([e["seqcode"] for e in events], [s.event.seqcode for s in expected])
        text = body(h.get(f"/{DIRECT_UNIQUE}/events?text")).decode()
        self.assertEqual(text.splitlines(), [s.line for s in expected])
        page = body(h.get(f"/{DIRECT_UNIQUE}", accept="text/html")).decode()
        self.assertIn(f"<h2>Events ({len(lines)})</h2>", page)
        self.assertNotIn("events_from", page)

    def test_bad_events_from(self) -> None:
        for bad in ("0", "-1", "x", "1e3", "9" * 30, ""):
            req = self.h.get(f"/{LONG_UNIQUE}/events?events_from={bad}")
            self.assertEqual(req.responseCode, 400, bad)
            self.assertIn("events_from", as_json(req)["message"])
        beyond = as_json(self.h.get(f"/{LONG_UNIQUE}/events?events_from=99999"))
        self.assertEqual(beyond, {"events": [], "events_from": 99999, "next_events_from": None})

    def test_page_events_reaches_site(self) -> None:
        site = make_site(self.store, clock=Clock(), identify=lambda r: None, page_events=42)
        self.assertEqual(site.resource.page_events, 42)


class AccessLogCapTests(SynchronousTestCase):
    def test_access_log_capped(self) -> None:
        """
        The access log is rotated at C{access_log_max_size} bytes and keeps
        C{access_log_max_files} rotated files.
        """
        from twisted.internet.testing import StringTransport

        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "query-access.log")
        clock = Clock()
        site = make_site(
            store_with(),
            clock=clock,
            identify=lambda r: None,
            access_log=path,
            access_log_max_size=1000,
            access_log_max_files=2,
        )
        site.doStart()
        self.addCleanup(site.doStop)
        for i in range(200):
            channel = site.buildProtocol(None)
            assert channel is not None
            channel.makeConnection(StringTransport())
            channel.dataReceived(f"GET /CREAM{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            clock.advance(ACCESS_LOG_DELAY)
        site.doStop()
        names = sorted(os.listdir(directory))
        self.assertEqual(names, ["query-access.log", "query-access.log.1", "query-access.log.2"])
        for name in names:
            self.assertLess(os.path.getsize(os.path.join(directory, name)), 1000 + 500)
