# -*- test-case-name: tests.unit.test_cli_notify -*-
"""
The parser of C{lbtwist notify} (glite-lb-notify's actions and options): light,
so that building every subcommand's parser imports no Twisted; the actions run
in L{lbtwist.cli.notify}, imported when C{lbtwist notify} runs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from lbtwist.cli.common import CLIContext
from lbtwist.cli.query import add_client_options
from lbtwist.core.notif import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PAGE_SIZE,
    DEFAULT_POLL_INTERVAL,
    NOTIF_SERVER_ENV,
)


def handle_notify(args: argparse.Namespace, ctx: CLIContext) -> int:
    from lbtwist.cli import notify

    return notify.handle_notify(args, ctx)


#: L&B's receive: how long it waits by default (C{-i}), and the validity it
#: asks for when refreshing (C{-t}).
DEFAULT_RECEIVE_TIMEOUT = 600.0


DEFAULT_REFRESH_VALIDITY = 3600


#: Where receivers keep their place, under C{$HOME}.
SEQ_DIR = os.path.join(".lbtwist", "notify")


def _status_fields() -> dict[str, str]:
    import attrs

    from lbtwist.core.states.status import JobStatus

    internal = {"machine", "last_key", "event_count", "branch_wm"}
    names = [f.name for f in attrs.fields(JobStatus) if f.name not in internal]
    return {name.lower(): name for name in names}


def parse_fields(text: str) -> list[str]:
    """
    C{-f owner,destination,jdl:VirtualOrganisation}: status field names (case
    ignored), C{jdl:<attribute>} for one JDL attribute.

    @raise argparse.ArgumentTypeError: an unknown field (named).
    """
    known = _status_fields()
    fields: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.lower().startswith("jdl:") and len(name) > 4:
            fields.append("jdl:" + name[4:])
            continue
        found = known.get(name.lower())
        if found is None:
            raise argparse.ArgumentTypeError(
                f"{name}: invalid argument (fields: {', '.join(sorted(known.values()))})"
            )
        fields.append(found)
    if not fields:
        raise argparse.ArgumentTypeError("no field named")
    return fields


def parse_states(text: str) -> list[str]:
    """
    C{--state done,aborted}: L&B state names, case ignored.

    @raise argparse.ArgumentTypeError: not a state name.
    """
    from lbtwist.core.states.status import STATES

    by_name = {s.lower(): s for s in STATES}
    states = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.lower() not in by_name:
            raise argparse.ArgumentTypeError(f"'{name}' is not a valid state name")
        states.append(by_name[name.lower()])
    return states


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _int_at_least(minimum: int, noun: str, low: str) -> Any:
    """
    An argparse type: an integer of at least C{minimum} (C{noun}: what the error
    says it is not; C{low}: what it says of one below the minimum).
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"not {low}: {text!r}")
        return value

    return parse


_validity = _int_at_least(1, "a number of seconds", "a positive number of seconds")
_positive = _int_at_least(1, "a number", "a positive number")
_seq = _int_at_least(0, "a sequence number", "a sequence number")


def _add_server(p: argparse.ArgumentParser) -> None:
    add_client_options(p)
    p.add_argument(
        "-m",
        dest="endpoint",
        metavar="HOST:PORT",
        help=f"the notification server (as --endpoint; default ${NOTIF_SERVER_ENV})",
    )


def _add_conditions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-j", "--jobid", action="append", metavar="JOBID", help="match this job (repeatable)"
    )
    owner = p.add_mutually_exclusive_group()
    owner.add_argument("-o", "--owner", dest="o", metavar="DN", help="match this owner DN")
    owner.add_argument("-O", dest="O", action="store_true", help="match your own DN")
    p.add_argument("-n", "--network-server", dest="n", metavar="NS", help="match this WMS")
    p.add_argument("-v", "--vo", dest="v", metavar="VO", help="match this VO")
    p.add_argument("--destination", metavar="CE", help="match this destination")
    p.add_argument(
        "-S",
        "--state",
        "--states",
        dest="state",
        action="append",
        type=parse_states,
        metavar="S1,S2",
        help="match events resulting in these states",
    )
    p.add_argument("-c", action="store_true", help="only on a state change")
    p.add_argument("-T", "--terminal", dest="T", action="store_true", help="only terminal states")
    p.add_argument(
        "-H", "--history", dest="H", action="store_true", help="as -T, with the job's events"
    )
    p.add_argument(
        "-B", "--bootstrap", dest="B", action="store_true", help="queue matching jobs' states now"
    )
    p.add_argument("-J", "--jdl", dest="J", action="store_true", help="attach the JDL")
    p.add_argument("-N", "--anonymize", dest="N", action="store_true", help="anonymize owner data")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "notify",
        help="notifications (glite-lb-notify)",
        description=(
            "Register for notifications of job state changes and receive them, as "
            "glite-lb-notify does, over HTTPS with your proxy certificate."
        ),
    )
    p.set_defaults(handler=handle_notify)
    sub = p.add_subparsers(dest="notify_command", metavar="ACTION", required=True)

    new = sub.add_parser("new", help="create a registration", description="Create a registration.")
    _add_conditions(new)
    new.add_argument("-t", type=_validity, metavar="SECONDS", help="requested validity")
    new.add_argument("--json", action="store_true", help="print the registration as JSON")
    _add_server(new)

    def with_id(name: str, text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("notifid", metavar="NOTIFID", help="https://host:port/NOTIF:...")
        _add_server(q)
        return q

    bind = with_id("bind", "take a registration over as its receiver")
    bind.add_argument("-t", type=_validity, metavar="SECONDS", help="requested validity")
    refresh = with_id("refresh", "extend a registration's validity")
    refresh.add_argument(
        "-t",
        type=_validity,
        metavar="SECONDS",
        help=f"requested validity (default {DEFAULT_REFRESH_VALIDITY})",
    )
    change = with_id("change", "replace a registration's conditions")
    change.add_argument("newjob", nargs="?", metavar="JOBID", help="match this job (as L&B)")
    _add_conditions(change)
    with_id("drop", "remove a registration and its waiting messages")

    lst = sub.add_parser("list", help="your registrations", description="List your registrations.")
    lst.add_argument("--json", action="store_true", help="one JSON object per registration")
    _add_server(lst)

    recv = with_id("receive", "bind and print the messages as they come")
    recv.add_argument(
        "-i",
        type=_seconds,
        default=DEFAULT_RECEIVE_TIMEOUT,
        metavar="SECONDS",
        help="stop after this long (default %(default)g)",
    )
    recv.add_argument(
        "-f",
        type=parse_fields,
        metavar="FIELD,...",
        help="status fields to print (default owner; jdl:ATTR for a JDL attribute)",
    )
    recv.add_argument(
        "-r", action="store_true", help="refresh the registration at half its validity"
    )
    recv.add_argument(
        "-t",
        type=_validity,
        metavar="SECONDS",
        help=f"validity asked for at bind and refresh (refresh default {DEFAULT_REFRESH_VALIDITY})",
    )
    recv.add_argument(
        "--from",
        dest="from_seq",
        type=_seq,
        metavar="SEQ",
        help="start after message SEQ (default: where the last receiver stopped)",
    )
    recv.add_argument(
        "--seq-file",
        metavar="FILE",
        help=f"where the last message number is kept (default ~/{SEQ_DIR}/<id>.seq)",
    )
    recv.add_argument("--poll", action="store_true", help="poll /messages instead of the stream")
    recv.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="reconnect when the stream is silent this long (default %(default)g)",
    )
    recv.add_argument(
        "--poll-interval",
        type=_seconds,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help="between polls when nothing waits (default %(default)g)",
    )
    recv.add_argument(
        "--page-size",
        type=_positive,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help="messages per poll (default %(default)s)",
    )
    recv.add_argument(
        "--max-message-bytes",
        type=_positive,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help="refuse a message longer than this (default %(default)s)",
    )
    recv.add_argument(
        "--refresh-retry",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="after a failed refresh, try again this soon (default %(default)g)",
    )
