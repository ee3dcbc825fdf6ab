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

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python.logfile import LogFile
from twisted.web.server import Site

from lbtwist.authz import Policy
from lbtwist.identity import PeerIdentity
from lbtwist.web.resources import Identify, QueryResource

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
    """

    def _openLogFile(self, path: str | bytes) -> Any:
        file = LogFile.fromFullPath(
            os.fsdecode(path), rotateLength=ACCESS_LOG_ROTATE, maxRotatedFiles=ACCESS_LOG_KEEP
        )
        return BufferedLog(file, self.reactor)


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
) -> Site:
    """
    The query site on C{store}.

    @param clock: the reactor (time, connection timeouts).
    @param identify: who sent a request (default: the L{PeerIdentity} of the TLS
        peer, VOMS servers checked against C{ca_dir}).
    @param access_log: the file of the access log (rotated), or C{None} to log
        requests to the global log as L{Site} does.
    """
    if identify is None:
        from lbtwist.tls import CADirectory

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
    )
    site = QuerySite(
        root,
        timeout=IDLE_TIMEOUT,
        reactor=clock,
        logPath=None if access_log is None else os.fspath(access_log),
    )
    site.displayTracebacks = False
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
    source = tls.ServerContextSource(
        cert,
        key,
        ca_dir,
        crl=options.get("crl") or "if-present",
        clock=reactor,
        log_interval=options.get("tls-log-interval", tls.REFUSAL_LOG_INTERVAL),
        log_burst=options.get("tls-log-burst", tls.REFUSAL_LOG_BURST),
    )
    policy = load_policy(options["policy"]) if options.get("policy") else Policy()
    site = make_site(
        store,
        clock=reactor,
        policy=policy,
        super_users=options.get("super-user") or (),
        identify=PeerIdentity.for_source(
            source, clock=reactor, voms_dir=options.get("voms-dir")
        ).of_request,
        access_log=(
            os.path.join(options["state-dir"], ACCESS_LOG) if options.get("state-dir") else None
        ),
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
    "dev_commands",
    "dev_pki",
    "make_query_service",
    "make_site",
]
