# -*- test-case-name: tests.integration.test_relay_lease -*-
"""
Relay leases of the PostgreSQL store: the outbox of one destination is sent by one
front end at a time.

Every front end on the database relays (a proxy's store), but the relay's ordered,
exactly-once delivery needs one sender per destination. A front end sends the
rows of a destination only while it holds that destination's lease, a row of
C{relay_leases (destination, holder, token, expires)}:

  - the holder renews its leases every third of the lease (C{--relay-lease}); a
    lease not renewed expires, and another front end takes it at its next renewal
    round, with the token increased (the fencing token);
  - a holder that could not renew gives the lease up on its own clock a third of
    the lease before it expires: the relay stops sending and forgets what it read
    (L{RelayLeases.add_lost_listener}), so two front ends never send at once as
    long as their clocks agree within a third of the lease;
  - a new holder sends from the first row of the outbox (the first one not
    acknowledged): events the previous holder sent but whose acknowledgement it
    did not record go again, and the destination answers them as duplicates;
  - acknowledgements and rejections are not applied for destinations whose lease
    row names another holder (L{held_elsewhere}; a takeover writes its holder and
    a higher token), under a share lock on this holder's lease rows: an ack of a
    front end whose lease another one took deletes nothing, and a takeover waits
    for an ack transaction that is running;
  - the holder also wakes its destinations every round: rows that other front ends
    committed for them are read at the latest a third of the lease later.

Times are the front end's clock (C{seconds()}), microseconds in the table.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Seconds a relay lease lasts unless renewed (the C{relay-lease} option).
RELAY_LEASE = 15.0

#: First key of the advisory locks on destinations (two-key form: not the jobs' keys).
DESTINATION_LOCK = 0x6C62

_TABLE = """
CREATE TABLE relay_leases (
    destination TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires BIGINT NOT NULL
)
"""

#: The destinations with waiting rows: a loose scan of the outbox's
#: (destination, id) index, one probe per destination however long the queues.
_PENDING = """
WITH RECURSIVE pending(destination) AS (
    (SELECT destination FROM outbox ORDER BY destination LIMIT 1)
    UNION ALL
    SELECT (SELECT o.destination FROM outbox o WHERE o.destination > p.destination
            ORDER BY o.destination LIMIT 1)
    FROM pending p WHERE p.destination IS NOT NULL
)
SELECT destination FROM pending WHERE destination IS NOT NULL
"""

_TAKE = """
INSERT INTO relay_leases AS l (destination, holder, token, expires)
SELECT d, %s, 1, %s FROM unnest(%s::text[]) AS d
ON CONFLICT (destination) DO UPDATE
    SET holder = excluded.holder, token = l.token + 1, expires = excluded.expires
    WHERE l.expires < %s OR l.holder = excluded.holder
RETURNING destination, token
"""


def create_table(conn: Any) -> None:
    """
    The lease table (migration C{_migrate_relay_lease} of the PostgreSQL store).
    """
    conn.execute(_TABLE)


def default_holder() -> str:
    """
    @return: a name for this front end, unique per start: C{host:pid:random}.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@attrs.frozen
class Round:
    """
    What one renewal round found.

    @ivar renewed: held leases renewed, destination -> token.
    @ivar taken: leases taken (new tokens).
    @ivar others: leases of the destinations asked for that another front end
        holds, destination -> when they expire (microseconds).
    """

    renewed: dict[str, int]
    taken: dict[str, int]
    others: dict[str, int]


def lease_round(
    conn: Any,
    holder: str,
    held: Iterable[str],
    wanted: Iterable[str] | None,
    now: int,
    expires: int,
) -> Round:
    """
    Renew this holder's leases and take the free or expired ones (one statement
    each, autocommit); runs on the store's writer.

    @param held: the destinations this holder believes it holds.
    @param wanted: destinations to take if free; L{None}: every destination with
        rows waiting in the outbox.
    @param now: the front end's time (microseconds): leases that expired before
        it may be taken.
    @param expires: the end of the leases renewed or taken.
    """
    held = sorted(held)
    renewed: dict[str, int] = {}
    if held:
        renewed = dict(
            conn.execute(
                "UPDATE relay_leases SET expires = %s WHERE holder = %s"
                " AND destination = ANY(%s) RETURNING destination, token",
                (expires, holder, held),
            ).fetchall()
        )
    if wanted is None:
        wanted = [row[0] for row in conn.execute(_PENDING).fetchall()]
    candidates = sorted(set(wanted) - set(renewed))
    taken: dict[str, int] = {}
    others: dict[str, int] = {}
    if candidates:
        taken = dict(conn.execute(_TAKE, (holder, expires, candidates, now)).fetchall())
        rest = [d for d in candidates if d not in taken]
        if rest:
            others = dict(
                conn.execute(
                    "SELECT destination, expires FROM relay_leases WHERE destination = ANY(%s)",
                    (rest,),
                ).fetchall()
            )
    return Round(renewed, taken, others)


def release(conn: Any, holder: str) -> None:
    """
    Give this holder's leases up (a clean stop): other front ends take them at
    their next round.
    """
    conn.execute("UPDATE relay_leases SET expires = 0 WHERE holder = %s", (holder,))


def held_elsewhere(conn: Any, holder: str) -> set[str]:
    """
    The destinations whose lease row names another front end than C{holder} (a
    name unique per start: a front end that took a lease wrote its own name and
    a higher token), whose rows the acknowledgements of C{holder} must leave.
    Called in the acknowledgement transaction: the rows naming C{holder} are
    share-locked first, so a takeover of one of them waits for the transaction.
    A lease C{holder} gave up on its clock but nobody took yet still counts as
    its own (the acknowledgements are of rows it delivered), and so does a
    destination without a lease row (nobody sends it).
    """
    # In the order the takeover's statement locks them: never crosswise.
    conn.execute(
        "SELECT destination FROM relay_leases WHERE holder = %s ORDER BY destination FOR SHARE",
        (holder,),
    )
    rows = conn.execute(
        "SELECT destination FROM relay_leases WHERE holder <> %s", (holder,)
    ).fetchall()
    return {row[0] for row in rows}


def lock_destinations(conn: Any, destinations: Iterable[str]) -> None:
    """
    Take the transaction's advisory locks on C{destinations}, in one order, before
    it inserts their outbox rows: commits that add rows for one destination follow
    each other, so that outbox ids grow in the order rows become visible and a
    reader that went past an id never misses a row committed later with a smaller one.
    """
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s, h) FROM (SELECT DISTINCT hashtext(d) AS h"
        " FROM unnest(%s::text[]) AS d ORDER BY h) AS locks",
        (DESTINATION_LOCK, sorted(set(destinations))),
    )


def lease_rows(conn: Any) -> dict[str, tuple[str, int, int]]:
    """
    @return: destination -> (holder, token, expires in microseconds), for
        C{lbtwist relay status}.
    """
    return {
        d: (h, int(t), int(e))
        for d, h, t, e in conn.execute(
            "SELECT destination, holder, token, expires FROM relay_leases"
        ).fetchall()
    }


Listener = Callable[[set[str]], object]
Work = Callable[[], Any]


class RelayLeases:
    """
    One front end's leases, kept on the reactor: the renewal rounds (every third of
    the lease), which destinations may be read, and the listeners told of leases
    lost (the relay stops sending) and of destinations to read (leases taken, and
    every held one each round).

    @ivar tokens: destination -> token of the leases held (replaced, never
        changed in place).
    @ivar holder: this front end's name in the table.
    """

    def __init__(
        self,
        holder: str,
        lease: float,
        clock: IReactorTime,
        run: Callable[[Work], Deferred[Any]],
        conn: Callable[[], Any],
    ) -> None:
        """
        @param run: runs work on the store's writer (its Deferred fires with the result).
        @param conn: the writer's connection (called on the writer).
        @raise ValueError: a lease that is not positive.
        """
        if not lease > 0:
            raise ValueError(f"relay lease of {lease} s")
        self.holder = holder
        self.lease = lease
        self.interval = lease / 3
        self.tokens: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._denied: dict[str, float] = {}
        self._clock = clock
        self._run = run
        self._conn = conn
        self._busy = False
        self._lost: list[Listener] = []
        self._wake: list[Listener] = []
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock
        #: Lease rounds finished.
        self.rounds = 0

    def add_lost_listener(self, listener: Listener) -> None:
        """
        Call C{listener(destinations)} when leases are lost: stop sending them.
        """
        self._lost.append(listener)

    def add_wake_listener(self, listener: Listener) -> None:
        """
        Call C{listener(destinations)} when destinations may have rows to send.
        """
        self._wake.append(listener)

    def start(self) -> None:
        """
        Start the rounds (the first one a third of the lease later: until then the
        relay's first reads take the leases they need, L{acquire}).
        """
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        """
        Stop the rounds (the leases held stay held until L{forget}).
        """
        if self._loop.running:
            self._loop.stop()

    def forget(self) -> None:
        """
        Forget the leases held (after L{release}).
        """
        self.tokens = {}
        self._until = {}

    def holds(self, destination: str) -> bool:
        """
        Whether this front end may send C{destination}'s rows now.
        """
        until = self._until.get(destination)
        return until is not None and self._clock.seconds() + self.interval < until

    def may_ask(self, destination: str) -> bool:
        """
        Whether asking for C{destination}'s lease now may succeed (no round running,
        and not held elsewhere by what the last round saw).
        """
        return not self._busy and self._clock.seconds() >= self._denied.get(destination, 0.0)

    def tick(self) -> None:
        """
        One round: give up the leases about to expire, renew the others and take
        the free ones of destinations with waiting rows. The next round is due
        on time whether this one finished or not (a hung database connection
        must not stop the expiry checks).
        """
        self._expire()
        self._round(None)

    def acquire(self, destination: str) -> Deferred[bool]:
        """
        Try to take C{destination}'s lease now (the relay asks for its rows).

        @return: whether it was taken.
        """
        d = self._round([destination], renew=False)
        return d.addCallback(lambda _: destination in self.tokens)

    def _expire(self) -> None:
        now = self._clock.seconds()
        lost = {d for d, until in self._until.items() if now + self.interval >= until}
        if lost:
            log.info(
                "relay: lease of {dests} not renewed in time: this front end stops sending",
                dests=", ".join(sorted(lost)),
            )
            self._drop(lost)

    def _drop(self, lost: set[str]) -> None:
        self.tokens = {d: t for d, t in self.tokens.items() if d not in lost}
        for d in lost:
            self._until.pop(d, None)
        self._tell(self._lost, lost)

    def _round(self, wanted: list[str] | None, renew: bool = True) -> Deferred[Any]:
        if self._busy:
            return succeed(None)
        self._busy = True
        issued = self._clock.seconds()
        held = dict(self.tokens) if renew else {}
        now_us = int(issued * 1_000_000)
        expires = int((issued + self.lease) * 1_000_000)

        def work() -> Round:
            return lease_round(self._conn(), self.holder, held, wanted, now_us, expires)

        d = self._run(work)

        def done(found: Round) -> None:
            self._busy = False
            self._apply(found, held, issued)

        def failed(failure: Failure) -> None:
            self._busy = False
            log.warn("relay: lease round failed: {error}", error=failure.getErrorMessage())

        return d.addCallbacks(done, failed)

    def _apply(self, found: Round, held: dict[str, int], issued: float) -> None:
        self.rounds += 1
        until = issued + self.lease
        valid = self._clock.seconds() + self.interval < until
        lost: set[str] = set()
        for dest, token in held.items():
            if self.tokens.get(dest) != token:
                continue  # given up meanwhile
            if found.renewed.get(dest) == token and valid:
                self._until[dest] = until
            else:
                lost.add(dest)
        taken = {d: t for d, t in found.taken.items() if valid}
        lost |= {d for d in taken if d in self.tokens}
        if lost:
            self._drop(lost)
        if taken:
            log.info(
                "relay: this front end ({holder}) now sends {dests}",
                holder=self.holder,
                dests=", ".join(f"{d} (lease {t})" for d, t in sorted(taken.items())),
            )
            self.tokens = {**self.tokens, **taken}
            for dest in taken:
                self._until[dest] = until
                self._denied.pop(dest, None)
        for dest, ends in found.others.items():
            self._denied[dest] = ends / 1e6
        if self.tokens:
            self._tell(self._wake, set(self.tokens))

    def _tell(self, listeners: list[Listener], destinations: set[str]) -> None:
        for listener in list(listeners):
            try:
                listener(set(destinations))
            except Exception:
                log.failure("relay lease listener failed")
