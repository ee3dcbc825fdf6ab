"""
Tests for L{lbtwist.tap}, L{lbtwist.config} and the twistd plugins.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.core.errors import InvalidValue
from lbtwist.security.tls import BoundedTLSFactory
from lbtwist.service import logs
from lbtwist.service.intake import IntakeFactory
from lbtwist.service.notify import NotifyService
from lbtwist.service.purge import PurgeService
from lbtwist.service.relay import RelayService
from lbtwist.service.serve import ServeFactory
from lbtwist.service.storeport import StorePortFactory
from lbtwist.service.traceexpiry import TraceExpiry
from lbtwist.service.web import QuerySite
from tests.certs import NOW


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


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService} of both roles on a L{MemoryReactorClock}: the services it
    builds, the endpoints they listen on, and host credentials resolved once.
    """

    def setUp(self) -> None:
        from lbtwist.security import devcerts

        self.state = os.path.abspath(self.mktemp())
        self.pki_calls: list[str] = []
        ensure = devcerts.ensure_dev_pki

        def counting(state_dir: Any, reactor: Any, **kw: Any) -> Any:
            self.pki_calls.append(str(state_dir))
            return ensure(state_dir, reactor, **kw)

        self.patch(devcerts, "ensure_dev_pki", counting)
        # Neither grid host credentials nor the caller's X509_* variables apply here.
        self.patch(config, "DEFAULT_CERT", os.path.join(self.state, "no-such-cert.pem"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("X509_")}
        self.patch(os, "environ", env)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW.timestamp())

    def build(self, cls: type[tap.Options], *argv: str) -> tuple[MultiService, dict[str, Any]]:
        options = cls()
        options.parseOptions(["--state-dir", self.state, *argv])
        top = tap.makeService(options, self.reactor)
        assert isinstance(top, MultiService)
        top.privilegedStartService()
        found: dict[str, Any] = {}
        for service in top:
            factory = getattr(service, "factory", None)
            if isinstance(service, tap.StoreService):
                found["store"] = service
            elif isinstance(service, logs.SummaryService):
                found["summaries"] = service
            elif isinstance(factory, IntakeFactory):
                found["intake"] = service
            elif isinstance(factory, ServeFactory):
                found["serve"] = service
            elif isinstance(factory, QuerySite):
                found["query"] = service
            elif isinstance(factory, StorePortFactory):
                found["store-port"] = service
            elif isinstance(service, RelayService):
                found["relay"] = service
            elif isinstance(service, NotifyService):
                found["notify"] = service
            elif isinstance(service, PurgeService):
                found["purge"] = service
            elif isinstance(service, TraceExpiry):
                found["trace-expiry"] = service
            else:
                self.fail(f"unexpected service {service!r}")
        return top, found

    def tcp(self) -> list[tuple[int, str, type]]:
        return [(port, interface, type(f)) for port, f, _, interface in self.reactor.tcpServers]

    def test_proxy(self) -> None:
        """
        The proxy: store, warning summaries, intake on its socket, the query
        port on localhost (development PKI), the relay; no store port.
        """
        _, found = self.build(tap.Options)
        self.assertEqual(
            sorted(found),
            [
                "intake",
                "notify",
                "purge",
                "query",
                "relay",
                "serve",
                "store",
                "summaries",
                "trace-expiry",
            ],
        )
        self.assertEqual(found["purge"].interval, 3600.0)
        self.assertIsNotNone(found["query"].factory.resource.admin)
        [(address, factory, backlog, mode, _), serve] = self.reactor.unixServers
        self.assertEqual(address, os.path.join(self.state, "events.sock"))
        self.assertEqual((backlog, mode), (1024, 0o660))
        self.assertIs(factory, found["intake"].factory)
        # The serve socket beside it, for the same producers.
        self.assertEqual((serve[0], serve[3]), (os.path.join(self.state, "serve.sock"), 0o660))
        self.assertIs(serve[1], found["serve"].factory)
        self.assertEqual(serve[1].allowed_uids, factory.allowed_uids)
        self.assertEqual(self.tcp(), [(9000, "127.0.0.1", BoundedTLSFactory)])
        self.assertIs(found["store"].store, found["query"].factory.resource.store)

    def test_server(self) -> None:
        """
        The server: the store port on 9001 besides the query port; no relay.
        """
        _, found = self.build(tap.ServerOptions, "--query", "tcp:9010")
        self.assertEqual(
            sorted(found),
            [
                "intake",
                "notify",
                "query",
                "serve",
                "store",
                "store-port",
                "summaries",
                "trace-expiry",
            ],
        )
        self.assertEqual(
            sorted(self.tcp()), [(9001, "", BoundedTLSFactory), (9010, "", BoundedTLSFactory)]
        )
        self.assertIs(found["store-port"].factory.store, found["store"].store)

    def test_dev_pki_resolved_once(self) -> None:
        """
        Without host credentials the development PKI is made or read once at
        start-up, and every TLS port presents its host certificate.
        """
        for cls in (tap.Options, tap.ServerOptions):
            del self.pki_calls[:]
            _, found = self.build(cls)
            self.assertEqual(self.pki_calls, [self.state], cls.role)
            host = os.path.join(self.state, "devcerts", "hostcert.pem")
            ports = [found[n] for n in ("query", "store-port") if n in found]
            for port in ports:
                self.assertEqual(str(port.endpoint.context_source.cert), host)

    def test_configured_credentials(self) -> None:
        """
        Given host credentials, no development PKI is made and the ports use them.
        """
        from lbtwist.security.devcerts import make_dev_pki

        pki = make_dev_pki(self.mktemp(), now=NOW)
        _, found = self.build(
            tap.ServerOptions,
            *("--cert", str(pki.host_cert), "--key", str(pki.host_key)),
            *("--ca-dir", str(pki.ca_dir)),
        )
        self.assertEqual(self.pki_calls, [])
        for name in ("query", "store-port"):
            source = found[name].endpoint.context_source
            self.assertEqual(
                (str(source.cert), str(source.key)), (str(pki.host_cert), str(pki.host_key))
            )
        self.assertEqual(self.tcp()[0][:2], (9000, ""))

    def test_settings_reach_the_services(self) -> None:
        """
        Option values reach the objects they bound.
        """
        _, found = self.build(
            tap.ServerOptions,
            *("--max-inflight", "7", "--max-event-size", "5000", "--grey-jobs"),
            *("--store-max-connections", "3", "--query-idle-timeout", "4.5"),
            *("--page-events", "9", "--producer-uid", "91"),
        )
        intake = found["intake"].factory
        self.assertEqual((intake.max_inflight, intake.allowed_uids), (7, {91}))
        port = found["store-port"].factory
        self.assertEqual((port.grey_jobs, port.max_line), (True, 5000))
        [query, store] = sorted(self.reactor.tcpServers, key=lambda s: s[0])
        self.assertEqual(store[1].limits.max_connections, 3)
        self.assertEqual(query[1].limits.idle_timeout, 4.5)
        self.assertEqual(found["query"].factory.resource.page_events, 9)

    def test_grey_jobs_from_config_file(self) -> None:
        """
        C{grey-jobs = yes} in the configuration file turns grey jobs on.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[lbserver]\ngrey-jobs = yes\n")
        _, found = self.build(tap.ServerOptions, "--config", path)
        self.assertTrue(found["store-port"].factory.grey_jobs)
