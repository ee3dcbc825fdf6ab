# -*- test-case-name: tests.unit.test_groupcommit -*-
"""
Tests for L{lbtwist.store.batch.GroupCommit} on a draining runner (the store's own
writer thread, handing results back to the reactor): the writer thread and the
reactor thread are played by the test, step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import TryAgain
from lbtwist.core.events import parse_event
from lbtwist.store.batch import GroupCommit
from tests import traces


class Threads:
    """
    A writer thread and a reactor, run by hand: C{runner} keeps the work the
    reactor gives the writer thread until L{run_writer}; C{handoff} (like
    C{reactor.callFromThread}) and the end of each piece of work (like
    C{deferToThreadPool}) queue calls that run on L{run_reactor}.
    """

    def __init__(self) -> None:
        self.work: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def runner(self, work: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.work.append((work, d))
        return d

    def handoff(self, f: Callable[..., object], *args: Any) -> None:
        self.calls.append((f, args))

    def run_writer(self) -> None:
        work, d = self.work.pop(0)
        try:
            result = work()
        except Exception:
            self.handoff(d.errback, Failure())
        else:
            self.handoff(d.callback, result)

    def run_reactor(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


def lines(n: int) -> list[tuple[str, Any]]:
    """
    Three C{(line, event)} items, different ones for each C{n} (up to 3).
    """
    trace = traces.cream_done_ok()
    return [(line, parse_event(line)) for line in trace[3 * (n - 1) : 3 * n]]


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.threads = Threads()
        self.groups: list[list[str]] = []
        self.during: Callable[[], object] | None = None
        self.fail_group: int | None = None
        self.commit = GroupCommit(
            Clock(), self.process, self.threads.runner, handoff=self.threads.handoff
        )

    def process(self, items: list[tuple[str, Any, int]], offsets: Any = None) -> list[Any]:
        self.groups.append([line for line, _, _ in items])
        if self.during is not None:
            during, self.during = self.during, None
            during()
        if self.fail_group == len(self.groups):
            raise RuntimeError("disk on fire")
        return [("ok", line) for line, _, _ in items]

    def test_next_group_without_reactor_turn(self) -> None:
        """
        Items submitted while a group commits are the next group, started by the
        writer thread as soon as the first has committed, before the reactor has
        answered the first group's callers; the answers then come in order.
        """
        first, second = lines(1), lines(2)
        d1 = self.commit.submit(first)
        self.assertEqual(len(self.threads.work), 1)
        self.during = lambda: self.commit.submit(second)
        self.threads.run_writer()
        self.assertEqual(self.groups, [[line for line, _ in first], [line for line, _ in second]])
        self.assertNoResult(d1)
        self.assertEqual(self.threads.work, [])  # no second runner call: one drain
        idle = self.commit.when_idle()
        self.assertNoResult(idle)
        self.threads.run_reactor()
        self.assertEqual(self.successResultOf(d1), [("ok", line) for line, _ in first])
        self.assertEqual(self.commit.commits, 2)
        self.successResultOf(idle)

    def test_results_split_by_caller(self) -> None:
        """
        Several callers queued for one group each get their own part of its results.
        """
        held = self.commit.submit(lines(1))
        ds: list[Deferred[Any]] = []

        def two() -> None:
            ds.append(self.commit.submit(lines(2)))
            ds.append(self.commit.submit(lines(3)))

        self.during = two
        self.threads.run_writer()
        self.threads.run_reactor()
        self.successResultOf(held)
        self.assertEqual(
            [self.successResultOf(d) for d in ds],
            [[("ok", line) for line, _ in lines(n)] for n in (2, 3)],
        )
        self.assertEqual(len(self.groups), 2)

    def test_failed_group(self) -> None:
        """
        A group whose commit raises fails its own callers with TryAgain; the next
        group still commits.
        """
        d1 = self.commit.submit(lines(1))
        self.fail_group = 1
        d2: list[Deferred[Any]] = []
        self.during = lambda: d2.append(self.commit.submit(lines(2)))
        self.threads.run_writer()
        self.threads.run_reactor()
        self.failureResultOf(d1, TryAgain)
        self.assertEqual(len(self.successResultOf(d2[0])), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_restart_after_drain(self) -> None:
        """
        Items submitted once the writer thread left its drain start a new one; idle
        waiters wait for it.
        """
        self.successResultOf(self._one(lines(1)))
        d = self.commit.submit(lines(2))
        idle = self.commit.when_idle()
        self.assertEqual(len(self.threads.work), 1)
        self.threads.run_writer()
        self.assertNoResult(idle)
        self.threads.run_reactor()
        self.successResultOf(d)
        self.successResultOf(idle)

    def test_offsets(self) -> None:
        """
        Offsets submitted with items are handed to the commit with them.
        """
        seen: list[Any] = []

        def process(items: list[Any], offsets: Any = None) -> list[Any]:
            seen.append(offsets)
            return [None] * len(items)

        commit = GroupCommit(Clock(), process, self.threads.runner, handoff=self.threads.handoff)
        commit.submit(lines(1), {"f": (1, 10)})
        self.threads.run_writer()
        self.assertEqual(seen, [{"f": (1, 10)}])

    def test_background(self) -> None:
        """
        While work is pending (refolds), the writer thread goes on with empty groups
        once the queue is empty; not once stopped.
        """
        pending = [3]

        def more() -> bool:
            return pending[0] > 0

        def process(items: list[Any], offsets: Any = None) -> list[Any]:
            if not items:
                pending[0] -= 1
            return [None] * len(items)

        commit = GroupCommit(
            Clock(), process, self.threads.runner, more, handoff=self.threads.handoff
        )
        commit.kick()
        self.threads.run_writer()
        self.assertEqual(pending, [0])
        self.assertEqual(commit.commits, 3)
        self.threads.run_reactor()
        self.successResultOf(commit.when_idle())

        pending[0] = 5
        commit.stop()
        commit.kick()
        self.threads.run_writer()
        self.assertEqual(pending, [5])

    def test_yields_to_other_work(self) -> None:
        """
        When other work waits for the writer thread (the outbox), the drain stops
        after the group that committed, and the reactor starts it again behind
        that work; nothing queued is lost.
        """
        busy = [False]
        commit = GroupCommit(
            Clock(),
            self.process,
            self.threads.runner,
            handoff=self.threads.handoff,
            yield_to=lambda: busy[0],
        )
        d1 = commit.submit(lines(1))
        later: list[Deferred[Any]] = []

        def arrive() -> None:
            later.append(commit.submit(lines(2)))
            busy[0] = True
            self.threads.runner(lambda: "outbox")

        self.during = arrive
        self.threads.run_writer()
        self.assertEqual(len(self.groups), 1)
        self.threads.run_reactor()
        self.successResultOf(d1)
        self.assertNoResult(later[0])
        # The outbox's work runs first, then the drain started again.
        self.assertEqual(len(self.threads.work), 2)
        self.assertEqual(self.threads.work[0][0](), "outbox")
        self.threads.work.pop(0)
        busy[0] = False
        self.threads.run_writer()
        self.threads.run_reactor()
        self.assertEqual(len(self.successResultOf(later[0])), 3)
        self.successResultOf(commit.when_idle())

    def _one(self, items: list[tuple[str, Any]]) -> Deferred[Any]:
        d = self.commit.submit(items)
        self.threads.run_writer()
        self.threads.run_reactor()
        return d
