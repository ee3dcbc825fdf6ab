# -*- test-case-name: tests.unit.test_admin_relay -*-
"""
The query port's C{/relay} routes: the relay's administration over HTTPS, for
super users (C{--super-user} or the policy's ADMIN_ACCESS); what
C{lbtwist relay -m HOST:PORT} calls.

 - C{GET /relay}: the queue per destination (JSON list);
 - C{GET /relay/rejected[?destination=D]}: the rejected events;
 - C{POST /relay/retry?event=ID&...|destination=D|all=1}: re-queue them, and wake
   the destinations' queues at once;
 - C{POST /relay/drop?...&reason=TEXT[&pending=1]}: drop them, the reason and the
   caller's DN logged.

The store work runs on a thread of its own (one connection per call).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from lbtwist.core.errors import LBError
from lbtwist.security.authz import Policy, is_super_user
from lbtwist.security.identity import Identity
from lbtwist.service import logs
from lbtwist.store import relayadmin

log = Logger()


def _args(request: Request, name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in (request.args or {}).get(name.encode(), [])]


def _first(request: Request, name: str) -> str | None:
    values = _args(request, name)
    return values[0] if values else None


class RelayAdminResource(Resource):
    """
    C{/relay...} of the query port.

    @param state_dir: the proxy's state directory (its store).
    @param identify: the caller of a request, L{None} without a usable certificate.
    @param relay: the running L{lbtwist.service.relay.RelayService}, woken after a
        retry (L{None}: the next sweep sends the events).
    @param run: runs a blocking function off the reactor (L{deferToThread}).
    """

    isLeaf = True

    def __init__(
        self,
        state_dir: str,
        *,
        identify: Callable[[Request], Identity | None],
        policy: Policy,
        super_users: Iterable[str] = (),
        relay: Any = None,
        now: Callable[[], float],
        run: Callable[..., Deferred[Any]] = deferToThread,
    ) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.identify = identify
        self.policy = policy
        self.super_users = tuple(super_users)
        self.relay = relay
        self.now = now
        self.run = run

    def _answer(self, request: Request, code: int, body: object) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body, sort_keys=True).encode() + b"\n"

    def render(self, request: Request) -> Any:
        who = self.identify(request)
        if who is None or not is_super_user(who, self.policy, self.super_users):
            logs.warn(
                log,
                "relay administration refused to {dn}: not a super user",
                dn=None if who is None else who.dn,
            )
            return self._answer(request, 403, {"error": "relay administration needs ADMIN_ACCESS"})
        path = [p for p in (request.postpath or [])[1:] if p]
        reason, pending = "", False
        method = request.method
        route = (method, path[0] if path else b"")
        if route == (b"GET", b""):
            work: Callable[[], Any] = self._status
        elif route == (b"GET", b"rejected"):
            wanted = _first(request, "destination")

            def work() -> Any:
                return self._rejected(wanted)

        elif route in ((b"POST", b"retry"), (b"POST", b"drop")):
            try:
                events = [int(e) for e in _args(request, "event")]
            except ValueError:
                return self._answer(request, 400, {"error": "event: expected event ids"})
            destination = _first(request, "destination")
            everything = (_args(request, "all") or ["0"])[0] in ("1", "yes", "true")
            reason = (_args(request, "reason") or [""])[0]
            pending = (_args(request, "pending") or ["0"])[0] in ("1", "yes", "true")
            if route[1] == b"drop" and not reason:
                return self._answer(request, 400, {"error": "drop needs a reason"})
            action = route[1].decode()

            def work() -> Any:
                return self._change(action, events, destination, everything, pending)

        else:
            return self._answer(request, 404, {"error": "no such relay route"})

        d = self.run(work)

        def done(result: Any) -> None:
            if route[0] == b"POST":
                self._after(route[1].decode(), result, who, reason, pending)
            request.write(self._answer(request, 200, result))
            request.finish()

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, LBError):
                request.write(self._answer(request, 400, {"error": error.message}))
            else:
                log.failure("relay administration failed", failure)
                request.write(self._answer(request, 500, {"error": "internal error (see the log)"}))
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    # the store work, on a thread

    def _status(self) -> list[dict[str, Any]]:
        conn = relayadmin.open_store(self.state_dir)
        try:
            return relayadmin.status_rows(conn, self.now())
        finally:
            conn.close()

    def _rejected(self, destination: str | None) -> list[dict[str, Any]]:
        conn = relayadmin.open_store(self.state_dir)
        try:
            return relayadmin.rejected_rows(conn, destination)
        finally:
            conn.close()

    def _change(
        self,
        action: str,
        events: list[int],
        destination: str | None,
        everything: bool,
        pending: bool,
    ) -> dict[str, Any]:
        where, params = relayadmin.selection(events, destination, everything)
        conn = relayadmin.open_store(self.state_dir)
        try:
            dests = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT destination FROM {'outbox' if pending else 'rejected'}"
                    f" WHERE {where}",
                    params,
                )
            ]
            if action == "retry":
                n = relayadmin.retry(conn, where, params)
            else:
                n = relayadmin.drop(conn, "outbox" if pending else "rejected", where, params)
        finally:
            conn.close()
        return {"action": action, "events": n, "destinations": dests}

    def _after(
        self, action: str, result: dict[str, Any], who: Identity, reason: str, pending: bool
    ) -> None:
        if action == "retry":
            log.info(
                "relay: {dn} re-queued {n} rejected events of {dests}",
                dn=who.dn,
                n=result["events"],
                dests=result["destinations"],
            )
            relay = self.relay
            if relay is not None and getattr(relay, "running", False):

                def wake(_: object = None) -> None:
                    for dest in result["destinations"]:
                        relay.queue(dest).wake()

                # The store's in-memory outbox tail does not hold the re-queued rows.
                resync = getattr(getattr(relay, "store", None), "outbox_resync", None)
                if resync is None:
                    wake()
                else:
                    resync().addCallback(wake).addErrback(
                        lambda f: log.failure("relay: reading re-queued events", f)
                    )
        else:
            log.warn(
                "relay: {dn} dropped {n} {kind} events of {dests}: {reason}",
                dn=who.dn,
                n=result["events"],
                kind="waiting" if pending else "rejected",
                dests=result["destinations"],
                reason=reason,
            )


__all__ = ["RelayAdminResource"]
