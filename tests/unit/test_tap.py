"""
Tests for L{lbtwist.tap}, L{lbtwist.config} and the twistd plugins.
"""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.core.errors import InvalidValue


class PluginTests(SynchronousTestCase):
    def test_plugins_found(self) -> None:
        """
        twistd finds the C{lbproxy} and C{lbserver} plugins and they name the roles' Options.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("lbproxy", makers)
        self.assertIn("lbserver", makers)
        self.assertEqual(makers["lbproxy"].options().role, "lbproxy")
        self.assertEqual(makers["lbserver"].options().role, "lbserver")


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str, cls: type[tap.Options] = tap.Options) -> tap.Options:
        options = cls()
        options.parseOptions(list(argv))
        return options

    def test_embedded_defaults(self) -> None:
        """
        With no options the proxy uses ./lbtwist-state and a UNIX socket inside it.
        """
        options = self.parse()
        state = os.path.abspath("./lbtwist-state")
        self.assertEqual(options["state-dir"], state)
        self.assertEqual(options["events"], f"unix:{state}/events.sock:mode=660:backlog=1024")
        self.assertEqual(options["intake-idle-timeout"], 60)
        self.assertEqual(options["max-event-size"], 4 * 1024 * 1024)
        self.assertEqual(options["max-fields"], 100)
        self.assertEqual(options["producer-uid"], [])

    def test_serve_socket_options(self) -> None:
        """
        The serve socket sits beside the events socket unless C{--serve} moves it;
        C{--serve-max-answer} is a number of bytes.
        """
        state = os.path.abspath("./lbtwist-state")
        options = self.parse()
        self.assertEqual(options["serve"], f"unix:{state}/serve.sock:mode=660")
        self.assertEqual(options["serve-max-answer"], 16 * 1024 * 1024)
        options = self.parse("--serve", "unix:/x/s.sock", "--serve-max-answer", "1000")
        self.assertEqual((options["serve"], options["serve-max-answer"]), ("unix:/x/s.sock", 1000))

    def test_repeatable_and_ints(self) -> None:
        options = self.parse(
            "--producer-uid", "91", "--producer-uid=0", "--max-inflight", "7",
            "--local-endpoint", "CE.example.org:9000",
        )  # fmt: skip
        self.assertEqual(options["producer-uid"], [91, 0])
        self.assertEqual(options["max-inflight"], 7)
        self.assertEqual(options["local-endpoint"], [("ce.example.org", 9000)])

    def test_bad_values(self) -> None:
        """
        Malformed numbers and endpoints are usage errors naming the option.
        """
        for argv in (
            ["--max-inflight", "many"],
            ["--max-connections", "0"],
            ["--producer-uid", "tomcat"],
            ["--local-endpoint", "nohostport"],
        ):
            e = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertIn(argv[0][2:], str(e))

    def write_config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_config_file(self) -> None:
        """
        The INI file sets options; the command line overrides it; list values split on commas.
        """
        path = self.write_config(
            "[lbproxy]\nstate_dir = /srv/lb\nmax-inflight = 9\nproducer-uid = 91, 92\n"
        )
        options = self.parse("--config", path, "--max-inflight", "3")
        self.assertEqual(options["state-dir"], "/srv/lb")
        self.assertEqual(options["max-inflight"], 3)
        self.assertEqual(options["producer-uid"], [91, 92])
        self.assertEqual(options["events"], "unix:/srv/lb/events.sock:mode=660:backlog=1024")

    def test_intake_backlog(self) -> None:
        """
        The listen backlog is added to an --events endpoint that has none.
        """
        options = self.parse("--intake-backlog", "50", "--events", "unix:/x/e.sock")
        self.assertEqual(options["events"], "unix:/x/e.sock:backlog=50")
        options = self.parse("--events", "unix:/x/e.sock:backlog=7")
        self.assertEqual(options["events"], "unix:/x/e.sock:backlog=7")
        self.assertRaises(usage.UsageError, self.parse, "--intake-idle-timeout", "0")

    def test_config_section_per_role(self) -> None:
        """
        The server reads [lbserver]; a file without the role's section is refused.
        """
        path = self.write_config("[lbserver]\nstate-dir = /srv/server\n")
        options = self.parse("--config", path, cls=tap.ServerOptions)
        self.assertEqual(options["state-dir"], "/srv/server")
        e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn("[lbproxy]", str(e))

    def test_config_unknown_key(self) -> None:
        path = self.write_config("[lbproxy]\nstate-dri = /x\n")
        e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn("state-dri", str(e))

    def test_config_missing_file(self) -> None:
        e = self.assertRaises(usage.UsageError, self.parse, "--config", "/nonexistent/lb.conf")
        self.assertIn("/nonexistent/lb.conf", str(e))

    def test_sample_configs_parse(self) -> None:
        """
        The documented sample files in etc/ are valid for their role.
        """
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for name, cls in (("lbproxy.conf", tap.Options), ("lbserver.conf", tap.ServerOptions)):
            options = self.parse("--config", os.path.join(here, "etc", name), cls=cls)
            self.assertEqual(options["state-dir"], "/var/lib/lbtwist")


class ConfigTests(SynchronousTestCase):
    def test_split_values(self) -> None:
        self.assertEqual(config.split_values("a, b\nc,,\n"), ["a", "b", "c"])

    def test_parse_bool(self) -> None:
        self.assertTrue(config.parse_bool("x", "Yes"))
        self.assertFalse(config.parse_bool("x", "off"))
        self.assertRaises(InvalidValue, config.parse_bool, "x", "maybe")

    def test_merge_layers(self) -> None:
        merged = config.merge(
            {"a": None, "b": 2, "c": []}, {"a": "file", "c": ["f"]}, {"a": 0, "d": 4}
        )
        self.assertEqual(merged, {"a": "file", "b": 2, "c": ["f"], "d": 4})
