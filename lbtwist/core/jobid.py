# -*- test-case-name: tests.unit.test_jobid -*-
"""
gLite and CREAM job ids.

A job id is C{https://<host>:<port>/<unique>}; the port defaults to
L{DEFAULT_PORT} when absent and is always written out. CREAM ids put
C{CREAM<digits>} in the unique part. Pure: the clock, pid and random bytes
of L{generate} come from the caller.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Container, Mapping

from attrs import frozen

from lbtwist.core.errors import InvalidValue, JobIdFormat

DEFAULT_PORT = 9000
CREAM_PORT_SHIFT = 557
CREAM_PREFIX = "CREAM"
QUERY_SERVER_ENV = ("GLITE_WMS_QUERY_SERVER", "EDG_WL_QUERY_SERVER")

_SCHEME = "https://"
_PORT = re.compile(r"[0-9]{1,5}")
_BAD_HOST = re.compile(r"[\s/?#@\[\]]")
_BAD_UNIQUE = re.compile(r"[\s/]")


def _parse_port(text: str, where: str, error: type[Exception]) -> int:
    if not _PORT.fullmatch(text) or not 0 < int(text) <= 65535:
        raise error(f"bad port {text!r} in {where!r}")
    return int(text)


def _split_authority(authority: str, where: str, error: type[Exception]) -> tuple[str, int]:
    """
    Split C{host[:port]} (host may be a bracketed IPv6 address).

    @return: (host without brackets, port or L{DEFAULT_PORT}).
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise error(f"unterminated IPv6 address in {where!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if not host or _BAD_HOST.search(host):
            raise error(f"bad host in {where!r}")
        if rest and not rest.startswith(":"):
            raise error(f"bad text after host in {where!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = authority.partition(":")
        port_text = port_text_ if sep else None
        if not host or _BAD_HOST.search(host):
            raise error(f"bad or empty host in {where!r}")
    port = DEFAULT_PORT if port_text is None else _parse_port(port_text, where, error)
    return host, port


def _b64_md5(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.md5(data).digest()).decode("ascii").rstrip("=")


@frozen
class JobId:
    """
    A parsed job id.

    @ivar host: server host (IPv6 without brackets).
    @ivar port: query port of the server.
    @ivar unique: the unique part, without the leading slash.
    """

    host: str
    port: int
    unique: str

    @classmethod
    def parse(cls, text: str) -> JobId:
        """
        Parse C{https://host[:port]/unique}.

        @raise JobIdFormat: on any other form.
        """
        if not isinstance(text, str) or not text.startswith(_SCHEME):
            raise JobIdFormat(f"job id {text!r} does not start with {_SCHEME}")
        authority, slash, unique = text[len(_SCHEME) :].partition("/")
        if not slash or not unique:
            raise JobIdFormat(f"job id {text!r} has no unique part")
        if _BAD_UNIQUE.search(unique):
            raise JobIdFormat(f"unique part of job id {text!r} has '/' or white space")
        host, port = _split_authority(authority, text, JobIdFormat)
        return cls(host, port, unique)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{_SCHEME}{host}:{self.port}/{self.unique}"

    @property
    def is_cream(self) -> bool:
        """
        Whether the unique part is a CREAM one (C{CREAM<digits>}).
        """
        return self.unique.startswith(CREAM_PREFIX)

    @property
    def store_endpoint(self) -> tuple[str, int]:
        """
        The L&B store (relay) port: query port + 1 (the one place that knows it).
        """
        return (self.host, self.port + 1)

    @property
    def query_endpoint(self) -> tuple[str, int]:
        return (self.host, self.port)


@functools.lru_cache(maxsize=1 << 14)
def unique_of(text: str) -> str:
    """
    The unique part of a job id (after C{host:port/}); text that is no job id
    comes back as it is (a bare CREAM id, C{CREAM<digits>}, keys its mapping).
    Remembered for the jobs asked about most (the store asks for every job
    row it writes, the query pages for every job they link to).
    """
    try:
        return JobId.parse(text).unique
    except JobIdFormat:
        return text


def relay_destination(jobid: str, local_endpoints: Container[tuple[str, int]]) -> str | None:
    """
    Where a proxy relays the events of a job: C{"host:port"} of the L&B store
    port its id names (L{JobId.store_endpoint}; the host in lower case, IPv6
    without brackets).

    @param local_endpoints: C{(host, query port)} pairs (hosts in lower case)
        of this node: their jobs are local.
    @return: C{None} for a CREAM id, a local job or text that is no job id.
    """
    try:
        jid = JobId.parse(jobid)
    except JobIdFormat:
        return None
    host = jid.host.lower()
    if jid.is_cream or (host, jid.port) in local_endpoints:
        return None
    return f"{host}:{jid.store_endpoint[1]}"


def generate(host: str, port: int = DEFAULT_PORT, *, now: int, pid: int, rnd: bytes) -> JobId:
    """
    Make a new gLite job id on C{host:port}.

    @param now: microseconds since the epoch.
    @param rnd: random bytes from the caller.
    @return: a job id whose unique part is 22 URL-safe base64 characters.
    """
    unique = _b64_md5(f"{host}\0{pid}\0{now}\0".encode() + rnd)
    return JobId(host, port, unique)


def subjob(parent: JobId, seed: str, index: int) -> JobId:
    """
    The id of sub-job C{index} of C{parent}, as L&B derives it from C{seed}.
    """
    unique = _b64_md5(f"{parent.unique},{seed},{index}".encode())
    return JobId(parent.host, parent.port, unique)


def parse_endpoint(text: str) -> tuple[str, int]:
    """
    Parse a query server given as C{host:port}, C{host} or C{https://host:port/}.

    @raise InvalidValue: on anything else.
    """
    body = text.strip()
    if body.startswith(_SCHEME):
        body = body[len(_SCHEME) :]
        if body.endswith("/"):
            body = body[:-1]
    if not body or "/" in body:
        raise InvalidValue(f"bad query server {text!r}")
    return _split_authority(body, text, InvalidValue)


def query_candidates(
    jobid: str | JobId, *, endpoint: str | None, env: Mapping[str, str]
) -> list[tuple[str, int]]:
    """
    The (host, port) pairs to ask about C{jobid}, in order (design section 3).

    @param endpoint: an explicit server (C{--endpoint}); wins over C{env}.
    @param env: the environment, read for C{GLITE_WMS_QUERY_SERVER} and then
        the legacy C{EDG_WL_QUERY_SERVER}.
    @raise JobIdFormat: if C{jobid} is malformed.
    @raise InvalidValue: if the configured server is malformed.
    """
    jid = jobid if isinstance(jobid, JobId) else JobId.parse(jobid)
    if endpoint:
        return [parse_endpoint(endpoint)]
    for name in QUERY_SERVER_ENV:
        if env.get(name):
            return [parse_endpoint(env[name])]
    if jid.is_cream and jid.port != DEFAULT_PORT:
        shifted = jid.port + CREAM_PORT_SHIFT
        if shifted <= 65535:
            return [(jid.host, shifted), (jid.host, jid.port)]
    return [(jid.host, jid.port)]
