# -*- test-case-name: tests.integration.test_cli_store -*-
"""
Tests for C{lbtwist store} (L{lbtwist.cli.store}) and for the choice of the store
by C{--store-url} (L{lbtwist.tap.make_store}), against the private cluster.
"""

from __future__ import annotations

import io
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import run
from lbtwist.core.errors import InvalidValue
from lbtwist.store.postgres import SCHEMA_VERSION, PostgresStore, connect, schema_version
from lbtwist.store.sqlite import SQLiteStore
from tests.integration.pgcluster import cluster


def lbtwist(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), CLIContext(env={}, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def settings(**explicit: str) -> config.Settings:
    return config.load_settings(
        config.SERVER, explicit, env={}, exists=lambda path: False, fqdn=lambda: "lb.example.org"
    )


class StoreCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.url = cluster().new_database()

    def test_migrate_then_version(self) -> None:
        self.assertEqual(
            lbtwist("store", "version", "--store-url", self.url),
            (0, f"schema version 0 (this lbtwist writes {SCHEMA_VERSION})\n", ""),
        )
        self.assertEqual(
            lbtwist("store", "migrate", "--store-url", self.url),
            (0, f"schema version 0 -> {SCHEMA_VERSION}\n", ""),
        )
        conn = connect(self.url)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)
        self.assertEqual(
            lbtwist("store", "migrate", "--store-url", self.url),
            (0, f"schema version {SCHEMA_VERSION}: up to date\n", ""),
        )

    def test_not_a_url(self) -> None:
        code, out, err = lbtwist("store", "migrate", "--store-url", "/var/lib/lbtwist")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("not a postgresql:// URL", err)

    def test_unreachable(self) -> None:
        code, _, err = lbtwist(
            "store", "version", "--store-url", "postgresql://lbtest@/none?host=/nonexistent"
        )
        self.assertEqual(code, 1)
        self.assertIn("cannot connect to PostgreSQL", err)


class MakeStoreTests(SynchronousTestCase):
    def test_store_url_selects_postgres(self) -> None:
        url = cluster().new_database()
        store = tap.make_store(
            settings(**{"store-url": url, "store-pool": "3", "store-notif-changes": "5"}), Clock()
        )
        self.assertIsInstance(store, PostgresStore)
        self.assertEqual((store.url, store._pool_size), (url, 3))  # type: ignore[attr-defined]
        self.assertEqual(store._notif_changes, 5)  # type: ignore[attr-defined]

    def test_default_sqlite(self) -> None:
        store = tap.make_store(settings(**{"state-dir": self.mktemp()}), Clock())
        self.assertIsInstance(store, SQLiteStore)

    def test_other_url_refused(self) -> None:
        self.assertRaises(
            InvalidValue, tap.make_store, settings(**{"store-url": "mysql://x/y"}), Clock()
        )


class StoreCopyTests(SynchronousTestCase):
    def test_copy_then_read_and_write(self) -> None:
        """
        A SQLite store copied: the same statuses, events, mappings and outbox
        on PostgreSQL, and new events continue there (ids after the copied ones).
        """
        from lbtwist.core.events import parse_event
        from lbtwist.core.translate import proxy_policy
        from lbtwist.store import store_path
        from lbtwist.store.batch import run_now
        from tests import traces
        from tests.unit.test_store import PROXY, direct_lines, wms_lines

        state = self.mktemp()
        os.makedirs(state)
        policy = proxy_policy((), PROXY)
        sqlite = SQLiteStore(store_path(state), clock=Clock(), runner=run_now, policy=policy)
        lines = wms_lines()
        self.successResultOf(
            sqlite.store([(ln, parse_event(ln)) for ln in lines[:-1] + direct_lines()])
        )
        before = self.successResultOf(sqlite.outbox_pending())
        copied = [e.line for e in self.successResultOf(sqlite.dump())]
        stored = len(copied)
        self.successResultOf(sqlite.close())
        url = cluster().new_database()
        code, out, err = lbtwist("store", "copy", "--from", state, "--to", url)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"events={stored} jobs=2 cream_map=1", out)
        self.assertIn("zombies=0 jp_pending=0", out)
        self.assertIn("every job's status checked", out)
        pg = PostgresStore(url, clock=Clock(), runner=run_now, policy=policy)
        self.addCleanup(pg.close)
        self.assertEqual(
            [(e.id, e.line) for e in self.successResultOf(pg.outbox_pending())],
            [(e.id, e.line) for e in before],
        )
        self.assertEqual(
            self.successResultOf(
                pg.resolve(f"https://{traces.CE_HOST}:8443/{traces.WMS_CREAM_ID}")
            ),
            traces.WMS_JOBID,
        )
        [result] = self.successResultOf(pg.store([(lines[-1], parse_event(lines[-1]))]))
        self.assertEqual(result.status.state, "Done")
        self.assertEqual(self.successResultOf(pg.status(traces.DIRECT_JOBID)).state, "Cleared")
        after = [e.line for e in self.successResultOf(pg.dump())]
        self.assertEqual((after[:stored], after[stored]), (copied, lines[-1]))
        ids = [e.event_id for e in self.successResultOf(pg.outbox_pending())]
        self.assertEqual(len(ids), len(set(ids)))
        # Into a store that holds events: refused.
        code, _, err = lbtwist("store", "copy", "--from", state, "--to", url)
        self.assertEqual(code, 1)
        self.assertIn("holds events already", err)

    def test_copy_arguments(self) -> None:
        self.assertEqual(lbtwist("store", "copy", "--from", "x")[0], 2)
        code, _, err = lbtwist("store", "copy", "--from", self.mktemp(), "--to", "postgresql://x/y")
        self.assertEqual(code, 2)
        self.assertIn("no lbtwist store", err)
