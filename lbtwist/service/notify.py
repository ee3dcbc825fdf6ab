# -*- test-case-name: tests.unit.test_notif_service -*-
"""
The notification service: who may register, change, bind, refresh and drop
what (only the owner of a registration, or a super user), the validity of
registrations, the read rights of each message (the query path's
L{lbtwist.security.authz.can_read}; READ_ANONYMIZED gives anonymized statuses)
and the periodic sweep of expired registrations.

The store keeps the registrations and their queues
(L{lbtwist.store.notif.Notifications}); the HTTPS routes are
L{lbtwist.service.web.notif}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lbtwist.core.notif import (
    Conditions,
    NotifError,
    QueueBounds,
    Registration,
    ValidityRules,
    check_body,
    new_unique,
    parse_conditions,
    parse_flags,
    valid_until,
)
from lbtwist.core.states.status import JobStatus
from lbtwist.security.authz import Policy, can_read, is_super_user
from lbtwist.security.identity import Identity, same_dn
from lbtwist.store.interface import IEventStore
from lbtwist.store.notif import Notifications, NotifTotals, RegState, Rights

log = Logger()

#: What a registration unique may look like (L{lbtwist.core.notif.new_unique} makes 22
#: URL-safe characters).
_UNIQUE = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Defaults of the options.
DEFAULT_MAX_PER_USER = 100
DEFAULT_SWEEP_INTERVAL = 60.0
DEFAULT_SWEEP_CHUNK = 500
DEFAULT_KEEPALIVE = 15.0
DEFAULT_PAGE_MESSAGES = 1000
DEFAULT_MAX_BODY = 64 * 1024
#: Most registrant identities whose rights are remembered (L{NotifyService.rights}):
#: past it the memory starts anew (a cost, never a change of answer).
RIGHTS_MEMORY = 4096


class Refused(Exception):
    """
    An operation refused: an HTTP status and a message for the caller.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class NotifySettings:
    """
    The numbers of the notification service (from the C{notify-*} options).
    """

    validity: ValidityRules = ValidityRules()
    bounds: QueueBounds = QueueBounds()
    max_per_user: int = DEFAULT_MAX_PER_USER
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    sweep_chunk: int = DEFAULT_SWEEP_CHUNK
    keepalive: float = DEFAULT_KEEPALIVE
    bootstrap_max: int = 10_000
    page_messages: int = DEFAULT_PAGE_MESSAGES
    max_body: int = DEFAULT_MAX_BODY

    def __attrs_post_init__(self) -> None:
        for name in ("max_per_user", "sweep_chunk", "bootstrap_max", "page_messages", "max_body"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.sweep_interval <= 0 or self.keepalive <= 0:
            raise ValueError("sweep_interval and keepalive must be positive")


class NotifyService(Service):
    """
    Registrations on behalf of authenticated callers, over a store's
    L{Notifications}; a L{Service} whose running sweeps expired registrations
    (at most C{sweep_chunk} per store transaction, every C{sweep_interval} s,
    and again at once while a sweep found a full chunk).

    @ivar swept: registrations removed by the sweep so far.
    """

    name = "notify"

    def __init__(
        self,
        store: IEventStore,
        *,
        clock: IReactorTime,
        policy: Policy | None = None,
        super_users: Iterable[str] = (),
        settings: NotifySettings | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy or Policy()
        self.super_users = tuple(super_users)
        self.settings = settings or NotifySettings()
        self.swept = 0
        self._loop: LoopingCall | None = None
        self._listeners: list[Callable[[set[str]], object]] = []
        self._configured: Notifications | None = None
        # (DN, FQANs) of a registrant -> its Identity, whether it reads every job
        # (super user, READ_ALL), whether it holds READ_ANONYMIZED: none depends
        # on the job, and the policy does not change while the service runs.
        self._registrants: dict[tuple[str, tuple[str, ...]], tuple[Identity, bool, bool]] = {}

    @property
    def notifications(self) -> Notifications:
        """
        The store's notifications, configured with this service's rights check
        and bounds on first use (the SQLite store opens on first use: not before
        C{twistd} has forked, so not in the constructor).
        """
        notifications: Notifications = self.store.notifications
        if self._configured is not notifications:
            self._configured = notifications
            notifications.configure(
                rights=self.rights,
                bounds=self.settings.bounds,
                bootstrap_max=self.settings.bootstrap_max,
            )
            for listener in self._listeners:
                notifications.add_listener(listener)
        return notifications

    def totals(self) -> Deferred[NotifTotals]:
        """
        The registrations and queued messages of the store, for the metrics (read
        once per metrics refresh, on the store's reader).
        """
        return self.notifications.totals(self.now())

    def add_listener(self, listener: Callable[[set[str]], object]) -> None:
        """
        Call C{listener(registration uniques)} after commits that queued messages.
        """
        self._listeners.append(listener)
        if self._configured is not None:
            self._configured.add_listener(listener)

    # rights

    def rights(self, reg: Registration, status: JobStatus) -> Rights:
        """
        What a registrant may see of a job now: its full status when it may read
        the job (owner, super user, READ_ALL, the job's ACL, payload owner), an
        anonymized one with READ_ANONYMIZED, else nothing.
        """
        key = (reg.owner, reg.fqans)
        known = self._registrants.get(key)
        if known is None:
            who = Identity(dn=reg.owner, fqans=reg.fqans)
            known = (
                who,
                self.is_super(who) or self.policy.permits("READ_ALL", who),
                self.policy.permits("READ_ANONYMIZED", who),
            )
            if len(self._registrants) >= RIGHTS_MEMORY:
                self._registrants.clear()
            self._registrants[key] = known
        who, reads_all, anonymized = known
        if reads_all or can_read(who, status, self.policy, self.super_users):
            return "full"
        return "anonymized" if anonymized else None

    def is_super(self, who: Identity) -> bool:
        return is_super_user(who, self.policy, self.super_users)

    def may_see(self, who: Identity, reg: Registration) -> bool:
        """
        Whether C{who} may know the registration exists (owner, super user, READ_ALL).
        """
        return (
            same_dn(reg.owner, who.dn) or self.is_super(who) or self.policy.permits("READ_ALL", who)
        )

    def may_operate(self, who: Identity, reg: Registration) -> bool:
        return same_dn(reg.owner, who.dn) or self.is_super(who)

    def now(self) -> float:
        return self.clock.seconds()

    # operations

    def lookup(self, who: Identity, unique: str, *, operate: bool = True) -> Registration:
        """
        The registration C{who} asks for.

        @raise Refused: 404 when it does not exist or C{who} may not know of it;
            403 when C{who} knows of it but may not operate on it.
        """
        reg = None if not _UNIQUE.fullmatch(unique) else self.notifications.registration(unique)
        if reg is None or not self.may_see(who, reg):
            raise Refused(404, f"no registration {unique!r}")
        if operate and not self.may_operate(who, reg):
            raise Refused(403, f"{who.dn} may not operate on registration {unique!r}")
        return reg

    def _conditions(self, who: Identity, data: object) -> Conditions:
        conditions = parse_conditions(data, owner=who.dn)
        if (
            not conditions.jobids
            and conditions.owner is None
            and not self.is_super(who)
            and not self.policy.permits("READ_ALL", who)
        ):
            # Anyone else could only read their own jobs: "all jobs" stays small.
            conditions = attrs.evolve(conditions, owner=who.dn)
        return conditions

    def create(self, who: Identity, body: object) -> Deferred[RegState | None]:
        """
        A new registration of C{who} (the C{POST /notif} body, parsed JSON).

        @raise Refused: 400 for a bad body, 403 past C{max_per_user}.
        """
        try:
            data = check_body(body)
            conditions = self._conditions(who, data.get("conditions", {}))
            flags = parse_flags(data.get("flags", {}))
            now = self.now()
            until = valid_until(
                now, data.get("validity"), self.settings.validity, cert_not_after=who.not_after
            )
        except NotifError as e:
            raise Refused(400, str(e)) from None
        limit = self.settings.max_per_user
        if self.notifications.count_of(who.dn) >= limit:
            raise Refused(
                403, f"{who.dn} holds {limit} registrations already (notify-max-per-user)"
            )
        reg = Registration(
            unique=new_unique(),
            owner=who.dn,
            fqans=who.fqans,
            conditions=conditions,
            flags=flags,
            valid_until=until,
            created=int(now),
        )
        log.info(
            "notification {unique} registered by {dn} until {until}",
            unique=reg.unique,
            dn=who.dn,
            until=until,
        )
        return self.notifications.create(reg, now)

    def change(self, who: Identity, unique: str, body: object) -> Deferred[RegState | None]:
        """
        C{PUT /notif/<unique>}: C{conditions}, C{flags} and C{validity} change
        what is given; C{{"validity": s}} alone is a refresh; C{{}} a bind (the
        caller becomes the registration's owner and receiver).

        @raise Refused: 404, 403, 400, or 410 for an expired registration.
        """
        reg = self.lookup(who, unique)
        now = self.now()
        if reg.expired(now):
            raise Refused(410, f"registration {unique!r} has expired")
        try:
            data: Mapping[str, Any] = check_body(body)
            changes: dict[str, Any] = {}
            if not data:
                # A bind: the caller receives from now on, with the caller's
                # rights, no longer than the caller's certificate lives.
                changes.update(owner=who.dn, fqans=who.fqans)
                if who.not_after is not None and who.not_after < reg.valid_until:
                    changes["valid_until"] = valid_until(
                        now, None, self.settings.validity, cert_not_after=who.not_after
                    )
            if "conditions" in data:
                changes["conditions"] = self._conditions(
                    Identity(dn=reg.owner, fqans=reg.fqans), data["conditions"]
                )
            if "flags" in data:
                changes["flags"] = parse_flags(data["flags"], reg.flags)
            if "validity" in data:
                changes["valid_until"] = valid_until(
                    now,
                    data["validity"],
                    self.settings.validity,
                    cert_not_after=who.not_after,
                )
        except NotifError as e:
            raise Refused(400, str(e)) from None
        return self.notifications.update(attrs.evolve(reg, **changes))

    def drop(self, who: Identity, unique: str) -> Deferred[None]:
        """
        C{DELETE /notif/<unique>}.
        """
        self.lookup(who, unique)
        log.info("notification {unique} dropped by {dn}", unique=unique, dn=who.dn)
        return self.notifications.drop([unique])

    def owned(self, who: Identity) -> Deferred[list[RegState]]:
        """
        The caller's registrations.
        """
        return self.notifications.of_owner(who.dn)

    # the sweep

    def sweep(self) -> Deferred[int]:
        """
        Remove expired registrations, one chunk per store transaction, until a
        chunk is not full.

        @return: a Deferred of the number removed.
        """
        total = 0
        chunk = self.settings.sweep_chunk

        def done(gone: list[str]) -> Any:
            nonlocal total
            total += len(gone)
            self.swept += len(gone)
            if len(gone) >= chunk:
                return self.notifications.sweep(self.now(), chunk).addCallback(done)
            if total:
                log.info("notifications: {count} expired registrations removed", count=total)
            return total

        return self.notifications.sweep(self.now(), chunk).addCallback(done)

    def startService(self) -> None:
        super().startService()
        self.notifications  # noqa: B018 (configures the store's notifications)
        loop = self._loop = LoopingCall(self._sweep_logged)
        loop.clock = self.clock
        loop.start(self.settings.sweep_interval, now=True)

    def _sweep_logged(self) -> Deferred[Any]:
        return self.sweep().addErrback(lambda f: log.failure("notification sweep failed", f))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return None
