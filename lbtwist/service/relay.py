# -*- test-case-name: tests.unit.test_relay -*-
"""
The relay: events of WMS jobs go from the outbox to their L&B server.

One L{RelayQueue} per destination (C{host:port}, the job id's port + 1), each
with its own L{ClientService} and back-off. A queue reads its outbox rows in id
order, keeps up to C{window} of them in flight on the current connection and
matches the IL replies in order (docs/relay.md):

 - 0: delivered, the row is removed;
 - 400 PROTO and 600 PERM: rejected for good, the row moves to the rejected
   table with the reason;
 - 700 with minor ENOENT (job not registered upstream): the queue holds and
   retries the row with back-off, then rejects it once it is older than
   C{enoent_timeout};
 - anything else, a malformed reply, a reply timeout or a broken connection:
   reconnect with back-off and resend from the first unacknowledged row.

Removals and rejections go to the store in one call per received chunk; the
store groups concurrent calls into one transaction. New rows are announced by
the store's commit listener; a slow timer sweeps as a safety net and logs each
destination's queue depth, oldest pending age and rejected count.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.application.internet import ClientService, TimerService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbtwist.core import ilproto
from lbtwist.security.credentials import HostCredentials
from lbtwist.service import logs
from lbtwist.store.interface import IEventStore, OutboxEntry, OutboxStats

log = Logger()

#: Seconds between safety sweeps (and queue state log lines).
SWEEP_INTERVAL = 60.0


@attrs.frozen
class RelaySettings:
    """
    Tunables of the relay queues.

    @ivar window: events in flight per destination (1: L&B's stop-and-wait).
    @ivar enoent_timeout: seconds since arrival an event of a job unknown upstream
        is retried before it is rejected.
    @ivar enoent_initial: first ENOENT retry delay, doubled per retry of the row.
    @ivar enoent_max: longest ENOENT retry delay.
    @ivar reply_timeout: seconds without a reply, events in flight, before the
        connection is dropped.
    @ivar fetch_size: outbox rows read at once.
    @ivar reconnect_initial: first reconnection delay.
    @ivar reconnect_max: longest reconnection delay.
    @ivar ack_delay: seconds delivered rows may wait to be removed from the
        outbox, so that removals share a transaction (0: at once). A crash in
        between only makes the server see a duplicate, which it answers OK.
    @ivar ack_max: delivered rows that are removed at once, whatever the delay.
    """

    window: int = 1024
    enoent_timeout: float = 3600.0
    enoent_initial: float = 1.0
    enoent_max: float = 60.0
    reply_timeout: float = 60.0
    fetch_size: int = 1024
    reconnect_initial: float = 0.5
    reconnect_max: float = 300.0
    ack_delay: float = 0.25
    ack_max: int = 8192


@attrs.define
class QueueCounters:
    """
    What one queue did since start.
    """

    delivered: int = 0
    rejected: int = 0
    enoent_retries: int = 0
    resent: int = 0
    connections: int = 0


def split_destination(destination: str) -> tuple[str, int]:
    """
    @return: C{(host, port)} of a C{"host:port"} destination.
    """
    host, _, port = destination.rpartition(":")
    return host, int(port)


#: The OK reply as lbtwist's store port writes it, matched without decoding.
_OK_BYTES = ilproto.il_reply_for(0, "OK")
_OK_REPLY = ilproto.ILReply(ilproto.LB_OK, 0, "OK")


def count_ok_replies(data: bytes) -> int:
    """
    @return: how many copies of the usual OK reply C{data} starts with.
    """
    size = len(_OK_BYTES)
    if not data.startswith(_OK_BYTES):
        return 0
    whole = len(data) // size
    if data == _OK_BYTES * whole:
        return whole
    n = 1
    while data.startswith(_OK_BYTES, n * size):
        n += 1
    return n


def tcp_no_delay(transport: object) -> bool:
    """
    Turn Nagle's algorithm off on the TCP connection under C{transport}, through
    TLS wrappers: a window of IL messages, or a commit group's replies, goes out
    at once instead of waiting for the peer to acknowledge the previous segment
    (which a delayed acknowledgement holds for up to 40 ms).

    @return: whether a TCP transport was found and set.
    """
    for _ in range(8):
        if transport is None:
            return False
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                return False
            return True
        transport = getattr(transport, "transport", None)
    return False


class RelayProtocol(Protocol):
    """
    One connection to an L&B store port: writes IL messages, decodes IL replies.
    """

    def __init__(self, queue: RelayQueue) -> None:
        self.queue = queue
        self._decoder = ilproto.ILReplyDecoder()

    def connectionMade(self) -> None:
        tcp_no_delay(self.transport)
        self.queue.attach(self)

    def send(self, entries: Iterable[OutboxEntry]) -> None:
        """
        Write events, one IL message each.
        """
        assert self.transport is not None
        self.transport.write(
            b"".join(ilproto.encode_il_msg(e.line.encode("utf-8") + b"\n") for e in entries)
        )

    def dataReceived(self, data: bytes) -> None:
        broken: ilproto.ProtocolError | None = None
        replies: list[ilproto.ILReply] = []
        if not self._decoder.buffered:
            # Fast path: a run of plain OK replies needs no decoding.
            ok = count_ok_replies(data)
            if ok:
                replies = [_OK_REPLY] * ok
                data = data[ok * len(_OK_BYTES) :]
        if data:
            try:
                replies += self._decoder.feed(data)
            except ilproto.ProtocolError as e:
                replies += [r for r in e.decoded if isinstance(r, ilproto.ILReply)]
                broken = e
        self.queue.replies(self, replies)
        if broken is not None:
            self.queue.drop(self, f"malformed reply: {broken.reason}")

    def abort(self) -> None:
        """
        Drop the connection at once.
        """
        transport = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.queue.detach(self, reason)


class _RelayFactory(Factory):
    noisy = False

    def __init__(self, queue: RelayQueue) -> None:
        self.queue = queue

    def buildProtocol(self, addr: object) -> RelayProtocol:
        proto = RelayProtocol(self.queue)
        proto.factory = self
        return proto


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """
    An endpoint whose connection failures are kept as the queue's C{last_error}.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, queue: RelayQueue) -> None:
        self._endpoint = endpoint
        self._queue = queue

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            self._queue.last_error = failure.getErrorMessage()
            return failure

        return d.addErrback(failed)


class RelayQueue(Service):
    """
    The ordered queue of one destination and its connection.

    @ivar destination: C{"host:port"}.
    @ivar counters: L{QueueCounters}.
    """

    def __init__(
        self,
        destination: str,
        store: IEventStore,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        settings: RelaySettings = RelaySettings(),
        *,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.destination = destination
        self.name = f"relay {destination}"
        self._store = store
        self._clock = clock
        self.settings = settings
        self.counters = QueueCounters()
        self._buffer: deque[OutboxEntry] = deque()
        self._inflight: deque[OutboxEntry] = deque()
        self._retry: list[OutboxEntry] = []
        self._attempts: dict[int, int] = {}
        self._last_read = 0
        self._maybe_more = True
        self._notified = False
        self._fetching = False
        self._proto: RelayProtocol | None = None
        self._hold: IDelayedCall | None = None
        self._reply_timer: IDelayedCall | None = None
        self._ack_timer: IDelayedCall | None = None
        self._acks: list[int] = []
        self._generation = 0
        #: The last connection failure or loss (for metrics and health), L{None} if none.
        self.last_error: str | None = None
        policy_args: dict[str, Any] = {
            "initialDelay": settings.reconnect_initial,
            "maxDelay": settings.reconnect_max,
            "factor": 1.5,
        }
        if jitter is not None:
            policy_args["jitter"] = jitter
        self.client = ClientService(
            _RecordingEndpoint(endpoint, self),
            _RelayFactory(self),
            retryPolicy=backoffPolicy(**policy_args),
            clock=clock,
        )

    # service life

    def startService(self) -> None:
        super().startService()
        self.client.startService()
        self.wake()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._flush_acks(now=True)
        for timer in (self._hold, self._reply_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._hold = self._reply_timer = None
        self._release_retries()
        d: Deferred[None] = self.client.stopService()
        return d

    # state

    @property
    def connected(self) -> bool:
        """
        Whether a connection is up.
        """
        return self._proto is not None

    @property
    def held(self) -> bool:
        """
        Whether the queue waits to retry events of a job unknown upstream.
        """
        return self._hold is not None

    @property
    def in_flight(self) -> int:
        """
        Events sent and not answered.
        """
        return len(self._inflight)

    @property
    def reading(self) -> bool:
        """
        Whether a read of the outbox is under way.
        """
        return self._fetching

    @property
    def buffered(self) -> int:
        """
        Events read from the outbox and not sent (retries included).
        """
        return len(self._buffer) + len(self._retry)

    def wake(self) -> None:
        """
        New outbox rows may exist for this destination.
        """
        self._maybe_more = True
        self._notified = True
        self._pump()

    # connection

    def attach(self, proto: RelayProtocol) -> None:
        """
        A connection is up: send from the first unacknowledged event.
        """
        if self._proto is not None and self._proto is not proto:
            self._proto.abort()
        self._requeue()
        self._proto = proto
        self.counters.connections += 1
        log.info("relay {dest}: connected", dest=self.destination)
        self._pump()

    def detach(self, proto: RelayProtocol, reason: Failure | str) -> None:
        """
        A connection is gone: what is in flight will be sent again.
        """
        if proto is not self._proto:
            return
        self._proto = None
        if self._reply_timer is not None and self._reply_timer.active():
            self._reply_timer.cancel()
        self._reply_timer = None
        self._flush_acks()
        if self._inflight:
            self.counters.resent += len(self._inflight)
        self._requeue()
        text = reason if isinstance(reason, str) else reason.getErrorMessage()
        self.last_error = text
        log.info(
            "relay {dest}: connection lost ({reason}), {n} events to resend",
            dest=self.destination,
            reason=text,
            n=len(self._buffer),
        )

    def drop(self, proto: RelayProtocol, reason: str) -> None:
        """
        Give up a connection (the service reconnects with back-off).
        """
        if proto is not self._proto:
            return
        logs.warn(
            log,
            "relay {dest}: dropping the connection: {reason}",
            dest=self.destination,
            reason=reason,
        )
        self.detach(proto, reason)
        proto.abort()

    def restart(self, reason: str) -> None:
        """
        Stop sending and forget every row read (the store's relay lease of the
        destination is lost: another front end sends them): drop the connection,
        flush the acknowledgements, and read again from the first row of the
        outbox when woken.
        """
        self._generation += 1
        self._flush_acks(now=True)
        if self._hold is not None and self._hold.active():
            self._hold.cancel()
        self._hold = None
        self._retry = []
        self._attempts.clear()
        if self._proto is not None:
            proto = self._proto
            self.detach(proto, reason)
            proto.abort()
        self._buffer.clear()
        self._inflight.clear()
        self._last_read = 0
        self._fetching = False
        self._maybe_more = True
        self._notified = False

    def _requeue(self) -> None:
        self._buffer.extendleft(reversed(self._inflight))
        self._inflight.clear()

    # sending

    def _pump(self) -> None:
        proto = self._proto
        if proto is not None and self._hold is None:
            batch: list[OutboxEntry] = []
            window = self.settings.window
            while self._buffer and len(self._inflight) < window:
                entry = self._buffer.popleft()
                self._inflight.append(entry)
                batch.append(entry)
            if batch:
                if self._reply_timer is None or not self._reply_timer.active():
                    self._reply_timer = self._clock.callLater(
                        self.settings.reply_timeout, self._timed_out
                    )
                proto.send(batch)
        self._maybe_fetch()

    def _maybe_fetch(self) -> None:
        if self._fetching or not self._maybe_more or not self.running:
            return
        if len(self._buffer) >= max(self.settings.fetch_size // 2, self.settings.window):
            return
        self._fetching = True
        self._notified = False
        generation = self._generation
        d: Deferred[list[OutboxEntry]] = self._store.outbox_after(
            self.destination, self._last_read, self.settings.fetch_size
        )

        def fetched(rows: list[OutboxEntry]) -> None:
            if generation == self._generation:  # else read before a restart
                self._fetched(rows)

        def fetch_failed(failure: Failure) -> None:
            if generation == self._generation:
                self._fetch_failed(failure)

        d.addCallbacks(fetched, fetch_failed)
        d.addErrback(lambda f: log.failure("relay {dest}: fetch", f, dest=self.destination))

    def _fetched(self, rows: list[OutboxEntry]) -> None:
        self._fetching = False
        if rows:
            self._last_read = rows[-1].id
            self._buffer.extend(rows)
        if len(rows) < self.settings.fetch_size and not self._notified:
            self._maybe_more = False
        self._pump()

    def _fetch_failed(self, failure: Failure) -> None:
        # Left to the next wake-up or sweep.
        self._fetching = False
        logs.warn(
            log,
            "relay {dest}: reading the outbox failed: {error}",
            dest=self.destination,
            error=failure.getErrorMessage(),
        )

    def _timed_out(self) -> None:
        self._reply_timer = None
        if self._proto is not None and self._inflight:
            self.drop(self._proto, f"no reply in {self.settings.reply_timeout} s")

    # replies

    def replies(self, proto: RelayProtocol, replies: list[ilproto.ILReply]) -> None:
        """
        Match replies to the events in flight, in order.
        """
        for reply in replies:
            if proto is not self._proto:
                break
            if not self._inflight:
                self.drop(proto, "reply to no event")
                break
            entry = self._inflight.popleft()
            self._reply(proto, entry, reply)
        self._flush_acks()
        if self._reply_timer is not None and self._reply_timer.active():
            if self._inflight:
                self._reply_timer.reset(self.settings.reply_timeout)
            else:
                self._reply_timer.cancel()
                self._reply_timer = None
        self._pump()

    def _reply(self, proto: RelayProtocol, entry: OutboxEntry, reply: ilproto.ILReply) -> None:
        major = reply.major
        if major == ilproto.LB_OK:
            self._attempts.pop(entry.id, None)
            self._acks.append(entry.id)
            self.counters.delivered += 1
        elif major in (ilproto.LB_PROTO, ilproto.LB_PERM):
            self._reject(entry, major, reply.minor, reply.text)
        elif major == ilproto.LB_DBERR and reply.minor == errno.ENOENT:
            age = self._clock.seconds() - entry.arrived / 1e6
            if age >= self.settings.enoent_timeout:
                self._reject(
                    entry,
                    major,
                    reply.minor,
                    f"job unknown upstream for {age:.0f} s: {reply.text}",
                )
            else:
                self._retry_later(entry)
        else:
            logs.warn(
                log,
                "relay {dest}: event {id} answered {major}/{minor} {text}: resending",
                dest=self.destination,
                id=entry.id,
                major=major,
                minor=reply.minor,
                text=reply.text,
            )
            self._inflight.appendleft(entry)
            self.drop(proto, f"error reply {major}")

    def _reject(self, entry: OutboxEntry, major: int, minor: int, text: str) -> None:
        self._attempts.pop(entry.id, None)
        self.counters.rejected += 1
        logs.warn(
            log,
            "relay {dest}: event {event_id} of {jobid} rejected for good ({major}/{minor} {text})",
            dest=self.destination,
            event_id=entry.event_id,
            jobid=entry.jobid,
            major=major,
            minor=minor,
            text=text,
        )
        d = self._store.reject(entry, major, minor, text)
        d.addErrback(lambda f: log.failure("relay {dest}: reject", f, dest=self.destination))

    def _retry_later(self, entry: OutboxEntry) -> None:
        # Stop-and-wait on the queue: nothing is sent until the retry is due.
        self.counters.enoent_retries += 1
        self._retry.append(entry)
        if self._hold is not None:
            return
        first = self._retry[0]
        attempt = self._attempts.get(first.id, 0)
        self._attempts[first.id] = attempt + 1
        delay = min(self.settings.enoent_initial * 2**attempt, self.settings.enoent_max)
        deadline = first.arrived / 1e6 + self.settings.enoent_timeout - self._clock.seconds()
        delay = max(min(delay, deadline), 0.0)
        log.info(
            "relay {dest}: job {jobid} unknown upstream, retrying in {delay:.1f} s",
            dest=self.destination,
            jobid=first.jobid,
            delay=delay,
        )
        self._hold = self._clock.callLater(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._hold = None
        self._release_retries()
        self._pump()

    def _release_retries(self) -> None:
        self._buffer.extendleft(reversed(self._retry))
        self._retry = []

    def _flush_acks(self, now: bool = False) -> None:
        """
        Remove delivered rows from the outbox: at once if C{now}, the delay is 0
        or many are waiting, otherwise after C{ack_delay}.
        """
        if not self._acks:
            return
        settings = self.settings
        if not now and settings.ack_delay > 0 and len(self._acks) < settings.ack_max:
            if self._ack_timer is None:
                self._ack_timer = self._clock.callLater(settings.ack_delay, self._ack_due)
            return
        if self._ack_timer is not None:
            if self._ack_timer.active():
                self._ack_timer.cancel()
            self._ack_timer = None
        ids, self._acks = self._acks, []
        d = self._store.outbox_ack(ids)
        d.addErrback(lambda f: log.failure("relay {dest}: ack", f, dest=self.destination))

    def _ack_due(self) -> None:
        self._ack_timer = None
        self._flush_acks(now=True)


EndpointFactory = Callable[[str], IStreamClientEndpoint]


class RelayService(MultiService):
    """
    All relay queues: created on demand from the store's commit notifications and
    from the outbox at start, plus the periodic sweep.

    @ivar queues: by destination.
    """

    def __init__(
        self,
        store: IEventStore,
        clock: IReactorTime,
        endpoint_for: EndpointFactory,
        settings: RelaySettings = RelaySettings(),
        *,
        sweep_interval: float = SWEEP_INTERVAL,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.endpoint_for = endpoint_for
        self.settings = settings
        self.queues: dict[str, RelayQueue] = {}
        self._jitter = jitter
        self._listening = False
        timer = TimerService(sweep_interval, self.sweep)
        timer.clock = clock
        timer.setServiceParent(self)

    def startService(self) -> None:
        if not self._listening:
            self._listening = True
            self.store.add_commit_listener(self._committed)
            # A store shared by front ends (PostgreSQL) tells which destinations
            # this one no longer sends.
            lease_listener = getattr(self.store, "add_lease_listener", None)
            if lease_listener is not None:
                lease_listener(self._lease_lost)
        super().startService()

    def queue(self, destination: str) -> RelayQueue:
        """
        @return: the queue of C{destination}, created (and started) if new.
        """
        queue = self.queues.get(destination)
        if queue is None:
            queue = RelayQueue(
                destination,
                self.store,
                self.clock,
                self.endpoint_for(destination),
                self.settings,
                jitter=self._jitter,
            )
            self.queues[destination] = queue
            queue.setServiceParent(self)
        return queue

    def _lease_lost(self, destinations: set[str]) -> None:
        for dest in destinations:
            queue = self.queues.get(dest)
            if queue is not None:
                queue.restart("relay lease lost")

    def _committed(self, destinations: set[str]) -> None:
        if not self.running:
            return
        for dest in destinations:
            self.queue(dest).wake()

    def sweep(self) -> Deferred[None]:
        """
        Wake every destination with waiting rows and log the relay state.
        """
        d: Deferred[dict[str, OutboxStats]] = self.store.outbox_stats()

        def got(stats: dict[str, OutboxStats]) -> Deferred[None] | None:
            if not self.running:
                return None
            # Waiting rows that no idle queue knows of were added behind the store's
            # back (lbtwist relay retry): read them from the database.
            resync = getattr(self.store, "outbox_resync", None)
            if resync is not None and any(
                st.depth and self._idle(dest) for dest, st in stats.items()
            ):
                synced: Deferred[None] = resync()
                synced.addCallback(lambda _: self._report(stats))
                return synced
            self._report(stats)
            return None

        def failed(failure: Failure) -> None:
            log.failure("relay sweep failed", failure)

        return d.addCallbacks(got, failed)

    def _idle(self, destination: str) -> bool:
        queue = self.queues.get(destination)
        return queue is None or not (queue.buffered or queue.in_flight or queue.reading)

    def _report(self, stats: dict[str, OutboxStats]) -> None:
        """
        Wake every destination with waiting rows and log its queue.
        """
        now = self.clock.seconds()
        for dest, st in sorted(stats.items()):
            if st.depth:
                self.queue(dest).wake()
            if st.depth or st.rejected:
                age = 0.0 if st.oldest_arrived is None else now - st.oldest_arrived / 1e6
                queue = self.queues.get(dest)
                log.info(
                    "relay {dest}: {depth} waiting, oldest {age:.1f} s, {rejected} rejected,"
                    " {state}",
                    dest=dest,
                    depth=st.depth,
                    age=max(age, 0.0),
                    rejected=st.rejected,
                    state="connected" if queue is not None and queue.connected else "not connected",
                )


# -- wiring ---------------------------------------------------------------------


def tls_endpoint_factory(
    reactor: Any,
    *,
    cert: str,
    key: str | None,
    ca_dir: str,
    crl: str = "if-present",
    relay_map: Iterable[tuple[tuple[str, int], str]] = (),
) -> EndpointFactory:
    """
    Endpoints to destinations: TLS with the host certificate, the server certificate
    checked against the CA directory and the destination's host name; C{relay_map}
    sends a destination to another endpoint (the name checked stays the same).
    """
    from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS

    from lbtwist.security.tls import ClientConnectionCreator, client_context

    context = client_context(cert, key, ca_dir, crl=crl)
    mapping = {(host.lower(), port): desc for (host, port), desc in relay_map}

    def endpoint_for(destination: str) -> IStreamClientEndpoint:
        host, port = split_destination(destination)
        desc = mapping.get((host.lower(), port))
        if desc is not None:
            base: IStreamClientEndpoint = clientFromString(reactor, desc)
        else:
            base = HostnameEndpoint(reactor, host, port)
        return HandshakeEndpoint(
            wrapClientTLS(ClientConnectionCreator(host, context), base), destination
        )

    return endpoint_for


@implementer(IHandshakeListener)
class _HandshakeWatcher(Protocol):
    """
    Stands between TLS and the relay's protocol: the relay's protocol is connected only
    once the handshake is done, and a connection lost before that is a failed connection
    attempt (so that C{ClientService} backs off), not a connection.
    """

    def __init__(self, endpoint: HandshakeEndpoint, wrapped: Protocol, done: Deferred[Any]):
        self.endpoint = endpoint
        self.wrapped = wrapped
        self.done = done
        self.ready = False

    def handshakeCompleted(self) -> None:
        self.ready = True
        self.endpoint.connected()
        assert self.transport is not None
        self.wrapped.makeConnection(self.transport)
        if not self.done.called:
            self.done.callback(self.wrapped)

    def dataReceived(self, data: bytes) -> None:
        if self.ready:
            self.wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.ready:
            self.wrapped.connectionLost(reason)
        elif not self.done.called:
            self.endpoint.failed(reason)
            self.done.errback(reason)


class _HandshakeFactory(Factory):
    noisy = False

    def __init__(self, endpoint: HandshakeEndpoint, factory: Any, done: Deferred[Any]) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.done = done

    def buildProtocol(self, addr: object) -> Protocol | None:
        wrapped = self.factory.buildProtocol(addr)
        if wrapped is None:
            return None
        return _HandshakeWatcher(self.endpoint, wrapped, self.done)


@implementer(IStreamClientEndpoint)
class HandshakeEndpoint:
    """
    A TLS client endpoint (C{wrapClientTLS}) whose connection counts once its handshake
    succeeded; a failure's reason is logged once per change. Its C{repr} names the
    destination (C{ClientService}'s retry lines show it).
    """

    def __init__(self, inner: IStreamClientEndpoint, destination: str) -> None:
        self.inner = inner
        self.destination = destination
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<relay to {self.destination}>"

    def connect(self, factory: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        connecting = self.inner.connect(_HandshakeFactory(self, factory, done))

        def refused(failure: Failure) -> None:
            if not done.called:
                self.failed(failure)
                done.errback(failure)

        connecting.addErrback(refused)
        return done

    def failed(self, reason: Failure) -> None:
        """
        A connection attempt failed: log why, unless it is the same reason as last time.
        """
        text = reason.getErrorMessage() or getattr(reason.type, "__name__", "error")
        if text != self.last_error:
            self.last_error = text
            log.warn(
                "relay to {destination}: cannot connect: {reason}",
                destination=self.destination,
                reason=text,
            )

    def connected(self) -> None:
        """
        A handshake succeeded (after failures: say so once).
        """
        if self.last_error is not None:
            log.info("relay to {destination}: connected again", destination=self.destination)
        self.last_error = None


def make_relay_service(
    store: IEventStore,
    reactor: Any,
    *,
    credentials: HostCredentials,
    crl: str = "if-present",
    relay_map: Sequence[tuple[tuple[str, int], str]] = (),
    settings: RelaySettings = RelaySettings(),
    sweep_interval: float = SWEEP_INTERVAL,
) -> RelayService:
    """
    The relay of C{twistd lbproxy}: TLS to each destination with the host
    C{credentials} (C{crl} the server certificates' CRL mode), C{relay_map}
    sending destinations elsewhere (L{tls_endpoint_factory}).
    """
    endpoint_for = tls_endpoint_factory(
        reactor,
        cert=credentials.cert,
        key=credentials.key,
        ca_dir=credentials.ca_dir,
        crl=crl,
        relay_map=relay_map,
    )
    log.info(
        "relay: window {window}, ENOENT retries for {timeout} s, {n} mapped destinations",
        window=settings.window,
        timeout=settings.enoent_timeout,
        n=len(relay_map),
    )
    return RelayService(store, reactor, endpoint_for, settings, sweep_interval=sweep_interval)


__all__ = [
    "count_ok_replies",
    "tcp_no_delay",
    "RelayProtocol",
    "RelayQueue",
    "RelayService",
    "RelaySettings",
    "make_relay_service",
    "tls_endpoint_factory",
]
