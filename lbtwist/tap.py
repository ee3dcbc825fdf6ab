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
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from lbtwist import config
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


def make_store(settings: Settings, reactor: Any) -> IEventStore:
    """
    The event store of the role, in the state directory: a proxy's relays the
    events of WMS jobs, with the gLite events it generates
    (L{lbtwist.core.translate.proxy_policy}); a server's relays and generates nothing.
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
        list_scan=settings.list_scan,
        outbox_tail=settings.relay_tail,
        lock=True,
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
    admin: Any = None,
) -> StreamServerEndpointService:
    """
    The HTTPS query port on C{--query} (with the notification routes of C{notify},
    a L{lbtwist.service.notify.NotifyService}, if given).
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
        admin=admin,
        lifecycle=lifecycle_limits(settings),
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
            window=settings.relay_window, enoent_timeout=float(settings.relay_enoent_timeout)
        ),
    )


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

    @param reactor: the reactor to use; the global one when L{None}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings = options.settings
    os.makedirs(settings.state_dir, mode=0o750, exist_ok=True)
    credentials = host_credentials(settings, reactor)
    policy = load_policy(settings)
    store = make_store(settings, reactor)

    top = MultiService()
    # Started first, stopped last: the store outlives the listeners feeding it.
    StoreService(store).setServiceParent(top)
    logs.LIMITER.configure(clock=reactor, lines=settings.warnings_per_minute)
    logs.SummaryService(logs.LIMITER, reactor).setServiceParent(top)
    intake_service(settings, store, reactor).setServiceParent(top)
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
    query_service(
        settings, credentials, policy, store, reactor, notify=notify, admin=admin
    ).setServiceParent(top)
    if credentials.dev_pki is not None:
        _log_dev_commands(credentials.dev_pki, settings.query)
    if settings.role == config.PROXY:
        relay_service(settings, credentials, store, reactor).setServiceParent(top)
    elif settings.store:
        store_port_service(settings, credentials, policy, store, reactor).setServiceParent(top)
    log.info(
        "lbtwist {role}: state in {state_dir}, events on {events}, producers uid {uids}",
        role=settings.role,
        state_dir=settings.state_dir,
        events=settings.events,
        uids=producer_uids(settings),
    )
    return top


# What the two ServiceMakers of twisted/plugins/lbtwist_plugins.py name: each role's Options
# and the shared makeService.
proxy = SimpleNamespace(Options=Options, makeService=makeService)
server = SimpleNamespace(Options=ServerOptions, makeService=makeService)
