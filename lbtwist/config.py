# -*- test-case-name: tests.unit.test_settings -*-
"""
The option table of both roles, INI configuration loading, the embedded defaults and the
frozen L{Settings} value they produce.

L{OPTIONS} is the one declarative table: C{lbtwist.tap} generates the command-line options
from it and L{load_settings} reads the configuration file with it, so a name, a type, a
default or a help text is written once.

A configuration file has one section per role (C{[lbproxy]} or C{[lbserver]}); its keys are
the long command-line option names (C{state-dir = /var/lib/lbtwist}; C{state_dir} is accepted
too). Repeatable options take several values separated by newlines or commas. Options given
on the command line override the file; the file overrides the built-in defaults.
"""

from __future__ import annotations

import configparser
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from lbtwist.core.errors import InvalidValue
from lbtwist.core.purge import parse_duration, parse_grace

DEFAULT_STATE_DIR = "./lbtwist-state"

# Intake bounds (docs/protocol.md); every one is an option.
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_EVENT_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_FIELDS = 100
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_INTAKE_IDLE_TIMEOUT = 60
DEFAULT_INTAKE_BACKLOG = 1024

DEFAULT_RELAY_WINDOW = 1024
#: Committed outbox rows the relay keeps in memory per destination (docs/relay.md).
DEFAULT_RELAY_TAIL = 8192
#: Seconds a front end's relay lease lasts unless renewed (PostgreSQL store).
DEFAULT_RELAY_LEASE = 15.0
DEFAULT_MAX_FUTURE_SKEW = 86_400  # seconds
DEFAULT_REFOLD_SLICE = 100  # events
#: Python's thread switch interval while the store's threads run (microseconds; the
#: interpreter's own is 5,000): how long the reactor may wait for the writer thread.
DEFAULT_THREAD_SWITCH_INTERVAL = 500
# The metrics and health listener.
DEFAULT_METRICS = "tcp:9100:interface=127.0.0.1"
DEFAULT_METRICS_REFRESH_INTERVAL = 15.0
DEFAULT_RELAY_SWEEP_INTERVAL = 60.0
DEFAULT_SERVE_MAX_ANSWER = 16 * 1024 * 1024  # bytes
# Memory bounds of the store (docs/reference.md, Performance targets); every one is an option.
DEFAULT_JOB_CACHE = 20_000  # job statuses the writer keeps
DEFAULT_QUERY_CACHE = 2048  # parsed statuses the query reader keeps
DEFAULT_WAL_CHECKPOINT_INTERVAL = 0.1  # seconds (lbtwist.store.sqlite.WalCheckpointer)
DEFAULT_SQLITE_CACHE = 2000  # KiB of SQLite page cache per connection (SQLite's own default)
DEFAULT_LIST_SCAN = 1000  # jobs one filtered job list page examines

#: Events per page of a job's history (queries).
DEFAULT_PAGE_EVENTS = 500
# Bounds of the TLS ports (docs/limits.md); every one is an option.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_HANDSHAKES = 64
DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 8
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64
DEFAULT_STORE_MAX_CONNECTIONS = 256
DEFAULT_STORE_IDLE_TIMEOUT = 300.0
DEFAULT_QUERY_MAX_CONNECTIONS = 256
DEFAULT_QUERY_IDLE_TIMEOUT = 60.0
# HTTP request head bounds of the query port.
DEFAULT_MAX_REQUEST_LINE = 16 * 1024
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_MAX_HEADERS = 100
# Rate limit of TLS refusal log lines (per identical line; in all per interval).
DEFAULT_TLS_LOG_INTERVAL = 60
DEFAULT_TLS_LOG_BURST = 50
# Enoent retries of the relay (seconds since an event arrived).
DEFAULT_RELAY_ENOENT_TIMEOUT = 3600
# The capped twistd log and access log (lbtwist.service.logs uses the same numbers).
DEFAULT_LOG_MAX_SIZE = 10_000_000
DEFAULT_LOG_MAX_FILES = 10
DEFAULT_WARNINGS_PER_MINUTE = 10
# The store port of the server.
DEFAULT_STORE_ENDPOINT = "tcp:9001"
DEFAULT_QUERY_ENDPOINT = "tcp:9000"
#: The query endpoint on development certificates: they are only good for this machine.
DEFAULT_DEV_QUERY_ENDPOINT = "tcp:9000:interface=127.0.0.1"

# Host credentials and trust anchors when none are configured.
DEFAULT_CERT = "/etc/grid-security/hostcert.pem"
DEFAULT_KEY = "/etc/grid-security/hostkey.pem"
DEFAULT_CA_DIR = "/etc/grid-security/certificates"
DEFAULT_VOMS_DIR = "/etc/grid-security/vomsdir"
#: The development PKI's directory under the state directory (made when no host
#: credentials are configured), and the VOMS directory in it: the default --voms-dir
#: on development certificates.
DEV_PKI_DIR = "devcerts"
DEV_VOMS_DIR = "vomsdir"

PROXY = "lbproxy"
SERVER = "lbserver"
ROLES = (PROXY, SERVER)


def normalize_key(key: str) -> str:
    """
    Map an option name as written in a file or on the command line to its canonical form.

    @return: the name in lower case with C{-} between words (C{state_dir} -> C{state-dir}).
    """
    return key.strip().lower().replace("_", "-")


def split_values(text: str) -> list[str]:
    """
    Split the value of a repeatable option into its items (newline- or comma-separated).
    """
    items: list[str] = []
    for line in text.splitlines():
        items.extend(part.strip() for part in line.split(","))
    return [item for item in items if item]


def read_config(path: str, section: str, known: Iterable[str]) -> dict[str, str]:
    """
    Read one role's section of an INI file.

    @param path: the file.
    @param section: C{lbproxy} or C{lbserver}.
    @param known: the canonical option names the role accepts.
    @return: canonical option name -> raw string value.
    @raise InvalidValue: the file cannot be read, lacks the section, or names an unknown key.
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise InvalidValue(f"cannot read configuration {path}: {e}") from e
    if not parser.has_section(section):
        raise InvalidValue(f"configuration {path} has no [{section}] section")
    allowed = set(known)
    values: dict[str, str] = {}
    for key, value in parser.items(section):
        name = normalize_key(key)
        if name not in allowed:
            raise InvalidValue(
                f"configuration {path}: unknown key {key!r} in [{section}]"
                f" (known: {', '.join(sorted(allowed))})"
            )
        values[name] = value
    return values


def parse_bool(name: str, text: str) -> bool:
    """
    Parse a boolean configuration value (C{yes/no}, C{true/false}, C{on/off}, C{1/0}).
    """
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise InvalidValue(f"{name}: expected a boolean, got {text!r}")


def merge(
    explicit: Mapping[str, object], from_file: Mapping[str, str], defaults: Mapping[str, object]
) -> dict[str, object]:
    """
    Combine the three layers: explicit command-line values win over the file, which wins over
    the defaults. A command-line value of C{None} (or an empty list) means "not given".
    """
    result: dict[str, object] = dict(defaults)
    result.update(from_file)
    for key, value in explicit.items():
        if value is None or value == [] or value is False:
            continue
        result[key] = value
    return result


# -- value types of the option table ---------------------------------------------------
#
# Each takes the option's name and its text (a command-line argument, a file value, or a
# default written as text) and returns the typed value, or raises InvalidValue naming the
# option.


def _text(name: str, text: str) -> str:
    return text


def _count(name: str, text: str) -> int:
    """
    A positive whole number.
    """
    try:
        value = int(text)
    except ValueError:
        raise InvalidValue(f"--{name}: not a whole number: {text!r}") from None
    if value <= 0:
        raise InvalidValue(f"--{name}: must be positive")
    return value


def _seconds(name: str, text: str) -> float:
    """
    A positive, finite number of seconds (fractions allowed).
    """
    try:
        value = float(text)
    except ValueError:
        raise InvalidValue(f"--{name}: not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise InvalidValue(f"--{name}: must be a positive number of seconds")
    return value


CRL_MODES = ("require", "if-present", "off")


def _crl(name: str, text: str) -> str:
    if text not in CRL_MODES:
        raise InvalidValue(f"--{name}: expected require, if-present or off, got {text!r}")
    return text


def _ratio(name: str, text: str) -> float:
    """
    A finite number, zero or more.
    """
    try:
        value = float(text)
    except ValueError:
        raise InvalidValue(f"--{name}: not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise InvalidValue(f"--{name}: must be zero or more")
    return value


def _grace(name: str, text: str) -> int | None:
    """
    A purge grace period: a duration (C{2d}, C{12h}, C{30m}, seconds) or C{never}.
    """
    try:
        return parse_grace(text)
    except InvalidValue as e:
        raise InvalidValue(f"--{name}: {e.message}") from None


def _lease_seconds(name: str, text: str) -> float:
    """
    Seconds, fractions allowed, with an optional C{s} (C{15}, C{15s}, C{2.5}).
    """
    text = text.strip()
    return _seconds(name, text[:-1] if text.lower().endswith("s") else text)


def _seconds_int(name: str, text: str) -> int:
    """
    A duration (C{2d}, C{12h}, C{30m}, seconds), not C{never}.
    """
    value = _grace(name, text)
    if value is None:
        raise InvalidValue(f"--{name}: a duration is needed, not never")
    return value


def _interval_or_off(name: str, text: str) -> float | None:
    """
    A period of a background task as a duration; C{0} or C{off}: not run (L{None}).
    """
    if text.strip().lower() in ("off", "never", "no", "none"):
        return None
    try:
        value: float | None = float(text)
    except ValueError:
        value = None
    try:
        seconds = float(parse_duration(text)) if value is None else value
    except InvalidValue as e:
        raise InvalidValue(f"--{name}: {e.message}") from None
    if not 0 <= seconds < float("inf"):
        raise InvalidValue(f"--{name}: must be a duration or 0")
    return seconds or None


def _flag(name: str, text: str) -> bool:
    return parse_bool(name, text)


def _numeric_id(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidValue(f"--{name}: not a numeric id: {text!r}") from None


def _host_port(name: str, text: str) -> tuple[str, int]:
    """
    C{HOST:PORT}, the host in lower case.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidValue(f"--{name}: expected HOST:PORT, got {text!r}")
    return host.lower(), int(port)


def _relay_map(name: str, text: str) -> tuple[tuple[str, int], str]:
    """
    C{HOST:PORT=ENDPOINT}.
    """
    dest, sep, endpoint = text.partition("=")
    if not sep or not endpoint:
        raise InvalidValue(f"--{name}: expected HOST:PORT=ENDPOINT, got {text!r}")
    return _host_port(name, dest), endpoint


# -- the option table -------------------------------------------------------------------


@attrs.frozen
class Option:
    """
    One option of C{twistd lbproxy} / C{twistd lbserver}, also a key of the configuration
    file (except C{config} itself).

    @ivar name: the long option name and the file key (C{state-dir}); the L{Settings}
        attribute is the same with underscores.
    @ivar parse: the value type: (name, text) -> value, raising L{InvalidValue}.
    @ivar default: the embedded default (L{None}: not set, or derived by L{load_settings}).
    @ivar help: the one-line help of C{--help}.
    @ivar repeatable: given several times (several values, comma- or newline-separated,
        in the file); the value is a tuple.
    @ivar flag: a command-line switch without a value (a boolean in the file).
    @ivar roles: the roles it applies to, whose sample file (C{etc/<role>.conf}) documents
        it. Both roles accept every option.
    @ivar role_defaults: defaults that differ by role.
    @ivar in_file: whether the configuration file may set it.
    """

    name: str
    parse: Callable[[str, str], object]
    default: object
    help: str
    repeatable: bool = False
    flag: bool = False
    roles: frozenset[str] = frozenset(ROLES)
    role_defaults: Mapping[str, object] = attrs.field(factory=dict)
    in_file: bool = True

    @property
    def attribute(self) -> str:
        """
        The name of the L{Settings} attribute.
        """
        return self.name.replace("-", "_")

    def default_for(self, role: str) -> object:
        """
        The default of this option in C{role}.
        """
        return self.role_defaults.get(role, self.default)


_SERVER_ONLY = frozenset({SERVER})
_PROXY_ONLY = frozenset({PROXY})

# Notifications (docs/notifications.md).
DEFAULT_NOTIFY_VALIDITY = 2 * 3600
DEFAULT_NOTIFY_MAX_VALIDITY = 24 * 3600
DEFAULT_NOTIFY_QUEUE_MESSAGES = 10_000
DEFAULT_NOTIFY_QUEUE_BYTES = 16 * 1024 * 1024
DEFAULT_NOTIFY_KEEPALIVE = 15.0
DEFAULT_NOTIFY_MAX_PER_USER = 100
DEFAULT_NOTIFY_SWEEP_INTERVAL = 60.0
DEFAULT_NOTIFY_SWEEP_CHUNK = 500
DEFAULT_NOTIFY_BOOTSTRAP_JOBS = 10_000
DEFAULT_NOTIFY_PAGE_MESSAGES = 1000
DEFAULT_NOTIFY_MAX_BODY = 64 * 1024

# The interlogger-compatible intake (docs/spool.md): off unless --il-spool is given.
DEFAULT_IL_RESCAN_INTERVAL = 60.0
DEFAULT_IL_POLL_INTERVAL = 1.0
DEFAULT_IL_REMOVE_IDLE = 600.0
DEFAULT_IL_BATCH_EVENTS = 2000
#: Listen backlog of the poke socket (see docs/spool.md, Figures).
DEFAULT_IL_SOCKET_BACKLOG = 50

# Purge and Job Provenance export (docs/lifecycle.md).
DEFAULT_PURGE_CHUNK = 100
DEFAULT_PURGE_PAUSE = 1.0
_DAY = 86_400
DEFAULT_JPREG_INTERVAL = 1.0
DEFAULT_JPREG_BATCH = 500
DEFAULT_STATS_MAX_JOBS = 100_000
DEFAULT_STATS_MAX_BUCKETS = 1000
DEFAULT_TRACE_MAX_JOBS = 1000
DEFAULT_TRACE_RETENTION = 365 * _DAY
DEFAULT_TRACE_MAX_LIFETIME = 7 * _DAY
DEFAULT_TRACE_EXPIRE_CHUNK = 500


# The PostgreSQL store (docs/store.md): its reader connections per front end.
DEFAULT_STORE_POOL = 2
#: Registration change rows a PostgreSQL store keeps (C{store-notif-changes}).
DEFAULT_STORE_NOTIF_CHANGES = 10_000


def _value(
    name: str, parse: Callable[[str, str], object], default: object, help: str, **kw: Any
) -> Option:
    return Option(name, parse, default, help, **kw)


def _list(name: str, parse: Callable[[str, str], object], help: str) -> Option:
    return Option(name, parse, (), help, repeatable=True)


#: Every option, in C{--help} order.
OPTIONS: tuple[Option, ...] = (
    _value(
        "config",
        _text,
        None,
        "INI file with a [lbproxy] or [lbserver] section (keys = option names).",
        in_file=False,
    ),
    _value(
        "state-dir",
        _text,
        DEFAULT_STATE_DIR,
        "Directory for the store, the intake socket and generated certificates.",
    ),
    _value(
        "events",
        _text,
        None,
        "Intake listener endpoint (default unix:<state-dir>/events.sock:mode=660).",
    ),
    _value(
        "serve",
        _text,
        None,
        "Local query (serve) socket endpoint (default unix:<state-dir>/serve.sock:mode=660).",
    ),
    _value(
        "serve-max-answer",
        _count,
        DEFAULT_SERVE_MAX_ANSWER,
        "Largest answer of the serve socket, in bytes (STATUS, EVENTS).",
    ),
    _value(
        "hostname", _text, None, "This node's host name (HOST of generated events; local job ids)."
    ),
    _value("max-connections", _count, DEFAULT_MAX_CONNECTIONS, "Most intake connections at once."),
    _value("max-event-size", _count, DEFAULT_MAX_EVENT_SIZE, "Largest event accepted, in bytes."),
    _value("max-fields", _count, DEFAULT_MAX_FIELDS, "Most fields in one event."),
    _value(
        "max-inflight",
        _count,
        DEFAULT_MAX_INFLIGHT,
        "Most unanswered events per connection (over: reading waits for answers).",
    ),
    _value(
        "intake-idle-timeout",
        _count,
        DEFAULT_INTAKE_IDLE_TIMEOUT,
        "Seconds an intake connection may go without a complete message.",
    ),
    _value(
        "intake-backlog",
        _count,
        DEFAULT_INTAKE_BACKLOG,
        "Listen backlog of the intake socket (added to --events as backlog=).",
    ),
    _value(
        "query",
        _text,
        None,
        "HTTPS query listener endpoint; lbtwist adds TLS (default tcp:9000).",
    ),
    _value(
        "store",
        _text,
        None,
        "IL store-port listener endpoint of the server; lbtwist adds TLS (tcp:9001).",
        roles=_SERVER_ONLY,
        role_defaults={SERVER: DEFAULT_STORE_ENDPOINT},
    ),
    _value("cert", _text, None, "Host certificate (PEM)."),
    _value("key", _text, None, "Host key (PEM)."),
    _value("ca-dir", _text, None, "Trust anchors and CRLs in the hashed layout (X509_CERT_DIR)."),
    _value(
        "voms-dir",
        _text,
        None,
        "VOMS .lsc files, <vo>/<host>.lsc (X509_VOMS_DIR; on development certificates"
        " <state-dir>/devcerts/vomsdir, else /etc/grid-security/vomsdir).",
    ),
    _value("crl", _crl, "if-present", "CRL checking: require, if-present or off."),
    _value(
        "allow-no-ca",
        _flag,
        False,
        "Start even when --ca-dir holds no CA certificate (every client is then refused).",
        flag=True,
    ),
    _value(
        "tls-log-interval",
        _count,
        DEFAULT_TLS_LOG_INTERVAL,
        "Seconds between two identical TLS refusal log lines.",
    ),
    _value(
        "tls-log-burst",
        _count,
        DEFAULT_TLS_LOG_BURST,
        "Most TLS refusal log lines per interval in all.",
    ),
    _value("policy", _text, None, "L&B authorization policy file."),
    _value(
        "tls-handshake-timeout",
        _seconds,
        DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        "Seconds a TLS port waits for a connection's handshake.",
    ),
    _value(
        "max-handshakes",
        _count,
        DEFAULT_MAX_HANDSHAKES,
        "Most connections in the TLS handshake per TLS port (over: the oldest closed).",
    ),
    _value(
        "max-handshakes-per-address",
        _count,
        DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        "Most connections in the TLS handshake from one address, per port.",
    ),
    _value(
        "max-connections-per-address",
        _count,
        DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        "Most connections from one address per TLS port.",
    ),
    _value(
        "store-max-connections",
        _count,
        DEFAULT_STORE_MAX_CONNECTIONS,
        "Most established store-port connections (over: least active closed).",
        roles=_SERVER_ONLY,
    ),
    _value(
        "store-idle-timeout",
        _seconds,
        DEFAULT_STORE_IDLE_TIMEOUT,
        "Seconds a store-port connection may stay silent.",
        roles=_SERVER_ONLY,
    ),
    _value(
        "query-max-connections",
        _count,
        DEFAULT_QUERY_MAX_CONNECTIONS,
        "Most established query-port connections (over: least active closed).",
    ),
    _value(
        "query-idle-timeout",
        _seconds,
        DEFAULT_QUERY_IDLE_TIMEOUT,
        "Seconds a query-port connection may stay silent.",
    ),
    _value(
        "max-request-line",
        _count,
        DEFAULT_MAX_REQUEST_LINE,
        "Longest HTTP request or header line on the query port (414 / 431).",
    ),
    _value(
        "max-header-size",
        _count,
        DEFAULT_MAX_HEADER_SIZE,
        "Longest HTTP request head on the query port, in bytes (431).",
    ),
    _value(
        "max-headers",
        _count,
        DEFAULT_MAX_HEADERS,
        "Most HTTP header fields in one query request (431).",
    ),
    _value(
        "relay-window",
        _count,
        DEFAULT_RELAY_WINDOW,
        "Events in flight per relay destination (1 = stop-and-wait).",
    ),
    _value(
        "relay-enoent-timeout",
        _count,
        DEFAULT_RELAY_ENOENT_TIMEOUT,
        "Seconds to keep retrying events of a job unknown upstream.",
    ),
    _value(
        "dev-proxy-warning",
        _seconds,
        6 * 3600.0,
        "Warn this many seconds before the development user proxy expires.",
    ),
    _value(
        "relay-reconnect-max",
        _seconds,
        300.0,
        "Longest delay between reconnections of a relay (failed TLS handshakes included).",
    ),
    _value(
        "page-events",
        _count,
        DEFAULT_PAGE_EVENTS,
        "Events per page of a job's history (HTML, JSON, text).",
    ),
    _value(
        "log-max-size",
        _count,
        DEFAULT_LOG_MAX_SIZE,
        "Bytes at which the twistd log and the access log are rotated.",
    ),
    _value(
        "log-max-files",
        _count,
        DEFAULT_LOG_MAX_FILES,
        "Rotated files kept of the twistd log and of the access log.",
    ),
    _value(
        "warnings-per-minute",
        _count,
        DEFAULT_WARNINGS_PER_MINUTE,
        "Warning lines per minute per cause (then one summary).",
    ),
    _value(
        "max-future-skew",
        _count,
        DEFAULT_MAX_FUTURE_SKEW,
        "Seconds a DATE may lie ahead; later ones order as at arrival.",
    ),
    _value(
        "refold-slice",
        _count,
        DEFAULT_REFOLD_SLICE,
        "Most events one commit folds to place late events (per commit).",
    ),
    _value(
        "job-cache",
        _count,
        DEFAULT_JOB_CACHE,
        "Job statuses the store's writer keeps in memory (least recently used dropped).",
    ),
    _value(
        "query-cache",
        _count,
        DEFAULT_QUERY_CACHE,
        "Parsed job statuses the query reader keeps while unchanged (polled jobs).",
    ),
    _value(
        "sqlite-cache",
        _count,
        DEFAULT_SQLITE_CACHE,
        "KiB of SQLite page cache per store connection (writer and reader).",
    ),
    _value(
        "wal-checkpoint-interval",
        _seconds,
        DEFAULT_WAL_CHECKPOINT_INTERVAL,
        "Seconds between checkpoints of SQLite's write-ahead log, on a thread of their own.",
    ),
    _value(
        "list-scan",
        _count,
        DEFAULT_LIST_SCAN,
        "Most jobs one page of a filtered job list examines (then a short page, a cursor).",
    ),
    _value(
        "store-url",
        _text,
        None,
        "postgresql://... : keep the store in PostgreSQL (front ends share it); default SQLite.",
    ),
    _value(
        "store-pool",
        _count,
        DEFAULT_STORE_POOL,
        "Reader connections (and threads) to the PostgreSQL store of --store-url.",
    ),
    _value(
        "store-notif-changes",
        _count,
        DEFAULT_STORE_NOTIF_CHANGES,
        "Registration changes the PostgreSQL store keeps for front ends to catch up"
        " (one further behind reloads every registration).",
    ),
    _list(
        "producer-uid",
        _numeric_id,
        "User id allowed to log over the socket (repeatable; default own uid, root).",
    ),
    _list("producer-gid", _numeric_id, "Group id allowed to log over the socket (repeatable)."),
    _list(
        "local-endpoint", _host_port, "HOST:PORT whose job ids belong to this node (repeatable)."
    ),
    _list("super-user", _text, "DN of a super user (repeatable)."),
    _list(
        "relay-map",
        _relay_map,
        "DEST=ENDPOINT: send relay destination host:port elsewhere (repeatable).",
    ),
    _value(
        "il-spool",
        _text,
        None,
        "Read L&B interlogger spool files PREFIX.* (CREAM's LB_IL_PREFIX); off.",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-socket",
        _text,
        None,
        "Interlogger notification socket (endpoint or path); needs --il-spool.",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-socket-backlog",
        _count,
        DEFAULT_IL_SOCKET_BACKLOG,
        "Listen backlog of the poke socket (added to --il-socket as backlog=).",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-rescan-interval",
        _seconds,
        DEFAULT_IL_RESCAN_INTERVAL,
        "Seconds between full rescans of the spool directory (inotify on).",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-poll-interval",
        _seconds,
        DEFAULT_IL_POLL_INTERVAL,
        "Seconds between spool rescans without inotify; store retry delay.",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-remove-idle",
        _seconds,
        DEFAULT_IL_REMOVE_IDLE,
        "Seconds a fully stored spool file stays unchanged before removal.",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-batch-events",
        _count,
        DEFAULT_IL_BATCH_EVENTS,
        "Most spool lines read per pass (one store call).",
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-keep-files",
        _flag,
        False,
        "Leave fully stored spool files in place (default: remove idle ones).",
        flag=True,
        roles=_PROXY_ONLY,
    ),
    _value(
        "il-no-inotify",
        _flag,
        False,
        "Find new spool bytes by rescans only (every --il-poll-interval).",
        flag=True,
        roles=_PROXY_ONLY,
    ),
    _value(
        "grey-jobs",
        _flag,
        False,
        "Server: accept events of jobs not registered yet.",
        flag=True,
        roles=_SERVER_ONLY,
    ),
    # Notifications (docs/notifications.md).
    _value(
        "notify-default-validity",
        _count,
        DEFAULT_NOTIFY_VALIDITY,
        "Seconds a notification registration is valid unless it asks otherwise.",
    ),
    _value(
        "notify-max-validity",
        _count,
        DEFAULT_NOTIFY_MAX_VALIDITY,
        "Most seconds a notification registration may be valid (never past its proxy).",
    ),
    _value(
        "notify-queue-max-messages",
        _count,
        DEFAULT_NOTIFY_QUEUE_MESSAGES,
        "Most messages one registration's queue keeps; the oldest are dropped for a gap marker.",
    ),
    _value(
        "notify-queue-max-bytes",
        _count,
        DEFAULT_NOTIFY_QUEUE_BYTES,
        "Most bytes of messages one registration's queue keeps (oldest dropped).",
    ),
    _value(
        "notify-keepalive",
        _seconds,
        DEFAULT_NOTIFY_KEEPALIVE,
        "Seconds between keep-alive comments of a notification event stream.",
    ),
    _value(
        "notify-max-per-user",
        _count,
        DEFAULT_NOTIFY_MAX_PER_USER,
        "Most notification registrations one DN may hold.",
    ),
    _value(
        "notify-sweep-interval",
        _seconds,
        DEFAULT_NOTIFY_SWEEP_INTERVAL,
        "Seconds between sweeps of expired notification registrations.",
    ),
    _value(
        "notify-sweep-chunk",
        _count,
        DEFAULT_NOTIFY_SWEEP_CHUNK,
        "Expired registrations removed per store transaction of a sweep.",
    ),
    _value(
        "notify-bootstrap-max-jobs",
        _count,
        DEFAULT_NOTIFY_BOOTSTRAP_JOBS,
        "Most jobs a bootstrap (-B) registration looks at (most recently updated first).",
    ),
    _value(
        "notify-max-body",
        _count,
        DEFAULT_NOTIFY_MAX_BODY,
        "Largest notification request body (a registration), in bytes (413 past it).",
    ),
    _value(
        "notify-page-messages",
        _count,
        DEFAULT_NOTIFY_PAGE_MESSAGES,
        "Most messages of one /messages answer and of one read of an event stream.",
    ),
    _value(
        "thread-switch-interval",
        _count,
        DEFAULT_THREAD_SWITCH_INTERVAL,
        "Microseconds a thread runs before Python lets another (the reactor) in.",
    ),
    _value(
        "metrics",
        _text,
        DEFAULT_METRICS,
        "Endpoint of the /metrics and /health listener ('none': off).",
    ),
    _value(
        "metrics-tls",
        _flag,
        False,
        "Serve /metrics and /health over TLS, client certificate required.",
        flag=True,
    ),
    _value(
        "metrics-refresh-interval",
        _seconds,
        DEFAULT_METRICS_REFRESH_INTERVAL,
        "Seconds between reads of the relay outbox statistics for metrics and health.",
    ),
    _value(
        "relay-sweep-interval",
        _seconds,
        DEFAULT_RELAY_SWEEP_INTERVAL,
        "Seconds between relay sweeps (re-queued events are picked up, queue log line).",
        roles=_PROXY_ONLY,
    ),
    _value(
        "relay-tail",
        _count,
        DEFAULT_RELAY_TAIL,
        "Committed outbox rows kept in memory per destination for the relay.",
        roles=_PROXY_ONLY,
    ),
    _value(
        "relay-lease",
        _lease_seconds,
        DEFAULT_RELAY_LEASE,
        "Seconds a front end's relay lease on a destination lasts (PostgreSQL store).",
        roles=_PROXY_ONLY,
    ),
    # Purge and Job Provenance export (docs/lifecycle.md).
    _value(
        "purge-interval",
        _interval_or_off,
        None,
        "Run a purge every this long (2d, 12h, 30m, seconds; 0 or off: never; proxy: 1h).",
        role_defaults={PROXY: 3600.0},
    ),
    _value(
        "purge-aborted", _grace, 7 * _DAY, "Purge Aborted jobs this long after their last update."
    ),
    _value(
        "purge-cancelled",
        _grace,
        7 * _DAY,
        "Purge Cancelled jobs this long after their last update.",
    ),
    _value(
        "purge-cleared", _grace, 3 * _DAY, "Purge Cleared jobs this long after their last update."
    ),
    _value("purge-done", _grace, 31 * _DAY, "Purge Done jobs this long after their last update."),
    _value(
        "purge-other",
        _grace,
        31 * _DAY,
        "Purge jobs in any other state this long after their update.",
    ),
    _value(
        "proxy-purge-delivered",
        _grace,
        _DAY,
        "Purge terminal relayed jobs whose events were all delivered after this (never: off).",
        roles=_PROXY_ONLY,
    ),
    _value(
        "purge-chunk",
        _count,
        DEFAULT_PURGE_CHUNK,
        "Job rows a purge looks at per transaction, between commit groups (at most 10000).",
    ),
    _value(
        "purge-pause",
        _ratio,
        DEFAULT_PURGE_PAUSE,
        "After each purge chunk wait this many times its duration (1: writer half idle).",
    ),
    _value(
        "jpreg-dir",
        _text,
        None,
        "Job Provenance: a maildir message per registration in this directory.",
    ),
    _value(
        "jpreg-interval",
        _seconds,
        DEFAULT_JPREG_INTERVAL,
        "Seconds between two looks at registrations waiting for --jpreg-dir.",
    ),
    _value(
        "jpreg-batch",
        _count,
        DEFAULT_JPREG_BATCH,
        "Most registrations written to --jpreg-dir at a time (the rest wait in the store).",
    ),
    _value(
        "jpdump-dir",
        _text,
        None,
        "Job Provenance: purge writes per-job dump files and a maildir message each here.",
    ),
    # Statistics and traceability (docs/lifecycle.md).
    _value(
        "stats-max-jobs",
        _count,
        DEFAULT_STATS_MAX_JOBS,
        "Most jobs one /stats duration request reads (413 past it: a shorter window).",
    ),
    _value(
        "stats-max-buckets",
        _count,
        DEFAULT_STATS_MAX_BUCKETS,
        "Most step buckets of one /stats rate request (400 past it).",
    ),
    _value(
        "trace-max-jobs",
        _count,
        DEFAULT_TRACE_MAX_JOBS,
        "Most jobs one /trace answer lists (the rest: truncated).",
    ),
    _value(
        "trace-max-lifetime",
        _seconds_int,
        DEFAULT_TRACE_MAX_LIFETIME,
        "A /trace by DN or FQAN finds jobs started at most this long before its from.",
    ),
    _value(
        "trace-retention",
        _grace,
        DEFAULT_TRACE_RETENTION,
        "Keep purged jobs traceable this long after their last state change (never: for ever).",
    ),
    _value(
        "trace-expire-chunk",
        _count,
        DEFAULT_TRACE_EXPIRE_CHUNK,
        "Expired trace rows of purged jobs removed per store transaction (hourly).",
    ),
)

OPTIONS_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


# -- the settings -----------------------------------------------------------------------


@attrs.frozen
class Settings:
    """
    The parsed, checked and completed options of one role: what C{lbtwist.tap} builds the
    services from. One attribute per L{OPTIONS} entry (C{-} as C{_}); repeatable ones are
    tuples. Derived defaults are filled in: C{state_dir} is absolute, C{events} carries its
    backlog, C{hostname}, C{query}, the credentials and trust directories are resolved as
    far as they can be without writing anything (the development PKI is made by C{tap}).

    @ivar role: C{lbproxy} or C{lbserver}.
    @ivar dev_certs: no host certificate is configured or installed: the services run on
        the development PKI under C{<state_dir>/devcerts}.
    """

    role: str
    config: str | None
    state_dir: str
    events: str
    serve: str
    serve_max_answer: int
    hostname: str
    max_connections: int
    max_event_size: int
    max_fields: int
    max_inflight: int
    intake_idle_timeout: int
    intake_backlog: int
    query: str
    store: str | None
    cert: str | None
    key: str | None
    ca_dir: str | None
    voms_dir: str | None
    crl: str
    allow_no_ca: bool
    tls_log_interval: int
    tls_log_burst: int
    policy: str | None
    tls_handshake_timeout: float
    max_handshakes: int
    max_handshakes_per_address: int
    max_connections_per_address: int
    store_max_connections: int
    store_idle_timeout: float
    query_max_connections: int
    query_idle_timeout: float
    max_request_line: int
    max_header_size: int
    max_headers: int
    relay_window: int
    relay_enoent_timeout: int
    relay_reconnect_max: float
    dev_proxy_warning: float
    page_events: int
    log_max_size: int
    log_max_files: int
    warnings_per_minute: int
    max_future_skew: int
    refold_slice: int
    job_cache: int
    query_cache: int
    sqlite_cache: int
    wal_checkpoint_interval: float
    list_scan: int
    store_url: str | None
    store_pool: int
    store_notif_changes: int
    producer_uid: tuple[int, ...]
    producer_gid: tuple[int, ...]
    local_endpoint: tuple[tuple[str, int], ...]
    super_user: tuple[str, ...]
    relay_map: tuple[tuple[tuple[str, int], str], ...]
    il_spool: str | None
    il_socket: str | None
    il_socket_backlog: int
    il_rescan_interval: float
    il_poll_interval: float
    il_remove_idle: float
    il_batch_events: int
    il_keep_files: bool
    il_no_inotify: bool
    grey_jobs: bool
    notify_default_validity: int
    notify_max_validity: int
    notify_queue_max_messages: int
    notify_queue_max_bytes: int
    notify_keepalive: float
    notify_max_per_user: int
    notify_sweep_interval: float
    notify_sweep_chunk: int
    notify_bootstrap_max_jobs: int
    notify_max_body: int
    notify_page_messages: int
    thread_switch_interval: int
    metrics: str
    metrics_tls: bool
    metrics_refresh_interval: float
    relay_sweep_interval: float
    relay_tail: int
    relay_lease: float
    purge_interval: float | None
    purge_aborted: int | None
    purge_cancelled: int | None
    purge_cleared: int | None
    purge_done: int | None
    purge_other: int | None
    proxy_purge_delivered: int | None
    purge_chunk: int
    purge_pause: float
    jpreg_dir: str | None
    jpreg_interval: float
    jpreg_batch: int
    jpdump_dir: str | None
    stats_max_jobs: int
    stats_max_buckets: int
    trace_max_jobs: int
    trace_max_lifetime: int
    trace_retention: int | None
    trace_expire_chunk: int
    dev_certs: bool

    def as_options(self) -> dict[str, object]:
        """
        The settings keyed by option name (repeatable ones as lists), as the parsed
        C{usage.Options} mapping shows them, with C{dev-certs}.
        """
        result: dict[str, object] = {}
        for option in OPTIONS:
            value = getattr(self, option.attribute)
            result[option.name] = list(value) if option.repeatable else value
        result["dev-certs"] = self.dev_certs
        return result


def file_keys() -> list[str]:
    """
    The keys a configuration file may hold.
    """
    return [option.name for option in OPTIONS if option.in_file]


def load_settings(
    role: str,
    explicit: Mapping[str, object],
    *,
    env: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
    fqdn: Callable[[], str] = socket.getfqdn,
) -> Settings:
    """
    The settings of C{role} from three layers: C{explicit} (the command line) over the
    configuration file it names (C{explicit["config"]}) over the embedded defaults.

    @param explicit: option name -> command-line value (a string, a list of strings for
        a repeatable option, a boolean for a flag; L{None}, C{[]} or C{False}: not given).
    @param env: the environment (C{X509_CERT_DIR}, C{X509_VOMS_DIR}).
    @param exists: whether a file exists (the grid host credentials).
    @param fqdn: this machine's fully qualified host name.
    @raise InvalidValue: a value, the file or one of its keys is wrong.
    """
    from_file: dict[str, object] = {}
    path = explicit.get("config")
    if path:
        for key, raw in read_config(str(path), role, file_keys()).items():
            from_file[key] = split_values(raw) if OPTIONS_BY_NAME[key].repeatable else raw
    given = {name: value for name, value in explicit.items() if name != "config"}
    defaults = {option.name: option.default_for(role) for option in OPTIONS}
    merged = merge(given, from_file, defaults)  # type: ignore[arg-type]
    values: dict[str, Any] = {"role": role, "config": str(path) if path else None}
    for option in OPTIONS:
        if option.name == "config":
            continue
        value = merged[option.name]
        if option.repeatable:
            values[option.attribute] = tuple(
                option.parse(option.name, str(item))
                for item in value  # type: ignore[attr-defined]
            )
        elif value is None:
            values[option.attribute] = None
        else:
            values[option.attribute] = option.parse(option.name, str(value))
    _credentials(values, env, exists)
    state_dir = os.path.abspath(values["state_dir"])
    values["state_dir"] = state_dir
    if not values["events"]:
        values["events"] = (
            f"unix:{_escape_endpoint(os.path.join(state_dir, 'events.sock'))}:mode=660"
        )
    values["events"] = _with_backlog(values["events"], values["intake_backlog"])
    if values["il_socket"] and not values["il_spool"]:
        raise InvalidValue("--il-socket needs --il-spool (pokes only name the files)")
    if values["il_socket"] and values["il_socket"].startswith("/"):
        values["il_socket"] = f"unix:{_escape_endpoint(values['il_socket'])}:mode=660"
    if values["il_socket"]:
        values["il_socket"] = _with_backlog(values["il_socket"], values["il_socket_backlog"])
    if not values["serve"]:
        values["serve"] = f"unix:{_escape_endpoint(os.path.join(state_dir, 'serve.sock'))}:mode=660"
    values["hostname"] = values["hostname"] or fqdn()
    values["dev_certs"] = values["cert"] is None
    if values["voms_dir"] is None:
        values["voms_dir"] = (
            os.path.join(state_dir, DEV_PKI_DIR, DEV_VOMS_DIR)
            if values["dev_certs"]
            else DEFAULT_VOMS_DIR
        )
    if values["query"] is None:
        values["query"] = (
            DEFAULT_DEV_QUERY_ENDPOINT if values["dev_certs"] else DEFAULT_QUERY_ENDPOINT
        )
    return Settings(**values)


def _credentials(
    values: dict[str, Any], env: Mapping[str, str], exists: Callable[[str], bool]
) -> None:
    """
    Fill host credential and trust anchor defaults: explicit values, then the environment
    and the grid defaults if they exist; C{cert} left L{None} means the development PKI.
    """
    if values["ca_dir"] is None:
        values["ca_dir"] = env.get("X509_CERT_DIR") or None
    if values["voms_dir"] is None:
        values["voms_dir"] = env.get("X509_VOMS_DIR") or None
    if values["cert"] is None and values["key"] is None:
        if exists(DEFAULT_CERT) and exists(DEFAULT_KEY):
            values["cert"], values["key"] = DEFAULT_CERT, DEFAULT_KEY
    elif values["cert"] is None or values["key"] is None:
        raise InvalidValue("--cert and --key go together")
    if values["cert"] is not None and values["ca_dir"] is None:
        values["ca_dir"] = DEFAULT_CA_DIR


def _with_backlog(endpoint: str, backlog: int) -> str:
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
