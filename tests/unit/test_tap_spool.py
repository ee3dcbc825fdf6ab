# -*- test-case-name: tests.unit.test_tap_spool -*-
"""
The spool intake's options and wiring in L{lbtwist.tap}.
"""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.service.ilspool import PokeFactory, SpoolScanner


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def spool_parts(top: MultiService) -> list[object]:
    found: list[object] = []
    for service in top:
        if isinstance(service, MultiService):
            found += spool_parts(service)
        elif isinstance(service, SpoolScanner):
            found.append(service)
        elif isinstance(service, StreamServerEndpointService) and isinstance(
            service.factory, PokeFactory
        ):
            found.append(service.factory)
    return found


class SpoolOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())

    def test_off_by_default(self) -> None:
        """
        Without C{--il-spool} there is no spool intake.
        """
        options = parse("--state-dir", self.dir)
        self.assertIsNone(options["il-spool"])
        self.assertIsNone(options["il-socket"])
        self.assertEqual(options["il-rescan-interval"], 60.0)
        self.assertEqual(options["il-remove-idle"], 600.0)
        self.assertFalse(options["il-keep-files"])
        self.assertEqual(spool_parts(tap.makeService(options, MemoryReactorClock())), [])

    def test_options_reach_the_scanner(self) -> None:
        """
        The options configure the scanner and the poke socket; a socket given as a
        path is a UNIX endpoint.
        """
        options = parse(
            "--state-dir", self.dir, "--il-spool", "/spool/dglogd.log",
            "--il-socket", "/run/il.sock", "--il-rescan-interval", "30",
            "--il-poll-interval", "0.5", "--il-keep-files", "--il-no-inotify",
            "--il-batch-events", "10", "--max-event-size", "1000", "--producer-uid", "91",
        )  # fmt: skip
        self.assertEqual(
            options["il-socket"],
            f"unix:/run/il.sock:mode=660:backlog={config.DEFAULT_IL_SOCKET_BACKLOG}",
        )
        scanner, factory = spool_parts(tap.makeService(options, MemoryReactorClock()))
        assert isinstance(scanner, SpoolScanner) and isinstance(factory, PokeFactory)
        self.assertEqual(scanner.prefix, "/spool/dglogd.log")
        self.assertEqual((scanner.rescan_interval, scanner.poll_interval), (30.0, 0.5))
        self.assertIsNone(scanner.remove_idle)
        self.assertFalse(scanner.use_inotify)
        self.assertEqual((scanner.batch_events, scanner.max_line), (10, 1000))
        self.assertEqual(scanner.allowed_uids, frozenset({91}))
        self.assertIs(factory.scanner, scanner)
        self.assertEqual((factory.max_line, factory.allowed_uids), (1000, frozenset({91})))

    def test_socket_backlog(self) -> None:
        """
        C{--il-socket-backlog} is the poke socket's listen backlog; an endpoint
        that gives its own keeps it.
        """
        options = parse(
            "--state-dir", self.dir, "--il-spool", "/s/p", "--il-socket", "/run/il.sock",
            "--il-socket-backlog", "7",
        )  # fmt: skip
        self.assertEqual(options["il-socket"], "unix:/run/il.sock:mode=660:backlog=7")
        options = parse(
            "--state-dir", self.dir, "--il-spool", "/s/p", "--il-socket",
            "unix:/run/il.sock:backlog=3", "--il-socket-backlog", "7",
        )  # fmt: skip
        self.assertEqual(options["il-socket"], "unix:/run/il.sock:backlog=3")
        e = self.assertRaises(usage.UsageError, parse, "--il-socket-backlog", "0")
        self.assertIn("--il-socket-backlog", str(e))

    def test_config_file(self) -> None:
        """
        The options are config file keys too (flags as yes/no).
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[lbproxy]\nil-spool = /s/p\nil-keep-files = yes\nil-remove-idle = 5\n")
        options = parse("--state-dir", self.dir, "--config", path)
        self.assertEqual(options["il-spool"], "/s/p")
        self.assertTrue(options["il-keep-files"])
        self.assertEqual(options["il-remove-idle"], 5.0)

    def test_bad_values(self) -> None:
        """
        A socket without a spool, and bad numbers, are usage errors naming the option.
        """
        e = self.assertRaises(usage.UsageError, parse, "--il-socket", "/x.sock")
        self.assertIn("--il-spool", str(e))
        e = self.assertRaises(usage.UsageError, parse, "--il-rescan-interval", "0")
        self.assertIn("--il-rescan-interval", str(e))
        e = self.assertRaises(usage.UsageError, parse, "--il-batch-events", "x")
        self.assertIn("--il-batch-events", str(e))
