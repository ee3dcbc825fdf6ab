# -*- test-case-name: tests.unit.test_serve -*-
"""
The proxy's query ("serve") socket: local queries over a second UNIX socket, as L&B's
proxy answers them on C{GLITE_WMS_LBPROXY_SERVE_SOCK}.

The wire is lbtwist's line protocol (C{docs/protocol.md}, section 12): one request line,
one answer line, in order::

    SEQCODE <jobid>   ->  OK <the job's current sequence code>
    STATUS <jobid>    ->  OK <the job's status, JSON on one line>
    EVENTS <jobid>    ->  OK <the job's events, a JSON list of ULM lines>
    (error)           ->  ERR <code> <text>

The requests are L{LineRequest} handlers, the hook the event socket offers
(L{lbtwist.service.intake.IntakeFactory.line_requests}), and C{SEQCODE} answers from the
store's C{last_seqcode} as the event socket's C{?SEQCODE} does. Peers are authorized as on the
event socket: by their uid or gid (C{SO_PEERCRED}).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from lbtwist.core.errors import LBError, PermissionDenied, TooBig, TryAgain, UnknownJob
from lbtwist.core.states.status import public_dict
from lbtwist.service import logs
from lbtwist.service.intake import so_peercred

#: Longest request line, in bytes.
DEFAULT_MAX_REQUEST = 4096

#: Largest answer line (STATUS, EVENTS), in bytes.
DEFAULT_MAX_ANSWER = 16 * 1024 * 1024

#: Seconds a serve connection may stay without a request.
DEFAULT_IDLE_TIMEOUT = 60.0

Answer = tuple[int, str]


def _jobid_of(line: bytes) -> str:
    parts = line.split()
    if len(parts) != 2:
        raise LBError("want one job id after the request word", 22)
    try:
        return parts[1].decode("utf-8")
    except UnicodeDecodeError:
        raise LBError("job id is not UTF-8", 22) from None


async def _resolved(store: Any, jobid: str) -> str:
    """
    The stored id of C{jobid} (a CREAM id of a mapped WMS job gives the gLite id).
    """
    found = await maybeDeferred(store.resolve, jobid)
    return str(found) if found else jobid


def make_requests(store: Any, *, max_answer: int = DEFAULT_MAX_ANSWER) -> dict[bytes, Any]:
    """
    The request handlers of the serve socket, by request word.

    @param store: the store (its public reader: C{resolve}, C{status}, C{events}).
    @param max_answer: largest answer in bytes (over: C{ERR 7}).
    """

    def check_size(text: str) -> str:
        if len(text) > max_answer:
            raise TooBig(f"answer of {len(text)} bytes over the limit of {max_answer}")
        return text

    async def seqcode(jobid: str) -> Answer:
        jobid = await _resolved(store, jobid)
        code = await maybeDeferred(store.last_seqcode, jobid)
        if code is None:
            raise UnknownJob(f"no such job {jobid}")
        return 0, f"OK {code}"

    async def status(jobid: str) -> Answer:
        jobid = await _resolved(store, jobid)
        found = await maybeDeferred(store.status, jobid)
        if found is None:
            raise UnknownJob(f"no such job {jobid}")
        text = json.dumps(public_dict(found), ensure_ascii=False, separators=(",", ":"))
        return 0, "OK " + check_size(text)

    async def events(jobid: str) -> Answer:
        jobid = await _resolved(store, jobid)
        stored = await maybeDeferred(store.events, jobid)
        if not stored:
            raise UnknownJob(f"no such job {jobid}")
        lines = [s.line.rstrip("\n") for s in stored]
        return 0, "OK " + check_size(json.dumps(lines, ensure_ascii=False))

    def wrap(fn: Callable[[str], Any]) -> Callable[[object, bytes], Deferred[Answer]]:
        def handler(_proto: object, line: bytes) -> Deferred[Answer]:
            return Deferred.fromCoroutine(fn(_jobid_of(line)))

        return handler

    return {b"SEQCODE": wrap(seqcode), b"STATUS": wrap(status), b"EVENTS": wrap(events)}


class ServeProtocol(LineOnlyReceiver):
    """
    One serve-socket connection: requests answered in order, one line each.
    """

    delimiter = b"\n"
    log = Logger()
    factory: ServeFactory

    def __init__(self) -> None:
        self._queue: Deferred[None] | None = None
        self._timer: Any = None

    def connectionMade(self) -> None:
        f = self.factory
        self.MAX_LENGTH = f.max_request
        peer = f.peer_credentials(self.transport)
        refusal = None
        if peer is None:
            refusal = PermissionDenied("peer credentials unavailable")
        elif peer[1] not in f.allowed_uids and peer[2] not in f.allowed_gids:
            refusal = PermissionDenied(f"uid {peer[1]} not allowed")
        if refusal is not None:
            logs.warn(
                self.log,
                "serve connection from {peer} refused: {reason}",
                peer=peer,
                reason=refusal.message,
            )
            self._send(refusal.code, refusal.message)
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self._timer = f.clock.callLater(f.idle_timeout, self._idle)

    def _idle(self) -> None:
        self._timer = None
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _send(self, code: int, text: str) -> None:
        assert self.transport is not None
        text = text.replace("\r", " ").replace("\n", " ")
        if code == 0:
            self.transport.write(text.encode("utf-8") + b"\n")
        else:
            self.transport.write(f"ERR {code} {text}\n".encode())

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.idle_timeout)
        word = line.split(None, 1)[0].upper()
        handler = self.factory.requests.get(word)
        if handler is None:
            shown = word.decode("ascii", "replace")[:40]
            logs.warn(self.log, "serve socket: unknown request {word!r}", word=shown)
            answer: Deferred[Answer] = Deferred()
            answer.errback(LBError(f"unknown request {shown}", 22))
        else:
            answer = maybeDeferred(handler, self, line)
        previous = self._queue
        done: Deferred[None] = Deferred()

        def send(result: Answer | Failure) -> None:
            if isinstance(result, Failure):
                error = result.value
                if not isinstance(error, LBError):
                    self.log.failure("serve request failed", result)
                    error = TryAgain("request failed")
                self._send(error.code, error.message)
            else:
                self._send(*result)

        def after_previous(_: object = None) -> None:
            answer.addBoth(send).addBoth(lambda _: done.callback(None))

        if previous is None:
            after_previous()
        else:
            previous.addCallback(after_previous)
        self._queue = done

    def lineLengthExceeded(self, line: bytes) -> None:
        logs.warn(self.log, "serve socket: request line over {limit} bytes", limit=self.MAX_LENGTH)
        self._send(TooBig.code, f"request line over {self.MAX_LENGTH} bytes")
        assert self.transport is not None
        self.transport.loseConnection()


class ServeFactory(Factory):
    """
    The serve socket's connections.

    @ivar requests: the handlers, by upper-case request word.
    @ivar allowed_uids: peer uids allowed (as the event socket's).
    @ivar allowed_gids: peer gids allowed.
    @ivar max_request: longest request line in bytes.
    @ivar idle_timeout: seconds a connection may wait between requests.
    """

    noisy = False

    def __init__(
        self,
        requests: Mapping[bytes, Any],
        *,
        clock: IReactorTime,
        allowed_uids: Collection[int],
        allowed_gids: Collection[int] = (),
        max_request: int = DEFAULT_MAX_REQUEST,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        peer_credentials: Callable[[Any], tuple[int, int, int] | None] = so_peercred,
    ) -> None:
        self.requests = {k.upper(): v for k, v in requests.items()}
        self.clock = clock
        self.allowed_uids = frozenset(allowed_uids)
        self.allowed_gids = frozenset(allowed_gids)
        self.max_request = max_request
        self.idle_timeout = idle_timeout
        self.peer_credentials = peer_credentials

    def buildProtocol(self, addr: object) -> ServeProtocol:  # type: ignore[override]
        proto = ServeProtocol()
        proto.factory = self
        return proto


__all__ = ["ServeFactory", "ServeProtocol", "make_requests"]
