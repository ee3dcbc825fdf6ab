# -*- test-case-name: tests.unit.test_client -*-
"""
The HTTPS query client of the C{lbtwist} command (docs/reference.md: Job ids and ports, Queries, Command line).

Credentials are found as the grid tools find them (L{find_credentials}); the
TLS context comes from L{lbtwist.security.tls.client_context} (the proxy chain is
presented, the server is checked against the CA directory and its host
name). L{QueryClient} asks the candidate endpoints of a job id in turn
(L{lbtwist.core.jobid.query_candidates}), moving on when a connection is refused
or times out, and follows redirects itself so that TLS is checked at every
hop. Every failure becomes a L{QueryError} carrying one line for the user.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from lbtwist.core.catalogue import EVENT_ATTRIBUTES
from lbtwist.core.events import Event, event_type, format_event, source_name
from lbtwist.core.jobid import JobId, query_candidates
from lbtwist.core.ulm import parse_date
from lbtwist.security import tls
from lbtwist.security.identity import is_proxy

#: Where the grid tools look for trust anchors without C{X509_CERT_DIR}.
DEFAULT_CA_DIR = "/etc/grid-security/certificates"
#: HTTP redirects followed (docs/reference.md, Job ids and ports).
REDIRECT_CODES = frozenset((301, 302, 307, 308))
MAX_REDIRECTS = 5
#: Seconds to wait for a TCP connection before trying the next candidate.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a whole answer.
DEFAULT_TIMEOUT = 60.0
#: The server used by C{lbtwist jobs} when none is configured (the dev default).
DEFAULT_SERVER = "localhost:9000"

# OpenSSL X509_V_ERR_* codes the client explains.
_UNKNOWN_CA_ERRORS = frozenset((2, 18, 19, 20, 21))
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_CERT_REVOKED = 23

_CONNECT_ERRORS = (
    ierror.ConnectionRefusedError,
    ierror.TCPTimedOutError,
    ierror.TimeoutError,
    ierror.NoRouteError,
    ierror.DNSLookupError,
    ierror.ConnectingCancelledError,
)


class QueryError(Exception):
    """
    A query failed; C{str(e)} is one line for the user.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


@attrs.frozen
class Credentials:
    """
    The client certificate (a proxy file or a certificate and key) and the
    CA directory.

    @ivar key: the key file, L{None} when it is in C{cert} (a proxy file).
    """

    cert: str
    key: str | None
    ca_dir: str


def find_credentials(
    env: Mapping[str, str],
    *,
    uid: int,
    cert: str | None = None,
    key: str | None = None,
    capath: str | None = None,
    exists: Any = os.path.exists,
) -> Credentials:
    """
    Find the client credentials as the grid tools do (docs/reference.md, Command line).

    C{cert}/C{key}/C{capath} (command-line options) win; then
    C{X509_USER_PROXY}, C{/tmp/x509up_u<uid>}, C{X509_USER_CERT} with
    C{X509_USER_KEY}, C{$HOME/.globus/user{cert,key}.pem}. CA directory:
    C{X509_CERT_DIR}, then L{DEFAULT_CA_DIR}.

    @param exists: tells whether a path exists (for tests).
    @raise QueryError: no credentials found.
    """
    ca_dir = capath or env.get("X509_CERT_DIR") or DEFAULT_CA_DIR
    if cert:
        return Credentials(cert, key, ca_dir)
    proxy = env.get("X509_USER_PROXY")
    if proxy:
        # An explicitly named proxy is used even if missing, so the error names it.
        return Credentials(proxy, None, ca_dir)
    default_proxy = f"/tmp/x509up_u{uid}"
    if exists(default_proxy):
        return Credentials(default_proxy, None, ca_dir)
    user_cert, user_key = env.get("X509_USER_CERT"), env.get("X509_USER_KEY")
    if user_cert:
        return Credentials(user_cert, user_key or user_cert, ca_dir)
    home = env.get("HOME")
    if home:
        globus_cert = os.path.join(home, ".globus", "usercert.pem")
        if exists(globus_cert):
            return Credentials(globus_cert, os.path.join(home, ".globus", "userkey.pem"), ca_dir)
    raise QueryError(
        "no credentials: set X509_USER_PROXY (or run grid-proxy-init), "
        "X509_USER_CERT/X509_USER_KEY, or give --cert/--key"
    )


def check_credentials(creds: Credentials, *, now: datetime) -> None:
    """
    Refuse unusable credentials before connecting, with a clear message.

    @raise QueryError: a file is missing or unreadable, the certificate (or
        proxy) has expired or is not yet valid, the CA directory is missing.
    """
    try:
        with open(creds.cert, "rb") as f:
            data = f.read()
    except OSError as e:
        raise QueryError(f"cannot read certificate {creds.cert}: {e.strerror or e}") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise QueryError(f"no certificate in {creds.cert}") from None
    what = "proxy certificate" if is_proxy(chain[0]) else "certificate"
    for cert in chain:
        if cert.not_valid_after_utc < now:
            raise QueryError(f"your {what} has expired ({creds.cert})")
        if cert.not_valid_before_utc > now:
            raise QueryError(f"your {what} is not yet valid ({creds.cert})")
    if not os.path.isdir(creds.ca_dir):
        raise QueryError(f"CA directory {creds.ca_dir} not found (set X509_CERT_DIR or --capath)")


@attrs.define
class VerifyLog:
    """
    What the last handshakes' certificate checks found, to explain a refusal.

    @ivar errors: (OpenSSL X509 error, depth) of every failed check.
    @ivar rejected: whether a check that OpenSSL passed was refused (host name).
    """

    errors: list[tuple[int, int]] = attrs.Factory(list)
    rejected: bool = False

    def clear(self) -> None:
        self.errors.clear()
        self.rejected = False


def client_tls(
    creds: Credentials,
    *,
    crl: str = "if-present",
    verify_time: datetime | None = None,
) -> tuple[SSL.Context, VerifyLog]:
    """
    The client context for C{creds} and the log its verification writes to.

    @raise QueryError: the certificate, key or CA directory cannot be used.
    """
    try:
        context = tls.client_context(creds.cert, creds.key, creds.ca_dir, crl=crl)
    except tls.TLSConfigError as e:
        raise QueryError(str(e)) from None
    log = VerifyLog()
    inner = tls._verify_callback(crl, False, check_host=True)
    store = context.get_cert_store()
    if verify_time is not None and store is not None:
        store.set_time(verify_time)

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        result = inner(conn, cert, errno, depth, ok)
        if not result:
            if ok:
                log.rejected = True
            else:
                log.errors.append((errno, depth))
        return result

    context.set_verify(SSL.VERIFY_PEER, verify)
    return context, log


@implementer(IPolicyForHTTPS)
@attrs.frozen
class LBPolicy:
    """
    TLS for every host the agent talks to: our context, SNI and a host name
    check against the server certificate.
    """

    context: SSL.Context

    def creatorForNetloc(self, hostname: bytes, port: int) -> tls.ClientConnectionCreator:
        return tls.ClientConnectionCreator(hostname.decode("idna"), self.context)


@attrs.frozen
class Reply:
    """
    A successful answer.
    """

    url: str
    code: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise QueryError(f"{self.url}: the server's answer is not JSON") from None


def base_url(host: str, port: int) -> str:
    """
    @return: C{https://host:port} (IPv6 addresses in brackets).
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{port}"


def _leaves(failure: Failure) -> list[Failure]:
    """
    The underlying failures of a web client error (they nest lists of reasons).
    """
    reasons = getattr(failure.value, "reasons", None)
    if not reasons:
        return [failure]
    found: list[Failure] = []
    for reason in reasons:
        found.extend(_leaves(reason))
    return found


def _ssl_text(err: SSL.Error) -> str:
    parts = []
    for item in err.args[0] if err.args and isinstance(err.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "; ".join(p for p in parts if p) or str(err)


def describe_tls_failure(err: SSL.Error, log: VerifyLog, host: str) -> str:
    """
    One line explaining a failed handshake, from our checks of the server's
    certificate (C{log}) or the server's alert.
    """
    if log.errors:
        codes = [code for code, _ in log.errors]
        if any(c in _UNKNOWN_CA_ERRORS for c in codes):
            return f"server certificate not trusted (unknown CA) at {host}"
        if _CERT_HAS_EXPIRED in codes:
            return f"server certificate of {host} has expired"
        if _CERT_NOT_YET_VALID in codes:
            return f"server certificate of {host} is not yet valid"
        if _CERT_REVOKED in codes:
            return f"server certificate of {host} is revoked"
        return f"server certificate not trusted at {host} (X509 error {codes[0]})"
    if log.rejected:
        return f"server certificate does not match host name {host}"
    text = _ssl_text(err)
    if "alert" in text:
        return f"the server {host} refused our certificate ({text})"
    return f"TLS handshake with {host} failed ({text})"


def _error_message(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return None


def http_error(code: int, body: bytes, what: str) -> QueryError:
    """
    The L{QueryError} for an HTTP error answer about C{what} (a job id, a list).
    """
    detail = _error_message(body)
    if code == 403:
        text = (
            f"403 not allowed to read job {what}" if "://" in what else f"403 not allowed ({what})"
        )
    elif code == 404:
        text = f"404 no such job {what}"
    elif code == 410:
        text = f"410 job {what} has been purged"
    elif code == 400:
        text = f"400 bad request ({detail or what})"
        detail = None
    else:
        text = f"HTTP {code} for {what}"
    if detail and code not in (403, 404, 410):
        text = f"{text}: {detail}"
    return QueryError(text, status=code)


class QueryClient:
    """
    Asks L&B query endpoints over HTTPS.

    @ivar reactor: the reactor (anything L{Agent} takes).
    """

    def __init__(
        self,
        reactor: Any,
        context: SSL.Context,
        verify_log: VerifyLog | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self.reactor = reactor
        self.verify_log = verify_log if verify_log is not None else VerifyLog()
        self.timeout = timeout
        self.max_redirects = max_redirects
        #: Whether the last L{jobs} left jobs out (a limit reached, the server's cursor).
        self.more_jobs = False
        self.agent = Agent(
            reactor,
            contextFactory=LBPolicy(context),
            connectTimeout=connect_timeout,
            pool=HTTPConnectionPool(reactor, persistent=False),
        )

    async def _get_once(self, url: str) -> tuple[int, Headers, bytes]:
        self.verify_log.clear()
        d = self.agent.request(
            b"GET",
            url.encode("ascii"),
            Headers({b"Accept": [b"application/json"], b"User-Agent": [b"lbtwist"]}),
        )
        d.addTimeout(self.timeout, self.reactor)
        response = await d
        body = await readBody(response)
        return response.code, response.headers, body

    def _describe(self, failure: Failure, url: str) -> tuple[bool, str]:
        """
        @return: whether the failure is a connection failure (try the next
            candidate) and one line describing it.
        """
        netloc = urlsplit(url).netloc
        host = urlsplit(url).hostname or netloc
        for leaf in _leaves(failure):
            if leaf.check(ierror.ConnectionRefusedError):
                return True, f"{netloc}: connection refused"
            if leaf.check(*_CONNECT_ERRORS):
                return True, f"{netloc}: {leaf.getErrorMessage() or 'cannot connect'}"
            if leaf.check(SSL.Error):
                assert isinstance(leaf.value, SSL.Error)
                return False, describe_tls_failure(leaf.value, self.verify_log, host)
        if failure.check(ierror.TimeoutError, ierror.ConnectingCancelledError):
            return True, f"{netloc}: timed out"
        for leaf in _leaves(failure):
            if leaf.check(ierror.ConnectionLost, ierror.ConnectionDone):
                # A server refusing our certificate under TLS 1.3 may just hang up.
                return False, f"{netloc} closed the connection (is our certificate accepted?)"
        return False, f"{netloc}: {failure.getErrorMessage() or repr(failure.value)}"

    async def get(
        self, bases: Sequence[str], path: str, *, what: str, allow: Sequence[int] = ()
    ) -> Reply:
        """
        GET C{path} from the first of C{bases} that accepts a connection,
        following redirects.

        @param bases: C{https://host:port} candidates in order.
        @param what: what is asked for, for messages.
        @param allow: HTTP error codes returned instead of raised.
        @raise QueryError: with the reason in one line.
        """
        refused: list[str] = []
        for base in bases:
            url = base + path
            try:
                return await self._follow(url, what=what, allow=allow)
            except _ConnectFailed as e:
                refused.append(e.message)
        raise QueryError(f"cannot connect to any server for {what}: {'; '.join(refused)}")

    async def _follow(self, url: str, *, what: str, allow: Sequence[int]) -> Reply:
        for hop in range(self.max_redirects + 1):
            try:
                code, headers, body = await self._get_once(url)
            except Exception:
                connect, message = self._describe(Failure(), url)
                if connect and hop == 0:
                    raise _ConnectFailed(message) from None
                raise QueryError(message) from None
            if code in REDIRECT_CODES:
                location = headers.getRawHeaders(b"location")
                if not location:
                    raise QueryError(f"{url}: redirect ({code}) without a Location")
                target = urljoin(url, location[0].decode("latin-1"))
                if urlsplit(target).scheme != "https":
                    raise QueryError(f"{url}: refusing a redirect to {target} (not https)")
                url = target
                continue
            if 200 <= code < 300 or code in allow:
                return Reply(url, code, body)
            raise http_error(code, body, what)
        raise QueryError(f"too many redirects (more than {self.max_redirects}) for {what}")

    async def job_status(self, jobid: str, candidates: Sequence[tuple[str, int]]) -> Any:
        """
        The status of C{jobid} as the server's JSON object.
        """
        path = "/" + JobId.parse(jobid).unique
        reply = await self.get([base_url(h, p) for h, p in candidates], path, what=jobid)
        return reply.json()

    async def job_events(
        self, jobid: str, candidates: Sequence[tuple[str, int]], *, max_pages: int = 10_000
    ) -> list[Any]:
        """
        The events of C{jobid} as the server's JSON objects, following the pages
        of a long history.
        """
        path = f"/{JobId.parse(jobid).unique}/events"
        bases = [base_url(h, p) for h, p in candidates]
        found: list[Any] = []
        for _ in range(max_pages):
            data = (await self.get(bases, path, what=jobid)).json()
            found.extend(events_of(data))
            # A long history comes in pages: {"events": [...], "next_events_from": N}.
            after = data.get("next_events_from") if isinstance(data, dict) else None
            if not isinstance(after, int):
                break
            path = f"/{JobId.parse(jobid).unique}/events?events_from={after}"
        return found

    async def jobs(
        self,
        server: tuple[str, int],
        params: Sequence[tuple[str, str]],
        *,
        max_jobs: int | None = None,
        max_pages: int = 1000,
    ) -> list[dict[str, Any]]:
        """
        The job list of C{GET /?params} (the caller's jobs, or a query),
        following the server's C{cursor} to the next pages.

        @param max_jobs: stop once this many jobs are listed.
        """
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(max_pages):
            query = [*params, ("cursor", cursor)] if cursor else list(params)
            path = "/" + (("?" + urlencode(query)) if query else "")
            data = (await self.get([base_url(*server)], path, what="the job list")).json()
            found.extend(jobs_of(data))
            cursor = data.get("cursor") if isinstance(data, dict) else None
            if not cursor or (max_jobs is not None and len(found) >= max_jobs):
                break
        # Whether the server had more than what is returned (a cursor left, or cut here).
        self.more_jobs = bool(cursor) or (max_jobs is not None and len(found) > max_jobs)
        return found[:max_jobs] if max_jobs is not None else found


class _ConnectFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def candidates_for(
    jobid: str, *, endpoint: str | None, env: Mapping[str, str]
) -> list[tuple[str, int]]:
    """
    L{lbtwist.core.jobid.query_candidates}, with errors as L{QueryError}.
    """
    from lbtwist.core.errors import LBError

    try:
        return query_candidates(jobid, endpoint=endpoint, env=env)
    except LBError as e:
        raise QueryError(e.message) from None


def _list_in(data: Any, keys: Sequence[str]) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), list):
                return list(data[key])
    raise QueryError("unexpected answer from the server (no list)")


def events_of(data: Any) -> list[Any]:
    """
    The event objects of an events answer (a list, or C{{"events": [...]}}).
    """
    return _list_in(data, ("events", "items"))


def jobs_of(data: Any) -> list[dict[str, Any]]:
    """
    The job objects of a list answer (a list, or C{{"jobs": [...]}}).
    """
    return [j for j in _list_in(data, ("jobs", "items")) if isinstance(j, dict)]


_COMMON = frozenset((*EVENT_ATTRIBUTES, "extra", "line", "seqno", "generated"))


def parse_time_value(value: Any) -> int:
    """
    A time of the server's JSON: ISO 8601 UTC, the ULM DATE form, or
    microseconds since the epoch.
    """
    if isinstance(value, int):
        return value
    text = str(value)
    if "T" in text or "-" in text:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return parse_date(text)


def event_from_json(data: Mapping[str, Any]) -> Event:
    """
    Rebuild an event from its JSON object (docs/reference.md, Queries: C{type}, the
    common fields and its own fields by catalogue name).

    @raise QueryError: the object is not an event.
    """
    try:
        etype = event_type(str(data["type"]))
        names = {spec.name.lower(): spec.name for spec in etype.fields}
        fields = {}
        nested = data.get("fields")
        own: Mapping[str, Any] = nested if isinstance(nested, dict) else data
        for key, value in own.items():
            if key in _COMMON or value is None or value == "":
                continue
            name = names.get(key.lower())
            if name is not None:
                fields[name] = str(value)
        extra = tuple((str(k), str(v)) for k, v in (data.get("extra") or ()))
        if data.get("generated") and not extra:
            # The server flags events it generated (docs/reference.md, Generated gLite events).
            extra = (("DG.GENERATED_BY", "lbtwist-proxy"),)
        return Event(
            type=etype.name,
            jobid=str(data["jobid"]),
            date=parse_time_value(data["date"]),
            host=str(data.get("host", "")),
            user=str(data.get("user", "")),
            source=source_name(str(data["source"])),
            seqcode=str(data.get("seqcode", "")),
            priority=int(data.get("priority", 0)),
            level=str(data.get("level", "SYSTEM")),
            src_instance=str(data.get("src_instance") or ""),
            prog=str(data.get("prog") or "edg-wms"),
            fields=fields,
            extra=extra,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise QueryError(f"unexpected event in the server's answer ({e})") from None
    except Exception as e:  # LBError from the catalogue
        message = getattr(e, "message", None)
        if message is None:
            raise
        raise QueryError(f"unexpected event in the server's answer ({message})") from None


def event_line(data: Mapping[str, Any]) -> str:
    """
    The ULM line of an event object (its C{line} if the server sent one).
    """
    line = data.get("line")
    if isinstance(line, str) and line:
        return line.rstrip("\n")
    return format_event(event_from_json(data))
