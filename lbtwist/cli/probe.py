# -*- test-case-name: tests.unit.test_probe -*-
"""
C{lbtwist probe}: a Nagios / Icinga plugin reading the service's C{/health}.

As L&B's own probes: exit 0 (OK), 1 (WARNING), 2 (CRITICAL) or 3 (UNKNOWN), one
status line, perfdata after C{|}. The thresholds are the probe's: the relay
backlog's age (seconds), the host certificate's remaining validity (days), the
earliest CRL nextUpdate (hours). L{evaluate} is pure (given C{now}).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import attrs

from lbtwist.cli.common import CLIContext

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

DEFAULT_URL = "http://127.0.0.1:9100/health"


@attrs.frozen
class Thresholds:
    """
    When the probe warns or goes critical.

    @ivar backlog_warning: seconds the oldest relay event may wait before WARNING.
    @ivar backlog_critical: ... before CRITICAL.
    @ivar cert_warning: days of host certificate validity left below which WARNING.
    @ivar cert_critical: ... CRITICAL.
    @ivar crl_warning: hours to the earliest CRL nextUpdate below which WARNING.
    @ivar crl_critical: ... CRITICAL.
    """

    backlog_warning: float = 600.0
    backlog_critical: float = 3600.0
    cert_warning: float = 14.0
    cert_critical: float = 3.0
    crl_warning: float = 6.0
    crl_critical: float = 1.0

    def check(self) -> str | None:
        """
        @return: what is wrong with the thresholds, L{None} if nothing.
        """
        if self.backlog_critical < self.backlog_warning:
            return "the backlog critical threshold is below the warning one"
        if self.cert_critical > self.cert_warning:
            return "the certificate critical threshold is above the warning one"
        if self.crl_critical > self.crl_warning:
            return "the CRL critical threshold is above the warning one"
        return None


def _level(value: float, warning: float, critical: float, *, low_is_bad: bool) -> int:
    if low_is_bad:
        return CRITICAL if value < critical else WARNING if value < warning else OK
    return CRITICAL if value > critical else WARNING if value > warning else OK


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def evaluate(health: dict[str, Any], now: float, t: Thresholds) -> tuple[int, str]:
    """
    The plugin's answer to a health report.

    @param health: the C{/health} JSON object.
    @param now: seconds since the epoch.
    @return: C{(exit status, status line)}.
    """
    status = OK
    reasons: list[str] = []

    def worse(level: int, reason: str) -> None:
        nonlocal status
        if level > OK:
            reasons.append(reason)
            status = max(status, level)

    for problem in health.get("problems") or []:
        worse(CRITICAL, str(problem))
    if not health.get("problems") and health.get("ok") is False:
        worse(CRITICAL, "the service reports it is not healthy")

    age = float(health.get("backlog_age") or 0.0)
    backlog = int(health.get("backlog") or 0)
    worse(
        _level(age, t.backlog_warning, t.backlog_critical, low_is_bad=False),
        f"relay backlog of {backlog} events, oldest {_fmt(age)} s",
    )
    for dest in health.get("relay") or []:
        if dest.get("depth") and not dest.get("connected") and dest.get("last_error"):
            if dest.get("oldest_age", 0) and float(dest["oldest_age"]) > t.backlog_warning:
                reasons.append(f"{dest['destination']}: {dest['last_error']}")

    perf = [f"backlog_age={_fmt(age)}s;{_fmt(t.backlog_warning)};{_fmt(t.backlog_critical)}"]
    perf.append(f"backlog={backlog};;;0")
    cert = health.get("host_cert") or {}
    if cert.get("not_after") is not None:
        days = (float(cert["not_after"]) - now) / 86400
        worse(
            _level(days, t.cert_warning, t.cert_critical, low_is_bad=True),
            f"host certificate expires in {_fmt(days)} days",
        )
        perf.append(f"cert_days={_fmt(days)};{_fmt(t.cert_warning)};{_fmt(t.cert_critical)}")
    ca = health.get("ca") or {}
    if ca.get("crl_next_update") is not None:
        hours = (float(ca["crl_next_update"]) - now) / 3600
        worse(
            _level(hours, t.crl_warning, t.crl_critical, low_is_bad=True),
            f"a CRL's nextUpdate is in {_fmt(hours)} h",
        )
        perf.append(f"crl_hours={_fmt(hours)};{_fmt(t.crl_warning)};{_fmt(t.crl_critical)}")
    rejected = sum(int(d.get("rejected") or 0) for d in health.get("relay") or [])
    perf.append(f"rejected={rejected};;;0")

    if reasons:
        text = "; ".join(reasons)
    else:
        dests = len(health.get("relay") or [])
        cas = int(ca.get("cas", 0))
        text = (
            f"{health.get('role', 'lbtwist')} healthy, {_n(dests, 'relay destination')},"
            f" backlog {backlog}, {_n(cas, 'CA')}"
        )
    return status, f"LBTWIST {STATUS_NAMES[status]} - {text}|{' '.join(perf)}"


def fetch(url: str, timeout: float, context: ssl.SSLContext | None) -> dict[str, Any]:
    """
    GET the health report (a 503 answer carries a report too).

    @raise OSError: no answer; L{ValueError}: no JSON object.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            body = answer.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the health answer is no JSON object")
    return data


def handle_probe(args: Any, ctx: CLIContext) -> int:
    thresholds = Thresholds(
        backlog_warning=args.warning,
        backlog_critical=args.critical,
        cert_warning=args.cert_warning,
        cert_critical=args.cert_critical,
        crl_warning=args.crl_warning,
        crl_critical=args.crl_critical,
    )
    problem = thresholds.check()
    if problem:
        ctx.stdout.write(f"LBTWIST UNKNOWN - {problem}\n")
        return UNKNOWN
    url = args.url or f"http://{args.host}:{args.port}/health"
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(capath=args.capath)
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
    try:
        health = fetch(url, args.timeout, context)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        ctx.stdout.write(f"LBTWIST UNKNOWN - cannot read {url}: {reason}\n")
        return UNKNOWN
    status, line = evaluate(health, ctx.now() / 1e6, thresholds)
    ctx.stdout.write(line + "\n")
    return status


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "probe",
        allow_abbrev=False,
        help="Nagios/Icinga plugin: the service's health (exit 0/1/2/3)",
        description=(
            "Read the /health report of a running lbtwist service and answer as a Nagios "
            "plugin: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, one status line with "
            "perfdata (backlog_age, backlog, cert_days, crl_hours, rejected)."
        ),
    )
    d = Thresholds()
    p.add_argument("-H", "--host", default="127.0.0.1", help="metrics listener host (127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=9100, help="metrics listener port (9100)")
    p.add_argument("-u", "--url", help="the health URL (overrides -H/-p; https with --cert)")
    p.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds to wait (10)")
    for flags, field, what in (
        (("-w", "--warning"), "backlog_warning", "relay backlog age in seconds for WARNING"),
        (("-c", "--critical"), "backlog_critical", "relay backlog age in seconds for CRITICAL"),
        (("--cert-warning",), "cert_warning", "host certificate days left for WARNING"),
        (("--cert-critical",), "cert_critical", "host certificate days left for CRITICAL"),
        (("--crl-warning",), "crl_warning", "hours to the earliest CRL nextUpdate for WARNING"),
        (("--crl-critical",), "crl_critical", "hours to the earliest CRL nextUpdate for CRITICAL"),
    ):
        default = getattr(d, field)
        p.add_argument(*flags, type=float, default=default, help=f"{what} ({default:g})")
    p.add_argument("--cert", help="client certificate (a --metrics-tls listener)")
    p.add_argument("--key", help="client key (default: in --cert)")
    p.add_argument("--capath", help="CA directory to check the server with")
    p.set_defaults(handler=handle_probe)
