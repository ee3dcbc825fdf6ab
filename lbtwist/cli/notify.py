# -*- test-case-name: tests.unit.test_cli_notify -*-
"""
C{lbtwist notify}: L&B's C{glite-lb-notify} over HTTPS (docs/notifications.md).

C{new} registers and prints C{notification ID: <id>} and C{valid: '<time>
UTC' (<epoch>)}; C{bind}, C{refresh} print C{valid until: ...}; C{change}
and C{drop} print nothing; C{list} prints the caller's registrations;
C{receive} binds, then prints every message as L&B's tool does (the job id
and its state on one line, the chosen status fields on the next, C{(null)}
for unset ones) and keeps the last sequence number read in a file under
C{~/.lbtwist/notify/}, so that a receiver started again goes on exactly where
the last one stopped.

The server: C{-m}/C{--endpoint}, else C{$GLITE_WMS_NOTIF_SERVER} (as L&B),
else (C{new -j}) the job's query server as for C{lbtwist status} (the CREAM
+557 port shift included), else C{$GLITE_WMS_QUERY_SERVER} or the
development default. A notification id names its own server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Coroutine
from typing import Any

from lbtwist.cli.common import CLIContext, env_first, react_command
from lbtwist.cli.notifyargs import DEFAULT_REFRESH_VALIDITY, SEQ_DIR
from lbtwist.cli.query import make_tls
from lbtwist.client.notify import (
    NOTIF_SERVER_ENV,
    Notification,
    NotificationStream,
    NotifId,
    NotifyClient,
    Registration,
    lb_time,
    registration_body,
    server_of,
)
from lbtwist.client.query import (
    DEFAULT_SERVER,
    QueryClient,
    QueryError,
    base_url,
    candidates_for,
)
from lbtwist.core.jobid import QUERY_SERVER_ENV

Command = Callable[[NotifyClient, Any], Coroutine[Any, Any, int]]


#: The status fields C{-f} may name (the public ones of L{JobStatus}).
_TIME_FIELDS = frozenset(("stateEnterTime", "lastUpdateTime"))


# What the commands print.


def valid_line(prefix: str, registration: Registration) -> str:
    """
    C{<prefix> '<YYYY-MM-DD HH:MM:SS UTC>' (<epoch>)}, as L&B prints validity.
    """
    return f"{prefix} {lb_time(registration.valid_until)} ({registration.valid_until})"


def _jdl_attribute(jdl: str, name: str) -> str | None:
    match = re.search(
        r"(?i)(?:^|[\[;\s])" + re.escape(name) + r'\s*=\s*("(?:[^"\\]|\\.)*"|[^;\]]*)', jdl
    )
    if match is None:
        return None
    value = match.group(1).strip()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
    return value or None


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def field_value(message: Notification, field: str) -> str:
    """
    One field of a message's status as L&B's tool prints it: C{(null)} when
    unset, times as C{'YYYY-MM-DD HH:MM:SS UTC'}, newlines and tabs escaped.
    """
    status = message.status or {}
    if field.startswith("jdl:"):
        jdl = message.jdl or status.get("jdl")
        value = _jdl_attribute(jdl, field[4:]) if isinstance(jdl, str) else None
        return "(null)" if value is None else _escape(value)
    value = status.get(field)
    if value is None or value == "" or value == [] or value == {}:
        return "(null)"
    if field in _TIME_FIELDS:
        try:
            from lbtwist.core.states.status import parse_iso

            micro = parse_iso(value) if isinstance(value, str) else int(value)
            return lb_time(micro // 1_000_000)
        except (TypeError, ValueError):
            return _escape(str(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return _escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return _escape(str(value))


def message_lines(message: Notification, fields: list[str]) -> str:
    """
    The two lines of a status message: C{<jobid>\\t<state>} and the fields.
    """
    status = message.status or {}
    state = status.get("state") or "Unknown"
    jobid = message.jobid or status.get("jobId") or "(null)"
    values = "\t".join(field_value(message, f) for f in fields)
    return f"{jobid}\t{state}\n\t{values}\n"


# Servers.


def new_bases(args: argparse.Namespace, ctx: CLIContext) -> list[str]:
    """
    Where C{new} (and C{list}) go, in order of preference (module docstring).
    """
    explicit = args.endpoint or env_first(ctx.env, NOTIF_SERVER_ENV)
    if explicit:
        return [base_url(*server_of(explicit))]
    jobids = getattr(args, "jobid", None) or []
    if jobids:
        return [base_url(h, p) for h, p in candidates_for(jobids[0], endpoint=None, env=ctx.env)]
    fallback = env_first(ctx.env, *QUERY_SERVER_ENV) or DEFAULT_SERVER
    return [base_url(*server_of(fallback))]


def notif_id(args: argparse.Namespace, ctx: CLIContext) -> NotifId:
    """
    The notification id of the command line: it names its server; C{-m}
    wins; a bare C{NOTIF:<unique>} takes C{$GLITE_WMS_NOTIF_SERVER}.
    """
    explicit = args.endpoint
    if not explicit and not args.notifid.strip().startswith("https://"):
        explicit = env_first(ctx.env, NOTIF_SERVER_ENV)
    return NotifId.parse(args.notifid, endpoint=explicit)


def _flags(args: argparse.Namespace) -> dict[str, bool]:
    return {
        "state_changes_only": bool(args.c),
        # L&B's -H is -T with the history attached.
        "terminal_only": bool(args.T or args.H),
        "history": bool(args.H),
        "bootstrap": bool(args.B),
        "jdl": bool(args.J),
        "anonymized": bool(args.N),
    }


def _body(args: argparse.Namespace, *, validity: bool = True) -> dict[str, Any]:
    states: list[str] = []
    for group in args.state or ():
        states.extend(group)
    owner = "self" if args.O else args.o
    return registration_body(
        jobids=args.jobid or (),
        owner=owner,
        network_server=args.n,
        vo=args.v,
        destination=args.destination,
        states=states,
        flags=_flags(args),
        validity=args.t if validity else None,
    )


# The commands (each runs under the reactor, see L{run_notify}).


async def cmd_new(client: NotifyClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    registration = await client.create(new_bases(args, ctx), _body(args))
    if args.json:
        ctx.stdout.write(json.dumps(attrs_dict(registration), ensure_ascii=False) + "\n")
        return 0
    ctx.stdout.write(f"notification ID: {registration.id}\n")
    ctx.stdout.write(valid_line("valid:", registration) + "\n")
    return 0


async def cmd_bind(client: NotifyClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    nid = notif_id(args, ctx)
    body = {} if args.t is None else {"validity": args.t}
    registration = await client.update(nid, body)
    ctx.stdout.write(valid_line("valid until:", registration) + "\n")
    return 0


async def cmd_refresh(client: NotifyClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    nid = notif_id(args, ctx)
    registration = await client.update(nid, {"validity": args.t or DEFAULT_REFRESH_VALIDITY})
    ctx.stdout.write(valid_line("valid until:", registration) + "\n")
    return 0


async def cmd_change(client: NotifyClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    nid = notif_id(args, ctx)
    if args.newjob:
        args.jobid = [*(args.jobid or []), args.newjob]
    body = _body(args, validity=False)
    if "conditions" not in body:
        raise QueryError("change: give the new conditions (a job id, -o, -n, -v, --state)")
    # L&B's change replaces the conditions; the flags are sent only if given.
    if not any(_flags(args).values()):
        body.pop("flags", None)
    await client.update(nid, body)
    return 0


async def cmd_drop(client: NotifyClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    await client.drop(notif_id(args, ctx))
    return 0


def _summary(registration: Registration) -> str:
    parts = []
    for key, value in sorted(registration.conditions.items()):
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}={text}")
    flags = [k for k, v in sorted(registration.flags.items()) if v]
    if flags:
        parts.append("flags=" + ",".join(flags))
    return " ".join(parts) or "(all jobs)"


async def cmd_list(client: NotifyClient, args: argparse.Namespace, ctx: CLIContext) -> int:
    registrations = await client.registrations(new_bases(args, ctx))
    for registration in registrations:
        if args.json:
            ctx.stdout.write(json.dumps(attrs_dict(registration), ensure_ascii=False) + "\n")
            continue
        ctx.stdout.write(
            f"{registration.id}\t{lb_time(registration.valid_until)} "
            f"({registration.valid_until})\t{_summary(registration)}\n"
        )
    if not args.json:
        ctx.stdout.write(f"\nFound {len(registrations)} notifications\n")
    return 0


def attrs_dict(registration: Registration) -> dict[str, Any]:
    import attrs

    return attrs.asdict(registration)


# receive.


def seq_path(args: argparse.Namespace, ctx: CLIContext, nid: NotifId) -> str:
    """
    The file keeping a receiver's place: C{--seq-file}, else
    C{$HOME/.lbtwist/notify/<host>_<port>_<unique>.seq}.
    """
    if args.seq_file:
        return str(args.seq_file)
    home = ctx.env.get("HOME") or os.path.expanduser("~")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{nid.host}_{nid.port}_{nid.unique}")
    return os.path.join(home, SEQ_DIR, name + ".seq")


def read_seq(path: str) -> int:
    """
    The last sequence number a receiver kept (0 if none).

    @raise QueryError: the file is not a sequence number.
    """
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as e:
        raise QueryError(f"cannot read {path}: {e}") from None
    if not text.isdigit():
        raise QueryError(f"{path}: not a sequence number (remove it or give --from)")
    return int(text)


def write_seq(path: str, seq: int) -> None:
    """
    Keep C{seq} in C{path} (replaced atomically: a crash leaves the old or the new).
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{seq}\n")
    os.replace(tmp, path)


class Receiver:
    """
    C{lbtwist notify receive}: bind, then print every message until the
    timeout (C{-i}), the registration's end, or a signal.
    """

    def __init__(
        self, client: NotifyClient, args: argparse.Namespace, ctx: CLIContext, clock: Any
    ) -> None:
        self.client = client
        self.args = args
        self.ctx = ctx
        self.clock = clock
        self.nid = notif_id(args, ctx)
        self.path = seq_path(args, ctx, self.nid)
        self.fields: list[str] = args.f or ["owner"]
        self.stream: NotificationStream | None = None
        self.received = 0
        self._refresh_call: Any = None
        self._timeout_call: Any = None
        self._reason: str | None = None
        self._lost = False

    def _now(self) -> int:
        return self.ctx.now() // 1_000_000

    def _err(self, text: str) -> None:
        self.ctx.stderr.write(text + "\n")
        self.ctx.stderr.flush()

    async def run(self) -> int:
        after = self.args.from_seq if self.args.from_seq is not None else read_seq(self.path)
        body = {} if self.args.t is None else {"validity": self.args.t}
        registration = await self.client.update(self.nid, body)
        self._err(valid_line("notification is valid until:", registration))
        if self.args.r:
            self._schedule_refresh(registration.valid_until)
        self.stream = NotificationStream(
            self.client,
            self.nid,
            self.on_message,
            after=after,
            clock=self.clock,
            mode="poll" if self.args.poll else "auto",
            idle_timeout=self.args.idle_timeout,
            poll_interval=self.args.poll_interval,
            page_size=self.args.page_size,
            max_message_bytes=self.args.max_message_bytes,
            on_connect=self._connected,
            on_retry=self._retrying,
        )
        if self.args.i is not None:
            self._timeout_call = self.clock.callLater(self.args.i, self._timed_out)
        try:
            ended = await self.stream.start()
        finally:
            self._cancel_timers()
        if ended == "stopped":
            return 0
        self._err(f"lbtwist notify: notification {self.nid} {_ended_text(ended)}")
        return 1

    def _retrying(self, why: str, delay: float) -> None:
        # One line when a working connection breaks, not one per attempt.
        if not self._lost:
            self._lost = True
            self._err(f"lbtwist notify: {why}; reconnecting")

    def _connected(self, last_seq: int) -> None:
        if self._lost:
            self._lost = False
            self._err(f"lbtwist notify: reconnected, going on after message {last_seq}")

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        for call in (self._timeout_call, self._refresh_call):
            if call is not None and call.active():
                call.cancel()

    def _timed_out(self) -> None:
        self._timeout_call = None
        if self.stream is not None:
            self.stream.stop()

    def on_message(self, message: Notification) -> None:
        if message.kind == "gap":
            self._err(
                f"lbtwist notify: {message.dropped} notifications dropped by the server "
                f"(queue bound) before number {message.seq}"
            )
        else:
            self.ctx.stdout.write(message_lines(message, self.fields))
            self.ctx.stdout.flush()
        self.received += 1
        write_seq(self.path, message.seq)

    def _schedule_refresh(self, valid_until: int) -> None:
        now = self._now()
        delay = max(1, (valid_until - now) // 2)
        self._err(f"next refresh {lb_time(now + delay)} ({now + delay})")
        self._refresh_call = self.clock.callLater(delay, self._refresh)

    def _refresh(self) -> None:
        self._refresh_call = None
        validity = self.args.t or DEFAULT_REFRESH_VALIDITY

        async def refresh() -> None:
            try:
                registration = await self.client.update(self.nid, {"validity": validity})
            except QueryError as e:
                now = self._now()
                self._err(f"warning: refresh failed ({e})")
                self._schedule_refresh(now + 2 * int(self.args.refresh_retry))
                return
            self._err(valid_line("notification is valid until:", registration))
            self._schedule_refresh(registration.valid_until)

        from twisted.internet.defer import Deferred

        Deferred.fromCoroutine(refresh()).addErrback(lambda f: self._err(f"warning: {f.value}"))


def _ended_text(reason: str) -> str:
    if reason == "expired":
        return "has expired"
    if reason == "dropped":
        return "was dropped"
    return f"ended ({reason})"


async def cmd_receive(
    client: NotifyClient, args: argparse.Namespace, ctx: CLIContext, clock: Any, on_stop: Any
) -> int:
    receiver = Receiver(client, args, ctx, clock)
    on_stop.append(receiver.stop)
    return await receiver.run()


# Running under the reactor.


def run_notify(
    args: argparse.Namespace,
    ctx: CLIContext,
    command: Callable[..., Coroutine[Any, Any, int]],
) -> int:
    """
    Check the credentials, then run C{command(client, args, ctx[, reactor,
    on_stop])} under C{react()}. A signal stops it quietly: the exit status
    is then 130 (SIGINT) or 143 (SIGTERM), after the stream is closed.
    """
    name = "lbtwist notify"
    try:
        context, verify_log = make_tls(args, ctx)
    except QueryError as e:
        ctx.stderr.write(f"{name}: {e}\n")
        return 1
    on_stop: list[Callable[[], None]] = []

    async def main(reactor: Any, interrupted: list[bool]) -> int:
        query = QueryClient(reactor, context, verify_log, connect_timeout=args.connect_timeout)
        client = NotifyClient(query)
        try:
            if command is cmd_receive:
                return await command(client, args, ctx, reactor, on_stop)
            return await command(client, args, ctx)
        except QueryError as e:
            _quiet_write(ctx, f"{name}: {e}\n")
            return 1
        except BrokenPipeError:
            return 1

    def stop_all() -> None:
        for stop in on_stop:
            stop()

    return react_command(main, stop_all)


def _quiet_write(ctx: CLIContext, text: str) -> None:
    try:
        ctx.stderr.write(text)
    except (BrokenPipeError, OSError):
        pass


def handle_notify(args: argparse.Namespace, ctx: CLIContext) -> int:
    try:
        if args.notify_command in ("new", "list"):
            new_bases(args, ctx)
        elif hasattr(args, "notifid"):
            notif_id(args, ctx)
        if args.notify_command == "receive" and args.from_seq is None:
            read_seq(seq_path(args, ctx, notif_id(args, ctx)))
    except QueryError as e:
        ctx.stderr.write(f"lbtwist notify: {e}\n")
        return 1
    return run_notify(args, ctx, _COMMANDS[args.notify_command])


_COMMANDS: dict[str, Callable[..., Coroutine[Any, Any, int]]] = {
    "new": cmd_new,
    "bind": cmd_bind,
    "change": cmd_change,
    "refresh": cmd_refresh,
    "drop": cmd_drop,
    "list": cmd_list,
    "receive": cmd_receive,
}
