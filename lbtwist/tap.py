# -*- test-case-name: tests.unit.test_tap -*-
"""
Command-line options and service wiring for C{twistd lbproxy} and C{twistd lbserver}.

Wiring only: parse the options, build the store, the intake listener and (later) the query
and relay services, attach them to a L{MultiService}.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from lbtwist import config
from lbtwist.core.errors import LBError
from lbtwist.service import ilspool, logs

log = Logger()

_VALUE_OPTIONS: list[tuple[str, str, str]] = [
    # (long name, short name or "", help)
    ("config", "", "INI file with a [lbproxy] or [lbserver] section (keys = option names)."),
    ("state-dir", "", "Directory for the store, the intake socket and generated certificates."),
    ("events", "", "Intake listener endpoint (default unix:<state-dir>/events.sock:mode=660)."),
    ("hostname", "", "This node's host name (HOST of generated events; local job ids)."),
    ("max-connections", "", "Most intake connections at once."),
    ("max-event-size", "", "Largest event accepted, in bytes."),
    ("max-fields", "", "Most fields in one event."),
    (
        "max-inflight",
        "",
        "Most unanswered events per connection (over: reading waits for answers).",
    ),
    ("intake-idle-timeout", "", "Seconds an intake connection may go without a complete message."),
    ("intake-backlog", "", "Listen backlog of the intake socket (added to --events as backlog=)."),
    ("query", "", "HTTPS query listener endpoint; lbtwist adds TLS (default tcp:9000)."),
    ("store", "", "IL store-port listener endpoint of the server; lbtwist adds TLS (tcp:9001)."),
    ("cert", "", "Host certificate (PEM)."),
    ("key", "", "Host key (PEM)."),
    ("ca-dir", "", "Trust anchors and CRLs in the hashed layout (X509_CERT_DIR)."),
    ("voms-dir", "", "VOMS .lsc files (X509_VOMS_DIR)."),
    ("crl", "", "CRL checking: require, if-present or off."),
    ("tls-log-interval", "", "Seconds between two identical TLS refusal log lines."),
    ("tls-log-burst", "", "Most TLS refusal log lines per interval in all."),
    ("policy", "", "L&B authorization policy file."),
    ("tls-handshake-timeout", "", "Seconds a TLS port waits for a connection's handshake."),
    (
        "max-handshakes",
        "",
        "Most connections in the TLS handshake per TLS port (over: the oldest closed).",
    ),
    (
        "max-handshakes-per-address",
        "",
        "Most connections in the TLS handshake from one address, per port.",
    ),
    ("max-connections-per-address", "", "Most connections from one address per TLS port."),
    (
        "store-max-connections",
        "",
        "Most established store-port connections (over: least active closed).",
    ),
    ("store-idle-timeout", "", "Seconds a store-port connection may stay silent."),
    (
        "query-max-connections",
        "",
        "Most established query-port connections (over: least active closed).",
    ),
    ("query-idle-timeout", "", "Seconds a query-port connection may stay silent."),
    ("max-request-line", "", "Longest HTTP request or header line on the query port (414 / 431)."),
    ("max-header-size", "", "Longest HTTP request head on the query port, in bytes (431)."),
    ("max-headers", "", "Most HTTP header fields in one query request (431)."),
    ("relay-window", "", "Events in flight per relay destination (1 = stop-and-wait)."),
    ("relay-enoent-timeout", "", "Seconds to keep retrying events of a job unknown upstream."),
    ("page-events", "", "Events per page of a job's history (HTML, JSON, text)."),
    ("log-max-size", "", "Bytes at which the twistd log and the access log are rotated."),
    ("log-max-files", "", "Rotated files kept of the twistd log and of the access log."),
    ("warnings-per-minute", "", "Warning lines per minute per cause (then one summary)."),
    ("max-future-skew", "", "Seconds a DATE may lie ahead; later ones order as at arrival."),
    ("refold-slice", "", "Most events one commit folds to place late events (per commit)."),
    ("il-spool", "", "Read L&B interlogger spool files PREFIX.* (CREAM's LB_IL_PREFIX); off."),
    ("il-socket", "", "Interlogger notification socket (endpoint or path); needs --il-spool."),
    ("il-rescan-interval", "", "Seconds between full rescans of the spool directory (inotify on)."),
    ("il-poll-interval", "", "Seconds between spool rescans without inotify; store retry delay."),
    ("il-remove-idle", "", "Seconds a fully stored spool file stays unchanged before removal."),
    ("il-batch-events", "", "Most spool lines read per pass (one store call)."),
]

_LIST_OPTIONS: list[tuple[str, str]] = [
    ("producer-uid", "User id allowed to log over the socket (repeatable; default own uid, root)."),
    ("producer-gid", "Group id allowed to log over the socket (repeatable)."),
    ("local-endpoint", "HOST:PORT whose job ids belong to this node (repeatable)."),
    ("super-user", "DN of a super user (repeatable)."),
    ("relay-map", "DEST=ENDPOINT: send relay destination host:port elsewhere (repeatable)."),
]

_INT_OPTIONS = (
    "max-connections",
    "max-event-size",
    "max-fields",
    "max-inflight",
    "intake-idle-timeout",
    "intake-backlog",
    "relay-window",
    "relay-enoent-timeout",
    "page-events",
    "log-max-size",
    "log-max-files",
    "warnings-per-minute",
    "max-handshakes",
    "max-handshakes-per-address",
    "max-connections-per-address",
    "store-max-connections",
    "query-max-connections",
    "max-request-line",
    "max-header-size",
    "max-headers",
    "tls-log-interval",
    "tls-log-burst",
    "max-future-skew",
    "refold-slice",
    "il-batch-events",
)

#: Options in seconds (fractions allowed).
_SECONDS_OPTIONS = (
    "tls-handshake-timeout",
    "store-idle-timeout",
    "query-idle-timeout",
    "il-rescan-interval",
    "il-poll-interval",
    "il-remove-idle",
)

#: Flags (also C{yes}/C{no} keys of the config file).
_FLAGS = [
    ["grey-jobs", None, "Server: accept events of jobs not registered yet."],
    ["il-keep-files", None, "Leave fully stored spool files in place (default: remove idle ones)."],
    ["il-no-inotify", None, "Find new spool bytes by rescans only (every --il-poll-interval)."],
]

DEFAULT_CERT = "/etc/grid-security/hostcert.pem"
DEFAULT_KEY = "/etc/grid-security/hostkey.pem"
DEFAULT_CA_DIR = "/etc/grid-security/certificates"
DEFAULT_VOMS_DIR = "/etc/grid-security/vomsdir"


class Options(usage.Options):
    """
    Options of both roles; the role (C{lbproxy} or C{lbserver}) names the config section.
    """

    role = "lbproxy"

    optParameters = [[name, short or None, None, text] for name, short, text in _VALUE_OPTIONS]
    optFlags = _FLAGS

    def __init__(self) -> None:
        super().__init__()
        for name, _ in _LIST_OPTIONS:
            self[name] = []

    def opt_producer_uid(self, value: str) -> None:
        """User id allowed to log over the socket (repeatable; default: own uid and root)."""
        self["producer-uid"].append(value)

    def opt_producer_gid(self, value: str) -> None:
        """Group id allowed to log over the socket (repeatable)."""
        self["producer-gid"].append(value)

    def opt_local_endpoint(self, value: str) -> None:
        """HOST:PORT whose job ids belong to this node (repeatable)."""
        self["local-endpoint"].append(value)

    def opt_super_user(self, value: str) -> None:
        """DN of a super user (repeatable)."""
        self["super-user"].append(value)

    def opt_relay_map(self, value: str) -> None:
        """DEST=ENDPOINT: send relay destination host:port elsewhere (repeatable)."""
        self["relay-map"].append(value)

    def role_defaults(self) -> dict[str, object]:
        """
        The embedded defaults of this role (design section 12).
        """
        return {
            "state-dir": config.DEFAULT_STATE_DIR,
            "events": None,
            "hostname": socket.getfqdn(),
            "max-connections": config.DEFAULT_MAX_CONNECTIONS,
            "max-event-size": config.DEFAULT_MAX_EVENT_SIZE,
            "max-fields": config.DEFAULT_MAX_FIELDS,
            "max-inflight": config.DEFAULT_MAX_INFLIGHT,
            "intake-idle-timeout": config.DEFAULT_INTAKE_IDLE_TIMEOUT,
            "intake-backlog": config.DEFAULT_INTAKE_BACKLOG,
            "producer-uid": [],
            "producer-gid": [],
            "local-endpoint": [],
            "query": None,
            "store": "tcp:9001" if self.role == "lbserver" else None,
            "cert": None,
            "key": None,
            "ca-dir": None,
            "voms-dir": None,
            "crl": "if-present",
            "tls-log-interval": config.DEFAULT_TLS_LOG_INTERVAL,
            "tls-log-burst": config.DEFAULT_TLS_LOG_BURST,
            "policy": None,
            "super-user": [],
            "relay-map": [],
            "tls-handshake-timeout": config.DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            "max-handshakes": config.DEFAULT_MAX_HANDSHAKES,
            "max-handshakes-per-address": config.DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            "max-connections-per-address": config.DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            "store-max-connections": config.DEFAULT_STORE_MAX_CONNECTIONS,
            "store-idle-timeout": config.DEFAULT_STORE_IDLE_TIMEOUT,
            "query-max-connections": config.DEFAULT_QUERY_MAX_CONNECTIONS,
            "query-idle-timeout": config.DEFAULT_QUERY_IDLE_TIMEOUT,
            "max-request-line": config.DEFAULT_MAX_REQUEST_LINE,
            "max-header-size": config.DEFAULT_MAX_HEADER_SIZE,
            "max-headers": config.DEFAULT_MAX_HEADERS,
            "relay-window": config.DEFAULT_RELAY_WINDOW,
            "relay-enoent-timeout": 3600,
            "page-events": config.DEFAULT_PAGE_EVENTS,
            "log-max-size": logs.DEFAULT_LOG_MAX_SIZE,
            "log-max-files": logs.DEFAULT_LOG_MAX_FILES,
            "warnings-per-minute": logs.DEFAULT_WARNINGS_PER_MINUTE,
            "max-future-skew": config.DEFAULT_MAX_FUTURE_SKEW,
            "refold-slice": config.DEFAULT_REFOLD_SLICE,
            "il-spool": None,
            "il-socket": None,
            "il-rescan-interval": ilspool.DEFAULT_RESCAN_INTERVAL,
            "il-poll-interval": ilspool.DEFAULT_POLL_INTERVAL,
            "il-remove-idle": ilspool.DEFAULT_REMOVE_IDLE,
            "il-batch-events": ilspool.DEFAULT_BATCH_EVENTS,
            "il-keep-files": False,
            "il-no-inotify": False,
            "grey-jobs": False,
        }

    def postOptions(self) -> None:
        flags = [str(flag[0]) for flag in _FLAGS]
        known = [name for name, _, _ in _VALUE_OPTIONS if name != "config"] + flags
        known += [name for name, _ in _LIST_OPTIONS]
        from_file: dict[str, Any] = {}
        if self["config"]:
            try:
                raw = config.read_config(self["config"], self.role, known)
            except LBError as e:
                raise usage.UsageError(e.message) from e
            for key, value in raw.items():
                if any(key == name for name, _ in _LIST_OPTIONS):
                    from_file[key] = config.split_values(value)
                else:
                    from_file[key] = value
        explicit = {key: self[key] for key in known}
        for flag in flags:
            # usage.Options leaves an unset flag 0: "not given", so the file may set it.
            explicit[flag] = True if explicit[flag] else None
        merged = config.merge(explicit, from_file, self.role_defaults())
        for key in _INT_OPTIONS:
            try:
                merged[key] = int(str(merged[key]))
            except ValueError:
                raise usage.UsageError(f"--{key}: not a whole number: {merged[key]!r}") from None
            if merged[key] <= 0:  # type: ignore[operator]
                raise usage.UsageError(f"--{key}: must be positive")
        for key in _SECONDS_OPTIONS:
            try:
                seconds = float(str(merged[key]))
            except ValueError:
                raise usage.UsageError(
                    f"--{key}: not a number of seconds: {merged[key]!r}"
                ) from None
            if not 0 < seconds < float("inf"):
                raise usage.UsageError(f"--{key}: must be a positive number of seconds")
            merged[key] = seconds
        merged["producer-uid"] = _ids("producer-uid", merged["producer-uid"])
        merged["producer-gid"] = _ids("producer-gid", merged["producer-gid"])
        merged["local-endpoint"] = [
            _host_port("local-endpoint", v)
            for v in merged["local-endpoint"]  # type: ignore[attr-defined]
        ]
        if merged["crl"] not in ("require", "if-present", "off"):
            raise usage.UsageError(
                f"--crl: expected require, if-present or off, got {merged['crl']!r}"
            )
        try:
            for flag in flags:
                merged[flag] = config.parse_bool(flag, str(merged[flag]))
        except LBError as e:
            raise usage.UsageError(e.message) from None
        if merged["il-socket"] and not merged["il-spool"]:
            raise usage.UsageError("--il-socket needs --il-spool (pokes only name the files)")
        if merged["il-socket"] and str(merged["il-socket"]).startswith("/"):
            merged["il-socket"] = f"unix:{_escape_endpoint(str(merged['il-socket']))}:mode=660"
        merged["relay-map"] = [_relay_map(v) for v in merged["relay-map"]]  # type: ignore[attr-defined]
        self._credentials(merged)
        # twistd's own options (our parent) get the capped file log.
        logs.install_logger(
            getattr(self, "parent", None),
            int(merged["log-max-size"]),  # type: ignore[call-overload]
            int(merged["log-max-files"]),  # type: ignore[call-overload]
        )
        state_dir = os.path.abspath(str(merged["state-dir"]))
        merged["state-dir"] = state_dir
        if not merged["events"]:
            merged["events"] = (
                f"unix:{_escape_endpoint(os.path.join(state_dir, 'events.sock'))}:mode=660"
            )
        merged["events"] = _with_backlog(str(merged["events"]), merged["intake-backlog"])
        merged["dev-certs"] = merged["cert"] is None
        if merged["query"] is None:
            # Development certificates are only good for this machine: listen on localhost.
            merged["query"] = "tcp:9000:interface=127.0.0.1" if merged["dev-certs"] else "tcp:9000"
        self.update(merged)

    def _credentials(self, merged: dict[str, Any]) -> None:
        """
        Fill host credential and trust anchor defaults: explicit values, then the grid
        defaults if they exist, else the development PKI under the state directory (marked by
        C{cert} left L{None}).
        """
        env = os.environ
        if merged["ca-dir"] is None:
            merged["ca-dir"] = env.get("X509_CERT_DIR") or None
        if merged["voms-dir"] is None:
            merged["voms-dir"] = env.get("X509_VOMS_DIR") or DEFAULT_VOMS_DIR
        if merged["cert"] is None and merged["key"] is None:
            if os.path.exists(DEFAULT_CERT) and os.path.exists(DEFAULT_KEY):
                merged["cert"], merged["key"] = DEFAULT_CERT, DEFAULT_KEY
        elif merged["cert"] is None or merged["key"] is None:
            raise usage.UsageError("--cert and --key go together")
        if merged["cert"] is not None and merged["ca-dir"] is None:
            merged["ca-dir"] = DEFAULT_CA_DIR


class ServerOptions(Options):
    """
    Options of C{twistd lbserver}.
    """

    role = "lbserver"


def _ids(name: str, values: object) -> list[int]:
    result = []
    for value in values:  # type: ignore[attr-defined]
        try:
            result.append(int(value))
        except ValueError:
            raise usage.UsageError(f"--{name}: not a numeric id: {value!r}") from None
    return result


def _host_port(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise usage.UsageError(f"--{name}: expected HOST:PORT, got {value!r}")
    return host.lower(), int(port)


def _relay_map(value: str) -> tuple[tuple[str, int], str]:
    dest, sep, endpoint = value.partition("=")
    if not sep or not endpoint:
        raise usage.UsageError(f"--relay-map: expected HOST:PORT=ENDPOINT, got {value!r}")
    return _host_port("relay-map", dest), endpoint


def _with_backlog(endpoint: str, backlog: object) -> str:
    """
    Add C{backlog=} to a C{unix:} or C{tcp:} endpoint string that has none.
    """
    if endpoint.startswith(("unix:", "tcp:")) and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={backlog}"
    return endpoint


def _escape_endpoint(path: str) -> str:
    """
    Escape a file name for use in an endpoint description string.
    """
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class StoreService(Service):
    """
    Closes the store when the service stops, after the listeners in front of it have stopped.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def startService(self) -> None:
        # Threads and database connections are made here, after twistd has daemonized.
        start = getattr(self.store, "start", None)
        if start is not None:
            start()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self.store.close()  # type: ignore[no-any-return]


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service tree of one role from parsed options.

    @param reactor: the reactor to use; the global one when L{None}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from lbtwist.service.intake import IntakeFactory
    from lbtwist.store.sqlite import SQLiteStore

    state_dir = options["state-dir"]
    os.makedirs(state_dir, mode=0o750, exist_ok=True)

    hostname = options["hostname"].lower()
    local_endpoints = {(hostname, 9000), ("localhost", 9000)}
    local_endpoints.update(options["local-endpoint"])
    relay = options.role == "lbproxy"
    store = SQLiteStore(
        os.path.join(state_dir, "lbtwist.sqlite"),
        clock=reactor,
        relay=relay,
        local_endpoints=local_endpoints,
        proxy_host=hostname,
        max_future_skew=options["max-future-skew"] * 1_000_000,
        refold_slice=options["refold-slice"],
    )

    top = MultiService()
    # Started first, stopped last: the store outlives the listeners feeding it.
    StoreService(store).setServiceParent(top)
    logs.LIMITER.configure(clock=reactor, lines=options["warnings-per-minute"])
    logs.SummaryService(logs.LIMITER, reactor).setServiceParent(top)

    uids = options["producer-uid"] or sorted({os.getuid(), 0})
    factory = IntakeFactory(
        store,
        clock=reactor,
        max_connections=options["max-connections"],
        max_line=options["max-event-size"],
        max_inflight=options["max-inflight"],
        max_fields=options["max-fields"],
        idle_timeout=options["intake-idle-timeout"],
        allowed_uids=set(uids),
        allowed_gids=set(options["producer-gid"]),
    )
    intake = StreamServerEndpointService(serverFromString(reactor, options["events"]), factory)
    # A proxy that cannot listen for events must not run on: fail start-up instead.
    intake._raiseSynchronously = True
    intake.setServiceParent(top)
    if options["il-spool"]:
        _spool_services(options, store, reactor, set(uids)).setServiceParent(top)
    from lbtwist.service.web import make_query_service

    make_query_service(options, store, reactor).setServiceParent(top)
    if relay:
        from lbtwist.service.relay import make_relay_service

        make_relay_service(options, store, reactor).setServiceParent(top)
    elif options["store"]:
        from lbtwist.service.storeport import make_store_port_service

        make_store_port_service(options, store, reactor).setServiceParent(top)
    log.info(
        "lbtwist {role}: state in {state_dir}, events on {events}, producers uid {uids}",
        role=options.role,
        state_dir=state_dir,
        events=options["events"],
        uids=uids,
    )
    return top


def _spool_services(options: Options, store: Any, reactor: Any, uids: set[int]) -> IService:
    """
    The interlogger-compatible intake: the spool scanner and, if asked for, the
    notification socket.
    """
    spool = MultiService()
    scanner = ilspool.SpoolScanner(
        store,
        options["il-spool"],
        clock=reactor,
        rescan_interval=options["il-rescan-interval"],
        poll_interval=options["il-poll-interval"],
        remove_idle=None if options["il-keep-files"] else options["il-remove-idle"],
        batch_events=options["il-batch-events"],
        max_line=options["max-event-size"],
        max_fields=options["max-fields"],
        allowed_uids=uids,
        allowed_gids=set(options["producer-gid"]),
        inotify=not options["il-no-inotify"],
        reactor=reactor,
    )
    scanner.setServiceParent(spool)
    if options["il-socket"]:
        factory = ilspool.PokeFactory(
            scanner,
            clock=reactor,
            max_line=options["max-event-size"],
            max_connections=options["max-connections"],
            idle_timeout=options["intake-idle-timeout"],
            allowed_uids=uids,
            allowed_gids=set(options["producer-gid"]),
        )
        socket_service = StreamServerEndpointService(
            serverFromString(reactor, options["il-socket"]), factory
        )
        socket_service._raiseSynchronously = True
        socket_service.setServiceParent(spool)
    log.info(
        "lbtwist spool intake: {prefix}.* (pokes on {socket})",
        prefix=scanner.prefix,
        socket=options["il-socket"] or "no socket",
    )
    return spool


# What the two ServiceMakers of twisted/plugins/lbtwist_plugins.py name: each role's Options
# and the shared makeService.
proxy = SimpleNamespace(Options=Options, makeService=makeService)
server = SimpleNamespace(Options=ServerOptions, makeService=makeService)
