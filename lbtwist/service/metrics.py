# -*- test-case-name: tests.unit.test_metrics -*-
"""
Prometheus metrics and the health report on their own listener (C{--metrics}).

One L{ServiceMetrics} per service, with a registry of its own (never the
global one: two services in one process, or tests, do not clash). Nothing is
counted on the hot paths for it: the collector reads, at scrape time, the
counters the intake and the relay keep anyway (L{IntakeStats},
L{QueueCounters}) and the outbox statistics the service refreshes every
C{refresh_interval} seconds (one grouped store read, not one per scrape).

The query port's answers are the one thing observed as they happen: one
histogram observation per finished HTTPS request (L{ServiceMetrics.observe_query}),
labelled by a route from a fixed set (L{query_route}: never the raw path, which
the peer chooses) and the status code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.twisted import MetricsResource
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbtwist.service.health import CASummary, HealthResource, health_report, relay_summary
from lbtwist.store.interface import IEventStore, OutboxStats

log = Logger()

#: Seconds between refreshes of the outbox statistics.
DEFAULT_REFRESH_INTERVAL = 15.0

#: Buckets of the commit group sizes (events).
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: Buckets of the commit group latency (seconds).
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Buckets of the query answer time (seconds).
QUERY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 30.0)

#: The route of a query port path by its first segment (anything else: a job's
#: unique, L{query_route}).
_FIRST_SEGMENTS = {
    b"notif": "notif",
    b"NOTIF": "notif",
    b"stats": "stats",
    b"trace": "trace",
    b"dump": "dump",
    b"admin": "admin",
    b"relay": "relay",
    b"health": "health",
}

#: Every value of the C{route} label of C{lbtwist_query_seconds}.
QUERY_ROUTES: tuple[str, ...] = ("list", "status", "events", "notif", "stream", "stats")
QUERY_ROUTES += ("trace", "dump", "admin", "relay", "health", "other")


def query_route(path: bytes) -> str:
    """
    The route label of a query port request path (without its query string): one of
    L{QUERY_ROUTES}, whatever the path.

    C{/} is C{list}, C{/<unique>} C{status}, C{/<unique>/events} C{events},
    C{/notif/<id>/stream} C{stream}, the other C{/notif} paths C{notif}; C{/stats},
    C{/trace}, C{/dump}, C{/admin/...}, C{/relay/...} and C{/health} are their own;
    anything else C{other}.
    """
    parts = path.split(b"/", 3)
    # parts[0] is what precedes the leading slash (b"" for a well-formed path).
    if len(parts) < 2 or parts[0]:
        return "other"
    first = parts[1]
    route = _FIRST_SEGMENTS.get(first)
    if route == "notif":
        return "stream" if len(parts) == 4 and parts[3] == b"stream" else route
    if route is not None:
        return route
    if first.startswith(b"NOTIF:"):
        return "stream" if len(parts) == 3 and parts[2] == b"stream" else "notif"
    if not first:
        return "list" if len(parts) == 2 else "other"
    if len(parts) == 2 or (len(parts) == 3 and not parts[2]):
        return "status"
    if len(parts) == 3 and parts[2] == b"events":
        return "events"
    return "other"


class ServiceMetrics:
    """
    What one service exposes: the sources registered by the wiring and the
    last outbox statistics.

    @ivar registry: the service's own L{CollectorRegistry}.
    @ivar intakes: C{(port name, factory)} pairs; a factory has C{stats}
        (L{lbtwist.service.intake.IntakeStats} or alike).
    @ivar relay: the L{lbtwist.service.relay.RelayService}, if any.
    @ivar outbox: destination -> L{OutboxStats}, as of the last refresh.
    @ivar notifications: the notification service's totals, if any: a callable
        returning a Deferred of L{lbtwist.store.notif.NotifTotals}, read at each
        refresh (L{MetricsService}); L{notif_totals} the last ones read.
    """

    def __init__(
        self,
        store: IEventStore,
        clock: Any,
        *,
        role: str,
        version: str,
        store_path: str,
        ca_dir: str | None = None,
        cert: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.role = role
        self.version = version
        self.store_path = store_path
        self.ca_dir = ca_dir
        self.ca = CASummary(ca_dir)
        self.cert = cert
        self.intakes: list[tuple[str, Any]] = []
        self.tls: list[tuple[str, Any]] = []
        self.relay: Any = None
        self.notifications: Callable[[], Deferred[Any]] | None = None
        self.notif_totals: Any = None
        self.outbox: dict[str, OutboxStats] = {}
        self.refreshed: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.group_events = Histogram(
            "lbtwist_commit_group_events",
            "Events per store commit group.",
            buckets=GROUP_BUCKETS,
            registry=self.registry,
        )
        self.group_seconds = Histogram(
            "lbtwist_commit_group_seconds",
            "From the queueing of a commit group's first events to their answers (the"
            " acknowledgement latency of its oldest event).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "lbtwist_query_seconds",
            "Answer time of HTTPS requests on the query port, by route and status code"
            " (closed: the client went away before the answer was finished).",
            labelnames=("route", "code"),
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )
        # (route, code) -> the histogram's child: one dict lookup per request.
        self._query_children: dict[tuple[str, int | str], Any] = {}
        if hasattr(store, "commit_observer"):
            store.commit_observer = self.observe_commit  # type: ignore[attr-defined]

    def observe_commit(self, events: int, queued_at: int) -> None:
        """
        One committed group (L{lbtwist.store.batch.GroupCommit.observer}).
        """
        self.group_events.observe(events)
        self.group_seconds.observe(max(self.clock.seconds() - queued_at / 1e6, 0.0))

    def observe_query(self, path: bytes, code: int | str, seconds: float) -> None:
        """
        One answered query port request (L{lbtwist.service.web.QuerySite.observer}).

        @param path: the request path, without its query string.
        @param code: its status code, or C{"closed"}.
        """
        route = query_route(path)
        key = (route, code)
        child = self._query_children.get(key)
        if child is None:
            if not (isinstance(code, int) and 100 <= code <= 599) and code != "closed":
                code = "other"
            child = self._query_children[key] = self.query_seconds.labels(route, str(code))
        child.observe(seconds)

    def add_intake(self, port: str, factory: Any) -> None:
        """
        Count the connections and events of an intake-like factory (one with C{stats}).
        """
        self.intakes.append((port, factory))

    def add_tls(self, port: str, endpoint: Any) -> None:
        """
        Count the connections and refusals of a TLS port: C{endpoint} is its
        L{lbtwist.security.tls.TLSServerEndpoint} (C{factories}, C{context_source}).
        """
        self.tls.append((port, endpoint))

    def refresh(self) -> Deferred[None]:
        """
        Read the outbox statistics again.
        """
        d: Deferred[dict[str, OutboxStats]] = self.store.outbox_stats()

        def got(stats: dict[str, OutboxStats]) -> None:
            self.outbox = dict(stats)
            self.refreshed = self.clock.seconds()

        def failed(failure: Failure) -> None:
            log.warn("metrics: reading the outbox failed: {error}", error=failure.getErrorMessage())

        done = d.addCallbacks(got, failed)
        if self.notifications is not None:
            done.addCallback(lambda _: self._refresh_notifications())
        return done

    def _refresh_notifications(self) -> Deferred[None]:
        assert self.notifications is not None

        def got(totals: Any) -> None:
            self.notif_totals = totals

        def failed(failure: Failure) -> None:
            log.warn(
                "metrics: reading the notification totals failed: {error}",
                error=failure.getErrorMessage(),
            )

        return self.notifications().addCallbacks(got, failed)

    def queues(self) -> dict[str, Any]:
        return dict(self.relay.queues) if self.relay is not None else {}

    def health(self) -> dict[str, Any]:
        """
        The health report (L{health_report}) as of now.
        """
        now = self.clock.seconds()
        return health_report(
            role=self.role,
            version=self.version,
            store_path=self.store_path,
            cas=self.ca(),
            cert=self.cert,
            relay=relay_summary(self.outbox, self.queues(), now),
            now=now,
        )


class _Collector:
    """
    The metric families of a L{ServiceMetrics}, built at scrape time.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def _tls(self) -> Iterator[Metric]:
        return _tls_families(self.m.tls)

    def collect(self) -> Iterator[Metric]:
        m = self.m
        info = GaugeMetricFamily(
            "lbtwist_info", "The service's role and version.", labels=["role", "version"]
        )
        info.add_metric([m.role, m.version], 1)
        yield info

        events = CounterMetricFamily(
            "lbtwist_intake_events",
            "Events answered by the intake, by result (accepted, duplicate, error).",
            labels=["port", "result"],
        )
        conns = GaugeMetricFamily(
            "lbtwist_intake_connections", "Intake connections open now.", labels=["port"]
        )
        closed = CounterMetricFamily(
            "lbtwist_intake_closed_connections",
            "Intake connections refused or closed, by reason (refused, framing, idle, evicted).",
            labels=["port", "reason"],
        )
        for port, factory in m.intakes:
            st = factory.stats
            events.add_metric([port, "accepted"], st.accepted)
            events.add_metric([port, "duplicate"], st.duplicates)
            events.add_metric([port, "error"], st.errors)
            conns.add_metric([port], st.connections)
            closed.add_metric([port, "refused"], st.refused)
            closed.add_metric([port, "framing"], getattr(st, "broken", 0))
            closed.add_metric([port, "idle"], getattr(st, "idle_closed", 0))
            closed.add_metric([port, "evicted"], getattr(st, "evicted", 0))
        yield events
        yield conns
        yield closed

        yield from self._tls()

        size = 0
        for name in (m.store_path, m.store_path + "-wal"):
            try:
                size += os.path.getsize(name)
            except OSError:
                pass
        yield GaugeMetricFamily(
            "lbtwist_store_size_bytes", "Size of the store file and its WAL.", value=size
        )

        now = m.clock.seconds()
        queues = m.queues()
        dests = sorted(set(m.outbox) | set(queues))
        depth = GaugeMetricFamily(
            "lbtwist_relay_queue_depth", "Events waiting in the outbox.", labels=["destination"]
        )
        oldest = GaugeMetricFamily(
            "lbtwist_relay_oldest_pending_seconds",
            "Age of the oldest waiting event (0 when none).",
            labels=["destination"],
        )
        stored_rejected = GaugeMetricFamily(
            "lbtwist_relay_rejected_events",
            "Events in the rejected table (re-queue with lbtwist relay retry).",
            labels=["destination"],
        )
        delivered = CounterMetricFamily(
            "lbtwist_relay_delivered",
            "Events delivered since start.",
            labels=["destination"],
        )
        rejected = CounterMetricFamily(
            "lbtwist_relay_rejected", "Events rejected since start.", labels=["destination"]
        )
        connected = GaugeMetricFamily(
            "lbtwist_relay_connected", "1 when the connection is up.", labels=["destination"]
        )
        connections = CounterMetricFamily(
            "lbtwist_relay_connections",
            "Connections made since start.",
            labels=["destination"],
        )
        last_error = GaugeMetricFamily(
            "lbtwist_relay_last_error_info",
            "The last connection error (1, the text in the label).",
            labels=["destination", "error"],
        )
        for dest in dests:
            st = m.outbox.get(dest)
            queue = queues.get(dest)
            depth.add_metric([dest], 0 if st is None else st.depth)
            age = 0.0
            if st is not None and st.oldest_arrived is not None:
                age = max(now - st.oldest_arrived / 1e6, 0.0)
            oldest.add_metric([dest], age)
            stored_rejected.add_metric([dest], 0 if st is None else st.rejected)
            if queue is not None:
                delivered.add_metric([dest], queue.counters.delivered)
                rejected.add_metric([dest], queue.counters.rejected)
                connections.add_metric([dest], queue.counters.connections)
                connected.add_metric([dest], 1 if queue.connected else 0)
                if queue.last_error:
                    last_error.add_metric([dest, queue.last_error], 1)
        yield from (depth, oldest, stored_rejected, delivered, rejected)
        yield from (connected, connections, last_error)

        totals = m.notif_totals
        if totals is not None:
            regs = GaugeMetricFamily(
                "lbtwist_notifications_registrations",
                "Notification registrations held, by state (expired: until the sweep"
                " removes them).",
                labels=["state"],
            )
            regs.add_metric(["active"], totals.registrations - totals.expired)
            regs.add_metric(["expired"], totals.expired)
            yield regs
            yield GaugeMetricFamily(
                "lbtwist_notifications_queued",
                "Notification messages waiting for their clients.",
                value=totals.queued,
            )
            yield GaugeMetricFamily(
                "lbtwist_notifications_queued_bytes",
                "Bytes of the notification messages waiting for their clients.",
                value=totals.size,
            )
            yield GaugeMetricFamily(
                "lbtwist_notifications_dropped",
                "Messages the queue bounds dropped, summed over the registrations held now.",
                value=totals.dropped,
            )
        if m.refreshed is not None:
            yield GaugeMetricFamily(
                "lbtwist_metrics_refreshed_timestamp_seconds",
                "When the outbox statistics were last read.",
                value=m.refreshed,
            )


class _QuietSite(Site):
    """
    A site that writes no access log line per scrape.
    """

    def log(self, request: Any) -> None:
        pass


def _tls_families(tls: list[tuple[str, Any]]) -> Iterator[Metric]:
    conns = GaugeMetricFamily(
        "lbtwist_tls_connections",
        "TLS connections open now, in the handshake or established.",
        labels=["port", "state"],
    )
    accepted = CounterMetricFamily(
        "lbtwist_tls_accepted_connections",
        "TCP connections accepted by a TLS port.",
        labels=["port"],
    )
    established = CounterMetricFamily(
        "lbtwist_tls_established_connections",
        "TLS handshakes completed (client certificate verified).",
        labels=["port"],
    )
    closed = CounterMetricFamily(
        "lbtwist_tls_closed_connections",
        "TLS connections closed by the port, by reason (per_address, handshake_timeout,"
        " idle_timeout, failed_handshake).",
        labels=["port", "reason"],
    )
    refused = CounterMetricFamily(
        "lbtwist_tls_refusals",
        "Refused TLS handshakes, by reason (certificate checks).",
        labels=["port", "reason"],
    )
    for port, endpoint in tls:
        handshaking = live = 0
        stats: dict[str, int] = {}
        for factory in endpoint.factories:
            handshaking += len(factory.handshaking)
            live += len(factory.connected)
            for name, value in attrs.asdict(factory.stats).items():
                stats[name] = stats.get(name, 0) + value
        conns.add_metric([port, "handshake"], handshaking)
        conns.add_metric([port, "established"], live)
        accepted.add_metric([port], stats.get("accepted", 0))
        established.add_metric([port], stats.get("established", 0))
        for reason, name in (
            ("per_address", "refused_per_address"),
            ("handshake_timeout", "handshake_timeouts"),
            ("idle_timeout", "idle_timeouts"),
            ("failed_handshake", "closed_handshakes"),
        ):
            closed.add_metric([port, reason], stats.get(name, 0))
        refusals = getattr(getattr(endpoint, "context_source", None), "refusals", None)
        for reason, n in sorted(getattr(refusals, "reasons", {}).items()):
            refused.add_metric([port, reason], n)
    yield from (conns, accepted, established, closed, refused)


def metrics_site(metrics: ServiceMetrics) -> Site:
    """
    The metrics listener's site: C{/metrics} (Prometheus text) and C{/health} (JSON).
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"health", HealthResource(metrics.health))
    site = _QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


class MetricsService(MultiService):
    """
    The refresh timer of a L{ServiceMetrics} (the listener is added by the wiring).
    """

    def __init__(self, metrics: ServiceMetrics, refresh_interval: float) -> None:
        super().__init__()
        self.metrics = metrics
        timer = TimerService(refresh_interval, metrics.refresh)
        timer.clock = metrics.clock
        timer.setServiceParent(self)


class MetricsListener(Service):
    """
    Listens for the metrics site. A listener that cannot be bound is one warning
    line, not a failed start-up: the events matter more than their metrics.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, site: Site) -> None:
        self.endpoint = endpoint
        self.description = description
        self.site = site
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.site)

        def listening(port: IListeningPort) -> None:
            self.port = port
            log.info("metrics: /metrics and /health on {endpoint}", endpoint=self.description)

        def failed(failure: Failure) -> None:
            log.warn(
                "metrics: cannot listen on {endpoint} ({error}): no /metrics or /health;"
                " set --metrics to a free endpoint, or none",
                endpoint=self.description,
                error=failure.getErrorMessage(),
            )

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "QUERY_ROUTES",
    "MetricsListener",
    "MetricsService",
    "ServiceMetrics",
    "metrics_site",
    "query_route",
]
