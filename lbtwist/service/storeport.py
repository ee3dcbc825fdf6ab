# -*- test-case-name: tests.unit.test_storeport -*-
"""
The server's L&B store port: relays and producers log events over TLS with
client certificates, in L&B's IL framing (or the logd framing), and get one
reply per event, in order, once the event is durable.

Rules (docs/relay.md, The store port): a job must be registered (RegJob) before its other
events are accepted, unless grey jobs are on (ENOENT otherwise, which a relay
retries). Who may log what on which job is L{lbtwist.security.authz.may_write}, decided
against the job's stored owner, ACL and payload owner (EPERM otherwise, IL
major 600); the store refuses a RegJob for another owner or an exclusive one
of a registered job (EEXIST). A duplicate is answered OK.

The rights of recently seen jobs are cached (C{known_jobs} of them), refreshed
from the store's answer to every event this port stores and looked up in the
store, once per job and received chunk, for the others.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbtwist.core.errors import (
    BrokenULM,
    LBError,
    PermissionDenied,
    TryAgain,
    UnknownJob,
)
from lbtwist.core.events import Event, parse_event
from lbtwist.core.states.status import JobStatus
from lbtwist.security.authz import (
    ACCESS_EVENTS,
    WMS_SOURCES,
    Decision,
    JobRights,
    Policy,
    is_super_user,
    may_write,
    required_action,
    write_key,
)
from lbtwist.security.identity import Identity
from lbtwist.security.tls import PortLimits, ServerContextSource
from lbtwist.service import logs
from lbtwist.service.framing import (
    DETECT_BYTES,
    AnswerQueue,
    Framing,
    detect_framing,
    make_framing,
)
from lbtwist.service.framing import Slot as _Slot
from lbtwist.service.relay import tcp_no_delay
from lbtwist.store.interface import IEventStore

log = Logger()

DEFAULT_MAX_LINE = 4 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 4096
DEFAULT_MAX_FIELDS = 100
DEFAULT_KNOWN_JOBS = 200_000

# Authorization answers kept per connection (the peer is fixed there).
_ALLOWED_CACHE = 4096

# Events whose answer depends on the job's state even for a relay.
_STATEFUL = ACCESS_EVENTS | {"UserTag"}

Identify = Callable[[Any], "Identity | None"]


def may_log(
    identity: Identity | None,
    event: Event,
    policy: Policy,
    super_users: Iterable[str],
    job: JobRights | None = None,
) -> bool:
    """
    Whether the peer C{identity} may log C{event} on C{job} (C{None}: a job
    without owner): L{lbtwist.security.authz.may_write}.
    """
    return may_write(identity, event, job, policy, super_users).allowed


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
        self._framing: Framing | None = None
        self._answers: AnswerQueue | None = None
        self._waiting: list[tuple[_Slot, tuple[str, Event] | LBError]] = []
        self._busy = False
        # RegJobs this connection handed to the store that are not committed yet, by
        # job: its later events that need no job state go to the store behind them.
        self._own_regs: dict[str, int] = {}
        # Authorization answers by L{write_key}, and whether an event's answer
        # needs no job state, by (type, action): both for this connection's peer.
        self._allowed: dict[tuple[str | None, ...], Decision] = {}
        self._stateless: dict[tuple[str, str], bool] = {}
        self._refused_jobs: dict[str, None] = {}
        self._broken = False
        self._lost = False
        self._counted = False
        self._identity: Identity | None = None
        self._identified = False

    def connectionMade(self) -> None:
        # Counted only: the TLS port bounds connections (handshakes apart from
        # verified peers, see lbtwist.security.tls.PortLimits).
        self.factory.stats.connections += 1
        self._counted = True
        # Replies go out as their group commits, not after the peer's delayed ACK.
        tcp_no_delay(self.transport)

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
        framing = self._framing
        if framing is None:
            self._head += data
            name = detect_framing(self._head[:DETECT_BYTES])
            if name is None:
                return
            if name == "line":
                logs.warn(log, "store port: not IL or logd framing, closing")
                self._broken = True
                assert self.transport is not None
                self.transport.loseConnection()
                return
            framing = self._framing = make_framing(name, self.factory.max_line)
            self._answers = AnswerQueue(self.transport, self.factory.max_inflight)
            self._answers.framing = framing
            data, self._head = self._head, b""
        answers = self._answers
        assert answers is not None
        items, fatal = framing.feed(data)
        waiting = self._waiting
        for item in items:
            waiting.append(
                (answers.pending(), item if isinstance(item, LBError) else self._validate(item))
            )
        if fatal is not None:
            self._broken = True
            answers.answer(fatal.code, fatal.message, close=True)
        answers.received()
        self._kick()
        self._flush()

    def _validate(self, body: bytes) -> tuple[str, Event] | LBError:
        f = self.factory
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
        # Authorized in _process, against the job's state.
        return line, event

    # authorization

    def _decide(self, event: Event, job: JobRights | None) -> Decision:
        """
        L{may_write} for this connection's peer, answers kept by L{write_key}
        (the peer, the policy and the super users are fixed here).
        """
        f = self.factory
        key = write_key(event, job)
        if key is None:
            return may_write(self.identity, event, job, f.policy, f.super_users)
        decision = self._allowed.get(key)
        if decision is None:
            decision = may_write(self.identity, event, job, f.policy, f.super_users)
            if len(self._allowed) >= _ALLOWED_CACHE:
                self._allowed.clear()
            self._allowed[key] = decision
        return decision

    def _stateless_for(self, event: Event) -> bool:
        """
        Whether this peer's answer for C{event} is the same whatever the job's
        state (a super user; a relay with the event's action, but for the
        events only owners or payload owners log): then no job lookup is needed.
        """
        kind = event.type if event.type in _STATEFUL else ""
        action = required_action(event)
        known = self._stateless.get((kind, action))
        if known is None:
            f = self.factory
            identity = self.identity
            if identity is None:
                known = True  # always refused
            elif is_super_user(identity, f.policy, f.super_users):
                known = True
            elif kind in ("", "RegJob"):
                known = f.policy.permits(action, identity)
            else:
                known = False
            self._stateless[(kind, action)] = known
        return known

    def _refused_job(self, jobid: str) -> None:
        """
        This peer's RegJob of an unknown job was refused: its other events of
        the job are refused too (not answered ENOENT, to be resent for long).
        """
        refused = self._refused_jobs
        if len(refused) >= _ALLOWED_CACHE:
            refused.clear()
        refused[jobid] = None

    def _refuse(self, event: Event, decision: Decision) -> PermissionDenied:
        self.factory.stats.refused += 1
        peer = self.identity.dn if self.identity is not None else "an anonymous peer"
        return PermissionDenied(
            f"{peer} may not log {event.type} on {event.jobid}: {decision.reason}"
        )

    def _kick(self) -> None:
        """
        Hand everything received since the last store call to the store, in one
        call, unless a call of this connection is still running: waiting for job
        lookups, or, when it needed lookups, for its commit. A batch that needed
        none (a trusted relay's stream) frees the connection once it is handed to
        the store, so the next one queues behind it for the next commit group
        while it commits.
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
        Look up the jobs, then authorize and submit one batch; fires once it
        is answered.

        A job counts as registered when its RegJob is in the same batch (one
        commit), was committed before, or is found in the store. A RegJob still
        being committed (by another connection) is waited for: if it fails, the
        events depending on it fail too (EAGAIN, to be sent again). A job's
        rights come from the cache or one store lookup per job and chunk,
        skipped when no event of the job here depends on them.
        """
        f = self.factory
        checks: dict[str, Deferred[JobRights | bool | None]] = {}
        cached: dict[str, JobRights | bool | None] = {}
        registering: set[str] = set()
        for _, item in items:
            if isinstance(item, LBError):
                continue
            ev = item[1]
            jobid = ev.jobid
            if jobid in checks or jobid in cached:
                continue
            job = f.cached(jobid)
            if job is not None:
                cached[jobid] = job
                continue
            if ev.type == "RegJob":
                if self._stateless_for(ev):
                    registering.add(jobid)
                    continue
            elif (
                jobid in registering or jobid in self._own_regs or f.grey_jobs
            ) and self._stateless_for(ev):
                # Registered in this batch, or by this connection's RegJob ahead of
                # it in the store's queue (committed first, or in the same group).
                continue
            checks[jobid] = f.lookup(jobid)
        if not checks:
            return self._submit(items, cached, pipelined=True)
        jobids = list(checks)
        d = gatherResults([checks[j] for j in jobids], consumeErrors=True)

        def checked(found: list[JobRights | bool | None]) -> Deferred[None]:
            if self._lost:
                # Nobody to answer: the peer sends these again.
                return succeed(None)
            cached.update(zip(jobids, found, strict=True))
            return self._submit(items, cached)

        def check_failed(failure: Failure) -> None:
            log.failure("store port: job lookup failed", failure)
            for slot, _ in items:
                slot.code, slot.text = TryAgain.code, "job lookup failed"
            self._flush()

        return d.addCallbacks(checked, check_failed)

    def _submit(
        self,
        items: list[tuple[_Slot, tuple[str, Event] | LBError]],
        found: dict[str, JobRights | bool | None],
        pipelined: bool = False,
    ) -> Deferred[None]:
        """
        Authorize each event against its job's rights as the batch so far
        leaves them, and submit the accepted ones.

        @param pipelined: fire once the batch is handed to the store (else once
            it is answered).

        @param found: per job looked up or cached: its rights, C{None} (unknown
            to the store) or C{False} (its pending registration failed). A job
            not there was not looked up: its events here need no state.
        """
        f = self.factory
        batch: list[tuple[str, Event]] = []
        slots: list[_Slot] = []
        registering: list[str] = []
        registered: set[str] = set()
        # Rights as this batch changes them (RegJob, ChangeACL, payload owner).
        rights: dict[str, JobRights | None] = {}
        for slot, item in items:
            if isinstance(item, LBError):
                error: LBError | None = item
            else:
                error = None
                ev = item[1]
                jobid = ev.jobid
                if jobid in rights:
                    job = rights[jobid]
                else:
                    state = found.get(jobid, True)
                    job = state if isinstance(state, JobRights) else None
                    if ev.type != "RegJob" and jobid not in registered:
                        if state is None and jobid in self._refused_jobs:
                            error = self._refuse(
                                ev, Decision(False, "its registration by this peer was refused")
                            )
                        elif state is None and not f.grey_jobs:
                            f.stats.unknown += 1
                            error = UnknownJob(f"job {jobid} not registered")
                        elif state is False:
                            error = TryAgain(f"registration of {jobid} not stored")
                if error is None:
                    decision = self._decide(ev, job)
                    if not decision.allowed:
                        error = self._refuse(ev, decision)
                        if ev.type == "RegJob" and job is None:
                            self._refused_job(jobid)
                    else:
                        if ev.type == "RegJob":
                            registered.add(jobid)
                            registering.append(jobid)
                        if ev.type in ACCESS_EVENTS and jobid in found:
                            rights[jobid] = (job or JobRights()).after(ev)
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
        own = self._own_regs
        for jobid in registering:
            own[jobid] = own.get(jobid, 0) + 1
        d: Deferred[Any] = maybeDeferred(f.store.store, batch)
        d.addCallbacks(
            self._stored,
            self._store_failed,
            (slots, batch, registrations),
            errbackArgs=(slots, registrations),
        )
        d.addErrback(lambda fail: log.failure("store port answer failed", fail))
        return succeed(None) if pipelined else d

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
        refreshed: set[str] = set()
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
                if result.jobid not in refreshed:
                    # The job's rights as stored (once per job and batch).
                    refreshed.add(result.jobid)
                    f.remember(result.jobid, JobRights.of(result.status))
                if ev.type == "RegJob":
                    stored.add(ev.jobid)
                slot.code, slot.text = 0, "OK"
        for reg in registrations:
            self._own_done(reg.jobid)
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
            self._own_done(reg.jobid)
            self.factory.registered_done(reg, False)
        self._flush()

    def _own_done(self, jobid: str) -> None:
        own = self._own_regs
        left = own.get(jobid, 0) - 1
        if left > 0:
            own[jobid] = left
        else:
            own.pop(jobid, None)

    def _flush(self) -> None:
        answers = self._answers
        if answers is None or self._lost or self.transport is None:
            return
        for slot in answers.flush():
            if slot.code:
                logs.warn(
                    log, "store port: event refused: {code} {text}", code=slot.code, text=slot.text
                )


class StorePortFactory(Factory["StorePortProtocol"]):
    """
    Shared state of the store port: the store, the rules, the known-jobs cache.

    @ivar known: the rights (owner, ACL, payload owner) of jobs known to be
        stored, by job id (bounded, most recent kept).
    """

    noisy = False

    def __init__(
        self,
        store: IEventStore,
        *,
        identify: Identify,
        policy: Policy | None = None,
        super_users: Iterable[str] = (),
        grey_jobs: bool = False,
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
        self.max_line = max_line
        self.max_inflight = max_inflight
        self.max_fields = max_fields
        self.known: OrderedDict[str, JobRights] = OrderedDict()
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

    def cached(self, jobid: str) -> JobRights | None:
        """
        @return: the cached rights of a stored job, C{None} if not cached.
        """
        rights = self.known.get(jobid)
        if rights is not None:
            self.known.move_to_end(jobid)
        return rights

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
        waiters, reg.waiters = reg.waiters, []
        for d in waiters:
            d.callback(stored or reg.jobid in self.known)

    def lookup(self, jobid: str) -> Deferred[JobRights | bool | None]:
        """
        The rights of C{jobid}: its L{JobRights} if stored, C{None} if unknown
        to the store, C{False} if its RegJob was being committed and that failed.
        """
        rights = self.cached(jobid)
        if rights is not None:
            return succeed(rights)
        regs = self.pending.get(jobid)
        if regs:
            d: Deferred[bool | None] = Deferred()
            regs[-1].waiters.append(d)

            def waited(stored: bool | None) -> JobRights | bool | None | Deferred[Any]:
                if not stored:
                    return False
                rights = self.cached(jobid)
                return rights if rights is not None else self._load(jobid)

            return d.addCallback(waited)
        return self._load(jobid)

    def _load(self, jobid: str) -> Deferred[JobRights | bool | None]:
        def looked_up(status: JobStatus | None) -> JobRights | None:
            if status is None:
                return None
            rights = JobRights.of(status)
            self.remember(jobid, rights)
            return rights

        return maybeDeferred(self.store.status, jobid).addCallback(looked_up)

    def remember(self, jobid: str, rights: JobRights) -> None:
        known = self.known
        known[jobid] = rights
        known.move_to_end(jobid)
        if len(known) > self._known_max:
            known.popitem(last=False)


def authorization_summary(path: str | None, policy: Policy, super_users: Iterable[str]) -> str:
    """
    What the start-up log line says of who may log at the store port.
    """
    supers = len(tuple(super_users))
    if not path:
        return (
            f"no policy file: only job owners and super users ({supers}) may log,"
            " no relay is trusted"
        )
    actions = ", ".join(sorted(policy.rules)) or "none"
    return (
        f"policy {path} (actions {actions}): job owners, super users ({supers}) and"
        " the relays it permits may log"
    )


def make_store_port_service(
    store: IEventStore,
    reactor: Any,
    *,
    endpoint: str,
    source: ServerContextSource,
    limits: PortLimits,
    policy: Policy,
    policy_path: str | None = None,
    super_users: Iterable[str] = (),
    voms_dir: str | None = None,
    grey_jobs: bool = False,
    max_line: int = DEFAULT_MAX_LINE,
    max_fields: int = DEFAULT_MAX_FIELDS,
) -> StreamServerEndpointService:
    """
    The store-port listener of C{twistd lbserver}: TLS with client certificates
    (C{source}, bounded by C{limits}) around the C{endpoint} string.

    @param policy_path: the file C{policy} was read from (for the start-up log line).
    @param voms_dir: the VOMS C{.lsc} files; ignored when it is not a directory.
    """
    import os

    from lbtwist.security.identity import PeerIdentity
    from lbtwist.security.tls import quote_for_log
    from lbtwist.service.ports import tls_listener

    if voms_dir is not None and not os.path.isdir(voms_dir):
        voms_dir = None
    factory = StorePortFactory(
        store,
        identify=PeerIdentity.for_source(source, clock=reactor, voms_dir=voms_dir).of_transport,
        policy=policy,
        super_users=super_users,
        grey_jobs=grey_jobs,
        max_line=max_line,
        max_fields=max_fields,
    )

    def log_connection(connection: Any) -> None:
        who = connection.wrappedProtocol.identity
        log.info(
            "store port: connection from {peer}, DN {dn}",
            peer=connection.peer_text,
            dn=quote_for_log(who.dn if who is not None else None),
        )

    # A server that cannot listen on its store port must not run on.
    service = tls_listener(
        reactor,
        endpoint,
        source,
        factory,
        limits=limits,
        port="store",
        on_established=log_connection,
    )
    log.info(
        "store port on {endpoint} (TLS), grey jobs {grey}; {authorization}",
        endpoint=endpoint,
        grey="on" if factory.grey_jobs else "off",
        authorization=authorization_summary(policy_path, policy, factory.super_users),
    )
    return service


__all__ = [
    "WMS_SOURCES",
    "StorePortFactory",
    "authorization_summary",
    "StorePortProtocol",
    "make_store_port_service",
    "may_log",
    "required_action",
]
