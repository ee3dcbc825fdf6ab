# -*- test-case-name: tests.unit.test_store -*-
"""
Tests for L{lbtwist.store}: the rules every store follows, run here on the memory
store (L{tests.unit.test_store_sqlite} runs them again on SQLite).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbtwist.core.errors import AlreadyExists, LBError, NoSpace, TryAgain
from lbtwist.core.events import PRIO_EXCL, Event, make_event, parse_event
from lbtwist.core.relaypolicy import RelayPolicy
from lbtwist.core.states import compute_status
from lbtwist.core.states.status import JobStatus
from lbtwist.core.translate import proxy_policy
from lbtwist.store.batch import (
    BatchProcessor,
    _has_key,
    _key_bytes,
    cream_key,
    dupkey,
    identity,
    run_now,
)
from lbtwist.store.interface import IEventStore, StoreResult
from lbtwist.testing import HeldRunner, MemoryBackend, MemoryStore
from tests import traces

LB_DEST = f"{traces.LB_HOST}:9001"
PROXY = "proxy.example.org"


def items(lines: list[str]) -> list[tuple[str, Any]]:
    """
    C{(line, event)} pairs as the intake hands them to the store.
    """
    return [(line, parse_event(line)) for line in lines]


def comparable(status: Any) -> dict[str, Any]:
    """
    A status as a dict without what depends on arrival order (the last key).
    """
    data = dict(status.to_json_dict())
    data.pop("last_key", None)
    return data


STRANGER = "/DC=org/DC=example/O=People/CN=Somebody Else"


def regjob_line(
    line: str, *, user: str | None = None, date: str | None = None, priority: int | None = None
) -> str:
    """
    The RegJob C{line} with another DG.USER, DATE or DG.PRIORITY.
    """
    if user is not None:
        line = line.replace(f'DG.USER="{traces.CREAM_USER}"', f'DG.USER="{user}"')
    if date is not None:
        line = "DATE=" + date + line[line.index(" ") :]
    if priority is not None:
        line = line.replace("DG.PRIORITY=0", f"DG.PRIORITY={priority}")
    return line


def direct_lines() -> list[str]:
    return traces.cream_done_ok()


def wms_lines() -> list[str]:
    prelude, tail = traces.wms_cream_lines(["Idle", "Running", "Really-running", "Done-ok"])
    return prelude + tail


def priority_line(priority: int, n: int) -> str:
    """
    A UserTag of the WMS job with the given DG.PRIORITY.
    """
    line = traces.ulm_line(
        "UserTag",
        date=traces.date_text(500 + n),
        host=traces.WMS_HOST,
        source="UserInterface",
        jobid=traces.WMS_JOBID,
        seqcode=traces.glite_seqcode(UI=10 + n, NS=4, WM=4, JSS=3, LRMS=99000),
        user=traces.WMS_USER,
        name=f"tag{n}",
        value="x",
    )
    return line.replace("DG.PRIORITY=0", f"DG.PRIORITY={priority}")


def fail_backend_write(store: Any, error: Exception) -> None:
    """
    Make the next C{write} of a SQLite or PostgreSQL store's backend raise
    C{error} (once: the write after it is the backend's own).
    """
    original = store.backend.write

    def failing(plan: Any) -> None:
        store.backend.write = original
        raise error

    store.backend.write = failing


def record_sqlite_stores(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    The path (C{"path"}) and keyword options of each SQLite store made during
    C{case}'s test (by L{lbtwist.tap.makeService}, say), in order.
    """
    from lbtwist.store import sqlite as sqlite_module

    built: list[dict[str, Any]] = []

    class Recording(sqlite_module.SQLiteStore):
        def __init__(self, path: str, **kwargs: Any) -> None:
            built.append({"path": path, **kwargs})
            super().__init__(path, **kwargs)

    case.patch(sqlite_module, "SQLiteStore", Recording)
    return built


def store_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    The options of a store of the rules tests: a proxy's relay policy (for
    C{local_endpoints} and C{proxy_host}) unless C{relay=False} or a C{policy}
    is given, a L{Clock}, the synchronous runner; C{kwargs} updated and returned.
    """
    if kwargs.pop("relay", True) and "policy" not in kwargs:
        local = kwargs.pop("local_endpoints", ())
        kwargs["policy"] = proxy_policy(local, kwargs.pop("proxy_host", PROXY))
    kwargs.setdefault("clock", Clock())
    kwargs.setdefault("runner", run_now)
    return kwargs


class StoreRulesMixin:
    """
    The store contract; subclasses say how to build a store.
    """

    def make_store(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def transactions(self, store: Any) -> int:
        return int(store.backend.transactions)

    def store_ok(self, store: Any, lines: list[str]) -> list[StoreResult]:
        results = self.successResultOf(store.store(items(lines)))  # type: ignore[attr-defined]
        for result in results:
            self.assertIsInstance(result, StoreResult)  # type: ignore[attr-defined]
        return results  # type: ignore[no-any-return]

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IEventStore, self.make_store()))  # type: ignore[attr-defined]

    def test_list_page_columns(self) -> None:
        """
        A job list page carries each job's CREAM state, exit code and done code
        (the HTML list shows them).
        """
        from lbtwist.store.query import JobQuery

        store = self.make_store()
        self.store_ok(store, traces.cream_done_failed() + traces.cream_aborted())
        query = JobQuery(traces.CREAM_USER, (), 10)
        page = self.successResultOf(store.query_jobs(query))  # type: ignore[attr-defined]
        found = {j.state: (j.cream_state, j.exit_code, j.done_code) for j in page.jobs}
        self.assertEqual(found["Done"], ("Done-failed", 3, 1))  # type: ignore[attr-defined]
        self.assertEqual(found["Aborted"][0], "Aborted")  # type: ignore[attr-defined]

    def test_list_json_conditions(self) -> None:
        """
        Conditions on status fields kept only in the status JSON (numbers and
        strings, with every operator kind) select the same jobs on every store
        (SQLite's json_extract, PostgreSQL's jsonb, the memory store's dicts).
        """
        from lbtwist.store.query import JobCondition, JobQuery

        store = self.make_store()
        self.store_ok(store, traces.cream_done_failed() + traces.cream_aborted())

        def states(*conditions: JobCondition) -> list[str]:
            page = self.successResultOf(  # type: ignore[attr-defined]
                store.query_jobs(JobQuery(None, conditions, 10))
            )
            return sorted(j.state for j in page.jobs)

        self.assertEqual(states(JobCondition("exit_code", (("=", 3),))), ["Done"])
        self.assertEqual(states(JobCondition("exit_code", ((">", 2),))), ["Done"])
        self.assertEqual(states(JobCondition("exit_code", (("<", 3),))), [])
        self.assertEqual(states(JobCondition("done_code", (("!=", 0),))), ["Done"])
        self.assertEqual(
            states(JobCondition("cream_state", (("=", "Aborted"), ("=", "Done-failed")))),
            ["Aborted", "Done"],
        )
        self.assertEqual(
            states(
                JobCondition("cream_state", (("=", "Aborted"), ("=", "Done-failed"))),
                JobCondition("exit_code", (("=", 3),)),
            ),
            ["Done"],
        )

    def test_list_all_owners(self) -> None:
        """
        A page without conditions (a super user's C{owner=*}) lists every job, on
        every store (an empty C{WHERE} is SQL that PostgreSQL takes too).
        """
        from lbtwist.store.query import JobQuery

        store = self.make_store()
        self.store_ok(store, traces.cream_done_failed() + traces.cream_aborted())
        page = self.successResultOf(store.query_jobs(JobQuery(None, (), 10)))
        self.assertEqual(sorted(j.state for j in page.jobs), ["Aborted", "Done"])

    def test_store_and_read_back(self) -> None:
        store = self.make_store()
        lines = direct_lines()
        results = self.store_ok(store, lines)
        jobid = traces.DIRECT_JOBID
        self.assertEqual([r.seqno for r in results], list(range(1, len(lines) + 1)))
        self.assertEqual({r.duplicate for r in results}, {False})
        expected = compute_status((ev, n) for n, (_, ev) in enumerate(items(lines), 1))
        status = self.successResultOf(store.status(jobid))
        self.assertEqual(status.to_json_dict(), expected.to_json_dict())
        self.assertEqual(status.state, "Cleared")
        self.assertEqual(results[-1].status.to_json_dict(), expected.to_json_dict())
        stored = self.successResultOf(store.events(jobid))
        self.assertEqual([s.line for s in stored], lines)
        self.assertEqual([s.seqno for s in stored], list(range(1, len(lines) + 1)))
        self.assertEqual(stored[0].event, parse_event(lines[0]))
        self.assertIsNone(self.successResultOf(store.status("https://x.example.org:9000/nojob")))
        self.assertEqual(self.successResultOf(store.events("https://x.example.org:9000/n")), [])

    def test_arrival_stamp(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000.25)
        store = self.make_store(clock=clock)
        lines = direct_lines()
        self.store_ok(store, lines[:2])
        clock.advance(1)
        self.store_ok(store, lines[2:3])
        stored = self.successResultOf(store.events(traces.DIRECT_JOBID))
        self.assertEqual(
            [s.arrived for s in stored],
            [1_700_000_000_250_000] * 2 + [1_700_000_001_250_000],
        )
        dumped = self.successResultOf(store.dump(1_700_000_001_000_000))
        self.assertEqual([s.line for s in dumped], lines[2:3])
        dumped = self.successResultOf(store.dump(None, 1_700_000_001_000_000))
        self.assertEqual([s.line for s in dumped], lines[:2])
        self.assertEqual(len(self.successResultOf(store.dump())), 3)

    def test_duplicate_across_batches(self) -> None:
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:4])
        before = self.transactions(store)
        status = self.successResultOf(store.status(traces.DIRECT_JOBID))
        results = self.store_ok(store, [lines[2], lines[4], lines[3]])
        self.assertEqual([r.duplicate for r in results], [True, False, True])
        self.assertEqual([r.seqno for r in results], [None, 5, None])
        stored = self.successResultOf(store.events(traces.DIRECT_JOBID))
        self.assertEqual([s.line for s in stored], lines[:5])
        # Only duplicates: acknowledged, nothing written, status unchanged.
        results = self.store_ok(store, [lines[0], lines[1]])
        self.assertEqual([r.duplicate for r in results], [True, True])
        self.assertEqual(self.transactions(store), before + 1)
        after = self.successResultOf(store.status(traces.DIRECT_JOBID))
        self.assertNotEqual(comparable(after), comparable(status))
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 5)

    def test_duplicate_of_cached_job_no_lookup(self) -> None:
        """
        The duplicate keys of a cached job's events are known: new events need no
        lookup in the backend, duplicates are still found.
        """
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:4])
        results = self.store_ok(store, [lines[4], lines[2], lines[5]])
        self.assertEqual([r.duplicate for r in results], [False, True, False])
        self.assertEqual(store.processor.lookups, 1)  # type: ignore[attr-defined]
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 6)

    def test_duplicate_after_eviction(self) -> None:
        """
        A job no longer cached gets its duplicate keys from the backend.
        """
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:4])
        store.processor._cache.clear()
        results = self.store_ok(store, [lines[1], lines[4], lines[3], lines[5]])
        self.assertEqual([r.duplicate for r in results], [True, False, True, False])
        self.assertEqual(store.processor.lookups, 2)
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 6)

    def test_duplicate_key_collision(self) -> None:
        """
        Events of a job whose duplicate keys collide are told apart by a lookup.
        """
        from lbtwist.store import batch

        self.patch(batch, "dupkey", lambda ident: 42)  # type: ignore[attr-defined]
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:2])
        results = self.store_ok(store, [lines[2], lines[0], lines[3]])
        self.assertEqual([r.duplicate for r in results], [False, True, False])
        self.assertEqual(store.processor.lookups, 3)
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 4)

    def test_failed_write_forgets_keys(self) -> None:
        """
        Keys of events whose write failed are not taken for stored ones.
        """
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:2])
        self.fail_next_write(store, NoSpace("disk full"))
        self.successResultOf(store.store(items(lines[2:4])))
        results = self.store_ok(store, lines[2:4])
        self.assertEqual([r.duplicate for r in results], [False, False])
        self.assertEqual([r.seqno for r in results], [3, 4])

    def test_duplicate_in_batch(self) -> None:
        store = self.make_store()
        lines = direct_lines()
        results = self.store_ok(store, [lines[0], lines[1], lines[0], lines[1]])
        self.assertEqual([r.duplicate for r in results], [False, False, True, True])
        self.assertEqual([r.seqno for r in results], [1, 2, None, None])
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 2)

    def test_duplicate_needs_all_fields(self) -> None:
        """
        An event differing from a stored one only in a field outside the identity
        (here: the source instance) is a duplicate; one differing in DATE is not.
        """
        store = self.make_store()
        line = direct_lines()[0]
        self.store_ok(store, [line])
        ev = parse_event(line)
        same = ev.evolve(src_instance="elsewhere")
        later = ev.evolve(date=ev.date + 1)
        results = self.successResultOf(store.store([(line, same), (line, later)]))
        self.assertEqual([r.duplicate for r in results], [True, False])

    def test_unregistered_job(self) -> None:
        store = self.make_store()
        lines = direct_lines()
        results = self.store_ok(store, lines[3:6])
        self.assertEqual(results[-1].status.state, "Unknown")
        self.assertEqual(self.successResultOf(store.status(traces.DIRECT_JOBID)).state, "Unknown")
        self.store_ok(store, lines[:3])
        status = self.successResultOf(store.status(traces.DIRECT_JOBID))
        expected = compute_status((ev, n) for n, (_, ev) in enumerate(items(lines[:6]), 1))
        self.assertEqual(comparable(status), comparable(expected))
        self.assertNotEqual(status.state, "Unknown")

    def test_regjob_of_another_owner_refused(self) -> None:
        """
        A RegJob never takes a registered job over: one naming another owner is
        refused with EEXIST (nothing stored, the owner stays), alone in its batch;
        an identical one is a duplicate, the owner's own re-registration is stored.
        """
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:3])
        jobid = traces.DIRECT_JOBID
        takeover = regjob_line(lines[0], user=STRANGER, date="20240314100000.000000")
        results = self.successResultOf(store.store(items([takeover, lines[3], lines[0]])))
        self.assertIsInstance(results[0], AlreadyExists)
        self.assertEqual(results[0].code, errno.EEXIST)
        self.assertIn("another owner", results[0].message)
        self.assertIsInstance(results[1], StoreResult)
        self.assertFalse(results[1].duplicate)
        self.assertTrue(results[2].duplicate)
        status = self.successResultOf(store.status(jobid))
        self.assertEqual(status.owner, traces.CREAM_USER)
        stored = [s.line for s in self.successResultOf(store.events(jobid))]
        self.assertEqual(stored, lines[:4])
        again = regjob_line(lines[0], date="20240314100000.000000")
        self.assertFalse(self.store_ok(store, [again])[0].duplicate)
        # A takeover in the same batch as the registration: refused too.
        other = "https://cream-ce01.example.org:9000/CREAM000000042"
        first = lines[0].replace(jobid, other)
        second = regjob_line(first, user=STRANGER, date="20240314100000.000000")
        results = self.successResultOf(store.store(items([first, second])))
        self.assertIsInstance(results[0], StoreResult)
        self.assertIsInstance(results[1], AlreadyExists)
        self.assertEqual(self.successResultOf(store.status(other)).owner, traces.CREAM_USER)

    def test_exclusive_regjob(self) -> None:
        """
        A RegJob with the EXCL flag registers a new job, and is refused with
        EEXIST for a registered one, even by its owner; sent again unchanged
        it is a duplicate (answered OK).
        """
        store = self.make_store()
        lines = direct_lines()
        excl = regjob_line(lines[0], priority=PRIO_EXCL)
        self.assertFalse(self.store_ok(store, [excl])[0].duplicate)
        self.assertTrue(self.store_ok(store, [excl])[0].duplicate)
        later = regjob_line(lines[0], priority=PRIO_EXCL, date="20240314100000.000000")
        results = self.successResultOf(store.store(items([later, lines[1]])))
        self.assertIsInstance(results[0], AlreadyExists)
        self.assertIn("exclusive", results[0].message)
        self.assertIsInstance(results[1], StoreResult)
        stored = [s.line for s in self.successResultOf(store.events(traces.DIRECT_JOBID))]
        self.assertEqual(stored, [excl, lines[1]])
        # Two exclusive registrations of a new job in one batch: the second is refused.
        other = "https://cream-ce01.example.org:9000/CREAM000000043"
        a = excl.replace(traces.DIRECT_JOBID, other)
        b = later.replace(traces.DIRECT_JOBID, other)
        results = self.successResultOf(store.store(items([a, b])))
        self.assertIsInstance(results[0], StoreResult)
        self.assertIsInstance(results[1], AlreadyExists)

    def test_out_of_order_recompute(self) -> None:
        in_order = self.make_store()
        self.store_ok(in_order, wms_lines())
        self.assertEqual(in_order.processor.recomputes, 0)
        shuffled = self.make_store()
        lines = wms_lines()
        for line in reversed(lines):
            self.store_ok(shuffled, [line])
        self.assertGreater(shuffled.processor.recomputes, 0)
        a = comparable(self.successResultOf(in_order.status(traces.WMS_JOBID)))
        b = comparable(self.successResultOf(shuffled.status(traces.WMS_JOBID)))
        # gLite events are generated as CREAM states change on arrival: in reverse
        # order (RegJob last) none are, so only the event counts differ.
        self.assertEqual(a.pop("event_count"), len(wms_lines()) + 4)
        self.assertEqual(b.pop("event_count"), len(wms_lines()))
        self.assertEqual(a, b)
        self.assertEqual(a["state"], "Done")

    @settings(
        max_examples=40,
        deadline=None,
        # Run by both store test classes; every example builds its own store.
        suppress_health_check=[HealthCheck.differing_executors],
    )
    @given(st.permutations(list(range(len(traces.cream_done_ok())))), st.data())
    def test_any_order_same_status(self, order: list[int], data: Any) -> None:
        """
        Any arrival order, in any split into commit groups, gives the status of the
        events in order.
        """
        lines = traces.cream_done_ok()
        expected = compute_status((ev, n) for n, (_, ev) in enumerate(items(lines), 1))
        store = self.make_store()
        pending = [lines[i] for i in order]
        while pending:
            size = data.draw(st.integers(1, len(pending)))
            self.store_ok(store, pending[:size])
            pending = pending[size:]
        status = self.successResultOf(store.status(traces.DIRECT_JOBID))
        self.assertEqual(comparable(status), comparable(expected))

    def test_wms_mapping_generated_and_outbox(self) -> None:
        store = self.make_store()
        lines = wms_lines()
        results = self.store_ok(store, lines)
        cream_id = f"https://{traces.CE_HOST}:8443/{traces.WMS_CREAM_ID}"
        self.assertEqual(self.successResultOf(store.resolve(cream_id)), traces.WMS_JOBID)
        proxy_form = f"https://{traces.CE_HOST}:9000/{traces.WMS_CREAM_ID}"
        self.assertEqual(self.successResultOf(store.resolve(proxy_form)), traces.WMS_JOBID)
        self.assertIsNone(self.successResultOf(store.resolve(traces.WMS_JOBID)))
        stored = self.successResultOf(store.events(traces.WMS_JOBID))
        generated = [s for s in stored if s.event.generated]
        self.assertEqual(
            [s.event.type for s in generated], ["Accepted", "Running", "ReallyRunning", "Done"]
        )
        self.assertEqual({s.event.host for s in generated}, {PROXY})
        self.assertEqual(len(stored), len(lines) + 4)
        # Seqnos: the logged events' results skip the numbers the generated took.
        self.assertEqual(sorted(s.seqno for s in stored), list(range(1, len(stored) + 1)))
        self.assertEqual(results[-1].seqno, len(stored) - 1)
        for s in generated:
            self.assertEqual(parse_event(s.line), s.event)
        outbox = self.successResultOf(store.outbox_pending())
        self.assertEqual({o.destination for o in outbox}, {LB_DEST})
        self.assertEqual(len(outbox), len(stored))
        self.assertEqual(sorted(o.line for o in outbox), sorted(s.line for s in stored))
        self.assertEqual([o.id for o in outbox], sorted(o.id for o in outbox))
        self.assertEqual(len(self.successResultOf(store.outbox_pending(LB_DEST))), len(outbox))
        self.assertEqual(self.successResultOf(store.outbox_pending("other:9001")), [])
        status = self.successResultOf(store.status(traces.WMS_JOBID))
        self.assertEqual(status.state, "Done")

    def test_generated_not_repeated_for_duplicates(self) -> None:
        store = self.make_store()
        lines = wms_lines()
        self.store_ok(store, lines)
        count = len(self.successResultOf(store.events(traces.WMS_JOBID)))
        results = self.store_ok(store, lines)
        self.assertEqual({r.duplicate for r in results}, {True})
        self.assertEqual(len(self.successResultOf(store.events(traces.WMS_JOBID))), count)

    def test_internal_and_direct_not_relayed(self) -> None:
        store = self.make_store()
        prelude = traces.wms_prelude()
        self.store_ok(store, prelude)
        self.store_ok(store, [priority_line(32, 1), priority_line(16, 2), priority_line(2, 3)])
        outbox = self.successResultOf(store.outbox_pending())
        relayed = [parse_event(o.line) for o in outbox]
        self.assertEqual(len(relayed), len(prelude) + 1)
        self.assertEqual(relayed[-1].priority, 2)
        self.assertEqual(
            len(self.successResultOf(store.events(traces.WMS_JOBID))), len(prelude) + 3
        )

    def test_server_role_no_outbox(self) -> None:
        store = self.make_store(relay=False)
        self.store_ok(store, wms_lines())
        self.assertEqual(self.successResultOf(store.outbox_pending()), [])
        self.assertFalse(store.relay)

    def test_local_jobs_not_relayed(self) -> None:
        store = self.make_store(local_endpoints={(traces.LB_HOST, 9000)})
        self.store_ok(store, wms_lines() + direct_lines())
        self.assertEqual(self.successResultOf(store.outbox_pending()), [])
        # Direct CREAM jobs are local whatever the endpoints.
        store = self.make_store()
        self.store_ok(store, direct_lines())
        self.assertEqual(self.successResultOf(store.outbox_pending()), [])

    def test_injected_policy(self) -> None:
        """
        A relaying store asks its policy, and only it, where events go and what
        a state change generates: here every job's events (the generated ones too)
        go to one destination, and a RegJob generates a UserTag.
        """
        calls: list[tuple[str, str, str]] = []

        def generate(ev: Event, before: JobStatus, after: JobStatus) -> list[Event]:
            calls.append((ev.type, before.state, after.state))
            tag = make_event(
                "UserTag",
                jobid=ev.jobid,
                date=ev.date,
                host="policy.example.org",
                user=ev.user,
                source=ev.source,
                seqcode=ev.seqcode,
                name="made_by",
                value="policy",
            )
            return [tag]

        policy = RelayPolicy(
            destination=lambda jobid: "relay.example.org:7777",
            triggers=lambda ev: ev.type == "RegJob",
            generate=generate,
        )
        store = self.make_store(policy=policy)
        lines = direct_lines()
        self.store_ok(store, lines[:3])
        self.assertEqual(calls, [("RegJob", "Unknown", "Submitted")])
        stored = self.successResultOf(store.events(traces.DIRECT_JOBID))
        self.assertEqual(len(stored), 4)
        [tag] = [s.event for s in stored if s.event.type == "UserTag"]
        self.assertEqual((tag.host, tag.get("value")), ("policy.example.org", "policy"))
        outbox = self.successResultOf(store.outbox_pending())
        self.assertEqual({o.destination for o in outbox}, {"relay.example.org:7777"})
        self.assertEqual(len(outbox), 4)
        self.assertTrue(store.relay)

    def test_group_commit(self) -> None:
        runner = HeldRunner()
        store = self.make_store(runner=runner)
        lines = direct_lines()
        first = store.store(items(lines[:1]))
        self.assertEqual(len(runner.pending), 1)
        later = [store.store(items(lines[1:3])), store.store(items(lines[3:4]))]
        later.append(store.store(items(lines[1:2])))
        self.assertEqual(len(runner.pending), 1)
        for d in [first, *later]:
            self.assertNoResult(d)  # type: ignore[attr-defined]
        runner.release()
        self.assertEqual([r.seqno for r in self.successResultOf(first)], [1])
        self.assertEqual(len(runner.pending), 1)
        for d in later:
            self.assertNoResult(d)  # type: ignore[attr-defined]
        runner.release()
        results = [self.successResultOf(d) for d in later]
        self.assertEqual([[r.seqno for r in rs] for rs in results], [[2, 3], [4], [None]])
        self.assertEqual(self.transactions(store), 2)
        self.assertEqual(runner.pending, [])
        self.assertEqual(self.successResultOf(store.store([])), [])

    def test_write_failure(self) -> None:
        store = self.make_store()
        lines = direct_lines()
        self.store_ok(store, lines[:2])
        self.fail_next_write(store, NoSpace("disk full"))
        results = self.successResultOf(store.store(items(lines[2:5])))
        self.assertEqual(len(results), 3)
        for result in results:
            self.assertIsInstance(result, NoSpace)
        self.assertEqual(len(self.successResultOf(store.events(traces.DIRECT_JOBID))), 2)
        results = self.store_ok(store, lines[2:5])
        self.assertEqual([r.seqno for r in results], [3, 4, 5])
        expected = compute_status((ev, n) for n, (_, ev) in enumerate(items(lines[:5]), 1))
        status = self.successResultOf(store.status(traces.DIRECT_JOBID))
        self.assertEqual(status.to_json_dict(), expected.to_json_dict())

    def fail_next_write(self, store: Any, error: LBError) -> None:
        store.backend.fail_next = error

    def test_jobs_listing(self) -> None:
        store = self.make_store()
        self.store_ok(store, wms_lines() + direct_lines())
        jobs = self.successResultOf(store.jobs())
        self.assertEqual([j.jobid for j in jobs], sorted([traces.WMS_JOBID, traces.DIRECT_JOBID]))
        done = self.successResultOf(store.jobs(state="Done"))
        self.assertEqual([j.jobid for j in done], [traces.WMS_JOBID])
        self.assertEqual(done[0].jobtype, "SIMPLE")
        self.assertEqual(done[0].owner, traces.WMS_USER)
        self.assertIsNotNone(done[0].last_update)
        self.assertEqual(len(self.successResultOf(store.jobs(limit=1))), 1)
        self.assertEqual(self.successResultOf(store.jobs(owner="/CN=nobody")), [])

    def test_closed(self) -> None:
        store = self.make_store()
        self.assertIsNone(self.successResultOf(store.close()))
        failure = self.failureResultOf(store.store(items(direct_lines()[:1])))  # type: ignore[attr-defined]
        failure.trap(TryAgain)


class MemoryStoreTests(StoreRulesMixin, SynchronousTestCase):
    def make_store(self, **kwargs: Any) -> MemoryStore:
        kwargs.setdefault("proxy_host", PROXY)
        return MemoryStore(**kwargs)

    def test_no_failure_translation(self) -> None:
        self.assertIsNone(MemoryStore().backend.translate_error(ValueError("x")))

    def test_unexpected_failure(self) -> None:
        """
        An unexpected exception while writing is logged and answered EAGAIN.
        """
        store = self.make_store()
        store.backend.fail_next = ZeroDivisionError()  # type: ignore[assignment]
        results = self.successResultOf(store.store(items(direct_lines()[:1])))
        self.assertIsInstance(results[0], TryAgain)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class HelperTests(SynchronousTestCase):
    def test_cream_key(self) -> None:
        self.assertEqual(cream_key("https://ce:8443/CREAM42"), "CREAM42")
        self.assertEqual(cream_key("CREAM42"), "CREAM42")

    def test_has_key_aligned(self) -> None:
        """
        Only whole 8-byte keys count, not bytes straddling two of them.
        """
        keys = _key_bytes(0x0102030405060708) + _key_bytes(0x090A0B0C0D0E0F10)
        self.assertTrue(_has_key(keys, _key_bytes(0x090A0B0C0D0E0F10)))
        self.assertFalse(_has_key(keys, _key_bytes(0x05060708090A0B0C)))
        self.assertFalse(_has_key(b"", _key_bytes(0)))
        self.assertTrue(_has_key(_key_bytes(-1) + _key_bytes(-1), _key_bytes(-1)))
        ones = bytes([1] * 8)
        # A straddling match at offset 1 comes before the real one at 16.
        keys = bytes([0] + [1] * 7) + bytes([1] + [0] * 7)
        self.assertFalse(_has_key(keys, ones))
        self.assertTrue(_has_key(keys + ones, ones))

    def test_relay_destination_from_policy(self) -> None:
        """
        The processor's destinations are its policy's; without one nothing is relayed.
        """
        proc = BatchProcessor(MemoryBackend(), policy=proxy_policy((), PROXY))
        for _ in range(2):
            self.assertEqual(proc.relay_destination(traces.WMS_JOBID), LB_DEST)
            self.assertIsNone(proc.relay_destination(traces.DIRECT_JOBID))
            self.assertIsNone(proc.relay_destination("not a job id"))
        self.assertTrue(proc.relay)
        local = BatchProcessor(
            MemoryBackend(), policy=proxy_policy({(traces.LB_HOST, 9000)}, PROXY)
        )
        self.assertIsNone(local.relay_destination(traces.WMS_JOBID))
        server = BatchProcessor(MemoryBackend())
        self.assertFalse(server.relay)
        self.assertIsNone(server.relay_destination(traces.WMS_JOBID))

    def test_backend_without_dupkeys(self) -> None:
        """
        A backend without C{load_dupkeys} gets a lookup per event of a job it loads.
        """
        backend = MemoryBackend()

        class Plain:
            def __getattr__(self, name: str) -> Any:
                if name == "load_dupkeys":
                    raise AttributeError(name)
                return getattr(backend, name)

        lines = direct_lines()
        first = BatchProcessor(Plain(), policy=proxy_policy((), PROXY))
        first.process([(line, parse_event(line), 1) for line in lines[:3]])
        second = BatchProcessor(Plain(), policy=proxy_policy((), PROXY))
        results = second.process([(line, parse_event(line), 2) for line in lines[1:5]])
        self.assertEqual(
            [r.duplicate for r in results if isinstance(r, StoreResult)],
            [True, True, False, False],
        )
        self.assertEqual(second.lookups, 4)
        third = BatchProcessor(backend, policy=proxy_policy((), PROXY))
        results = third.process([(line, parse_event(line), 3) for line in lines[4:6]])
        self.assertEqual(
            [r.duplicate for r in results if isinstance(r, StoreResult)], [True, False]
        )
        self.assertEqual(third.lookups, 1)

    def test_dupkey_stable(self) -> None:
        ev = parse_event(direct_lines()[0])
        self.assertEqual(dupkey(identity(ev)), dupkey(identity(ev.evolve(src_instance="x"))))
        self.assertNotEqual(dupkey(identity(ev)), dupkey(identity(ev.evolve(date=ev.date + 1))))
        self.assertLess(abs(dupkey(identity(ev))), 1 << 63)


class ProfileHarnessTests(SynchronousTestCase):
    """
    C{bench/profile_intake.py} runs every stage over a small mix.
    """

    def test_stages(self) -> None:
        import os
        import sqlite3

        from bench.profile_intake import STAGES, mix, stage_runner

        lines = mix(320)
        self.assertEqual(len(lines), 320)
        self.assertEqual(len({parse_event(line).jobid for line in lines}), 16 * 2)
        tmp = self.mktemp()
        os.makedirs(tmp)
        for name in STAGES:
            stage_runner(name, lines, 64, tmp)()
        for name in ("sqlite", "sqlite-full"):
            conn = sqlite3.connect(os.path.join(tmp, f"{name}-1.sqlite"))
            self.addCleanup(conn.close)
            self.assertEqual(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0], 320)
            self.assertEqual(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0], 32)


class ServiceStoreTests(SynchronousTestCase):
    """
    The store each C{twistd} role builds: a proxy's has the proxy's relay policy
    (with its local endpoints and host name), a server's none.
    """

    def built(self, options: Any) -> dict[str, Any]:
        from lbtwist import tap

        built = record_sqlite_stores(self)
        tap.makeService(options, reactor=Clock())
        [kwargs] = built
        return kwargs

    def test_proxy(self) -> None:
        from lbtwist.tap import Options

        state_dir = self.mktemp()
        options = Options()
        options.parseOptions(
            ["--state-dir", state_dir, "--hostname", "CE.Example.org"]
            + ["--local-endpoint", "alias.example.org:9010"]
        )
        kwargs = self.built(options)
        self.assertEqual(kwargs["path"], os.path.join(os.path.abspath(state_dir), "lbtwist.sqlite"))
        policy = kwargs["policy"]
        self.assertEqual(policy.destination(traces.WMS_JOBID), LB_DEST)
        for local in (
            "https://ce.example.org:9000/U1",
            "https://localhost:9000/U1",
            "https://alias.example.org:9010/U1",
            traces.DIRECT_JOBID,
        ):
            self.assertIsNone(policy.destination(local), local)
        prelude, tail = traces.wms_cream_lines(["Idle", "Running"])
        events = [parse_event(line) for line in prelude + tail]
        before = compute_status((ev, n) for n, ev in enumerate(events[:-1], 1))
        after = compute_status((ev, n) for n, ev in enumerate(events, 1))
        [made] = policy.generate(events[-1], before, after)
        self.assertEqual(made.host, "ce.example.org")

    def test_server(self) -> None:
        from lbtwist.tap import ServerOptions

        options = ServerOptions()
        options.parseOptions(["--state-dir", self.mktemp(), "--store", ""])
        self.assertIsNone(self.built(options)["policy"])
