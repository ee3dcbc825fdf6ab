# -*- test-case-name: tests.unit.test_testing -*-
"""
Tests for L{lbtwist.testing}: the test doubles the package ships.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbtwist.core.errors import TryAgain
from lbtwist.core.events import parse_event
from lbtwist.core.relaypolicy import RelayPolicy
from lbtwist.store.interface import IEventStore, StoreResult
from lbtwist.testing import HeldRunner, MemoryStore, proxy_policy
from tests import traces

PROXY = "proxy.example.org"


def items(lines: list[str]) -> list[tuple[str, object]]:
    return [(line, parse_event(line)) for line in lines]


class HeldRunnerTests(SynchronousTestCase):
    """
    L{HeldRunner} holds store work until the test releases or fails it.
    """

    def test_release_in_order(self) -> None:
        runner = HeldRunner()
        first = runner(lambda: 1)
        second = runner(lambda: 2)
        self.assertNoResult(first)
        self.assertEqual(len(runner.pending), 2)
        runner.release()
        self.assertEqual(self.successResultOf(first), 1)
        self.assertNoResult(second)
        runner.release()
        self.assertEqual(self.successResultOf(second), 2)
        self.assertEqual(runner.pending, [])

    def test_fail_runs_nothing(self) -> None:
        ran: list[int] = []
        runner = HeldRunner()
        d = runner(lambda: ran.append(1))
        runner.fail(OSError("disk I/O error"))
        self.failureResultOf(d).trap(OSError)
        self.assertEqual(ran, [])

    def test_holds_a_commit(self) -> None:
        """
        A store's commit group waits for the runner; a failed one answers L{TryAgain}.
        """
        runner = HeldRunner()
        store = MemoryStore(Clock(), relay=False, runner=runner)
        lines = traces.cream_done_ok()
        d = store.store(items(lines[:1]))  # type: ignore[arg-type]
        self.assertNoResult(d)
        runner.fail(OSError("disk I/O error"))
        self.failureResultOf(d).trap(TryAgain)
        self.flushLoggedErrors(OSError)
        d = store.store(items(lines[:1]))  # type: ignore[arg-type]
        runner.release()
        [result] = self.successResultOf(d)
        self.assertIsInstance(result, StoreResult)


class MemoryStoreTests(SynchronousTestCase):
    """
    L{MemoryStore}: an L{IEventStore} whose role is a constructor argument.
    """

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IEventStore, MemoryStore(Clock())))

    def test_proxy_by_default(self) -> None:
        """
        By default it relays as a proxy does (WMS jobs to their server's store port)
        and generates gLite events with the given host.
        """
        store = MemoryStore(Clock(), proxy_host=PROXY)
        self.assertTrue(store.relay)
        prelude, tail = traces.wms_cream_lines(["Idle", "Running"])
        self.successResultOf(store.store(items(prelude + tail)))  # type: ignore[arg-type]
        outbox = self.successResultOf(store.outbox_pending())
        self.assertEqual({o.destination for o in outbox}, {f"{traces.LB_HOST}:9001"})
        hosts = {parse_event(o.line).host for o in outbox if "DG.GENERATED_BY" in o.line}
        self.assertEqual(hosts, {PROXY})

    def test_server(self) -> None:
        store = MemoryStore(Clock(), relay=False)
        self.assertFalse(store.relay)
        self.assertIsNone(store.processor.policy)
        prelude, tail = traces.wms_cream_lines(["Idle", "Running"])
        self.successResultOf(store.store(items(prelude + tail)))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(store.outbox_pending()), [])

    def test_given_policy(self) -> None:
        policy = RelayPolicy(
            destination=lambda jobid: "lb.example.org:7777",
            triggers=lambda ev: False,
            generate=lambda ev, before, after: [],
        )
        store = MemoryStore(Clock(), policy=policy)
        self.assertIs(store.processor.policy, policy)
        self.successResultOf(store.store(items(traces.cream_done_ok())))  # type: ignore[arg-type]
        outbox = self.successResultOf(store.outbox_pending())
        self.assertEqual(len(outbox), len(traces.cream_done_ok()))
        self.assertEqual({o.destination for o in outbox}, {"lb.example.org:7777"})

    def test_proxy_policy_exported(self) -> None:
        from lbtwist.core import translate

        self.assertIs(proxy_policy, translate.proxy_policy)
