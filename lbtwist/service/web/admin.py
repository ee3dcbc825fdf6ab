# -*- test-case-name: tests.unit.test_purge_web -*-
"""
Admin requests on the query port: C{POST /admin/purge} runs a purge (L&B's purge
request, C{glite-lb-purge -m}; C{lbtwist purge -m HOST:PORT}).

Only super users, and holders of the policy actions PURGE or ADMIN_ACCESS, may purge.
Parameters (query string): C{aborted}, C{cancelled}, C{cleared}, C{done}, C{other}
and, on a proxy, C{delivered} (grace periods overriding the service's), C{dry_run=1}
(list only) and C{server_dump=1} (L&B's C{-s}: a dump of the purged events in the
state directory). The answer is the purge report as JSON.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from lbtwist.core.errors import InvalidValue, TryAgain
from lbtwist.core.purge import CLASSES, PurgeRules, parse_grace
from lbtwist.security.authz import Policy, is_super_user
from lbtwist.security.identity import Identity
from lbtwist.service import logs
from lbtwist.service.purge import Purger, PurgeRequest
from lbtwist.service.web import render
from lbtwist.service.web.resources import HTTPError

log = Logger()

_FLAGS = ("dry_run", "server_dump")
_FORMAT = frozenset({"format", "json", "text", "html"})


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("", "1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise HTTPError(400, f"{name}: expected 1 or 0, got {value!r}")


class AdminRequests:
    """
    The C{/admin/} handler given to the query resource (its C{admin} attribute).

    @param purger: runs the purges (shared with the periodic purge service).
    @param rules: the service's grace periods (a request may override them).
    """

    def __init__(
        self,
        purger: Purger,
        rules: PurgeRules,
        *,
        policy: Policy,
        super_users: tuple[str, ...] = (),
    ) -> None:
        self.purger = purger
        self.rules = rules
        self.policy = policy
        self.super_users = tuple(super_users)

    def may_purge(self, who: Identity) -> bool:
        return is_super_user(who, self.policy, self.super_users) or self.policy.permits(
            "PURGE", who
        )

    async def __call__(
        self, request: Request, who: Identity, path: list[str], params: list[tuple[str, str]]
    ) -> tuple[int, bytes, bytes]:
        if path != ["purge"]:
            raise HTTPError(404, "no such admin request (known: /admin/purge)")
        if request.method != b"POST":
            raise HTTPError(405, "a purge is asked for with POST /admin/purge")
        if not self.may_purge(who):
            logs.warn(log, "purge refused to {dn}: no PURGE or ADMIN_ACCESS right", dn=who.dn)
            raise HTTPError(403, f"{who.dn} may not purge (needs PURGE or ADMIN_ACCESS)")
        purge = self.parse(params)
        try:
            report = await self.purger.run(purge)
        except TryAgain as e:
            raise HTTPError(503, e.message) from None
        return 200, render.CONTENT_TYPES["json"], render.to_json(report.as_json())

    def parse(self, params: list[tuple[str, str]]) -> PurgeRequest:
        """
        The purge a request's parameters ask for.

        @raise HTTPError: 400 for an unknown parameter or a bad value.
        """
        overrides: dict[str, int | None] = {}
        flags = {"dry_run": False, "server_dump": False}
        for name, value in params:
            if name in _FORMAT:
                continue
            if name in _FLAGS:
                flags[name] = _flag(name, value)
            elif name in CLASSES or name == "delivered":
                try:
                    overrides[name] = parse_grace(value)
                except InvalidValue as e:
                    logs.warn(log, "bad purge request: {name}={value!r}", name=name, value=value)
                    raise HTTPError(400, f"{name}: {e.message}") from None
            else:
                logs.warn(log, "bad purge request: unknown parameter {name!r}", name=name)
                raise HTTPError(
                    400,
                    f"unknown parameter {name!r} (known: {', '.join((*CLASSES, 'delivered', *_FLAGS))})",
                )
        return PurgeRequest(
            rules=self.rules.with_overrides(overrides),
            dry_run=flags["dry_run"],
            server_dump=flags["server_dump"],
        )


def admin_requests(purger: Purger, rules: PurgeRules, **kw: Any) -> AdminRequests:
    """
    The admin handler for L{lbtwist.service.web.make_query_service}'s C{admin}.
    """
    return AdminRequests(purger, rules, **kw)
