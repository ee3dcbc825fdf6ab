# -*- test-case-name: tests.unit.test_tap -*-
"""
Command-line options and service wiring for C{twistd lbproxy} and C{twistd lbserver}.

Wiring only, and all of it: the options are generated from the option table
L{lbtwist.config.OPTIONS} and parsed into a frozen L{Settings}; L{makeService} resolves the
host credentials once, builds the store, the intake listener, the query port and the relay
(proxy) or the store port (server) from typed arguments, and attaches them to a
L{MultiService}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from lbtwist import __version__, config
from lbtwist.config import Settings
from lbtwist.core.errors import InvalidValue, LBError
from lbtwist.service import logs

if TYPE_CHECKING:
    # Imported where they are used: parsing options (twistd --help) loads no TLS code.
    from lbtwist.security.authz import Policy
    from lbtwist.security.credentials import HostCredentials
    from lbtwist.security.devcerts import DevPKI
    from lbtwist.security.tls import PortLimits, ServerContextSource
    from lbtwist.store.interface import IEventStore

log = Logger()

DEFAULT_CERT = config.DEFAULT_CERT
DEFAULT_KEY = config.DEFAULT_KEY
DEFAULT_CA_DIR = config.DEFAULT_CA_DIR
DEFAULT_VOMS_DIR = config.DEFAULT_VOMS_DIR


class StartupError(Exception):
    """
    A start-up mistake: the one line (naming the option and the fix) that C{twistd} prints
    instead of a traceback.
    """


def fail(message: str, status: int = 1) -> None:
    """
    Print C{message} as one line on the real stderr (twistd may have redirected
    L{sys.stderr} to its log) and exit with C{status}.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"lbtwist: error: {message}\n")
    stream.flush()
    raise SystemExit(status)


def _repeatable(option: config.Option) -> Callable[[usage.Options, str], None]:
    def opt(self: usage.Options, value: str) -> None:
        self[option.name].append(value)

    opt.__doc__ = option.help
    return opt


class Options(usage.Options):
    """
    Options of both roles; the role (C{lbproxy} or C{lbserver}) names the config section.
    After parsing, L{settings} holds the typed result, and the mapping holds the same values
    by option name.
    """

    role = config.PROXY

    optParameters = [
        [o.name, None, None, o.help] for o in config.OPTIONS if not (o.flag or o.repeatable)
    ]
    optFlags = [[o.name, None, o.help] for o in config.OPTIONS if o.flag]

    #: The parsed settings (set by L{postOptions}).
    settings: Settings

    def __init__(self) -> None:
        super().__init__()
        for option in config.OPTIONS:
            if option.repeatable:
                self[option.name] = []
            default = option.default_for(self.role)
            if option.name in self.docs and default not in (None, (), False):
                self.docs[option.name] += f" [default: {default}]"

    def opt_version(self) -> None:
        """
        Print lbtwist's version (and Twisted's) and exit.
        """
        from twisted import version as twisted_version

        print(f"lbtwist {__version__} (twistd {self.role}, Twisted {twisted_version.short()})")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse as L{usage.Options} does; under C{twistd} (a parent is set), a usage error
        is one line on stderr and exit status 2 instead of twistd's full usage text.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            fail(f"{e} (see twistd {self.role} --help)", status=2)

    def role_defaults(self) -> dict[str, object]:
        """
        The embedded defaults of this role, by option name (L{None}: derived at parse time).
        """
        return {o.name: o.default_for(self.role) for o in config.OPTIONS if o.in_file}

    def postOptions(self) -> None:
        explicit: dict[str, object] = {}
        for option in config.OPTIONS:
            value = self[option.name]
            # A flag not given is "not given", so that the file can set it.
            explicit[option.name] = (True if value else None) if option.flag else value
        try:
            settings = config.load_settings(self.role, explicit, env=os.environ)
        except LBError as e:
            raise usage.UsageError(e.message) from None
        self.settings = settings
        # twistd's own options (our parent) get the capped file log.
        logs.install_logger(
            getattr(self, "parent", None), settings.log_max_size, settings.log_max_files
        )
        self.update(settings.as_options())


# One generated opt_<name> method per repeatable option (usage.Options finds them by name).
for _option in config.OPTIONS:
    if _option.repeatable:
        setattr(Options, "opt_" + _option.attribute, _repeatable(_option))
del _option


class ServerOptions(Options):
    """
    Options of C{twistd lbserver}.
    """

    role = config.SERVER


class StoreService(Service):
    """
    Closes the store when the service stops, after the listeners in front of it have stopped.
    """

    def __init__(self, store: IEventStore) -> None:
        self.store = store

    def startService(self) -> None:
        # Threads and database connections are made here, after twistd has daemonized.
        start = getattr(self.store, "start", None)
        if start is not None:
            start()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self.store.close()


# -- building blocks, each from the settings ----------------------------------------------


def host_credentials(settings: Settings, reactor: Any) -> HostCredentials:
    """
    The host credentials of every TLS port and of the relay, resolved once: the configured
    (or grid default) ones, else the development PKI under the state directory, made or
    reused there (its user proxy renewed), with C{--ca-dir} / C{X509_CERT_DIR} still
    naming the trust anchors when given.
    """
    from lbtwist.security.credentials import HostCredentials

    if not settings.dev_certs:
        assert settings.cert is not None and settings.ca_dir is not None
        return HostCredentials(settings.cert, settings.key, settings.ca_dir)
    from lbtwist.security.devcerts import dev_pki

    pki = dev_pki(settings.state_dir, reactor)
    return HostCredentials(
        str(pki.host_cert), str(pki.host_key), settings.ca_dir or str(pki.ca_dir), dev_pki=pki
    )


def make_store(settings: Settings, reactor: Any, *, lock: Any = True) -> IEventStore:
    """
    The event store of the role, in the state directory: a proxy's relays the
    events of WMS jobs, with the gLite events it generates
    (L{lbtwist.core.translate.proxy_policy}); a server's relays and generates nothing.

    @param lock: the state directory's lock, held by the caller
        (L{lock_state_dir}); C{True}: the store takes it when it opens.
    """
    from lbtwist.store import store_path
    from lbtwist.store.sqlite import SQLiteStore

    policy = None
    if settings.role == config.PROXY:
        from lbtwist.core.translate import proxy_policy

        hostname = settings.hostname.lower()
        local_endpoints = {(hostname, 9000), ("localhost", 9000)}
        local_endpoints.update(settings.local_endpoint)
        policy = proxy_policy(local_endpoints, hostname)
    if settings.store_url is not None:
        from lbtwist.store.postgres import PostgresStore, is_postgres_url

        if not is_postgres_url(settings.store_url):
            raise InvalidValue(f"--store-url: {settings.store_url!r} is not a postgresql:// URL")
        return PostgresStore(
            settings.store_url,
            clock=reactor,
            policy=policy,
            pool_size=settings.store_pool,
            max_future_skew=settings.max_future_skew * 1_000_000,
            refold_slice=settings.refold_slice,
            query_cache=settings.query_cache,
            list_scan=settings.list_scan,
            jp_register=settings.jpreg_dir is not None,
            notif_changes=settings.store_notif_changes,
            relay_lease=settings.relay_lease,
        )
    return SQLiteStore(
        store_path(settings.state_dir),
        clock=reactor,
        policy=policy,
        max_future_skew=settings.max_future_skew * 1_000_000,
        refold_slice=settings.refold_slice,
        switch_interval=settings.thread_switch_interval / 1_000_000,
        cache_size=settings.job_cache,
        query_cache=settings.query_cache,
        page_cache=settings.sqlite_cache,
        wal_checkpoint_interval=settings.wal_checkpoint_interval,
        list_scan=settings.list_scan,
        outbox_tail=settings.relay_tail,
        lock=lock,
        jp_register=settings.jpreg_dir is not None,
    )


def producer_uids(settings: Settings) -> list[int]:
    """
    Who may log over the socket: C{--producer-uid}, else the service's own uid and root.
    """
    from lbtwist.service.intake import default_producer_uids

    return list(settings.producer_uid) or list(default_producer_uids())


def intake_service(
    settings: Settings, store: IEventStore, reactor: Any
) -> StreamServerEndpointService:
    """
    The intake listener on C{--events}.
    """
    from lbtwist.service.intake import IntakeFactory

    factory = IntakeFactory(
        store,
        clock=reactor,
        max_connections=settings.max_connections,
        max_line=settings.max_event_size,
        max_inflight=settings.max_inflight,
        max_fields=settings.max_fields,
        idle_timeout=settings.intake_idle_timeout,
        allowed_uids=set(producer_uids(settings)),
        allowed_gids=set(settings.producer_gid),
    )
    intake = StreamServerEndpointService(serverFromString(reactor, settings.events), factory)
    # A proxy that cannot listen for events must not run on: fail start-up instead.
    intake._raiseSynchronously = True
    return intake


def spool_services(settings: Settings, store: IEventStore, reactor: Any) -> MultiService:
    """
    The interlogger-compatible intake (C{--il-spool}): the spool scanner and, with
    C{--il-socket}, the notification socket.
    """
    from lbtwist.service import ilspool

    assert settings.il_spool is not None
    uids = set(producer_uids(settings))
    spool = MultiService()
    scanner = ilspool.SpoolScanner(
        store,
        settings.il_spool,
        clock=reactor,
        rescan_interval=settings.il_rescan_interval,
        poll_interval=settings.il_poll_interval,
        remove_idle=None if settings.il_keep_files else settings.il_remove_idle,
        batch_events=settings.il_batch_events,
        max_line=settings.max_event_size,
        max_fields=settings.max_fields,
        allowed_uids=uids,
        allowed_gids=set(settings.producer_gid),
        inotify=not settings.il_no_inotify,
        reactor=reactor,
    )
    scanner.setServiceParent(spool)
    if settings.il_socket:
        factory = ilspool.PokeFactory(
            scanner,
            clock=reactor,
            max_line=settings.max_event_size,
            max_connections=settings.max_connections,
            idle_timeout=settings.intake_idle_timeout,
            allowed_uids=uids,
            allowed_gids=set(settings.producer_gid),
        )
        # A UNIX socket's pokes are taken by a lean acceptor (a connection per poke).
        endpoint = ilspool.PokeEndpoint(serverFromString(reactor, settings.il_socket), reactor)
        pokes = StreamServerEndpointService(endpoint, factory)
        # Like the intake: a proxy that cannot listen where CREAM pokes must not run on.
        pokes._raiseSynchronously = True
        pokes.setServiceParent(spool)
    log.info(
        "lbtwist spool intake: {prefix}.* (pokes on {socket})",
        prefix=scanner.prefix,
        socket=settings.il_socket or "no socket",
    )
    return spool


def serve_service(
    settings: Settings, store: IEventStore, reactor: Any
) -> StreamServerEndpointService:
    """
    The local query (serve) socket on C{--serve}: the producers' uids and gids.
    """
    from lbtwist.service.serve import ServeFactory, make_requests

    factory = ServeFactory(
        make_requests(store, max_answer=settings.serve_max_answer),
        clock=reactor,
        allowed_uids=set(producer_uids(settings)),
        allowed_gids=set(settings.producer_gid),
    )
    return StreamServerEndpointService(serverFromString(reactor, settings.serve), factory)


def port_limits(settings: Settings, port: str) -> PortLimits:
    """
    The bounds of the TLS port C{port} (C{"query"} or C{"store"}).
    """
    from lbtwist.security.tls import PortLimits

    store = port == "store"
    return PortLimits(
        handshake_timeout=settings.tls_handshake_timeout,
        idle_timeout=settings.store_idle_timeout if store else settings.query_idle_timeout,
        max_connections=(
            settings.store_max_connections if store else settings.query_max_connections
        ),
        max_handshakes=settings.max_handshakes,
        max_handshakes_per_address=settings.max_handshakes_per_address,
        max_connections_per_address=settings.max_connections_per_address,
    )


def context_source(
    settings: Settings, credentials: HostCredentials, reactor: Any
) -> ServerContextSource:
    """
    The TLS server side of one port: the host credentials, client chains checked against
    the CA directory and CRLs, refusals logged at the configured rate.
    """
    from lbtwist.security.tls import ServerContextSource

    return ServerContextSource(
        credentials.cert,
        credentials.key,
        credentials.ca_dir,
        crl=settings.crl,
        clock=reactor,
        log_interval=settings.tls_log_interval,
        log_burst=settings.tls_log_burst,
    )


def load_policy(settings: Settings) -> Policy:
    """
    The authorization policy of C{--policy}; without one, the empty policy.
    """
    from lbtwist.security.authz import Policy
    from lbtwist.security.authz import load_policy as load

    return Policy() if settings.policy is None else load(settings.policy)


def query_service(
    settings: Settings,
    credentials: HostCredentials,
    policy: Policy,
    store: IEventStore,
    reactor: Any,
    notify: Any = None,
    health: Any = None,
    routes: Any = None,
    admin: Any = None,
    observer: Any = None,
) -> StreamServerEndpointService:
    """
    The HTTPS query port on C{--query} (with the notification routes of C{notify},
    a L{lbtwist.service.notify.NotifyService}, and C{/health}, a
    L{lbtwist.service.health.HealthResource}, if given; each answered request told
    to C{observer}, L{lbtwist.service.metrics.ServiceMetrics.observe_query}).
    """
    from lbtwist.service.web import ACCESS_LOG, make_query_service

    return make_query_service(
        store,
        reactor,
        endpoint=settings.query,
        source=context_source(settings, credentials, reactor),
        limits=port_limits(settings, "query"),
        policy=policy,
        super_users=settings.super_user,
        voms_dir=settings.voms_dir,
        access_log=os.path.join(settings.state_dir, ACCESS_LOG),
        page_events=settings.page_events,
        access_log_max_size=settings.log_max_size,
        access_log_max_files=settings.log_max_files,
        max_request_line=settings.max_request_line,
        max_header_size=settings.max_header_size,
        max_headers=settings.max_headers,
        notify=notify,
        health=health,
        routes=routes,
        admin=admin,
        lifecycle=lifecycle_limits(settings),
        observer=observer,
    )


def lifecycle_limits(settings: Settings) -> Any:
    """
    The limits of C{/stats} and C{/trace} from the C{stats-*} and C{trace-*} options.
    """
    from lbtwist.service.web.stats import LifecycleLimits

    return LifecycleLimits(
        stats_max_jobs=settings.stats_max_jobs,
        stats_max_buckets=settings.stats_max_buckets,
        trace_max_jobs=settings.trace_max_jobs,
        trace_max_lifetime=settings.trace_max_lifetime,
    )


def trace_expiry_service(settings: Settings, store: IEventStore, reactor: Any) -> IService | None:
    """
    The hourly removal of purged jobs' trace rows older than C{trace-retention}
    (L{None}: kept for ever, or a store without trace rows).
    """
    from lbtwist.service.traceexpiry import TraceExpiry

    if settings.trace_retention is None or getattr(store, "expire_traces", None) is None:
        return None
    return TraceExpiry(
        store, reactor, retention=settings.trace_retention, chunk=settings.trace_expire_chunk
    )


def notify_service(settings: Settings, policy: Policy, store: IEventStore, reactor: Any) -> Any:
    """
    The notification service (registrations, rights, the sweep of expired ones)
    from the C{notify-*} options.
    """
    from lbtwist.core.notif import QueueBounds, ValidityRules
    from lbtwist.service.notify import NotifyService, NotifySettings

    return NotifyService(
        store,
        clock=reactor,
        policy=policy,
        super_users=settings.super_user,
        settings=NotifySettings(
            validity=ValidityRules(
                default=settings.notify_default_validity, maximum=settings.notify_max_validity
            ),
            bounds=QueueBounds(
                max_messages=settings.notify_queue_max_messages,
                max_bytes=settings.notify_queue_max_bytes,
            ),
            max_per_user=settings.notify_max_per_user,
            sweep_interval=settings.notify_sweep_interval,
            sweep_chunk=settings.notify_sweep_chunk,
            keepalive=settings.notify_keepalive,
            bootstrap_max=settings.notify_bootstrap_max_jobs,
            page_messages=settings.notify_page_messages,
            max_body=settings.notify_max_body,
        ),
    )


def store_port_service(
    settings: Settings,
    credentials: HostCredentials,
    policy: Policy,
    store: IEventStore,
    reactor: Any,
) -> StreamServerEndpointService:
    """
    The server's IL store port on C{--store}.
    """
    from lbtwist.service.storeport import make_store_port_service

    assert settings.store is not None
    return make_store_port_service(
        store,
        reactor,
        endpoint=settings.store,
        source=context_source(settings, credentials, reactor),
        limits=port_limits(settings, "store"),
        policy=policy,
        policy_path=settings.policy,
        super_users=settings.super_user,
        voms_dir=settings.voms_dir,
        grey_jobs=settings.grey_jobs,
        max_line=settings.max_event_size,
        max_fields=settings.max_fields,
    )


def relay_service(
    settings: Settings, credentials: HostCredentials, store: IEventStore, reactor: Any
) -> IService:
    """
    The proxy's relay to the L&B servers of its WMS jobs.
    """
    from lbtwist.service.relay import RelaySettings, make_relay_service

    return make_relay_service(
        store,
        reactor,
        credentials=credentials,
        crl=settings.crl,
        relay_map=settings.relay_map,
        settings=RelaySettings(
            window=settings.relay_window,
            enoent_timeout=float(settings.relay_enoent_timeout),
            reconnect_max=settings.relay_reconnect_max,
        ),
        sweep_interval=settings.relay_sweep_interval,
    )


def metrics_service(
    settings: Settings,
    credentials: HostCredentials,
    store: IEventStore,
    reactor: Any,
) -> Any:
    """
    The metrics and health listener on C{--metrics} (TLS with C{--metrics-tls}; none
    with C{--metrics none}) and its refresh timer: a
    L{lbtwist.service.metrics.MetricsService} whose C{metrics} the other parts are
    registered with.
    """
    from lbtwist import __version__
    from lbtwist.service.metrics import (
        MetricsListener,
        MetricsService,
        ServiceMetrics,
        metrics_site,
    )
    from lbtwist.store import store_path

    metrics = ServiceMetrics(
        store,
        reactor,
        role=settings.role,
        version=__version__,
        store_path=store_path(settings.state_dir),
        ca_dir=credentials.ca_dir,
        cert=credentials.cert,
    )
    service = MetricsService(metrics, settings.metrics_refresh_interval)
    if settings.metrics.lower() == "none":
        return service
    endpoint = serverFromString(reactor, settings.metrics)
    if settings.metrics_tls:
        from lbtwist.security.tls import tls_server_endpoint

        endpoint = tls_server_endpoint(
            endpoint,
            context_source(settings, credentials, reactor),
            limits=port_limits(settings, "query"),
            clock=reactor,
            port="metrics",
        )
        metrics.add_tls("metrics", endpoint)
    MetricsListener(endpoint, settings.metrics, metrics_site(metrics)).setServiceParent(service)
    return service


def relay_admin_routes(
    settings: Settings, policy: Policy, relay: IService, reactor: Any
) -> Callable[[Any], dict[bytes, Any]]:
    """
    The query port's C{/relay} routes of a proxy (for super users), a function of the
    port's identify callable.
    """

    def routes(identify: Any) -> dict[bytes, Any]:
        from lbtwist.service.web.admin_relay import RelayAdminResource

        return {
            b"relay": RelayAdminResource(
                settings.state_dir,
                identify=identify,
                policy=policy,
                super_users=settings.super_user,
                relay=relay,
                now=reactor.seconds,
            )
        }

    return routes


def purge_rules(settings: Settings) -> Any:
    """
    The grace periods of the configuration (L{lbtwist.core.purge.PurgeRules}); the
    C{delivered} rule on the proxy only.
    """
    from lbtwist.core.purge import PurgeRules

    return PurgeRules(
        aborted=settings.purge_aborted,
        cancelled=settings.purge_cancelled,
        cleared=settings.purge_cleared,
        done=settings.purge_done,
        other=settings.purge_other,
        delivered=settings.proxy_purge_delivered if settings.role == config.PROXY else None,
    )


def purge_services(
    settings: Settings, store: IEventStore, reactor: Any, policy: Policy
) -> tuple[Any, list[IService]]:
    """
    The purge of the role (docs/lifecycle.md): the admin handler of the query port
    (C{POST /admin/purge}) and the services: the periodic purge (C{--purge-interval})
    and the Job Provenance registration export (C{--jpreg-dir}).
    """
    from lbtwist.service.purge import Purger, PurgeRequest, PurgeService
    from lbtwist.service.web.admin import admin_requests

    rules = purge_rules(settings)
    purger = Purger(
        store,  # type: ignore[arg-type]
        reactor,
        state_dir=settings.state_dir,
        chunk=settings.purge_chunk,
        jpdump_dir=settings.jpdump_dir,
        server=settings.hostname,
        pause=settings.purge_pause,
    )
    services: list[IService] = []
    if settings.purge_interval:
        services.append(
            PurgeService(purger, reactor, settings.purge_interval, PurgeRequest(rules=rules))
        )
    if settings.jpreg_dir is not None:
        from lbtwist.service.jpexport import JPRegExporter

        services.append(
            JPRegExporter(
                store,  # type: ignore[arg-type]
                reactor,
                settings.jpreg_dir,
                server=settings.hostname,
                interval=settings.jpreg_interval,
                batch=settings.jpreg_batch,
            )
        )
    admin = admin_requests(purger, rules, policy=policy, super_users=settings.super_user)
    return admin, services


def _log_dev_commands(pki: DevPKI, query: str) -> None:
    from lbtwist.service.web import dev_commands, endpoint_port

    for line in dev_commands(pki, endpoint_port(query)):
        log.info("development PKI: query with: {command}", command=line)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service tree of one role from parsed options (their L{Options.settings}).

    @param reactor: the reactor to use; the global one when L{None}. Only then are the
        TCP ports tried on the machine (L{check_endpoints}): a reactor given by the
        caller (a test's) listens where it pleases.
    """
    real = reactor is None
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings = options.settings
    prepare_state_dir(settings.state_dir)
    lock = lock_state_dir(settings.state_dir)
    check_endpoints(settings, reactor, try_ports=real)
    credentials = host_credentials(settings, reactor)
    trust = check_credentials(settings, credentials)
    policy = load_policy(settings)
    store = make_store(settings, reactor, lock=lock)

    top = MultiService()
    # Started first, stopped last: the store outlives the listeners feeding it.
    StoreService(store).setServiceParent(top)
    logs.LIMITER.configure(clock=reactor, lines=settings.warnings_per_minute)
    logs.SummaryService(logs.LIMITER, reactor).setServiceParent(top)
    intake = intake_service(settings, store, reactor)
    intake.setServiceParent(top)
    if settings.il_spool:
        spool_services(settings, store, reactor).setServiceParent(top)
    serve_service(settings, store, reactor).setServiceParent(top)
    notify = notify_service(settings, policy, store, reactor)
    notify.setServiceParent(top)
    admin, purging = purge_services(settings, store, reactor, policy)
    for service in purging:
        service.setServiceParent(top)
    expiry = trace_expiry_service(settings, store, reactor)
    if expiry is not None:
        expiry.setServiceParent(top)
    metrics = metrics_service(settings, credentials, store, reactor)
    from lbtwist.service.health import HealthResource

    health = HealthResource(metrics.metrics.health)
    relay = None
    routes = None
    if settings.role == config.PROXY:
        relay = relay_service(settings, credentials, store, reactor)
        routes = relay_admin_routes(settings, policy, relay, reactor)
    query = query_service(
        settings,
        credentials,
        policy,
        store,
        reactor,
        notify=notify,
        health=health,
        routes=routes,
        admin=admin,
        observer=metrics.metrics.observe_query,
    )
    query.setServiceParent(top)
    metrics.metrics.add_tls("query", query.endpoint)
    if credentials.dev_pki is not None:
        _log_dev_commands(credentials.dev_pki, settings.query)
        DevProxyWatch(
            credentials.dev_pki.user_proxy, reactor, settings.dev_proxy_warning
        ).setServiceParent(top)
    if relay is not None:
        relay.setServiceParent(top)
    elif settings.store:
        store_port = store_port_service(settings, credentials, policy, store, reactor)
        store_port.setServiceParent(top)
        metrics.metrics.add_tls("store", store_port.endpoint)
    metrics.metrics.add_intake("events", intake.factory)
    metrics.metrics.relay = relay
    metrics.metrics.notifications = notify.totals
    metrics.setServiceParent(top)
    SummaryLine(settings, credentials, trust, store).setServiceParent(top)
    return top


class DevProxyWatch(Service):
    """
    Warns in the log, once an hour, when the development user proxy expires within
    C{--dev-proxy-warning} seconds (renew it with C{lbtwist certs proxy}).
    """

    #: Seconds between checks.
    interval = 3600.0

    def __init__(self, path: Any, clock: Any, margin: float) -> None:
        self.path = path
        self.clock = clock
        self.margin = margin
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        self.check()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def check(self) -> None:
        """
        Log the warning if due, and schedule the next check.
        """
        from cryptography import x509

        try:
            with open(self.path, "rb") as f:
                expiry = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
        except (OSError, ValueError):
            expiry = None
        left = None if expiry is None else expiry - self.clock.seconds()
        if left is not None and left < self.margin:
            log.warn(
                "the development user proxy {path} expires in {hours:.1f} h: renew it with"
                " lbtwist certs proxy {directory}",
                path=str(self.path),
                hours=max(left, 0) / 3600,
                directory=os.path.dirname(os.path.dirname(str(self.path))),
            )
        self._call = self.clock.callLater(self.interval, self.check)


def twistd_make_service(options: Options) -> IService:
    """
    L{makeService} as C{twistd} calls it: a L{StartupError} (or a credential, endpoint or
    state directory error) is one line on stderr and exit status 1, no traceback.
    """
    try:
        return makeService(options)
    except StartupError as e:
        fail(str(e))
    raise AssertionError("unreachable")  # pragma: no cover


# -- start-up checks: each mistake is one StartupError naming the option and the fix ------


def prepare_state_dir(state_dir: str) -> None:
    """
    Make C{state_dir} (mode 750) and check that it is a writable directory.

    @raise StartupError: it is a file, or cannot be made or written.
    """
    try:
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
    except FileExistsError:
        raise StartupError(
            f"--state-dir {state_dir}: a file is in the way; remove it or choose another directory"
        ) from None
    except OSError as e:
        raise StartupError(
            f"--state-dir {state_dir}: cannot create it ({e.strerror}); create it for the"
            " service's user or choose another directory"
        ) from None
    if not os.path.isdir(state_dir):
        raise StartupError(
            f"--state-dir {state_dir}: not a directory; remove it or choose another directory"
        )
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StartupError(
            f"--state-dir {state_dir}: not writable by uid {os.getuid()}; chown it to the"
            " service's user or choose another directory"
        )


#: The state directory locks this process holds (L{lbtwist.store.statelock}), by directory.
_locks: dict[str, Any] = {}


def lock_state_dir(state_dir: str) -> Any:
    """
    Take the lock of C{state_dir} (L{lbtwist.store.statelock}) for the life of the
    process (the descriptor survives twistd's fork into the background), or the one
    this process took already; the service's store is given it
    (L{make_store}'s C{lock}).

    @return: the L{lbtwist.store.statelock.StateLock}.
    @raise StartupError: another process holds it.
    """
    from lbtwist.store import statelock

    path = os.path.abspath(state_dir)
    held = _locks.get(path)
    if held is not None and held.held:
        return held
    try:
        lock = statelock.acquire(state_dir)
    except statelock.StateDirBusy as e:
        raise StartupError(
            f"--state-dir {state_dir}: another lbtwist (pid {e.holder}) runs on it; stop it"
            " or give this one its own --state-dir"
        ) from None
    except OSError as e:
        raise StartupError(
            f"--state-dir {state_dir}: cannot open its lock file ({e.strerror}); chown the"
            " directory to the service's user or choose another one"
        ) from None
    _locks[path] = lock
    return lock


def store_counts(state_dir: str) -> tuple[int, int, int]:
    """
    Jobs, events and relay backlog (outbox rows) of the store in C{state_dir}, read once
    at start-up from a read-only connection (C{-1} each when it cannot be read).
    """
    import sqlite3

    from lbtwist.store import store_path

    try:
        db = sqlite3.connect(f"file:{store_path(state_dir)}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return (-1, -1, -1)
    try:
        counts = []
        for query in (
            "SELECT count(*) FROM jobs",
            "SELECT coalesce(max(rowid), 0) FROM events",
            "SELECT count(*) FROM outbox",
        ):
            counts.append(int(db.execute(query).fetchone()[0]))
        return (counts[0], counts[1], counts[2])
    except sqlite3.Error:
        return (-1, -1, -1)
    finally:
        db.close()


def summary_fields(settings: Settings, credentials: HostCredentials, trust: Any) -> dict[str, Any]:
    """
    The fields of the start-up summary line but the store's counts.
    """
    from cryptography import x509

    from lbtwist.security.identity import slash_dn

    subject, expiry = "?", "?"
    try:
        with open(credentials.cert, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
        subject = slash_dn(cert.subject)
        expiry = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OSError, ValueError, IndexError):
        pass
    return {
        "version": __version__,
        "role": settings.role,
        "state_dir": settings.state_dir,
        "subject": subject,
        "expiry": expiry,
        "ncas": len(trust.certs),
        "ncrls": len(trust.crls),
        "ca_dir": credentials.ca_dir,
        "listeners": " ".join(f"{name}={value}" for name, value in _endpoint_options(settings)),
    }


class SummaryLine(Service):
    """
    Logs the one start-up summary line when the service starts (after twistd has gone
    to the background): version, role, state directory, jobs/events/backlog, the host
    certificate's subject and expiry, the CA and CRL counts and the listeners.
    """

    def __init__(
        self, settings: Settings, credentials: HostCredentials, trust: Any, store: Any
    ) -> None:
        self.fields = summary_fields(settings, credentials, trust)
        self.state_dir = settings.state_dir

    def startService(self) -> None:
        super().startService()
        for lock in _locks.values():
            lock.write_pid()
        jobs, events, backlog = store_counts(self.state_dir)
        log.info(
            "lbtwist {version} {role} started: state {state_dir}, {jobs} jobs, {events} events,"
            " relay backlog {backlog}; host {subject} (expires {expiry}); {ncas} CAs and"
            " {ncrls} CRLs from {ca_dir}; listening {listeners}",
            jobs=jobs,
            events=events,
            backlog=backlog,
            **self.fields,
        )


def _endpoint_options(settings: Settings) -> list[tuple[str, str]]:
    found = [("events", settings.events), ("serve", settings.serve), ("query", settings.query)]
    if settings.il_socket:
        found.append(("il-socket", settings.il_socket))
    if settings.role == config.SERVER and settings.store:
        found.append(("store", settings.store))
    return found


def check_endpoints(settings: Settings, reactor: Any, *, try_ports: bool = True) -> None:
    """
    Check that every listener option is an endpoint description and (C{try_ports}) that
    its TCP port is free now (a clear line before twistd goes to the background, rather
    than a C{CannotListenError} later).

    @raise StartupError: not an endpoint, or the port is in use.
    """
    import socket

    for name, description in _endpoint_options(settings):
        try:
            endpoint = serverFromString(reactor, description)
        except (ValueError, TypeError) as e:
            hint = f"tcp:{description}" if description.isdigit() else "tcp:PORT or unix:PATH"
            raise StartupError(
                f"--{name} {description}: not an endpoint description ({e}); write {hint}"
            ) from None
        port = getattr(endpoint, "_port", None)
        if not try_ports or not isinstance(port, int) or port == 0:
            continue
        interface = getattr(endpoint, "_interface", "") or ""
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
        except OSError as e:
            raise StartupError(
                f"--{name} {description}: cannot listen on port {port} ({e.strerror});"
                " stop what uses it or choose another port"
            ) from None
        finally:
            probe.close()


def check_credentials(settings: Settings, credentials: HostCredentials) -> Any:
    """
    Load the host credentials and the trust anchors once, as every TLS port will.

    @return: the loaded L{lbtwist.security.tls.CATrust}.
    @raise StartupError: a credential cannot be read or does not match its key, or the
        CA directory holds no CA certificate (without C{--allow-no-ca}).
    """
    from lbtwist.security.tls import CADirectory, TLSConfigError, server_context

    try:
        trust = CADirectory(credentials.ca_dir).load()
    except TLSConfigError as e:
        raise StartupError(f"--ca-dir {credentials.ca_dir}: {e}") from None
    try:
        server_context(credentials.cert, credentials.key, trust, crl=settings.crl)
    except TLSConfigError as e:
        raise StartupError(
            f"--cert {credentials.cert} / --key {credentials.key}: {e}; give a readable"
            " certificate and its own key"
        ) from None
    except Exception as e:  # pyOpenSSL errors of a key that does not match, say
        raise StartupError(
            f"--cert {credentials.cert} / --key {credentials.key}: unusable ({e});"
            " give a readable certificate and its own key"
        ) from None
    if not trust.certs and not settings.allow_no_ca:
        raise StartupError(
            f"--ca-dir {credentials.ca_dir}: no CA certificate there, so every client would be"
            " refused; install the IGTF CAs (or your site's), point --ca-dir at them, or"
            " give --allow-no-ca"
        )
    return trust


# What the two ServiceMakers of twisted/plugins/lbtwist_plugins.py name: each role's Options
# and the shared makeService.
proxy = SimpleNamespace(Options=Options, makeService=twistd_make_service)
server = SimpleNamespace(Options=ServerOptions, makeService=twistd_make_service)
