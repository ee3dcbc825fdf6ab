# -*- test-case-name: tests.unit.test_health -*-
"""
The health report of a running service: C{/health} on the metrics listener
(and on the query port), read by C{lbtwist probe}.

The report is one JSON object (L{health_report}); the HTTP status is 200 when
the service can do its work (store writable, at least one CA, host certificate
and CRLs still valid), else 503. Thresholds (how early a certificate or a
backlog is worth a warning) are the probe's business, not the service's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from lbtwist.security.tls import CADirectory
from lbtwist.store.interface import OutboxStats

log = Logger()


def _epoch(when: Any) -> float:
    return float(when.timestamp())


class CASummary:
    """
    The L{ca_summary} of one CA directory, read again only when its files change.
    """

    def __init__(self, ca_dir: str | None) -> None:
        self.ca_dir = ca_dir
        self._directory = CADirectory(ca_dir) if ca_dir else None
        self._last: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self._last is None or self._directory is None or self._directory.changed():
            self._last = ca_summary(self.ca_dir, self._directory)
        return self._last


def ca_summary(ca_dir: str | None, directory: CADirectory | None = None) -> dict[str, Any]:
    """
    @param directory: the L{CADirectory} of C{ca_dir} to load (a new one if not given).
    @return: C{{"path", "cas", "crls", "crl_next_update", "error"}} of a CA
        directory: how many CA certificates and CRLs it holds and the earliest
        CRL nextUpdate (seconds since the epoch, L{None} without CRLs).
    """
    out: dict[str, Any] = {
        "path": ca_dir,
        "cas": 0,
        "crls": 0,
        "crl_next_update": None,
        "error": None,
    }
    if not ca_dir:
        out["error"] = "no CA directory"
        return out
    try:
        trust = (directory or CADirectory(ca_dir)).load()
    except Exception as e:  # TrustUnavailable, an unreadable directory
        out["error"] = str(e)
        return out
    out["cas"] = len(trust.certs)
    out["crls"] = len(trust.crls)
    updates = [_epoch(c.next_update_utc) for c in trust.crls if c.next_update_utc is not None]
    out["crl_next_update"] = min(updates) if updates else None
    if not trust.certs:
        out["error"] = f"no CA certificates in {ca_dir}"
    return out


def cert_summary(path: str | None) -> dict[str, Any]:
    """
    @return: C{{"path", "subject", "not_after", "error"}} of the host certificate.
    """
    out: dict[str, Any] = {"path": path, "subject": None, "not_after": None, "error": None}
    if not path:
        out["error"] = "no host certificate"
        return out
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        out["error"] = f"cannot read {path}: {e}"
        return out
    out["subject"] = cert.subject.rfc4514_string()
    out["not_after"] = _epoch(cert.not_valid_after_utc)
    return out


def store_summary(path: str) -> dict[str, Any]:
    """
    @return: C{{"path", "writable", "size"}} of the store file (with its WAL):
        writable when a file can be made in its directory (tried, not guessed
        from the mode bits: root ignores them) and the store file may be written
        (C{access}, which also tells a read-only file system).

    The store file itself is never opened here: closing any descriptor of it
    would drop the SQLite locks this process holds on it (POSIX locks belong
    to the process), and the next writer to close its connection elsewhere
    (C{lbtwist relay retry}) would then take the service for gone and remove
    the WAL under it.
    """
    directory = os.path.dirname(path) or "."
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
        writable = not os.path.exists(path) or os.access(path, os.W_OK)
    except OSError:
        writable = False
    size = 0
    for name in (path, path + "-wal"):
        try:
            size += os.path.getsize(name)
        except OSError:
            pass
    return {"path": path, "writable": writable, "size": size}


def relay_summary(
    stats: Mapping[str, OutboxStats], queues: Mapping[str, Any], now: float
) -> list[dict[str, Any]]:
    """
    @param stats: the store's outbox statistics by destination.
    @param queues: the relay's L{lbtwist.service.relay.RelayQueue}s by destination.
    @return: one entry per destination: depth, oldest pending age (seconds),
        rejected, connected, last error.
    """
    out = []
    for dest in sorted(set(stats) | set(queues)):
        st = stats.get(dest)
        queue = queues.get(dest)
        oldest = None if st is None else st.oldest_arrived
        out.append(
            {
                "destination": dest,
                "depth": 0 if st is None else st.depth,
                "oldest_age": None if oldest is None else max(now - oldest / 1e6, 0.0),
                "rejected": 0 if st is None else st.rejected,
                "connected": bool(queue is not None and queue.connected),
                "delivered": 0 if queue is None else queue.counters.delivered,
                "last_error": None if queue is None else queue.last_error,
            }
        )
    return out


def health_report(
    *,
    role: str,
    version: str,
    store_path: str,
    cas: dict[str, Any],
    cert: str | None,
    relay: list[dict[str, Any]],
    now: float,
) -> dict[str, Any]:
    """
    The health report: C{ok} and the C{problems} that make it not OK, the store, the
    trust (C{cas}, a L{ca_summary}), the host certificate and the relay destinations.
    """
    store = store_summary(store_path)
    host = cert_summary(cert)
    problems = []
    if not store["writable"]:
        problems.append(f"store not writable: {store_path}")
    if cas["error"]:
        problems.append(cas["error"])
    elif cas["crl_next_update"] is not None and cas["crl_next_update"] < now:
        problems.append("a CRL is past its nextUpdate (is fetch-crl running?)")
    if host["error"]:
        problems.append(host["error"])
    elif host["not_after"] is not None and host["not_after"] < now:
        problems.append("the host certificate has expired")
    ages = [d["oldest_age"] for d in relay if d["oldest_age"] is not None]
    return {
        "ok": not problems,
        "problems": problems,
        "role": role,
        "version": version,
        "time": now,
        "store": store,
        "ca": cas,
        "host_cert": host,
        "relay": relay,
        "backlog": sum(d["depth"] for d in relay),
        "backlog_age": max(ages) if ages else 0.0,
    }


class HealthResource(Resource):
    """
    C{GET /health}: the report of C{report()} as JSON, 200 when OK, else 503.
    """

    isLeaf = True

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._report = report

    def render_GET(self, request: Request) -> bytes:
        try:
            body = self._report()
        except Exception:
            log.failure("health report failed")
            body = {"ok": False, "problems": ["the health report failed (see the log)"]}
        request.setResponseCode(200 if body.get("ok") else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, sort_keys=True).encode() + b"\n"


class HealthRoot(Resource):
    """
    A port's root that answers C{/health} itself, the first path segments of
    C{routes} by their (leaf) resources, and hands every other path to C{inner}
    (the query port's tree).
    """

    isLeaf = True

    def __init__(
        self,
        inner: Resource,
        health: HealthResource | None,
        routes: Mapping[bytes, Resource] = {},
    ) -> None:
        super().__init__()
        self.inner = inner
        self.health = health
        self.routes = dict(routes)

    def __getattr__(self, name: str) -> Any:
        # The inner tree's attributes (store, policy...) as before.
        if name in ("inner", "health", "routes"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def render(self, request: Request) -> Any:
        path = request.postpath or []
        if path == [b"health"] and self.health is not None:
            return self.health.render(request)
        route = self.routes.get(path[0]) if path else None
        if route is not None:
            return route.render(request)
        return self.inner.render(request)


__all__ = [
    "CASummary",
    "HealthRoot",
    "HealthResource",
    "ca_summary",
    "cert_summary",
    "health_report",
    "relay_summary",
    "store_summary",
]
