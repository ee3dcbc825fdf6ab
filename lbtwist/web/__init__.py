# -*- test-case-name: tests.test_web -*-
"""
The HTTPS query service: L{make_site} builds the twisted.web site,
L{make_query_service} the TLS listener around it (with the development PKI
when no host certificate is configured).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python.logfile import LogFile
from twisted.web.server import Request, Site

from lbtwist.authz import Policy
from lbtwist.identity import Identity
from lbtwist.web.resources import DEFAULT_PAGE_EVENTS, Identify, QueryResource

log = Logger()

#: Seconds an idle HTTP connection is kept.
IDLE_TIMEOUT = 300

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
        file: Any,
        clock: Any,
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
        self._call: Any = None

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


class QuerySite(Site):
    """
    The query site: as L{Site}, its access log (C{logPath}) a rotated L{LogFile}
    written in batches (L{BufferedLog}).

    @ivar log_max_size: bytes at which the access log is rotated.
    @ivar log_max_files: rotated access log files kept.
    """

    log_max_size = ACCESS_LOG_ROTATE
    log_max_files = ACCESS_LOG_KEEP

    def _openLogFile(self, path: str | bytes) -> Any:
        file = LogFile.fromFullPath(
            os.fsdecode(path), rotateLength=self.log_max_size, maxRotatedFiles=self.log_max_files
        )
        return BufferedLog(file, self.reactor)


def chain_identity(
    *, clock: Any, voms_dir: str | os.PathLike[str] | None, ca_dir: str | os.PathLike[str] | None
) -> Identify:
    """
    The default C{identify}: the identity of the verified chain of the request's TLS
    connection (computed once per connection), L{None} without one.
    """
    from lbtwist.identity import identity_of_chain
    from lbtwist.tls import CADirectory, transport_chain

    cache: WeakKeyDictionary[Any, Identity | None] = WeakKeyDictionary()
    ca_certs: list[x509.Certificate] | None = None
    if voms_dir is not None and ca_dir is not None and os.path.isdir(ca_dir):
        ca_certs = list(CADirectory(ca_dir).load().certs)
    voms = str(voms_dir) if voms_dir is not None and os.path.isdir(voms_dir) else None

    def identify(request: Request) -> Identity | None:
        channel = request.channel
        transport = getattr(channel, "transport", None)
        if transport is None:
            return None
        handle = getattr(transport, "getHandle", lambda: None)()
        try:
            if handle is not None and handle in cache:
                return cache[handle]
        except TypeError:
            handle = None
        chain = transport_chain(transport)
        who: Identity | None = None
        if chain:
            now = datetime.fromtimestamp(clock.seconds(), UTC)
            try:
                who = identity_of_chain(chain, now=now, voms_dir=voms, ca_certs=ca_certs)
            except ValueError as e:
                log.warn("no identity in the client chain: {error}", error=e)
        if handle is not None:
            cache[handle] = who
        return who

    return identify


def make_site(
    store: Any,
    *,
    clock: Any,
    policy: Policy | None = None,
    super_users: Iterable[str] = (),
    voms_dir: str | os.PathLike[str] | None = None,
    ca_dir: str | os.PathLike[str] | None = None,
    identify: Identify | None = None,
    access_log: str | os.PathLike[str] | None = None,
    page_events: int = DEFAULT_PAGE_EVENTS,
    access_log_max_size: int = ACCESS_LOG_ROTATE,
    access_log_max_files: int = ACCESS_LOG_KEEP,
) -> Site:
    """
    The query site on C{store}.

    @param clock: the reactor (time, connection timeouts).
    @param identify: who sent a request (default: L{chain_identity} of the TLS peer).
    @param access_log: the file of the access log (rotated), or C{None} to log
        requests to the global log as L{Site} does.
    @param page_events: events per page of a job's history.
    @param access_log_max_size: bytes at which the access log is rotated.
    @param access_log_max_files: rotated access log files kept.
    """
    if identify is None:
        identify = chain_identity(clock=clock, voms_dir=voms_dir, ca_dir=ca_dir)
    root = QueryResource(
        store,
        clock=clock,
        policy=policy or Policy(),
        super_users=super_users,
        identify=identify,
        page_events=page_events,
    )
    site = QuerySite(
        root,
        timeout=IDLE_TIMEOUT,
        reactor=clock,
        logPath=None if access_log is None else os.fspath(access_log),
    )
    site.displayTracebacks = False
    site.log_max_size = access_log_max_size
    site.log_max_files = access_log_max_files
    return site


# The development PKI.


def _proxy_valid(path: Path, now: datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc > now + timedelta(hours=1)


def _refresh_proxy(pki: Any, now: datetime) -> None:
    from lbtwist import devcerts

    user_cert = x509.load_pem_x509_certificate(pki.user_cert.read_bytes())
    user_key = load_pem_private_key(pki.user_key.read_bytes(), None)
    proxy, proxy_key = devcerts.issue_proxy(user_cert, user_key, now=now, hours=12)  # type: ignore[arg-type]
    devcerts.write_file(
        pki.user_proxy,
        devcerts.cert_pem(proxy) + devcerts.key_pem(proxy_key) + devcerts.cert_pem(user_cert),
        0o600,
    )


def dev_pki(state_dir: str | os.PathLike[str], reactor: Any) -> Any:
    """
    The development PKI of C{<state_dir>/devcerts} (L{lbtwist.devcerts.ensure_dev_pki}),
    its user proxy renewed when it expires within the hour.

    @return: a L{lbtwist.devcerts.DevPKI}.
    """
    from lbtwist import devcerts

    pki = devcerts.ensure_dev_pki(state_dir, reactor, hostnames=("localhost",))
    now = datetime.fromtimestamp(reactor.seconds(), UTC)
    if not _proxy_valid(pki.user_proxy, now):
        log.info("renewing the development user proxy {path}", path=str(pki.user_proxy))
        _refresh_proxy(pki, now)
    return pki


def _port_of(endpoint: str) -> int:
    for part in endpoint.split(":")[1:]:
        name, eq, value = part.partition("=")
        if eq and name == "port" and value.isdigit():
            return int(value)
        if not eq and part.isdigit():
            return int(part)
    return 9000


def dev_commands(pki: Any, port: int) -> list[str]:
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


def make_query_service(options: Mapping[str, Any], store: Any, reactor: Any) -> IService:
    """
    The HTTPS query listener of C{twistd lbproxy}/C{lbserver}: TLS with client
    certificates around C{options["query"]}, serving L{make_site}.
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import serverFromString

    from lbtwist import tls
    from lbtwist.authz import load_policy

    cert, key, ca_dir = options.get("cert"), options.get("key"), options.get("ca-dir")
    pki = None
    if options.get("dev-certs"):
        pki = dev_pki(options["state-dir"], reactor)
        cert, key = str(pki.host_cert), str(pki.host_key)
        ca_dir = ca_dir or str(pki.ca_dir)
    if cert is None or ca_dir is None:
        raise tls.TLSConfigError("the query service needs a host certificate and a CA directory")
    source = tls.ServerContextSource(cert, key, ca_dir, crl=options.get("crl") or "if-present")
    policy = load_policy(options["policy"]) if options.get("policy") else Policy()
    site = make_site(
        store,
        clock=reactor,
        policy=policy,
        super_users=options.get("super-user") or (),
        voms_dir=options.get("voms-dir"),
        ca_dir=ca_dir,
        access_log=(
            os.path.join(options["state-dir"], ACCESS_LOG) if options.get("state-dir") else None
        ),
        page_events=options.get("page-events") or DEFAULT_PAGE_EVENTS,
        access_log_max_size=options.get("log-max-size") or ACCESS_LOG_ROTATE,
        access_log_max_files=options.get("log-max-files") or ACCESS_LOG_KEEP,
    )
    endpoint = tls.tls_server_endpoint(serverFromString(reactor, options["query"]), source)
    service = StreamServerEndpointService(endpoint, site)
    # A proxy silently running without its query port is worse than one that fails:
    # a port that cannot be bound stops start-up, as the intake's does.
    service._raiseSynchronously = True
    log.info("queries over HTTPS on {query}", query=options["query"])
    if pki is not None:
        for line in dev_commands(pki, _port_of(options["query"])):
            log.info("development PKI: query with: {command}", command=line)
    return service


__all__ = [
    "ACCESS_LOG",
    "ACCESS_LOG_DELAY",
    "BufferedLog",
    "QuerySite",
    "chain_identity",
    "dev_commands",
    "dev_pki",
    "make_query_service",
    "make_site",
]
