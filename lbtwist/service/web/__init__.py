# -*- test-case-name: tests.unit.test_web -*-
"""
The HTTPS query service: L{make_site} builds the twisted.web site,
L{make_query_service} the TLS listener around it; L{dev_pki} the development
PKI that C{lbtwist.tap} falls back to when no host certificate is configured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.logfile import LogFile
from twisted.web.http import HTTPChannel, combinedLogFormatter
from twisted.web.server import Request, Site

from lbtwist.config import (
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_REQUEST_LINE,
    DEFAULT_QUERY_IDLE_TIMEOUT,
)
from lbtwist.security.authz import Policy
from lbtwist.security.identity import PeerIdentity
from lbtwist.security.tls import PortLimits, RefusalLog, ServerContextSource, quote_for_log
from lbtwist.service.web.render import error_body
from lbtwist.service.web.resources import DEFAULT_PAGE_EVENTS, Identify, QueryResource
from lbtwist.store.interface import IEventStore

if TYPE_CHECKING:
    from lbtwist.security.devcerts import DevPKI
    from lbtwist.service.notify import NotifyService

log = Logger()

#: Seconds an idle HTTP connection is kept (the TLS port closes it too).
IDLE_TIMEOUT = DEFAULT_QUERY_IDLE_TIMEOUT

#: The query service's access log (combined log format, one line per request) in
#: the state directory, rotated at C{ACCESS_LOG_ROTATE} bytes, C{ACCESS_LOG_KEEP}
#: old files kept. Written to its own file: a line per request through twistd's
#: log cost about a quarter of the CPU of a status request. Lines reach the file
#: within C{ACCESS_LOG_DELAY} seconds (a crash loses at most that much).
ACCESS_LOG = "query-access.log"
ACCESS_LOG_ROTATE = 10_000_000
ACCESS_LOG_KEEP = 5


#: Seconds access log lines wait in memory before they are written, at most.
ACCESS_LOG_DELAY = 1.0
#: Characters of waiting lines that are written at once.
ACCESS_LOG_BUFFER = 64 * 1024


class BufferedLog:
    """
    Lines written to a file in batches: at most C{delay} seconds after the first
    waiting one, when C{limit} characters wait, and on L{close}.

    @param file: has C{write(str)} and C{close()} (a L{LogFile}).
    @param clock: provides C{callLater}.
    """

    def __init__(
        self,
        file: LogFile,
        clock: IReactorTime,
        *,
        delay: float = ACCESS_LOG_DELAY,
        limit: int = ACCESS_LOG_BUFFER,
    ) -> None:
        self.file = file
        self.clock = clock
        self.delay = delay
        self.limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._call: IDelayedCall | None = None

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.limit:
            self.flush()
        elif self._call is None:
            self._call = self.clock.callLater(self.delay, self.flush)

    def flush(self) -> None:
        """
        Write the waiting lines now.
        """
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        if self._lines:
            data = "".join(self._lines)
            self._lines = []
            self._size = 0
            self.file.write(data)

    def close(self) -> None:
        self.flush()
        self.file.close()


_REASONS = {414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class QueryChannel(HTTPChannel):
    """
    An L{HTTPChannel} with a bounded request head: a request line longer than
    C{MAX_LENGTH} gets 414, a header line longer than that, a head over
    C{totalHeadersSize} bytes or more than C{maxHeaders} header fields get
    431; the connection is closed after the answer.
    """

    MAX_LENGTH = DEFAULT_MAX_REQUEST_LINE
    totalHeadersSize = DEFAULT_MAX_HEADER_SIZE
    maxHeaders = DEFAULT_MAX_HEADERS
    #: Lines of the current request head seen so far.
    _head_lines = 0
    _refused = False

    @property
    def busy(self) -> bool:
        """
        Whether a request is being answered (the TLS port's idle timeout
        waits for it, as this channel's own timeout does).
        """
        return bool(self._handlingRequest)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_head(
                431 if self._head_lines else 414,
                f"request head over {self.totalHeadersSize} bytes",
                "max-header-size",
            )
            return
        if line or self._head_lines:
            self._head_lines += 1
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines:
            self._refuse_head(431, f"header line over {self.MAX_LENGTH} bytes", "max-request-line")
        else:
            self._refuse_head(414, f"request line over {self.MAX_LENGTH} bytes", "max-request-line")

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse_head(431, f"more than {self.maxHeaders} header fields", "max-headers")
            return False
        return bool(super().headerReceived(line))

    def allContentReceived(self) -> None:
        self._head_lines = 0
        super().allContentReceived()

    def _refuse_head(self, code: int, what: str, option: str) -> None:
        if self._refused:
            return
        self._refused = True
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        body = error_body(code, what)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (code, _REASONS[code], len(body), body)
        )
        refusals = getattr(getattr(self, "site", None), "refusals", None)
        if refusals is not None:
            peer = self.transport.getPeer()
            refusals.emit(
                f"head-{code}",
                LogLevel.warn,
                "query port: {code} to {peer}: {what} ({option}), closing",
                code=code,
                peer=f"{getattr(peer, 'host', '-')}:{getattr(peer, 'port', '-')}",
                what=what,
                option=option,
            )
        self.loseConnection()


#: What a L{QuerySite} tells of each answered request: its path (no query
#: string), its status code (C{"closed"}: the client went away first) and the
#: seconds from its head's arrival to its end.
QueryObserver = Callable[[bytes, "int | str", float], None]


class QueryRequest(Request):
    """
    A request that remembers when it arrived, for its site's L{QuerySite.observer}
    (told of it when it is finished, or when its client goes away first: an
    event stream's usual end).
    """

    _arrived = 0.0
    _observed = False

    def process(self) -> None:
        site = self.channel.site  # type: ignore[attr-defined]
        if site.observer is not None:
            self._arrived = site.reactor.seconds()
        super().process()

    def connectionLost(self, reason: Any) -> None:
        if not self.finished and not self._observed:
            site = getattr(self, "site", None)
            if site is not None and site.observer is not None:
                self._observed = True
                site.observer(self.path, "closed", site.reactor.seconds() - self._arrived)
        super().connectionLost(reason)


class QuerySite(Site):
    """
    The query site: as L{Site}, on L{QueryChannel}s (bounded request heads);
    its access log (C{logPath}) a rotated L{LogFile} written in batches
    (L{BufferedLog}), one combined-format line per request with the client's
    verified DN appended.

    @ivar log_max_size: bytes at which the access log is rotated.
    @ivar log_max_files: rotated access log files kept.
    @ivar max_request_line: longest request line or header line, in bytes.
    @ivar max_header_size: longest request head (request line and headers).
    @ivar max_headers: most header fields in one request.
    @ivar observer: told of each answered request (L{QueryObserver}), if set.
    """

    log_max_size = ACCESS_LOG_ROTATE
    requestFactory = QueryRequest
    observer: QueryObserver | None = None
    log_max_files = ACCESS_LOG_KEEP
    protocol = QueryChannel  # type: ignore[assignment]
    max_request_line = DEFAULT_MAX_REQUEST_LINE
    max_header_size = DEFAULT_MAX_HEADER_SIZE
    max_headers = DEFAULT_MAX_HEADERS
    refusals: RefusalLog | None = None

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.MAX_LENGTH = self.max_request_line
        channel.totalHeadersSize = self.max_header_size
        channel.maxHeaders = self.max_headers
        return channel

    def log(self, request: Any) -> None:
        # Called by Request.finish, once per answered request.
        observer = self.observer
        if observer is not None and not request._observed:
            request._observed = True
            observer(request.path, request.code, self.reactor.seconds() - request._arrived)
        super().log(request)

    def _openLogFile(self, path: str | bytes) -> Any:
        file = LogFile.fromFullPath(
            os.fsdecode(path), rotateLength=self.log_max_size, maxRotatedFiles=self.log_max_files
        )
        return BufferedLog(file, self.reactor)


def access_log_formatter(identify: Identify) -> Any:
    """
    @return: an access log formatter: the combined log format, then the
        client's verified DN (quoted, escaped; C{-} without one).
    """

    def line(timestamp: str, request: Request) -> str:
        who = identify(request)
        return (
            combinedLogFormatter(timestamp, request)
            + " "
            + quote_for_log(who.dn if who is not None else None)
        )

    return line


def make_site(
    store: IEventStore,
    *,
    clock: IReactorTime,
    policy: Policy | None = None,
    super_users: Iterable[str] = (),
    voms_dir: str | os.PathLike[str] | None = None,
    ca_dir: str | os.PathLike[str] | None = None,
    identify: Identify | None = None,
    access_log: str | os.PathLike[str] | None = None,
    page_events: int = DEFAULT_PAGE_EVENTS,
    access_log_max_size: int = ACCESS_LOG_ROTATE,
    access_log_max_files: int = ACCESS_LOG_KEEP,
    idle_timeout: float = IDLE_TIMEOUT,
    max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    notify: NotifyService | None = None,
    health: Any = None,
    routes: Any = None,
    admin: Callable[..., Any] | None = None,
    lifecycle: Any = None,
    observer: QueryObserver | None = None,
) -> Site:
    """
    The query site on C{store}.

    @param clock: the reactor (time, connection timeouts).
    @param identify: who sent a request (default: the L{PeerIdentity} of the TLS
        peer, VOMS servers checked against C{ca_dir}).
    @param access_log: the file of the access log (rotated), or C{None} to log
        requests to the global log as L{Site} does.
    @param page_events: events per page of a job's history.
    @param access_log_max_size: bytes at which the access log is rotated.
    @param access_log_max_files: rotated access log files kept.
    @param idle_timeout: seconds an HTTP connection may stay silent.
    @param max_request_line: longest request or header line (longer: 414 / 431).
    @param max_header_size: longest request head (longer: 431).
    @param max_headers: most header fields (more: 431).
    @param notify: the notification service, whose routes (C{/notif},
        L{lbtwist.service.web.notif}) then come before the query tree.
    @param admin: the handler of C{POST /admin/...} (L{lbtwist.service.web.admin}).
    @param lifecycle: the limits of C{/stats} and C{/trace}
        (L{lbtwist.service.web.stats.LifecycleLimits}; L{None}: the defaults).
    @param observer: told of each answered request (L{QuerySite.observer}: the
        C{lbtwist_query_seconds} metric).
    """
    if identify is None:
        from lbtwist.security.tls import CADirectory

        identify = PeerIdentity(
            clock=clock,
            voms_dir=voms_dir,
            ca_directory=CADirectory(ca_dir) if ca_dir is not None else None,
            refresh=True,
        ).of_request
    root = QueryResource(
        store,
        clock=clock,
        policy=policy or Policy(),
        super_users=super_users,
        identify=identify,
        page_events=page_events,
    )
    root.admin = admin
    root.lifecycle = lifecycle
    if notify is not None:
        from lbtwist.service.web.notif import NotifResource, NotifRoot

        notif = NotifResource(notify, clock=clock, identify=identify, page_events=page_events)
        root = NotifRoot(root, notif)  # type: ignore[assignment]
    if health is not None or routes is not None:
        # /health (a HealthResource) and the routes (a function of the identify
        # callable, giving first path segments and their resources) before the tree.
        from lbtwist.service.health import HealthRoot

        extra = routes(identify) if routes is not None else {}
        root = HealthRoot(root, health, extra)  # type: ignore[assignment]
    site = QuerySite(
        root,
        timeout=idle_timeout,
        reactor=clock,
        logPath=None if access_log is None else os.fspath(access_log),
        logFormatter=access_log_formatter(identify),
    )
    site.displayTracebacks = False
    site.log_max_size = access_log_max_size
    site.log_max_files = access_log_max_files
    site.max_request_line = max_request_line
    site.max_header_size = max_header_size
    site.max_headers = max_headers
    site.refusals = RefusalLog(clock, logger=log)
    site.observer = observer
    return site


# The development PKI's commands.


def endpoint_port(endpoint: str) -> int:
    """
    @return: the port of a server endpoint description (C{ssl:9000},
        C{tcp:port=9000:interface=::1}); 9000 when it names none.
    """
    for part in endpoint.split(":")[1:]:
        name, eq, value = part.partition("=")
        if eq and name == "port" and value.isdigit():
            return int(value)
        if not eq and part.isdigit():
            return int(part)
    return 9000


def dev_commands(pki: DevPKI, port: int) -> list[str]:
    """
    @return: command lines that query the service with the development user's proxy.
    """
    base = f"https://localhost:{port}"
    return [
        f"X509_USER_PROXY={pki.user_proxy} X509_CERT_DIR={pki.ca_dir} "
        f"lbtwist status {base}/<unique>",
        f"curl --cert {pki.user_proxy} --key {pki.user_proxy} --capath {pki.ca_dir} "
        f"{base}/<unique>",
        f"curl --cert {pki.user_proxy} --key {pki.user_proxy} --capath {pki.ca_dir} {base}/",
    ]


def make_query_service(
    store: IEventStore,
    reactor: Any,
    *,
    endpoint: str,
    source: ServerContextSource,
    limits: PortLimits,
    policy: Policy,
    super_users: Iterable[str] = (),
    voms_dir: str | None = None,
    access_log: str | os.PathLike[str] | None = None,
    page_events: int = DEFAULT_PAGE_EVENTS,
    access_log_max_size: int = ACCESS_LOG_ROTATE,
    access_log_max_files: int = ACCESS_LOG_KEEP,
    max_request_line: int = DEFAULT_MAX_REQUEST_LINE,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    notify: NotifyService | None = None,
    health: Any = None,
    routes: Any = None,
    admin: Callable[..., Any] | None = None,
    lifecycle: Any = None,
    observer: QueryObserver | None = None,
) -> StreamServerEndpointService:
    """
    The HTTPS query listener of C{twistd lbproxy}/C{lbserver}: TLS with client
    certificates (C{source}, bounded by C{limits}) around the C{endpoint} string,
    serving L{make_site} (the other arguments are L{make_site}'s).

    @param reactor: listens (C{serverFromString}) and keeps time.
    """
    from lbtwist.service.ports import tls_listener

    site = make_site(
        store,
        clock=reactor,
        policy=policy,
        super_users=super_users,
        identify=PeerIdentity.for_source(source, clock=reactor, voms_dir=voms_dir).of_request,
        access_log=access_log,
        page_events=page_events,
        access_log_max_size=access_log_max_size,
        access_log_max_files=access_log_max_files,
        idle_timeout=limits.idle_timeout,
        max_request_line=max_request_line,
        max_header_size=max_header_size,
        max_headers=max_headers,
        notify=notify,
        health=health,
        routes=routes,
        admin=admin,
        lifecycle=lifecycle,
        observer=observer,
    )
    # A port that cannot be bound stops start-up, as the intake's does.
    service = tls_listener(reactor, endpoint, source, site, limits=limits, port="query")
    log.info("queries over HTTPS on {query}", query=endpoint)
    return service


__all__ = [
    "ACCESS_LOG",
    "ACCESS_LOG_DELAY",
    "BufferedLog",
    "QueryChannel",
    "QueryObserver",
    "QueryRequest",
    "QuerySite",
    "access_log_formatter",
    "dev_commands",
    "endpoint_port",
    "make_query_service",
    "make_site",
]
