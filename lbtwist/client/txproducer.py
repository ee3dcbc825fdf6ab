# -*- test-case-name: tests.unit.test_producer -*-
"""
The Twisted-native producer: L{ProducerProtocol} and L{connect_producer}.

Kept apart from L{lbtwist.client.producer} (the blocking client, which must not load
Twisted); both are importable from there.
"""

from __future__ import annotations

import errno
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet import error as twerror
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from lbtwist.client.producer import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER,
    RETRY_FACTOR,
    RETRY_INITIAL,
    RETRY_MAX,
    EventOrLine,
    GaveUp,
    encode_line,
    parse_answer,
)
from lbtwist.core import errors

RetryPolicy = Callable[[int], float]


def default_policy() -> RetryPolicy:
    """
    The producers' backoff: L{RETRY_INITIAL} growing by L{RETRY_FACTOR} up to
    L{RETRY_MAX}, plus up to one initial delay of jitter.
    """
    return backoffPolicy(
        initialDelay=RETRY_INITIAL,
        maxDelay=RETRY_MAX,
        factor=RETRY_FACTOR,
        jitter=lambda: random.random() * RETRY_INITIAL,
    )


@attrs.define
class _Entry:
    data: bytes
    deferred: Deferred[bool]
    started: float
    attempt: int = 0
    call: IDelayedCall | None = None


class ProducerProtocol(LineOnlyReceiver):
    """
    Twisted client of the intake line framing: L{log} returns a Deferred that
    fires with the answer to that event; answers are matched in order.

    Given a C{clock}, an event answered C{ERR 11} (EAGAIN) is resent, the same
    bytes, after the C{policy}'s delay, until C{timeout} seconds have passed
    since it was first sent; then its Deferred fails with L{GaveUp}.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_ANSWER

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        policy: RetryPolicy | None = None,
        name: str = "intake",
    ) -> None:
        """
        @param clock: schedules resends; without one C{ERR 11} is not retried.
        @param timeout: seconds an event may be retried; C{None}: no limit.
        @param policy: retry number (from 0) -> delay, as C{backoffPolicy} makes.
        @param name: the socket named in L{GaveUp}.
        """
        self.clock = clock
        self.timeout = timeout
        self.policy = policy or default_policy()
        self.name = name
        self._pending: deque[_Entry] = deque()
        self._waiting: list[_Entry] = []
        self._lost: Failure | None = None

    def log(self, event_or_line: EventOrLine) -> Deferred[bool]:
        """
        Send one event.

        @return: fires with C{True} for a duplicate, C{False} for a new event;
            fails with the typed L{errors.LBError} of an C{ERR} answer, with
            L{GaveUp} for an C{ERR 11} past the timeout, or with the reason of
            the connection loss.
        """
        if self._lost is not None:
            return fail(self._lost)
        try:
            data = encode_line(event_or_line)
        except errors.LBError:
            return fail()
        entry = _Entry(data, Deferred(), self.clock.seconds() if self.clock else 0.0)
        self._send(entry)
        return entry.deferred

    def _send(self, entry: _Entry) -> None:
        self._pending.append(entry)
        assert self.transport is not None
        self.transport.write(entry.data)

    @property
    def outstanding(self) -> int:
        """
        Number of events sent or waiting to be resent, and not yet answered.
        """
        return len(self._pending) + len(self._waiting)

    def lineReceived(self, line: bytes) -> None:
        if not self._pending:
            assert self.transport is not None
            self.transport.loseConnection()
            return
        entry = self._pending.popleft()
        try:
            duplicate = parse_answer(line)
        except errors.TryAgain as e:
            self._again(entry, e)
        except errors.LBError:
            entry.deferred.errback()
        else:
            entry.deferred.callback(duplicate)

    def _again(self, entry: _Entry, err: errors.TryAgain) -> None:
        clock = self.clock
        if clock is None:
            entry.deferred.errback(err)
            return
        delay = self.policy(entry.attempt)
        entry.attempt += 1
        if self.timeout is not None and clock.seconds() + delay - entry.started > self.timeout:
            entry.deferred.errback(
                GaveUp(self.name, self.timeout, err.code, f"ERR {err.code} {err.message}")
            )
            return
        entry.call = clock.callLater(delay, self._resend, entry)
        self._waiting.append(entry)

    def _resend(self, entry: _Entry) -> None:
        self._waiting.remove(entry)
        entry.call = None
        self._send(entry)

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._lost = reason
        pending, self._pending = self._pending, deque()
        waiting, self._waiting = self._waiting, []
        for entry in waiting:
            if entry.call is not None and entry.call.active():
                entry.call.cancel()
        for entry in [*pending, *waiting]:
            entry.deferred.errback(reason)


_PERMANENT = frozenset({errno.EACCES, errno.EPERM, errno.ENOTSOCK, errno.ENAMETOOLONG})


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, twerror.ConnectingCancelledError):
        return False
    if isinstance(err, (twerror.ConnectError, twerror.TimeoutError)):
        # A socket we may not use, or that is no socket, will not get better.
        return getattr(err, "osError", None) not in _PERMANENT
    return isinstance(err, errors.TryAgain)


def _describe(err: BaseException) -> tuple[int, str]:
    if isinstance(err, errors.LBError):
        return err.code, f"ERR {err.code} {err.message}"
    if isinstance(err, twerror.ConnectionRefusedError):
        return errno.ECONNREFUSED, "Connection refused"
    if isinstance(err, (twerror.TimeoutError, twerror.TCPTimedOutError)):
        return errno.ETIMEDOUT, "Connection timed out"
    osError = getattr(err, "osError", None)
    if isinstance(osError, int):
        return osError, str(err)
    return errno.EIO, str(err) or type(err).__name__


def connect_producer(
    reactor: Any,
    endpoint: IStreamClientEndpoint | str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    policy: RetryPolicy | None = None,
    clock: IReactorTime | None = None,
) -> Deferred[ProducerProtocol]:
    """
    Connect a L{ProducerProtocol}, retrying a refused, missing or timed-out
    socket with backoff for up to C{timeout} seconds.

    @param endpoint: a client endpoint, or an endpoint string such as
        C{unix:path=/var/lib/lbtwist/events.sock} (parsed with C{reactor}).
    @param policy: retry number (from 0) -> delay (default L{default_policy}).
    @param clock: for the delays and the deadline (default: C{reactor}); the
        protocol gets it too, for its C{ERR 11} resends.
    @return: fires with the connected protocol; fails with L{GaveUp} once the
        timeout is spent, or at once with an error that is not transient.
    """
    if isinstance(endpoint, str):
        name = endpoint
        target: IStreamClientEndpoint = clientFromString(reactor, endpoint)
    else:
        name = repr(endpoint)
        target = endpoint
    when: IReactorTime = clock if clock is not None else reactor
    retry = policy or default_policy()
    started = when.seconds()

    def attempt(n: int) -> Deferred[ProducerProtocol]:
        d = connectProtocol(
            target, ProducerProtocol(when, timeout=timeout, policy=retry, name=name)
        )
        d.addErrback(failed, n)
        return d

    def failed(failure: Failure, n: int) -> Deferred[ProducerProtocol] | Failure:
        err = failure.value
        if err is None or not _is_transient(err):
            return failure
        delay = retry(n)
        if timeout is not None and when.seconds() + delay - started > timeout:
            code, text = _describe(err)
            raise GaveUp(name, timeout, code, text)
        later: Deferred[None] = deferLater(when, delay)
        return later.addCallback(lambda _: attempt(n + 1))

    return attempt(0)
