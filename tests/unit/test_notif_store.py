# -*- test-case-name: tests.unit.test_notif_store -*-
"""
Tests for L{lbtwist.store.notif} on both stores: messages are written in the same
transaction as their event, queues keep their bounds, registrations survive a
restart, the rights check filters each message, bootstrap and the sweep.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import TryAgain
from lbtwist.core.events import parse_event
from lbtwist.core.notif import (
    Conditions,
    Flags,
    QueueBounds,
    Registration,
    render_message,
    status_message,
)
from lbtwist.core.states.status import JobStatus
from lbtwist.security.authz import parse_policy
from lbtwist.security.identity import Identity
from lbtwist.service.notify import NotifyService
from lbtwist.store.batch import run_now
from lbtwist.store.notif import Matched, Notifications, SQLNotifTables, resolve
from lbtwist.store.sqlite import SQLiteStore
from lbtwist.testing import MemoryStore
from tests import traces

OWNER = traces.CREAM_USER
OTHER = "/DC=org/DC=example/O=People/CN=Eve Stranger"
JOBID = traces.DIRECT_JOBID
NOW = 1710408413 + 3600
#: The distinct CREAM states of traces.cream_done_ok().
STATES = ["Registered", "Pending", "Idle", "Running", "Really-running", "Done-ok", "Purged"]


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def items(lines: list[str]) -> list[tuple[str, Any]]:
    return [(line, parse_event(line)) for line in lines]


def registration(
    unique: str = "r1",
    owner: str = OWNER,
    conditions: Conditions | None = None,
    flags: Flags | None = None,
    until: int = NOW + 3600,
) -> Registration:
    return Registration(
        unique,
        owner,
        (),
        conditions or Conditions(jobids=(JOBID,)),
        flags or Flags(state_changes_only=True),
        until,
        NOW,
    )


def cream_states(notifications: Notifications, unique: str) -> list[str]:
    got = _result(notifications.messages(unique, 0, 1000))
    return [json.loads(m.body)["status"]["cream_state"] for m in got if m.kind == "status"]


class _Both:
    """
    The same tests on the memory store and on SQLite (synchronous runner).
    """

    def make(self) -> Any:
        raise NotImplementedError

    def reopen(self, store: Any) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = self.make()

    def test_messages_in_event_order(self) -> None:
        n = self.store.notifications
        _result(n.create(registration(), NOW))
        self.assertEqual(_result(self.store.store(items(traces.cream_done_ok()))).count(None), 0)
        self.assertEqual(cream_states(n, "r1"), STATES)
        state = _result(n.get("r1"))
        self.assertEqual((state.last_seq, state.queued, state.dropped), (7, 7, 0))

    def test_unrelated_jobs_queue_nothing(self) -> None:
        n = self.store.notifications
        _result(n.create(registration(conditions=Conditions(jobids=("CREAM1",))), NOW))
        _result(self.store.store(items(traces.cream_done_ok())))
        self.assertEqual(_result(n.messages("r1", 0, 10)), [])

    def test_ack_deletes(self) -> None:
        n = self.store.notifications
        _result(n.create(registration(), NOW))
        _result(self.store.store(items(traces.cream_done_ok())))
        _result(n.ack("r1", 5))
        self.assertEqual([m.seq for m in _result(n.messages("r1", 0, 10))], [6, 7])
        state = _result(n.get("r1"))
        self.assertEqual((state.acked, state.queued), (5, 2))
        self.assertEqual(state.size, sum(len(m.body) for m in _result(n.messages("r1", 0, 10))))

    def test_bounds_drop_oldest_for_a_gap(self) -> None:
        n = self.store.notifications
        n.configure(bounds=QueueBounds(max_messages=2, max_bytes=10**6))
        _result(n.create(registration(), NOW))
        _result(self.store.store(items(traces.cream_done_ok())))
        got = _result(n.messages("r1", 0, 10))
        self.assertEqual([(m.seq, m.kind) for m in got], [(5, "gap"), (6, "status"), (7, "status")])
        self.assertEqual(json.loads(got[0].body), {"kind": "gap", "dropped": 5})
        self.assertEqual(_result(n.get("r1")).dropped, 5)

    def test_byte_bound(self) -> None:
        n = self.store.notifications
        _result(n.create(registration(), NOW))
        _result(self.store.store(items(traces.cream_done_ok()[:6])))
        one = max(len(m.body) for m in _result(n.messages("r1", 0, 10)))
        _result(n.drop(["r1"]))
        n.configure(bounds=QueueBounds(max_messages=1000, max_bytes=one * 2))
        _result(n.create(registration("r2"), NOW))
        _result(self.store.store(items(traces.cream_done_ok()[6:])))
        state = _result(n.get("r2"))
        self.assertLessEqual(state.size, one * 2)
        self.assertGreater(state.dropped, 0)
        self.assertEqual(_result(n.messages("r2", 0, 10))[0].kind, "gap")

    def test_failed_commit_queues_nothing(self) -> None:
        """
        An event's messages exist if and only if the event was committed.
        """
        n = self.store.notifications
        _result(n.create(registration(), NOW))
        lines = traces.cream_done_ok()
        self.fail_next_write()
        results = _result(self.store.store(items(lines[:4])))
        self.assertTrue(all(isinstance(r, Exception) for r in results), results)
        self.assertEqual(_result(n.messages("r1", 0, 10)), [])
        self.assertEqual(_result(self.store.events(JOBID)), [])
        results = _result(self.store.store(items(lines[:4])))
        self.assertFalse([r for r in results if isinstance(r, Exception)])
        self.assertEqual(cream_states(n, "r1"), ["Registered", "Pending"])

    def fail_next_write(self) -> None:
        raise NotImplementedError

    def test_expired_registration_matches_nothing(self) -> None:
        n = self.store.notifications
        _result(n.create(registration(until=NOW - 1), NOW))
        _result(self.store.store(items(traces.cream_done_ok())))
        self.assertEqual(_result(n.messages("r1", 0, 10)), [])

    def test_sweep_in_chunks(self) -> None:
        n = self.store.notifications
        for i in range(5):
            _result(n.create(registration(f"old{i}", until=NOW - 1), NOW))
        _result(n.create(registration("new"), NOW))
        self.assertEqual(len(_result(n.sweep(NOW, 2))), 2)
        self.assertEqual(len(_result(n.sweep(NOW, 2))), 2)
        self.assertEqual(len(_result(n.sweep(NOW, 2))), 1)
        self.assertEqual(_result(n.sweep(NOW, 2)), [])
        self.assertEqual([s.reg.unique for s in _result(n.of_owner(OWNER))], ["new"])
        self.assertEqual(list(n.index.by_unique), ["new"])

    def test_bootstrap(self) -> None:
        n = self.store.notifications
        _result(self.store.store(items(traces.cream_done_ok_unpurged() + traces.cream_aborted())))
        _result(
            n.create(
                registration(conditions=Conditions(owner=OWNER), flags=Flags(bootstrap=True)),
                NOW,
            )
        )
        got = [json.loads(m.body) for m in _result(n.messages("r1", 0, 10))]
        self.assertEqual(len(got), 2)
        self.assertEqual({m["status"]["state"] for m in got}, {"Done", "Aborted"})

    def test_bootstrap_bounded(self) -> None:
        n = self.store.notifications
        n.configure(bootstrap_max=1)
        _result(self.store.store(items(traces.cream_done_ok_unpurged() + traces.cream_aborted())))
        _result(
            n.create(
                registration(conditions=Conditions(owner=OWNER), flags=Flags(bootstrap=True)),
                NOW,
            )
        )
        self.assertEqual(len(_result(n.messages("r1", 0, 10))), 1)

    def test_rights_filter_messages(self) -> None:
        """
        A registrant that may not read the job gets nothing, whatever its conditions.
        """
        n = self.store.notifications
        NotifyService(self.store, clock=self.clock).notifications  # noqa: B018
        _result(n.create(registration("theirs", owner=OTHER), NOW))
        _result(n.create(registration("mine"), NOW))
        _result(self.store.store(items(traces.cream_done_ok())))
        self.assertEqual(_result(n.messages("theirs", 0, 10)), [])
        self.assertEqual(len(_result(n.messages("mine", 0, 10))), 7)

    def test_update_and_drop(self) -> None:
        n = self.store.notifications
        _result(n.create(registration(), NOW))
        new = registration(conditions=Conditions(jobids=("CREAM1",)))
        self.assertEqual(_result(n.update(new)).reg.conditions.jobids, ("CREAM1",))
        _result(self.store.store(items(traces.cream_done_ok())))
        self.assertEqual(_result(n.messages("r1", 0, 10)), [])
        _result(n.drop(["r1"]))
        self.assertIsNone(_result(n.get("r1")))
        self.assertIsNone(n.registration("r1"))


class MemoryNotifTests(_Both, SynchronousTestCase):
    def make(self) -> Any:
        return MemoryStore(self.clock, relay=False)

    def fail_next_write(self) -> None:
        self.store.backend.fail_next = TryAgain("disk trouble")


class SQLiteNotifTests(_Both, SynchronousTestCase):
    def make(self) -> Any:
        base = self.mktemp()
        os.makedirs(base)
        self.path = os.path.join(base, "store.sqlite")
        store = SQLiteStore(self.path, clock=self.clock, runner=run_now)
        self.addCleanup(lambda: _result(store.close()))
        return store

    def reopen(self, store: Any) -> Any:
        _result(store.close())
        again = SQLiteStore(self.path, clock=self.clock, runner=run_now)
        self.addCleanup(lambda: _result(again.close()))
        return again

    def fail_next_write(self) -> None:
        tables = self.store.notifications.tables
        original = SQLNotifTables.write_messages

        def failing(rows: Any, bounds: Any) -> None:
            tables.write_messages = lambda *a: original(tables, *a)  # type: ignore[method-assign]
            original(tables, rows, bounds)  # written, then the transaction fails
            raise TryAgain("disk trouble")

        tables.write_messages = failing  # type: ignore[method-assign]

    def test_survives_restart(self) -> None:
        """
        Registrations, their queues and the index come back after a restart, and
        sequence numbers go on.
        """
        n = self.store.notifications
        _result(n.create(registration(), NOW))
        lines = traces.cream_done_ok()
        _result(self.store.store(items(lines[:8])))
        before = cream_states(n, "r1")
        self.store = self.reopen(self.store)
        n = self.store.notifications
        self.assertIn("r1", n.index)
        self.assertEqual(cream_states(n, "r1"), before)
        _result(self.store.store(items(lines[8:])))
        self.assertEqual(cream_states(n, "r1"), STATES)
        seqs = [m.seq for m in _result(n.messages("r1", 0, 100))]
        self.assertEqual(seqs, list(range(1, 8)))

    def test_each_status_serialised_once(self) -> None:
        """
        A commit serialises each new status once for all the registrations it
        matches (whatever their views), in its compact form.
        """
        lines = items(traces.cream_done_ok()[:4])
        calls = []
        original = JobStatus.to_compact_json

        def counting(status: JobStatus, jdl: bool = True) -> bytes:
            calls.append(status.event_count)
            return original(status, jdl)

        self.patch(JobStatus, "to_compact_json", counting)
        _result(self.store.store(lines[:1]))
        self.assertEqual(calls, [])  # no registration: no message
        n = self.store.notifications
        n.configure(rights=lambda reg, status: "anonymized" if reg.unique == "r2" else "full")
        for unique in ("r1", "r2", "r3"):
            _result(n.create(registration(unique, flags=Flags()), NOW))
        _result(self.store.store(lines[1:]))
        self.assertEqual(sorted(calls), [2, 3, 4])
        row = self.store.backend.conn.execute(
            "SELECT status FROM jobs WHERE jobid = ?", (JOBID,)
        ).fetchone()[0]
        for unique in ("r1", "r2", "r3"):
            got = _result(n.messages(unique, 0, 10))
            self.assertEqual(len(got), 3)
            last = JobStatus.from_json_dict(json.loads(got[-1].body)["status"])
            # The registrations have no jdl flag: their bodies leave the JDL out.
            expected = attrs.evolve(
                JobStatus.from_json_dict(json.loads(row)),
                jdl=None,
                matched_jdl=None,
                cream_jdl=None,
            )
            self.assertEqual(last, expected)
            views = {json.loads(m.body)["view"] for m in got}
            self.assertEqual(views, {"anonymized" if unique == "r2" else "full"})

    def test_jdl_stored_only_for_the_jdl_flag(self) -> None:
        """
        A message keeps the JDL fields only for a registration with the C{jdl}
        flag when it is queued; the client gets the JDL only then.
        """
        n = self.store.notifications
        _result(n.create(registration("plain", flags=Flags()), NOW))
        _result(n.create(registration("withjdl", flags=Flags(jdl=True)), NOW))
        _result(self.store.store(items(traces.cream_done_ok()[:3])))
        plain = _result(n.messages("plain", 0, 10))
        withjdl = _result(n.messages("withjdl", 0, 10))
        self.assertEqual(len(plain), len(withjdl))
        stored = [json.loads(m.body)["status"] for m in withjdl]
        self.assertTrue(any(s.get("cream_jdl") or s.get("jdl") for s in stored), stored)
        for m in plain:
            status = json.loads(m.body)["status"]
            self.assertEqual([f for f in ("jdl", "matched_jdl", "cream_jdl") if f in status], [])
            sent = json.loads(render_message(m.seq, m.body, Flags(jdl=True))[0])
            self.assertNotIn("jdl", sent)
            self.assertEqual([sent["status"][f] for f in ("jdl", "cream_jdl")], [None, None])
        sent = json.loads(render_message(withjdl[-1].seq, withjdl[-1].body, Flags(jdl=True))[0])
        self.assertTrue(sent["jdl"])

    def test_queries_per_commit_do_not_grow_with_registrations(self) -> None:
        """
        The queue counters of all the registrations a commit writes to are read
        in one query, not one per registration.
        """
        n = self.store.notifications
        for i in range(40):
            _result(n.create(registration(f"r{i}", flags=Flags()), NOW))
        selects = []

        def trace(sql: str) -> None:
            if sql.lstrip().upper().startswith("SELECT") and "notif_regs" in sql:
                selects.append(sql)

        self.store.backend.conn.set_trace_callback(trace)
        self.addCleanup(self.store.backend.conn.set_trace_callback, None)
        _result(self.store.store(items(traces.cream_done_ok()[:3])))
        self.assertEqual(len(selects), 1)
        self.assertEqual(_result(n.get("r39")).last_seq, 3)


class ResolveTests(SynchronousTestCase):
    """
    L{resolve}: the bodies of a commit's matched statuses.
    """

    def test_one_body_per_status_and_view(self) -> None:
        first = JobStatus(state="Waiting", owner=OWNER, event_count=1)
        last = JobStatus(state="Running", owner=OWNER, event_count=2)
        rows = resolve(
            [
                Matched("a", JOBID, first, False),
                Matched("b", JOBID, first, False),
                Matched("c", JOBID, first, True),
                Matched("a", JOBID, last, False),
                Matched("b", JOBID, last, False),
            ]
        )
        self.assertEqual([r.reg for r in rows], ["a", "b", "c", "a", "b"])
        self.assertIs(rows[0].body, rows[1].body)
        self.assertIs(rows[3].body, rows[4].body)
        self.assertEqual(json.loads(rows[2].body)["view"], "anonymized")
        self.assertEqual(rows[0].body, status_message(first, JOBID, anonymized=False))
        self.assertEqual(rows[3].body, status_message(last, JOBID, anonymized=False))


class RightsTests(SynchronousTestCase):
    """
    L{NotifyService.rights}: the query path's read check, per message.
    """

    def service(self, policy: str = "", super_users: tuple[str, ...] = ()) -> NotifyService:
        return NotifyService(
            MemoryStore(Clock(), relay=False),
            clock=Clock(),
            policy=parse_policy(policy),
            super_users=super_users,
        )

    def job(self, **kw: Any) -> JobStatus:
        return JobStatus(state="Running", owner=OWNER, **kw)

    def test_owner(self) -> None:
        s = self.service()
        self.assertEqual(s.rights(registration(), self.job()), "full")
        self.assertIsNone(s.rights(registration(owner=OTHER), self.job()))

    def test_super_user_and_read_all(self) -> None:
        self.assertEqual(
            self.service(super_users=(OTHER,)).rights(registration(owner=OTHER), self.job()),
            "full",
        )
        policy = (
            f'resource "LB" {{ action "READ_ALL" {{ rule permit {{ subject = "{OTHER}" }} }} }}'
        )
        self.assertEqual(self.service(policy).rights(registration(owner=OTHER), self.job()), "full")

    def test_acl(self) -> None:
        acl = [
            {
                "user_id": OTHER,
                "user_id_type": "DN",
                "permission": "READ",
                "permission_type": "ALLOW",
            }
        ]
        self.assertEqual(
            self.service().rights(registration(owner=OTHER), self.job(acl=acl)), "full"
        )

    def test_acl_by_fqan(self) -> None:
        acl = [
            {
                "user_id": "/atlas/Role=NULL/Capability=NULL",
                "user_id_type": "FQAN",
                "permission": "READ",
                "permission_type": "ALLOW",
            }
        ]
        reg = Registration("r", OTHER, ("/atlas/Role=NULL/Capability=NULL",), valid_until=NOW)
        self.assertEqual(self.service().rights(reg, self.job(acl=acl)), "full")

    def test_read_anonymized(self) -> None:
        policy = f'resource "LB" {{ action "READ_ANONYMIZED" {{ rule permit {{ subject = "{OTHER}" }} }} }}'
        s = self.service(policy)
        self.assertEqual(s.rights(registration(owner=OTHER), self.job()), "anonymized")
        # and the message is anonymized
        rows = s.notifications.matcher.messages(
            [registration(owner=OTHER, flags=Flags())], JOBID, None, self.job(), NOW
        )
        body = json.loads(render_message(1, rows[0].body, Flags())[0])
        self.assertNotEqual(body["status"]["owner"], OWNER)
        self.assertTrue(body["status"]["owner"].startswith("anonymized:"))

    def test_registrant_rights_remembered(self) -> None:
        """
        What does not depend on the job (super user, READ_ALL, READ_ANONYMIZED)
        is worked out once per registrant, not per message; a bind (another
        owner) is worked out anew.
        """
        s = self.service(super_users=(OTHER,))
        asked: list[str] = []
        original = s.is_super

        def counting(who: Identity) -> bool:
            asked.append(who.dn)
            return original(who)

        s.is_super = counting  # type: ignore[method-assign]
        for _ in range(3):
            self.assertEqual(
                s.rights(registration(owner=OTHER), JobStatus(state="Running", owner="/CN=x")),
                "full",
            )
        self.assertEqual(asked, [OTHER])
        third = "/DC=org/DC=example/O=People/CN=Third"
        self.assertIsNone(
            s.rights(registration(owner=third), JobStatus(state="Running", owner="/CN=x"))
        )
        self.assertEqual(
            s.rights(registration(owner=third), JobStatus(state="Running", owner=third)), "full"
        )
        self.assertEqual(asked, [OTHER, third])

    def test_identity_of_registrant(self) -> None:
        # an Identity is rebuilt from what the registration keeps
        s = self.service()
        self.assertTrue(s.may_operate(Identity(OWNER.upper()), registration()))
        self.assertFalse(s.may_operate(Identity(OTHER), registration()))


class ProxyLifetimeTests(SynchronousTestCase):
    """
    The identity of a verified chain knows when the chain ends (what caps a
    registration's validity).
    """

    def test_not_after_of_a_proxy_chain(self) -> None:
        from datetime import UTC, datetime

        from cryptography import x509

        from lbtwist.security.devcerts import make_dev_pki
        from lbtwist.security.identity import identity_of_chain

        now = datetime(2026, 1, 1, tzinfo=UTC)
        pki = make_dev_pki(self.mktemp(), now=now)
        with open(pki.user_proxy, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        who = identity_of_chain(chain, now=now)
        ends = [int(c.not_valid_after_utc.timestamp()) for c in chain]
        self.assertEqual(who.not_after, min(ends))
        self.assertLess(who.not_after, max(ends))  # the proxy ends before the user's certificate
        self.assertEqual(who, Identity(who.dn, who.fqans, who.chain_subjects))  # not compared
