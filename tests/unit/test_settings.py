# -*- test-case-name: tests.unit.test_settings -*-
"""
Tests for the option table and the frozen settings of L{lbtwist.config}, and
the command-line options L{lbtwist.tap} generates from them.

L{settings_of}, L{query_service_of} and L{store_port_service_of} build ports
from an option mapping through the real wiring, for the port tests elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbtwist import config, tap
from lbtwist.config import OPTIONS, OPTIONS_BY_NAME, Settings, load_settings
from lbtwist.core.errors import InvalidValue
from lbtwist.security import devcerts
from lbtwist.store.interface import IEventStore

ROOT = Path(__file__).resolve().parent.parent.parent

#: The attributes of L{Settings} that are not options.
DERIVED = {"role", "dev_certs"}


def settings_of(
    role: str, options: Mapping[str, object], env: Mapping[str, str] | None = None
) -> Settings:
    """
    The settings of C{role} from an option mapping as a parsed C{tap.Options}
    shows it (typed values, L{None} for "not given"; C{dev-certs} ignored), with
    no grid credentials installed and an empty environment.
    """
    explicit: dict[str, object] = {}
    for name, value in options.items():
        if name == "dev-certs" or value is None:
            continue
        option = OPTIONS_BY_NAME[name]
        if option.repeatable:
            explicit[name] = [str(v) for v in value]  # type: ignore[attr-defined]
        elif option.flag:
            explicit[name] = True if value else None
        else:
            explicit[name] = str(value)
    return load_settings(
        role, explicit, env=env or {}, exists=lambda path: False, fqdn=lambda: "ce.example.org"
    )


def query_service_of(
    options: Mapping[str, object], store: IEventStore, reactor: Any
) -> StreamServerEndpointService:
    """
    The query port C{makeService} builds for these options.
    """
    settings = settings_of(config.PROXY, options)
    credentials = tap.host_credentials(settings, reactor)
    return tap.query_service(settings, credentials, tap.load_policy(settings), store, reactor)


def store_port_service_of(
    options: Mapping[str, object], store: IEventStore, reactor: Any
) -> StreamServerEndpointService:
    """
    The store port C{makeService} builds for these options.
    """
    settings = settings_of(config.SERVER, options)
    credentials = tap.host_credentials(settings, reactor)
    return tap.store_port_service(settings, credentials, tap.load_policy(settings), store, reactor)


class TableTests(SynchronousTestCase):
    """
    The option table and the L{Settings} it produces.
    """

    def test_one_attribute_per_option(self) -> None:
        """
        Every option is a L{Settings} attribute and every attribute but the
        derived ones is an option.
        """
        fields = {a.name for a in attrs.fields(Settings)}
        self.assertEqual(fields - DERIVED, {o.attribute for o in OPTIONS})
        self.assertEqual(len(OPTIONS_BY_NAME), len(OPTIONS))

    def test_frozen(self) -> None:
        settings = settings_of(config.PROXY, {})
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, settings, "crl", "off")

    def test_defaults(self) -> None:
        """
        The embedded defaults of both roles, and the derived ones.
        """
        proxy = settings_of(config.PROXY, {})
        server = settings_of(config.SERVER, {})
        state = os.path.abspath(config.DEFAULT_STATE_DIR)
        self.assertEqual((proxy.role, proxy.state_dir, proxy.store), ("lbproxy", state, None))
        self.assertEqual((server.role, server.store), ("lbserver", "tcp:9001"))
        self.assertEqual(proxy.events, f"unix:{state}/events.sock:mode=660:backlog=1024")
        self.assertEqual(proxy.hostname, "ce.example.org")
        self.assertEqual((proxy.dev_certs, proxy.query), (True, "tcp:9000:interface=127.0.0.1"))
        self.assertEqual(
            (proxy.relay_window, proxy.relay_enoent_timeout, proxy.page_events), (1024, 3600, 500)
        )
        self.assertEqual((proxy.producer_uid, proxy.relay_map, proxy.grey_jobs), ((), (), False))
        self.assertEqual(proxy.voms_dir, os.path.join(state, "devcerts", "vomsdir"))
        for option in OPTIONS:
            value = getattr(proxy, option.attribute)
            if option.default is not None and option.name != "state-dir":
                self.assertEqual(value, option.default, option.name)

    def test_types(self) -> None:
        """
        Values are parsed by their option's type; repeatable ones are tuples.
        """
        settings = settings_of(
            config.PROXY,
            {
                "max-inflight": "7",
                "query-idle-timeout": "0.5",
                "producer-uid": ["91", "0"],
                "local-endpoint": ["CE.example.org:9000"],
                "relay-map": ["lb.example.org:9001=tcp:host=127.0.0.1:port=19001"],
                "super-user": ["/CN=a", "/CN=b"],
                "crl": "require",
            },
        )
        self.assertEqual(settings.max_inflight, 7)
        self.assertEqual(settings.query_idle_timeout, 0.5)
        self.assertEqual(settings.producer_uid, (91, 0))
        self.assertEqual(settings.local_endpoint, (("ce.example.org", 9000),))
        self.assertEqual(
            settings.relay_map, ((("lb.example.org", 9001), "tcp:host=127.0.0.1:port=19001"),)
        )
        self.assertEqual(settings.super_user, ("/CN=a", "/CN=b"))
        self.assertEqual(settings.crl, "require")

    def test_bad_values_name_the_option(self) -> None:
        for name, value in (
            ("max-inflight", "many"),
            ("max-headers", "0"),
            ("store-idle-timeout", "inf"),
            ("crl", "sometimes"),
            ("producer-gid", ["tomcat"]),
            ("relay-map", ["lb.example.org:9001"]),
        ):
            e = self.assertRaises(InvalidValue, settings_of, config.PROXY, {name: value})
            self.assertIn(f"--{name}", e.message)

    def test_credentials_resolved_from_environment_and_grid(self) -> None:
        """
        Without options: the grid host credentials when installed (trust anchors
        from C{X509_CERT_DIR}, else the grid directory), else the development PKI;
        C{--cert} and C{--key} go together.
        """

        def load(exists: bool, env: Mapping[str, str], **given: str) -> Settings:
            return load_settings(
                config.PROXY, given, env=env, exists=lambda p: exists, fqdn=lambda: "h"
            )

        grid = load(True, {})
        self.assertEqual(
            (grid.cert, grid.key, grid.ca_dir, grid.dev_certs),
            (config.DEFAULT_CERT, config.DEFAULT_KEY, config.DEFAULT_CA_DIR, False),
        )
        self.assertEqual(grid.query, "tcp:9000")
        env = {"X509_CERT_DIR": "/x/certs", "X509_VOMS_DIR": "/x/voms"}
        self.assertEqual(
            (load(True, env).ca_dir, load(True, env).voms_dir), ("/x/certs", "/x/voms")
        )
        dev = load(False, {})
        self.assertEqual((dev.cert, dev.ca_dir, dev.dev_certs), (None, None, True))
        self.assertEqual(grid.voms_dir, config.DEFAULT_VOMS_DIR)
        mine = load(True, {}, cert="/c.pem", key="/k.pem")
        self.assertEqual((mine.cert, mine.key), ("/c.pem", "/k.pem"))
        e = self.assertRaises(InvalidValue, load, True, {}, cert="/c.pem")
        self.assertIn("--cert and --key", e.message)

    def test_dev_voms_dir(self) -> None:
        """
        On development certificates, VOMS attributes are trusted by the development
        PKI's vomsdir (where C{lbtwist certs dev} writes the .lsc files), unless
        C{--voms-dir} or C{X509_VOMS_DIR} names another; with host credentials, the grid
        default.
        """

        def load(env: dict[str, str], **given: object) -> Settings:
            return load_settings(
                config.PROXY, given, env=env, exists=lambda p: False, fqdn=lambda: "h"
            )

        state = os.path.abspath("st")
        dev = load({}, **{"state-dir": "st"})
        self.assertEqual(dev.voms_dir, os.path.join(state, "devcerts", "vomsdir"))
        self.assertEqual(
            dev.voms_dir,
            str(devcerts.DevPKI.under(Path(state) / devcerts.DEV_PKI_DIR, Path(), Path()).voms_dir),
        )
        self.assertEqual(load({"X509_VOMS_DIR": "/x/voms"}).voms_dir, "/x/voms")
        self.assertEqual(load({}, **{"voms-dir": "/v"}).voms_dir, "/v")
        hosted = load({}, cert="/c.pem", key="/k.pem")
        self.assertEqual(hosted.voms_dir, config.DEFAULT_VOMS_DIR)

    def test_file_and_command_line_alike(self) -> None:
        """
        A value read from the configuration file gives the same settings as the
        same value on the command line, for every option that takes one.
        """
        samples: dict[str, object] = {
            "state-dir": "/srv/lb",
            "events": "unix:/srv/lb/e.sock",
            "hostname": "ce.example.org",
            "query": "tcp:9100",
            "store": "tcp:9101",
            "cert": "/c.pem",
            "key": "/k.pem",
            "ca-dir": "/ca",
            "voms-dir": "/voms",
            "crl": "off",
            "policy": "/p.conf",
            "producer-uid": ["91", "92"],
            "producer-gid": ["93"],
            "local-endpoint": ["a:1", "b:2"],
            "super-user": ["/CN=x"],
            "relay-map": ["a:1=tcp:host=b:port=2"],
            "grey-jobs": True,
            "il-spool": "/spool/dglogd.log",
            "il-socket": "/run/il.sock",
            "il-keep-files": True,
            "il-no-inotify": True,
            "allow-no-ca": True,
            "metrics-tls": True,
        }
        for option in OPTIONS:
            if option.in_file and option.name not in samples:
                samples[option.name] = "7" if option.parse is not config._seconds else "2.5"
        self.assertEqual(set(samples), set(config.file_keys()))
        lines = []
        for name, value in samples.items():
            if isinstance(value, list):
                lines.append(f"{name} = {', '.join(value)}")
            elif value is True:
                lines.append(f"{name} = yes")
            else:
                lines.append(f"{name} = {value}")
        path = Path(self.mktemp())
        path.write_text("[lbserver]\n" + "\n".join(lines) + "\n")
        fqdn = {"fqdn": lambda: "h", "exists": lambda p: False}
        from_file = load_settings(config.SERVER, {"config": str(path)}, env={}, **fqdn)  # type: ignore[arg-type]
        from_argv = load_settings(config.SERVER, samples, env={}, **fqdn)  # type: ignore[arg-type]
        self.assertEqual(attrs.evolve(from_file, config=None), from_argv)
        self.assertEqual(from_argv.grey_jobs, True)
        self.assertEqual(from_argv.producer_uid, (91, 92))
        self.assertEqual(from_argv.store_idle_timeout, 2.5)


class GeneratedOptionsTests(SynchronousTestCase):
    """
    The C{usage.Options} of both roles come from the table.
    """

    def test_every_option_with_its_help(self) -> None:
        for cls in (tap.Options, tap.ServerOptions):
            text = str(cls())
            for option in OPTIONS:
                self.assertIn(f"--{option.name}", text)
                self.assertIn(" ".join(option.help.split()[:4]), " ".join(text.split()))

    def test_parsed_mapping_and_settings(self) -> None:
        """
        After parsing, the options hold the settings and the same values by name.
        """
        options = tap.ServerOptions()
        options.parseOptions(
            ["--state-dir", self.mktemp(), "--super-user", "/CN=a", "--super-user=/CN=b"]
            + ["--grey-jobs", "--max-headers", "12"]
        )
        settings = options.settings
        self.assertIsInstance(settings, Settings)
        self.assertEqual(settings.role, "lbserver")
        self.assertEqual(settings.super_user, ("/CN=a", "/CN=b"))
        self.assertEqual(options["super-user"], ["/CN=a", "/CN=b"])
        self.assertEqual((settings.grey_jobs, settings.max_headers), (True, 12))
        for option in OPTIONS:
            value = getattr(settings, option.attribute)
            self.assertEqual(options[option.name], list(value) if option.repeatable else value)

    def test_errors_are_usage_errors(self) -> None:
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--crl", "x"])
        self.assertIn("--crl", str(e))


class SampleConfigTests(SynchronousTestCase):
    """
    C{etc/lbproxy.conf} and C{etc/lbserver.conf} document the table.
    """

    def test_every_option_documented(self) -> None:
        """
        Each file names every option of its role as a key (commented out or
        set), and names no key the table lacks.
        """
        for role in config.ROLES:
            text = (ROOT / "etc" / f"{role}.conf").read_text()
            keys = set()
            for line in text.splitlines():
                line = line.lstrip("# ")
                name, eq, _ = line.partition(" = ")
                if eq and name and " " not in name:
                    keys.add(name)
            wanted = {o.name for o in OPTIONS if o.in_file and role in o.roles}
            self.assertEqual(wanted - keys, set(), role)
            self.assertEqual(keys - set(config.file_keys()), set(), role)
