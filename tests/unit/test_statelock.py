# -*- test-case-name: tests.unit.test_statelock -*-
"""
Tests for L{lbtwist.store.statelock}: one lock file per state directory, taken
by the service's start-up and handed to its store, refusing the offline writers
(purge, load) and a second service while held.
"""

from __future__ import annotations

import errno
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.store import open_loader, statelock, store_path
from lbtwist.store.batch import run_now
from lbtwist.store.sqlite import SQLiteStore


class StateLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def take(self) -> statelock.StateLock:
        lock = statelock.acquire(self.dir)
        self.addCleanup(lock.release)
        return lock

    def test_pid_in_file(self) -> None:
        lock = self.take()
        self.assertTrue(lock.held)
        with open(os.path.join(self.dir, statelock.LOCK_FILE)) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")

    def test_second_refused(self) -> None:
        """
        A second holder is refused (EBUSY) naming the directory, the holder's pid
        and what to do instead.
        """
        self.take()
        e = self.assertRaises(statelock.StateDirBusy, statelock.acquire, self.dir, hint="wait")
        self.assertEqual(e.code, errno.EBUSY)
        self.assertEqual((e.state_dir, e.holder), (self.dir, str(os.getpid())))
        self.assertIn(f"another lbtwist uses {self.dir}", e.message)
        self.assertTrue(e.message.endswith(": wait"), e.message)
        self.assertNotIn("\n", e.message)

    def test_release(self) -> None:
        lock = self.take()
        lock.release()
        lock.release()
        self.assertFalse(lock.held)
        self.take()

    def test_store_takes_the_directory_lock(self) -> None:
        """
        A store opened with C{lock=True} holds the one lock of its directory (no lock
        file of its own) until it closes.
        """
        store = SQLiteStore(store_path(self.dir), clock=Clock(), runner=run_now, lock=True)
        store.start()
        self.assertRaises(statelock.StateDirBusy, statelock.acquire, self.dir)
        self.assertEqual(
            sorted(n for n in os.listdir(self.dir) if n.endswith(".lock")), [statelock.LOCK_FILE]
        )
        store.close()
        self.take()

    def test_store_given_the_held_lock(self) -> None:
        """
        The service's store is given the lock its start-up took: it opens, and the
        lock outlives it (held for the whole life of the service).
        """
        lock = self.take()
        store = SQLiteStore(store_path(self.dir), clock=Clock(), runner=run_now, lock=lock)
        store.start()
        store.close()
        self.assertTrue(lock.held)
        self.assertRaises(statelock.StateDirBusy, statelock.acquire, self.dir)

    def test_offline_writers_refused(self) -> None:
        """
        While the service holds the lock, an offline purge (its store with
        C{lock=True}) and an offline load are refused.
        """
        self.take()
        purger = SQLiteStore(store_path(self.dir), clock=Clock(), runner=run_now, lock=True)
        e = self.assertRaises(statelock.StateDirBusy, purger.start)
        self.assertIn("lbtwist purge -m", e.message)

        def load() -> None:
            with open_loader(self.dir):
                pass

        e = self.assertRaises(statelock.StateDirBusy, load)
        self.assertIn("lbtwist load", e.message)

    def test_load_holds_the_lock(self) -> None:
        with open_loader(self.dir):
            self.assertRaises(statelock.StateDirBusy, statelock.acquire, self.dir)
        self.take()


class StartupLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        from lbtwist import tap

        self.tap = tap
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_one_line_and_reuse(self) -> None:
        """
        The start-up's lock: taken once per process (a second call gets the same
        lock); another holder is one start-up line naming the option.
        """
        tap = self.tap
        other = statelock.acquire(self.dir)
        e = self.assertRaises(tap.StartupError, tap.lock_state_dir, self.dir)
        self.assertEqual(
            str(e),
            f"--state-dir {self.dir}: another lbtwist (pid {os.getpid()}) runs on it; stop it"
            " or give this one its own --state-dir",
        )
        other.release()
        lock = tap.lock_state_dir(self.dir)
        self.addCleanup(tap._locks.pop, os.path.abspath(self.dir), None)
        self.addCleanup(lock.release)
        self.assertIs(tap.lock_state_dir(self.dir), lock)
        self.assertRaises(statelock.StateDirBusy, statelock.acquire, self.dir)
