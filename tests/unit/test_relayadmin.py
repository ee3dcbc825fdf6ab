# -*- test-case-name: tests.unit.test_relayadmin -*-
"""
Tests for L{lbtwist.cli.relayadmin}: C{lbtwist relay status|rejected|retry|drop}
on a proxy's store.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import run
from lbtwist.core.events import parse_event
from lbtwist.core.translate import proxy_policy
from lbtwist.store import store_path
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore
from tests.unit.test_relay import DEST1, DEST2, JOB_A, JOB_C, T0, wms_lines


class RelayAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        os.makedirs(self.state)
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = self.open()
        self.lines = wms_lines(JOB_A)[:5] + wms_lines(JOB_C)[:2]
        items = [(ln, parse_event(ln)) for ln in self.lines]
        self.successResultOf(self.store.store(items))
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 100))
        self.successResultOf(self.store.outbox_ack([rows[0].id]))
        self.successResultOf(self.store.reject(rows[1], 600, 1, "not allowed"))
        self.successResultOf(self.store.reject(rows[2], 400, 22, "bad"))
        self.rejected_ids = [rows[1].event_id, rows[2].event_id]

    def open(self, **options: Any) -> SQLiteStore:
        """
        The relaying store of the state directory (closed at the end), with C{options}.
        """
        store = SQLiteStore(
            store_path(self.state),
            clock=self.clock,
            policy=proxy_policy((), "ce.example.org"),
            runner=run_now,
            **options,
        )
        self.addCleanup(store.close)
        return store

    def relay(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        ctx = CLIContext(
            env={},
            stdout=out,
            stderr=err,
            now=lambda: int((T0 + 100) * 1e6),
            login=lambda: "admin",
        )
        code = run(["relay", argv[0], "--state-dir", self.state, *argv[1:]], ctx)
        return code, out.getvalue(), err.getvalue()

    def test_status(self) -> None:
        code, out, _ = self.relay("status")
        self.assertEqual(code, 0)
        self.assertEqual(
            out.splitlines(),
            [
                f"{DEST1}: 2 waiting, oldest 100 s, 2 rejected",
                f"{DEST2}: 2 waiting, oldest 100 s, 0 rejected",
            ],
        )
        _, out, _ = self.relay("status", "--json")
        self.assertEqual(json.loads(out.splitlines()[0])["rejected"], 2)

    def test_rejected(self) -> None:
        code, out, _ = self.relay("rejected", "--destination", DEST1)
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(
            lines[0].startswith(
                f"event {self.rejected_ids[0]} of {JOB_A} to {DEST1}: 600/1 not allowed"
            ),
            lines[0],
        )
        self.assertEqual(lines[-1], "2 rejected events")
        _, out, _ = self.relay("rejected", "--json")
        self.assertEqual([json.loads(x)["line"] for x in out.splitlines()], self.lines[1:3])

    def test_retry_one(self) -> None:
        """
        A re-queued event goes back to the outbox after what waits there, and leaves the
        rejected table; the retry is recorded.
        """
        code, out, _ = self.relay("retry", "--event", str(self.rejected_ids[1]))
        self.assertEqual((code, out.splitlines()[0]), (0, "relay: re-queued 1 rejected event"))
        pending = self.successResultOf(self.store.outbox_pending(DEST1))
        self.assertEqual([p.line for p in pending], [*self.lines[3:5], self.lines[2]])
        rejected = self.successResultOf(self.store.rejected())
        self.assertEqual([r.event_id for r in rejected], self.rejected_ids[:1])
        with open(os.path.join(self.state, "relay-admin.log")) as f:
            text = f.read()
        self.assertIn(f"admin: re-queued 1 rejected event: event {self.rejected_ids[1]}\n", text)

    def test_retry_destination_and_all(self) -> None:
        code, _, _ = self.relay("retry", "--destination", DEST2)
        self.assertEqual(code, 1)  # nothing rejected there
        code, _, _ = self.relay("retry", "--all")
        self.assertEqual(code, 0)
        pending = self.successResultOf(self.store.outbox_pending(DEST1))
        self.assertEqual([p.line for p in pending], [*self.lines[3:5], *self.lines[1:3]])
        self.assertEqual(self.successResultOf(self.store.rejected()), [])

    def test_selection_required(self) -> None:
        code, _, err = self.relay("retry")
        self.assertEqual(code, 1)
        self.assertIn("--all", err)

    def test_drop(self) -> None:
        code, _, err = self.relay("drop", "--all")
        self.assertEqual(code, 1)
        self.assertIn("--reason", err)
        code, out, _ = self.relay("drop", "--all", "--reason", "server retired")
        self.assertEqual(out, "relay: dropped 2 rejected events (server retired)\n")
        self.assertEqual(self.successResultOf(self.store.rejected()), [])
        code, out, _ = self.relay(
            "drop", "--pending", "--destination", DEST2, "--reason", "gone for good"
        )
        self.assertEqual(code, 0)
        self.assertEqual(self.successResultOf(self.store.outbox_pending(DEST2)), [])
        self.assertEqual(len(self.successResultOf(self.store.outbox_pending(DEST1))), 2)
        with open(os.path.join(self.state, "relay-admin.log")) as f:
            self.assertIn("dropped 2 waiting events (gone for good): destination", f.read())

    def test_no_store(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = run(
            ["relay", "status", "--state-dir", self.mktemp()],
            CLIContext(env={}, stdout=out, stderr=err),
        )
        self.assertEqual(code, 1)
        self.assertIn("no store in", err.getvalue())


class RunningStoreTests(RelayAdminTests):
    """
    Re-queued rows written beside a running relaying store with an outbox tail.
    """

    def open(self, **options: Any) -> SQLiteStore:
        return super().open(outbox_tail=1000, **options)

    def test_resync_shows_requeued(self) -> None:
        """
        The store's in-memory tail does not know rows another process re-queued;
        L{SQLiteStore.outbox_resync} makes the next read find them.
        """
        rows = self.successResultOf(self.store.outbox_after(DEST1, 0, 100))
        last = rows[-1].id
        self.assertEqual(self.successResultOf(self.store.outbox_after(DEST1, last, 100)), [])
        code, _, _ = self.relay("retry", "--all")
        self.assertEqual(code, 0)
        self.assertEqual(self.successResultOf(self.store.outbox_after(DEST1, last, 100)), [])
        self.successResultOf(self.store.outbox_resync())
        again = self.successResultOf(self.store.outbox_after(DEST1, last, 100))
        self.assertEqual([r.line for r in again], self.lines[1:3])
