# -*- test-case-name: tests.unit.test_metrics -*-
"""
Tests for L{lbtwist.service.metrics} and L{lbtwist.service.health}: the metric
families read at scrape time, the health report and its HTTP answer, the relay
queue's last error.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from twisted.web.wsgi import WSGIResource

from lbtwist.security.devcerts import DevPKI, make_dev_pki
from lbtwist.service import health
from lbtwist.service.intake import IntakeStats
from lbtwist.service.metrics import ServiceMetrics, metrics_site
from lbtwist.service.relay import QueueCounters, RelayQueue
from lbtwist.store.interface import OutboxStats
from tests.logcapture import capture_log

NOW = 1_800_000_000.0


class FakeStore:
    def __init__(self, stats: dict[str, OutboxStats]) -> None:
        self.stats = stats
        self.reads = 0

    def outbox_stats(self) -> Deferred[dict[str, OutboxStats]]:
        self.reads += 1
        return succeed(dict(self.stats))


@attrs.define
class FakeQueue:
    connected: bool
    counters: QueueCounters
    last_error: str | None = None


@attrs.define
class FakeFactory:
    stats: IntakeStats


@attrs.define
class FakeRelay:
    queues: dict[str, Any]


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.store_path = os.path.join(self.dir, "lbtwist.sqlite")
        with open(self.store_path, "wb") as f:
            f.write(b"x" * 1000)
        self.store = FakeStore(
            {"lb.example.org:9001": OutboxStats("lb.example.org:9001", 3, int((NOW - 42) * 1e6), 2)}
        )
        self.metrics = ServiceMetrics(
            self.store,  # type: ignore[arg-type]
            self.clock,
            role="lbproxy",
            version="9.9",
            store_path=self.store_path,
        )

    def test_own_registry(self) -> None:
        """
        Two services in one process keep separate registries (no duplicate names).
        """
        other = ServiceMetrics(
            self.store,  # type: ignore[arg-type]
            self.clock,
            role="lbserver",
            version="9.9",
            store_path=self.store_path,
        )
        self.assertIsNot(other.registry, self.metrics.registry)
        self.assertEqual(
            samples(other)[("lbtwist_info", (("role", "lbserver"), ("version", "9.9")))], 1
        )

    def test_intake(self) -> None:
        stats = IntakeStats(connections=2, accepted=10, duplicates=1, errors=3, broken=4)
        self.metrics.add_intake("events", FakeFactory(stats))
        got = samples(self.metrics)
        ev = "lbtwist_intake_events_total"
        self.assertEqual(got[(ev, (("port", "events"), ("result", "accepted")))], 10)
        self.assertEqual(got[(ev, (("port", "events"), ("result", "duplicate")))], 1)
        self.assertEqual(got[(ev, (("port", "events"), ("result", "error")))], 3)
        self.assertEqual(got[("lbtwist_intake_connections", (("port", "events"),))], 2)
        closed = "lbtwist_intake_closed_connections_total"
        self.assertEqual(got[(closed, (("port", "events"), ("reason", "framing")))], 4)
        # Read at scrape time: a later count shows without any hook.
        stats.accepted += 5
        self.assertEqual(
            samples(self.metrics)[(ev, (("port", "events"), ("result", "accepted")))], 15
        )

    def test_store_size(self) -> None:
        with open(self.store_path + "-wal", "wb") as f:
            f.write(b"y" * 24)
        self.assertEqual(samples(self.metrics)[("lbtwist_store_size_bytes", ())], 1024)

    def test_relay(self) -> None:
        dest = "lb.example.org:9001"
        self.metrics.relay = FakeRelay(
            {
                dest: FakeQueue(
                    False, QueueCounters(delivered=7, rejected=1, connections=2), "refused"
                ),
                "other:9001": FakeQueue(True, QueueCounters(delivered=1)),
            }
        )
        got = samples(self.metrics)
        self.assertEqual(got[("lbtwist_relay_queue_depth", (("destination", dest),))], 0)
        self.metrics.refresh()
        self.assertEqual(self.store.reads, 1)
        self.clock.advance(8)
        got = samples(self.metrics)
        d = (("destination", dest),)
        self.assertEqual(got[("lbtwist_relay_queue_depth", d)], 3)
        self.assertEqual(got[("lbtwist_relay_oldest_pending_seconds", d)], 50)
        self.assertEqual(got[("lbtwist_relay_rejected_events", d)], 2)
        self.assertEqual(got[("lbtwist_relay_delivered_total", d)], 7)
        self.assertEqual(got[("lbtwist_relay_rejected_total", d)], 1)
        self.assertEqual(got[("lbtwist_relay_connections_total", d)], 2)
        self.assertEqual(got[("lbtwist_relay_connected", d)], 0)
        self.assertEqual(got[("lbtwist_relay_connected", (("destination", "other:9001"),))], 1)
        self.assertEqual(
            got[("lbtwist_relay_last_error_info", (("destination", dest), ("error", "refused")))], 1
        )
        self.assertEqual(got[("lbtwist_relay_queue_depth", (("destination", "other:9001"),))], 0)
        self.assertEqual(got[("lbtwist_metrics_refreshed_timestamp_seconds", ())], NOW)

    def test_notifications_hook(self) -> None:
        """
        The notification totals are read at each refresh (not per scrape) and shown
        as four gauges; none before the first read or without the hook.
        """
        from lbtwist.store.notif import NotifTotals

        self.assertNotIn(("lbtwist_notifications_queued", ()), samples(self.metrics))
        reads: list[int] = []

        def totals() -> Deferred[NotifTotals]:
            reads.append(1)
            return succeed(NotifTotals(registrations=3, queued=12, size=900, dropped=5, expired=1))

        self.metrics.notifications = totals
        self.assertNotIn(("lbtwist_notifications_queued", ()), samples(self.metrics))
        self.metrics.refresh()
        samples(self.metrics)
        got = samples(self.metrics)
        self.assertEqual(len(reads), 1)
        regs = "lbtwist_notifications_registrations"
        self.assertEqual(got[(regs, (("state", "active"),))], 2)
        self.assertEqual(got[(regs, (("state", "expired"),))], 1)
        self.assertEqual(got[("lbtwist_notifications_queued", ())], 12)
        self.assertEqual(got[("lbtwist_notifications_queued_bytes", ())], 900)
        self.assertEqual(got[("lbtwist_notifications_dropped", ())], 5)

    def test_notifications_read_fails(self) -> None:
        """
        A failed read of the totals keeps the last ones (and the outbox figures).
        """
        self.metrics.notifications = lambda: fail(RuntimeError("gone"))
        self.successResultOf(self.metrics.refresh())
        self.assertIsNone(self.metrics.notif_totals)
        self.assertIn(("lbtwist_metrics_refreshed_timestamp_seconds", ()), samples(self.metrics))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_site(self) -> None:
        """
        The site serves /metrics and /health.
        """
        site = metrics_site(self.metrics)
        metrics = site.resource.getChildWithDefault(b"metrics", DummyRequest([b"metrics"]))
        self.assertIsInstance(metrics, WSGIResource)
        request = DummyRequest([b""])
        node = site.resource.getChildWithDefault(b"health", request)
        answer = json.loads(node.render(request))
        self.assertEqual(request.responseCode, 503)  # no CA directory, no certificate
        self.assertFalse(answer["ok"])
        self.assertIn("no CA directory", answer["problems"])


_PKI: list[DevPKI] = []


def shared_pki() -> DevPKI:
    """
    One development PKI for the health tests (made once per run, removed at exit).
    """
    if not _PKI:
        base = tempfile.mkdtemp(prefix="lbtwist-health-")
        atexit.register(shutil.rmtree, base, True)
        _PKI.append(make_dev_pki(base, now=datetime.now(UTC), hostnames=("localhost",)))
    return _PKI[0]


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = shared_pki()

    def report(self, now: float, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "role": "lbproxy",
            "version": "1",
            "store_path": os.path.join(self.mktemp(), "lbtwist.sqlite"),
            "cas": health.ca_summary(str(self.pki.ca_dir)),
            "cert": str(self.pki.host_cert),
            "relay": [],
            "now": now,
        }
        os.makedirs(os.path.dirname(args["store_path"]))
        args.update(kw)
        return health.health_report(**args)

    def test_healthy(self) -> None:
        now = datetime.now(UTC).timestamp()
        r = self.report(now)
        self.assertEqual((r["ok"], r["problems"]), (True, []))
        self.assertEqual((r["ca"]["cas"], r["ca"]["crls"]), (1, 1))
        self.assertGreater(r["ca"]["crl_next_update"], now)
        self.assertGreater(r["host_cert"]["not_after"], now)
        self.assertIn("CN=localhost", r["host_cert"]["subject"])
        self.assertTrue(r["store"]["writable"])

    def test_expired(self) -> None:
        """
        Past the CRL's nextUpdate and the certificate's end: two problems.
        """
        r = self.report(datetime(2100, 1, 1, tzinfo=UTC).timestamp())
        self.assertFalse(r["ok"])
        self.assertEqual(len(r["problems"]), 2, r["problems"])

    def test_no_cas(self) -> None:
        empty = self.mktemp()
        os.makedirs(empty)
        r = self.report(NOW, cas=health.ca_summary(empty))
        self.assertIn(f"no CA certificates in {empty}", r["problems"])

    def test_store_not_writable(self) -> None:
        path = "/proc/lbtwist.sqlite"
        r = health.health_report(
            role="lbproxy",
            version="1",
            store_path=path,
            cas=health.ca_summary(str(self.pki.ca_dir)),
            cert=str(self.pki.host_cert),
            relay=[],
            now=datetime.now(UTC).timestamp(),
        )
        self.assertIn(f"store not writable: {path}", r["problems"])

    def test_relay_summary(self) -> None:
        stats = {"a:1": OutboxStats("a:1", 4, int((NOW - 30) * 1e6), 1)}
        queues = {
            "a:1": FakeQueue(False, QueueCounters(delivered=2), "timeout"),
            "b:1": FakeQueue(True, QueueCounters()),
        }
        rows = health.relay_summary(stats, queues, NOW)
        self.assertEqual(
            rows[0],
            {
                "destination": "a:1",
                "depth": 4,
                "oldest_age": 30.0,
                "rejected": 1,
                "connected": False,
                "delivered": 2,
                "last_error": "timeout",
            },
        )
        self.assertEqual((rows[1]["destination"], rows[1]["connected"]), ("b:1", True))
        r = self.report(NOW, relay=rows)
        self.assertEqual((r["backlog"], r["backlog_age"]), (4, 30.0))

    def test_ca_summary_cached(self) -> None:
        """
        L{health.CASummary} reads the directory again only when it changes.
        """
        calls: list[object] = []
        real = health.ca_summary

        def counting(*a: Any) -> dict[str, Any]:
            calls.append(a)
            return real(*a)

        self.patch(health, "ca_summary", counting)
        summary = health.CASummary(str(self.pki.ca_dir))
        self.assertEqual(summary()["cas"], 1)
        self.assertEqual(summary()["cas"], 1)
        self.assertEqual(len(calls), 1)


class LastErrorTests(SynchronousTestCase):
    def test_connection_failure_kept(self) -> None:
        """
        A relay queue keeps its last connection failure for metrics and health.
        """

        class Refusing:
            def connect(self, factory: object) -> Deferred[object]:
                return fail(ConnectionRefusedError("Connection refused"))

        clock = task.Clock()
        queue = RelayQueue(
            "lb.example.org:9001",
            FakeStore({}),  # type: ignore[arg-type]
            clock,
            Refusing(),  # type: ignore[arg-type]
        )
        self.assertIsNone(queue.last_error)
        queue.client.startService()
        self.assertIn("Connection refused", str(queue.last_error))
        queue.client.stopService()


class HealthRootTests(SynchronousTestCase):
    def test_routes(self) -> None:
        """
        C{/health} is answered by the health resource, every other path by the tree.
        """

        class Inner(Resource):
            isLeaf = True
            store = "the store"

            def render(self, request: Any) -> bytes:
                return b"inner"

        root = health.HealthRoot(Inner(), health.HealthResource(lambda: {"ok": True}))
        request = DummyRequest([b"health"])
        self.assertEqual(json.loads(root.render(request)), {"ok": True})
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(root.render(DummyRequest([b"health", b"x"])), b"inner")
        self.assertEqual(root.render(DummyRequest([b"SomeJobUnique"])), b"inner")
        self.assertEqual(root.store, "the store")

    def test_failing_report(self) -> None:
        def broken() -> dict[str, Any]:
            raise RuntimeError("boom")

        request = DummyRequest([b"health"])
        body = json.loads(health.HealthResource(broken).render(request))
        self.assertEqual(request.responseCode, 503)
        self.assertFalse(body["ok"])
        self.flushLoggedErrors(RuntimeError)


class TLSMetricsTests(SynchronousTestCase):
    def test_tls_port(self) -> None:
        """
        A TLS port's open connections, counters and refusal reasons.
        """
        from lbtwist.security.tls import PortStats, RefusalLog

        refusals = RefusalLog(task.Clock())
        refusals.count("certificate has expired")
        refusals.count("certificate has expired")
        refusals.count("no client certificate")

        @attrs.define
        class Factory:
            handshaking: dict[object, None]
            connected: dict[object, None]
            stats: PortStats

        @attrs.define
        class Source:
            refusals: RefusalLog

        @attrs.define
        class Endpoint:
            factories: list[Factory]
            context_source: Source

        factory = Factory({object(): None}, {object(): None, object(): None}, PortStats())
        factory.stats.accepted = 9
        factory.stats.established = 7
        factory.stats.handshake_timeouts = 1
        clock = task.Clock()
        metrics = ServiceMetrics(
            FakeStore({}),  # type: ignore[arg-type]
            clock,
            role="lbserver",
            version="1",
            store_path="/nonexistent/lbtwist.sqlite",
        )
        metrics.add_tls("store", Endpoint([factory], Source(refusals)))
        got = samples(metrics)
        port = ("port", "store")
        self.assertEqual(got[("lbtwist_tls_connections", (port, ("state", "handshake")))], 1)
        self.assertEqual(got[("lbtwist_tls_connections", (port, ("state", "established")))], 2)
        self.assertEqual(got[("lbtwist_tls_accepted_connections_total", (port,))], 9)
        self.assertEqual(got[("lbtwist_tls_established_connections_total", (port,))], 7)
        self.assertEqual(
            got[("lbtwist_tls_closed_connections_total", (port, ("reason", "handshake_timeout")))],
            1,
        )
        self.assertEqual(
            got[("lbtwist_tls_refusals_total", (port, ("reason", "certificate has expired")))], 2
        )
        self.assertEqual(
            got[("lbtwist_tls_refusals_total", (port, ("reason", "no client certificate")))], 1
        )

    def test_reasons_bounded(self) -> None:
        from lbtwist.security.tls import MAX_REASONS, RefusalLog

        refusals = RefusalLog(task.Clock())
        for n in range(MAX_REASONS + 5):
            refusals.count(f"reason {n}")
        refusals.count("reason 0")
        self.assertEqual(len(refusals.reasons), MAX_REASONS + 1)
        self.assertEqual(refusals.reasons["other"], 5)
        self.assertEqual(refusals.reasons["reason 0"], 2)


class ListenerTests(SynchronousTestCase):
    def test_cannot_listen(self) -> None:
        """
        A metrics listener that cannot bind is one warning line, not a failed start-up.
        """
        from twisted.internet.error import CannotListenError
        from twisted.logger import LogLevel

        from lbtwist.service.metrics import MetricsListener

        class Busy:
            def listen(self, factory: object) -> Deferred[object]:
                return fail(CannotListenError("127.0.0.1", 9100, OSError(98, "in use")))

        events = capture_log(self)
        listener = MetricsListener(Busy(), "tcp:9100", None)  # type: ignore[arg-type]
        listener.startService()
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("cannot listen on {endpoint}", warnings[0]["log_format"])
        self.assertIsNone(listener.stopService())


class CommitGroupTests(SynchronousTestCase):
    def test_groups_observed(self) -> None:
        """
        A SQLite store's committed groups: their sizes and latencies, once per group.
        """
        from lbtwist.core.events import parse_event
        from lbtwist.store.batch import run_now
        from lbtwist.store.sqlite import SQLiteStore
        from tests.unit.test_relay import JOB_A, wms_lines

        clock = task.Clock()
        clock.advance(NOW)
        path = os.path.join(self.mktemp() + ".d", "lbtwist.sqlite")
        os.makedirs(os.path.dirname(path))
        store = SQLiteStore(path, clock=clock, runner=run_now)
        self.addCleanup(store.close)
        metrics = ServiceMetrics(store, clock, role="lbproxy", version="1", store_path=path)
        store.start()
        lines = wms_lines(JOB_A)[:5]
        self.successResultOf(store.store([(ln, parse_event(ln)) for ln in lines]))
        got = samples(metrics)
        self.assertEqual(got[("lbtwist_commit_group_events_count", ())], 1)
        self.assertEqual(got[("lbtwist_commit_group_events_sum", ())], 5)
        self.assertEqual(got[("lbtwist_commit_group_events_bucket", (("le", "4.0"),))], 0)
        self.assertEqual(got[("lbtwist_commit_group_events_bucket", (("le", "8.0"),))], 1)
        self.assertEqual(got[("lbtwist_commit_group_seconds_count", ())], 1)
        self.assertEqual(got[("lbtwist_commit_group_seconds_sum", ())], 0)


class QueryMetricsTests(SynchronousTestCase):
    """
    C{lbtwist_query_seconds}: the query port's answers by route and code.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.metrics = ServiceMetrics(
            FakeStore({}),  # type: ignore[arg-type]
            self.clock,
            role="lbproxy",
            version="1",
            store_path=os.path.join(self.mktemp(), "lbtwist.sqlite"),
        )

    def counts(self) -> dict[tuple[str, str], float]:
        return {
            (dict(k[1])["route"], dict(k[1])["code"]): v
            for k, v in samples(self.metrics).items()
            if k[0] == "lbtwist_query_seconds_count"
        }

    def test_routes(self) -> None:
        """
        Each path has one route of a fixed set.
        """
        from lbtwist.service.metrics import query_route

        for path, route in [
            (b"/", "list"),
            (b"/CREAM123", "status"),
            (b"/CREAM123/", "status"),
            (b"/CREAM123/events", "events"),
            (b"/CREAM123/other", "other"),
            (b"/a/b/c", "other"),
            (b"/notif", "notif"),
            (b"/notif/abc", "notif"),
            (b"/notif/abc/messages", "notif"),
            (b"/notif/abc/stream", "stream"),
            (b"/NOTIF:abc", "notif"),
            (b"/NOTIF:abc/stream", "stream"),
            (b"/stats", "stats"),
            (b"/trace", "trace"),
            (b"/dump", "dump"),
            (b"/admin/purge", "admin"),
            (b"/relay/rejected", "relay"),
            (b"/health", "health"),
            (b"//", "other"),
            (b"*", "other"),
            (b"", "other"),
        ]:
            self.assertEqual(query_route(path), route, path)

    @given(st.binary(max_size=60))
    def test_routes_bounded(self, path: bytes) -> None:
        """
        Whatever the peer sends, the route is one of L{QUERY_ROUTES}.
        """
        from lbtwist.service.metrics import QUERY_ROUTES, query_route

        self.assertIn(query_route(path), QUERY_ROUTES)
        self.assertIn(query_route(b"/" + path), QUERY_ROUTES)

    def test_observe(self) -> None:
        """
        One observation per request, by route and code; a code that is no HTTP
        status is C{other}.
        """
        self.metrics.observe_query(b"/CREAM1", 200, 0.003)
        self.metrics.observe_query(b"/CREAM2", 200, 0.004)
        self.metrics.observe_query(b"/CREAM2", 404, 0.001)
        self.metrics.observe_query(b"/notif/x/stream", "closed", 30.0)
        self.metrics.observe_query(b"/", 1000, 0.1)
        self.assertEqual(
            self.counts(),
            {
                ("status", "200"): 2,
                ("status", "404"): 1,
                ("stream", "closed"): 1,
                ("list", "other"): 1,
            },
        )
        got = samples(self.metrics)
        key = ("lbtwist_query_seconds_sum", (("code", "200"), ("route", "status")))
        self.assertAlmostEqual(got[key], 0.007)

    def site(self, store: Any) -> Any:
        from lbtwist.security.identity import Identity
        from lbtwist.service.web import make_site

        site = make_site(
            store,
            clock=self.clock,
            identify=lambda r: Identity("/CN=someone"),
            observer=self.metrics.observe_query,
        )
        site.doStart()
        self.addCleanup(site.doStop)
        return site

    def test_site_observes_answers(self) -> None:
        """
        The query site tells the metrics of each answered request once, with the time
        from its head's arrival to its end.
        """
        from twisted.internet.testing import StringTransport

        from lbtwist.testing import MemoryStore

        site = self.site(MemoryStore())
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /CREAM1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        channel.dataReceived(b"GET /CREAM1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(self.counts(), {("status", "404"): 1, ("events", "404"): 1})

    def test_site_observes_abandoned(self) -> None:
        """
        A request whose client goes away before the answer is observed once, as
        C{closed}, with the time it was open.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        class SlowStore:
            def find_status(self, unique: str) -> Deferred[Any]:
                return Deferred()

        site = self.site(SlowStore())
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /CREAM1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(self.counts(), {})
        self.clock.advance(2.5)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.counts(), {("status", "closed"): 1})
        got = samples(self.metrics)
        self.assertEqual(
            got[("lbtwist_query_seconds_sum", (("code", "closed"), ("route", "status")))], 2.5
        )


class NotifTotalsTests(SynchronousTestCase):
    """
    L{lbtwist.store.notif.Notifications.totals} on both stores: what the
    notification gauges show.
    """

    def check(self, store: Any) -> None:
        from lbtwist.core.notif import QueueBounds
        from lbtwist.store.notif import NotifTotals
        from tests import traces
        from tests.unit.test_notif_store import NOW as NOTIF_NOW
        from tests.unit.test_notif_store import _result, items, registration

        n = store.notifications
        self.assertEqual(_result(n.totals(NOTIF_NOW)), NotifTotals(0, 0, 0, 0, 0))
        n.configure(bounds=QueueBounds(max_messages=2, max_bytes=10**6))
        _result(n.create(registration("r1"), NOTIF_NOW))
        _result(n.create(registration("r2"), NOTIF_NOW))
        _result(store.store(items(traces.cream_done_ok())))
        got = _result(n.totals(NOTIF_NOW))
        # 7 messages each, bounded to 2 (and a gap marker, not counted): 5 dropped.
        sizes = [
            sum(len(m.body) for m in _result(n.messages(r, 0, 10)) if m.kind == "status")
            for r in ("r1", "r2")
        ]
        self.assertEqual(got, NotifTotals(2, 4, sum(sizes), 10, 0))
        # Past r2's validity (r3's is longer): expired until the sweep.
        _result(n.create(registration("r3", until=NOTIF_NOW + 7200), NOTIF_NOW))
        later = NOTIF_NOW + 3600
        self.assertEqual(_result(n.totals(later)), NotifTotals(3, 4, sum(sizes), 10, 2))
        _result(n.drop(["r1"]))
        self.assertEqual(_result(n.totals(later)), NotifTotals(2, 2, sizes[1], 5, 1))

    def test_memory(self) -> None:
        from lbtwist.testing import MemoryStore

        clock = task.Clock()
        clock.advance(1710408413 + 3600)
        self.check(MemoryStore(clock, relay=False))

    def test_sqlite(self) -> None:
        from lbtwist.store.batch import run_now
        from lbtwist.store.sqlite import SQLiteStore

        path = os.path.join(self.mktemp() + ".d", "lbtwist.sqlite")
        os.makedirs(os.path.dirname(path))
        clock = task.Clock()
        clock.advance(1710408413 + 3600)
        store = SQLiteStore(path, clock=clock, runner=run_now)
        self.addCleanup(store.close)
        self.check(store)


class StoreSummaryLocksTests(SynchronousTestCase):
    def test_keeps_sqlite_locks(self) -> None:
        """
        The health check of the store leaves this process's SQLite locks alone: a
        writer in another process that closes its connection afterwards does not
        take the store for unused and remove the WAL under the open connection,
        which then still sees that writer's rows.
        """
        import sqlite3
        import subprocess
        import sys

        path = os.path.join(self.mktemp() + ".d", "lbtwist.sqlite")
        os.makedirs(os.path.dirname(path))
        conn = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(conn.close)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        self.assertTrue(health.store_summary(path)["writable"])
        writer = (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('INSERT INTO t VALUES (2)')\n"
            "c.close()\n"
        )
        for n in (2, 3):
            subprocess.run([sys.executable, "-c", writer, path], check=True, timeout=60)
            self.assertEqual(conn.execute("SELECT COUNT(*) FROM t").fetchone(), (n,))
        self.assertTrue(os.path.exists(path + "-wal"))
