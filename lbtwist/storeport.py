# -*- test-case-name: tests.test_storeport -*-
"""
The server's L&B store port: relays and producers log events over TLS with
client certificates, in L&B's IL framing (or the logd framing), and get one
reply per event, in order, once the event is durable.

Rules (design section 9): a job must be registered (RegJob) before its other
events are accepted, unless grey jobs are on (ENOENT otherwise, which a relay
retries); a registration comes from its owner (DG.USER is the peer's DN), a
peer the policy permits REGISTER_JOBS, or a super user; other events from
their owner, a peer permitted LOG_WMS_EVENTS, LOG_CE_EVENTS or
LOG_GENERAL_EVENTS (chosen by the event's source), or a super user (EPERM
otherwise). A duplicate is answered OK.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist import ilproto
from lbtwist.authz import Policy, is_super_user
from lbtwist.errors import (
    BrokenULM,
    LBError,
    PermissionDenied,
    TooBig,
    TryAgain,
    UnknownJob,
)
from lbtwist.events import Event, parse_event
from lbtwist.identity import Identity, same_dn
from lbtwist.intake import detect_framing

log = Logger()

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_LINE = 4 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 4096
DEFAULT_MAX_FIELDS = 100
DEFAULT_KNOWN_JOBS = 200_000

#: Sources whose events need LOG_WMS_EVENTS.
WMS_SOURCES = frozenset(
    ("NetworkServer", "WorkloadManager", "JobController", "LogMonitor", "BigHelper")
)

# Room for the IL body around the event line.
_IL_OVERHEAD = 64

# Authorization answers kept per connection.
_ALLOWED_CACHE = 4096

_OK_REPLY = ilproto.il_reply_for(0, "OK")

Identify = Callable[[Any], "Identity | None"]


def required_action(event: Event) -> str:
    """
    The policy action that lets a peer log C{event} for somebody else.
    """
    if event.type == "RegJob":
        return "REGISTER_JOBS"
    if event.source in WMS_SOURCES:
        return "LOG_WMS_EVENTS"
    if event.source.startswith("CREAM") or event.source == "LRMS":
        return "LOG_CE_EVENTS"
    return "LOG_GENERAL_EVENTS"


def may_log(
    identity: Identity | None, event: Event, policy: Policy, super_users: Iterable[str]
) -> bool:
    """
    Whether the peer C{identity} may log C{event}: its owner, a super user, or a
    peer the policy permits the event's action.
    """
    if identity is None:
        return False
    if event.user and same_dn(event.user, identity.dn):
        return True
    if is_super_user(identity, policy, super_users):
        return True
    return policy.permits(required_action(event), identity)


def tls_identity(clock: IReactorTime, voms_dir: str | None = None) -> Identify:
    """
    @return: the identity of a TLS transport's verified peer chain, by
        L{lbtwist.identity.PeerIdentity} without a CA directory (so no
        FQANs); the store port itself uses L{PeerIdentity.for_source}.
    """
    from lbtwist.identity import PeerIdentity

    return PeerIdentity(clock=clock, voms_dir=voms_dir).of_transport


@attrs.define
class StorePortStats:
    """
    Counters of the store port.
    """

    connections: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    unknown: int = 0
    errors: int = 0


@attrs.define
class _Slot:
    code: int | None = None
    text: str = ""
    close: bool = False


@attrs.define(eq=False)
class _Registration:
    """
    A RegJob handed to the store and not committed yet, and who waits for it.
    """

    jobid: str
    waiters: list[Deferred[bool | None]] = attrs.Factory(list)


class StorePortProtocol(Protocol):
    """
    One connection to the store port.
    """

    factory: StorePortFactory

    def __init__(self) -> None:
        self._head = b""
        self._framing: str | None = None
        self._decoder: ilproto.ILFrameDecoder | ilproto.LogdDecoder | None = None
        self._queue: deque[_Slot] = deque()
        self._waiting: list[tuple[_Slot, tuple[str, Event] | LBError]] = []
        self._busy = False
        self._paused = False
        self._allowed: dict[tuple[str, str], bool] = {}
        self._broken = False
        self._lost = False
        self._counted = False
        self._identity: Identity | None = None
        self._identified = False

    def connectionMade(self) -> None:
        f = self.factory
        if f.stats.connections >= f.max_connections:
            log.warn("store port: too many connections, refusing one")
            f.stats.errors += 1
            assert self.transport is not None
            self.transport.loseConnection()
            self._broken = True
            return
        f.stats.connections += 1
        self._counted = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        # What was not handed to the store yet is dropped: nobody can be answered,
        # and the peer sends it again (after anything already submitted).
        self._waiting = []
        if self._counted:
            self._counted = False
            self.factory.stats.connections -= 1

    @property
    def identity(self) -> Identity | None:
        """
        The peer (known once the TLS handshake is done: at the first data).
        """
        if not self._identified:
            self._identified = True
            self._identity = self.factory.identify(self.transport)
        return self._identity

    # input

    def dataReceived(self, data: bytes) -> None:
        if self._broken or self._lost:
            return
        max_line = self.factory.max_line
        if self._decoder is None:
            self._head += data
            name = detect_framing(self._head[: len(ilproto.DGLOG_MAGIC)])
            if name is None:
                return
            if name == "line":
                log.warn("store port: not IL or logd framing, closing")
                self._broken = True
                assert self.transport is not None
                self.transport.loseConnection()
                return
            self._framing = name
            if name == "IL":
                self._decoder = ilproto.ILFrameDecoder(max_line + _IL_OVERHEAD)
            else:
                self._decoder = ilproto.LogdDecoder(max_line + 2)
            data, self._head = self._head, b""
        fatal: LBError | None = None
        try:
            bodies = self._decoder.feed(data)
        except ilproto.ProtocolError as e:
            bodies = [b for b in e.decoded if isinstance(b, bytes)]
            fatal = (
                TooBig(e.reason) if isinstance(e, ilproto.MessageTooBig) else BrokenULM(e.reason)
            )
        waiting = self._waiting
        queue = self._queue
        for body in bodies:
            slot = _Slot()
            queue.append(slot)
            waiting.append((slot, self._validate(body)))
        if fatal is not None:
            self._broken = True
            queue.append(_Slot(fatal.code, fatal.message, close=True))
        if len(queue) > self.factory.max_inflight and not self._paused:
            # Back-pressure: read no more until the store catches up.
            self._paused = True
            transport: Any = self.transport
            transport.pauseProducing()
        self._kick()
        self._flush()

    def _validate(self, body: bytes) -> tuple[str, Event] | LBError:
        f = self.factory
        if self._framing == "IL":
            try:
                body = ilproto.decode_il_msg(body)
            except ilproto.ProtocolError as e:
                return BrokenULM(f"bad IL message: {e.reason}")
        raw = body.rstrip(b"\r\n")
        if b"\0" in raw:
            return BrokenULM("NUL byte in the event")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return BrokenULM(f"invalid UTF-8 at byte {e.start}")
        try:
            event = parse_event(line, max_fields=f.max_fields, max_size=f.max_line)
        except LBError as e:
            return e
        # The answer depends on the event's owner and action only (one peer here).
        key = (event.user, required_action(event))
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = may_log(self.identity, event, f.policy, f.super_users)
            if len(self._allowed) >= _ALLOWED_CACHE:
                self._allowed.clear()
            self._allowed[key] = allowed
        if not allowed:
            f.stats.refused += 1
            return PermissionDenied(
                f"{self.identity.dn if self.identity else 'anonymous'} may not log"
                f" {event.type} of {event.jobid}"
            )
        return line, event

    def _kick(self) -> None:
        """
        Hand everything received since the last store call to the store, in one
        call, unless a call of this connection is still running.
        """
        if self._busy or not self._waiting or self._lost:
            return
        items, self._waiting = self._waiting, []
        self._busy = True
        d = self._process(items)
        d.addErrback(lambda f: log.failure("store port: processing", f))
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._busy = False
        self._kick()

    def _process(self, items: list[tuple[_Slot, tuple[str, Event] | LBError]]) -> Deferred[None]:
        """
        Check registrations, then submit one batch; fires once it is answered.

        A job counts as registered when its RegJob is in the same batch (one
        commit), was committed before, or is found in the store. A RegJob still
        being committed (by another connection) is waited for: if it fails, the
        events depending on it fail too (EAGAIN, to be sent again).
        """
        f = self.factory
        checks: dict[str, Deferred[bool | None]] = {}
        if not f.grey_jobs:
            registering: set[str] = set()
            for _, item in items:
                if isinstance(item, LBError):
                    continue
                jobid = item[1].jobid
                if item[1].type == "RegJob":
                    registering.add(jobid)
                elif jobid not in registering and jobid not in checks and jobid not in f.known:
                    checks[jobid] = f.registered(jobid)
        if not checks:
            return self._submit(items, {})
        jobids = list(checks)
        d = gatherResults([checks[j] for j in jobids], consumeErrors=True)

        def checked(found: list[bool | None]) -> Deferred[None]:
            if self._lost:
                # Nobody to answer: the peer sends these again.
                return succeed(None)
            return self._submit(items, dict(zip(jobids, found, strict=True)))

        def check_failed(failure: Failure) -> None:
            log.failure("store port: job lookup failed", failure)
            for slot, _ in items:
                slot.code, slot.text = TryAgain.code, "job lookup failed"
            self._flush()

        return d.addCallbacks(checked, check_failed)

    def _submit(
        self,
        items: list[tuple[_Slot, tuple[str, Event] | LBError]],
        found: dict[str, bool | None],
    ) -> Deferred[None]:
        """
        @param found: per job checked: C{True} registered, C{None} unknown,
            C{False} its pending registration failed.
        """
        f = self.factory
        batch: list[tuple[str, Event]] = []
        slots: list[_Slot] = []
        registering: list[str] = []
        registered: set[str] = set()
        for slot, item in items:
            if isinstance(item, LBError):
                error: LBError | None = item
            else:
                error = None
                ev = item[1]
                if ev.type == "RegJob":
                    registered.add(ev.jobid)
                    registering.append(ev.jobid)
                elif ev.jobid not in registered:
                    state = found.get(ev.jobid, True)
                    if state is None:
                        f.stats.unknown += 1
                        error = UnknownJob(f"job {ev.jobid} not registered")
                    elif state is False:
                        error = TryAgain(f"registration of {ev.jobid} not stored")
            if error is not None:
                f.stats.errors += 1
                slot.code, slot.text = error.code, error.message
                continue
            batch.append(item)  # type: ignore[arg-type]
            slots.append(slot)
        self._flush()
        if not batch:
            return succeed(None)
        registrations = [f.registering(jobid) for jobid in registering]
        d: Deferred[Any] = maybeDeferred(f.store.store, batch)
        d.addCallbacks(
            self._stored,
            self._store_failed,
            (slots, batch, registrations),
            errbackArgs=(slots, registrations),
        )
        d.addErrback(lambda fail: log.failure("store port answer failed", fail))
        return d

    def _stored(
        self,
        results: list[Any],
        slots: list[_Slot],
        batch: list[tuple[str, Event]],
        registrations: list[_Registration],
    ) -> None:
        f = self.factory
        if len(results) != len(slots):
            results = [TryAgain("store error")] * len(slots)
        stored: set[str] = set()
        for slot, result, (_, ev) in zip(slots, results, batch, strict=True):
            if isinstance(result, LBError):
                f.stats.errors += 1
                slot.code, slot.text = result.code, result.message
            elif isinstance(result, BaseException):
                f.stats.errors += 1
                slot.code, slot.text = TryAgain.code, "store error"
            else:
                if result.duplicate:
                    f.stats.duplicates += 1
                else:
                    f.stats.accepted += 1
                f.remember(result.jobid)
                if ev.type == "RegJob":
                    stored.add(ev.jobid)
                slot.code, slot.text = 0, "OK"
        for reg in registrations:
            f.registered_done(reg, reg.jobid in stored)
        self._flush()

    def _store_failed(
        self, failure: Failure, slots: list[_Slot], registrations: list[_Registration]
    ) -> None:
        error = failure.value
        if not isinstance(error, LBError):
            log.failure("store failed", failure)
            error = TryAgain("store error")
        for slot in slots:
            slot.code, slot.text = error.code, error.message
        for reg in registrations:
            self.factory.registered_done(reg, False)
        self._flush()

    def _flush(self) -> None:
        out: list[bytes] = []
        close = False
        queue = self._queue
        while queue and queue[0].code is not None and not close:
            slot = queue.popleft()
            assert slot.code is not None
            if slot.code:
                log.warn("store port: event refused: {code} {text}", code=slot.code, text=slot.text)
            if self._framing == "logd":
                out.append(ilproto.encode_logd_answer(slot.code))
            elif slot.code == 0 and slot.text == "OK":
                out.append(_OK_REPLY)
            else:
                out.append(ilproto.il_reply_for(slot.code, slot.text))
            close = slot.close
        if self._lost or self.transport is None:
            return
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.loseConnection()
        elif self._paused and len(queue) <= self.factory.max_inflight // 2:
            self._paused = False
            transport: Any = self.transport
            transport.resumeProducing()


class StorePortFactory(Factory["StorePortProtocol"]):
    """
    Shared state of the store port: the store, the rules, the known-jobs cache.

    @ivar known: job ids known to be registered (bounded, most recent kept).
    """

    noisy = False

    def __init__(
        self,
        store: Any,
        *,
        identify: Identify,
        policy: Policy | None = None,
        super_users: Iterable[str] = (),
        grey_jobs: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_line: int = DEFAULT_MAX_LINE,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_fields: int = DEFAULT_MAX_FIELDS,
        known_jobs: int = DEFAULT_KNOWN_JOBS,
    ) -> None:
        self.store = store
        self.identify = identify
        self.policy = policy if policy is not None else Policy()
        self.super_users = tuple(super_users)
        self.grey_jobs = grey_jobs
        self.max_connections = max_connections
        self.max_line = max_line
        self.max_inflight = max_inflight
        self.max_fields = max_fields
        self.known: OrderedDict[str, None] = OrderedDict()
        self.pending: dict[str, list[_Registration]] = {}
        self._known_max = known_jobs
        self.stats = StorePortStats()

    def buildProtocol(self, addr: object) -> StorePortProtocol:
        proto = StorePortProtocol()
        proto.factory = self
        return proto

    def is_known(self, jobid: str) -> bool:
        """
        Whether a job's registration is known to be committed.
        """
        return jobid in self.known

    def registering(self, jobid: str) -> _Registration:
        """
        A RegJob of C{jobid} goes to the store: until L{registered_done}, events
        of the job wait for its outcome.
        """
        reg = _Registration(jobid)
        self.pending.setdefault(jobid, []).append(reg)
        return reg

    def registered_done(self, reg: _Registration, stored: bool) -> None:
        """
        The commit of a RegJob is over: C{stored} tells whether it succeeded.
        """
        regs = self.pending.get(reg.jobid)
        if regs is not None and reg in regs:
            regs.remove(reg)
            if not regs:
                del self.pending[reg.jobid]
        if stored:
            self.remember(reg.jobid)
        waiters, reg.waiters = reg.waiters, []
        for d in waiters:
            d.callback(stored or reg.jobid in self.known)

    def registered(self, jobid: str) -> Deferred[bool | None]:
        """
        Whether C{jobid} is registered: C{True}, C{None} (unknown to the store)
        or C{False} (its RegJob was being committed and that failed).
        """
        if jobid in self.known:
            return succeed(True)
        regs = self.pending.get(jobid)
        if regs:
            d: Deferred[bool | None] = Deferred()
            regs[-1].waiters.append(d)
            return d

        def looked_up(status: object) -> bool | None:
            if status is None:
                return None
            self.remember(jobid)
            return True

        return maybeDeferred(self.store.status, jobid).addCallback(looked_up)

    def remember(self, jobid: str) -> None:
        known = self.known
        if jobid in known:
            known.move_to_end(jobid)
            return
        known[jobid] = None
        if len(known) > self._known_max:
            known.popitem(last=False)


def make_store_port_service(options: Any, store: Any, reactor: Any) -> Any:
    """
    The store-port listener of C{twistd lbserver}: TLS with client certificates
    around the C{--store} endpoint.
    """
    import os

    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import serverFromString

    from lbtwist.authz import load_policy
    from lbtwist.identity import PeerIdentity
    from lbtwist.relay import host_credentials
    from lbtwist.tls import (
        REFUSAL_LOG_BURST,
        REFUSAL_LOG_INTERVAL,
        ServerContextSource,
        tls_server_endpoint,
    )

    cert, key, ca_dir = host_credentials(options, reactor)
    source = ServerContextSource(
        cert,
        key,
        ca_dir,
        crl=options["crl"],
        clock=reactor,
        log_interval=options.get("tls-log-interval", REFUSAL_LOG_INTERVAL),
        log_burst=options.get("tls-log-burst", REFUSAL_LOG_BURST),
    )
    policy = load_policy(options["policy"]) if options["policy"] else Policy()
    voms_dir = options["voms-dir"]
    if voms_dir is not None and not os.path.isdir(voms_dir):
        voms_dir = None
    factory = StorePortFactory(
        store,
        identify=PeerIdentity.for_source(source, clock=reactor, voms_dir=voms_dir).of_transport,
        policy=policy,
        super_users=options["super-user"],
        grey_jobs=bool(options["grey-jobs"]),
        max_connections=options["max-connections"],
        max_line=options["max-event-size"],
        max_fields=options["max-fields"],
    )
    endpoint = tls_server_endpoint(serverFromString(reactor, options["store"]), source)
    service = StreamServerEndpointService(endpoint, factory)
    # A server that cannot listen on its store port must not run on.
    service._raiseSynchronously = True
    log.info(
        "store port on {endpoint} (TLS), grey jobs {grey}",
        endpoint=options["store"],
        grey="on" if factory.grey_jobs else "off",
    )
    return service


__all__ = [
    "StorePortFactory",
    "StorePortProtocol",
    "make_store_port_service",
    "may_log",
    "required_action",
    "tls_identity",
]
