# -*- test-case-name: tests.unit.test_notif -*-
"""
Notification registrations, pure: their conditions and flags, validity
arithmetic, matching a job's status change against them, the index that finds
the candidates of a job, and the bounds of their message queues.

A registration asks for a message each time a job it matches gets a new status
(every stored event that produces one). Conditions are those of job queries
(job ids, owner, network server, VO, destination, states; all given ones must
hold); flags are L&B's (C{-c} state changes only, C{-T} terminal states only,
C{-H} history attached, C{-B} bootstrap, C{-J} JDL attached, C{-N} anonymized).
Nothing here reads the clock: C{now} (seconds since the epoch) is passed in.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from lbtwist.core.dn import normalize_dn, same_dn
from lbtwist.core.jobid import unique_of
from lbtwist.core.states.status import (
    DONE,
    JDL_FIELDS,
    TERMINAL_STATES,
    JobStatus,
    public_dict,
)

#: The environment variable naming the notification server (as L&B's).
NOTIF_SERVER_ENV = "GLITE_WMS_NOTIF_SERVER"

#: Defaults of the consumer's limits (parameters of C{lbtwist.client.notify.NotificationStream}
#: and options of C{lbtwist notify receive}).
DEFAULT_IDLE_TIMEOUT = 90.0
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_PAGE_SIZE = 500
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Default seconds a registration is valid (L&B: two hours).
DEFAULT_VALIDITY = 2 * 3600
#: Most seconds a registration may be valid (L&B: one day).
MAX_VALIDITY = 24 * 3600

#: States C{terminal_only} (C{-T}) notifies: the job's life is over.
NOTIFY_TERMINAL: frozenset[str] = TERMINAL_STATES | {DONE}

#: Most job ids in one registration's conditions.
MAX_JOBIDS = 1000
#: Longest condition value (a DN, a host name...).
MAX_VALUE = 1024

FLAG_NAMES: tuple[str, ...] = (
    "state_changes_only",
    "terminal_only",
    "history",
    "bootstrap",
    "jdl",
    "anonymized",
)
_CONDITION_NAMES = frozenset({"jobid", "owner", "network_server", "vo", "destination", "states"})
_BODY_NAMES = frozenset({"conditions", "flags", "validity"})

#: Prefix of a registration id's last path segment (L&B's form).
NOTIF_PREFIX = "NOTIF:"

#: Fields of a status that name people: hashed in anonymized messages.
_DN_FIELDS = ("owner", "payload_owner", "cream_owner")


class NotifError(ValueError):
    """
    A registration request that cannot be honoured (a 400 answer: the message says why).
    """


@attrs.frozen
class Conditions:
    """
    What a registration matches; all the given conditions must hold, C{None}
    (or empty) ones are not checked.

    @ivar jobids: job ids, kept as given (matched by their unique part).
    @ivar owner: the owner DN.
    @ivar states: state names (either the job's state or its CREAM state).
    """

    jobids: tuple[str, ...] = ()
    owner: str | None = None
    network_server: str | None = None
    vo: str | None = None
    destination: str | None = None
    states: tuple[str, ...] = ()
    #: The unique parts of L{jobids} (what matching compares).
    uniques: frozenset[str] = attrs.field(init=False, eq=False, repr=False)
    #: L{states}, lower case.
    folded_states: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "uniques", frozenset(unique_of(j) for j in self.jobids))
        object.__setattr__(self, "folded_states", frozenset(s.lower() for s in self.states))

    def to_dict(self) -> dict[str, Any]:
        """
        @return: the conditions as the HTTP interface shows them (unset ones left out).
        """
        out: dict[str, Any] = {}
        if self.jobids:
            out["jobid"] = list(self.jobids)
        for name in ("owner", "network_server", "vo", "destination"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.states:
            out["states"] = list(self.states)
        return out


@attrs.frozen
class Flags:
    """
    L&B's notification flags.
    """

    state_changes_only: bool = False
    terminal_only: bool = False
    history: bool = False
    bootstrap: bool = False
    jdl: bool = False
    anonymized: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in FLAG_NAMES}


@attrs.frozen
class Registration:
    """
    One registration: who holds it, what it matches, until when.

    @ivar unique: the unique part of its id (C{NOTIF:<unique>}).
    @ivar owner: the DN of the registrant (the receiver since the last bind).
    @ivar fqans: the registrant's VOMS FQANs when it registered or bound (read
        rights are checked with them).
    @ivar valid_until: seconds since the epoch.
    """

    unique: str
    owner: str
    fqans: tuple[str, ...] = ()
    conditions: Conditions = Conditions()
    flags: Flags = Flags()
    valid_until: int = 0
    created: int = 0

    def spec_json(self) -> str:
        """
        @return: conditions and flags as JSON (how the store keeps them).
        """
        return json.dumps(
            {"conditions": self.conditions.to_dict(), "flags": self.flags.to_dict()},
            sort_keys=True,
        )

    @classmethod
    def from_spec(
        cls,
        unique: str,
        owner: str,
        fqans: Iterable[str],
        spec: str,
        valid_until: int,
        created: int,
    ) -> Registration:
        """
        The inverse of L{spec_json} (what the store reads back).
        """
        data = json.loads(spec)
        return cls(
            unique=unique,
            owner=owner,
            fqans=tuple(fqans),
            conditions=parse_conditions(data.get("conditions", {}), owner=owner),
            flags=parse_flags(data.get("flags", {})),
            valid_until=valid_until,
            created=created,
        )

    def expired(self, now: float) -> bool:
        return now >= self.valid_until


def new_unique() -> str:
    """
    @return: a fresh unguessable registration unique (URL-safe).
    """
    return secrets.token_urlsafe(16)


def registration_id(unique: str, base: str) -> str:
    """
    @return: L&B's id of a registration: C{https://<host>:<port>/NOTIF:<unique>}.
    """
    return f"{base.rstrip('/')}/{NOTIF_PREFIX}{unique}"


def unique_of_id(text: str) -> str:
    """
    @return: the unique part of a registration id, of C{NOTIF:<unique>} or of a bare unique.
    """
    last = text.rstrip("/").rsplit("/", 1)[-1]
    return last[len(NOTIF_PREFIX) :] if last.startswith(NOTIF_PREFIX) else last


# -- parsing requests -------------------------------------------------------------


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NotifError(f"{name} must be a non-empty string")
    if len(value) > MAX_VALUE:
        raise NotifError(f"{name} longer than {MAX_VALUE} characters")
    return value.strip()


def parse_conditions(data: object, *, owner: str) -> Conditions:
    """
    The C{conditions} object of a request.

    @param owner: the registrant's DN (C{"owner": "self"} stands for it).
    @raise NotifError: unknown keys, wrong types, too many job ids.
    """
    if not isinstance(data, Mapping):
        raise NotifError("conditions must be an object")
    unknown = set(data) - _CONDITION_NAMES
    if unknown:
        raise NotifError(
            f"unknown conditions {', '.join(sorted(map(str, unknown)))}"
            f" (known: {', '.join(sorted(_CONDITION_NAMES))})"
        )
    jobids: tuple[str, ...] = ()
    if "jobid" in data:
        raw = data["jobid"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise NotifError("jobid must be a job id or a non-empty list of them")
        if len(raw) > MAX_JOBIDS:
            raise NotifError(f"more than {MAX_JOBIDS} job ids")
        jobids = tuple(dict.fromkeys(_text("jobid", j) for j in raw))
    who = None
    if data.get("owner") is not None:
        who = _text("owner", data["owner"])
        if who == "self":
            who = owner
        elif not who.startswith("/"):
            raise NotifError("owner must be a slash-form DN or 'self'")
    states: tuple[str, ...] = ()
    if "states" in data:
        raw = data["states"]
        if isinstance(raw, str):
            raw = [s for s in raw.split(",") if s.strip()]
        if not isinstance(raw, list) or not raw:
            raise NotifError("states must be a non-empty list of state names")
        states = tuple(dict.fromkeys(_text("states", s) for s in raw))
    return Conditions(
        jobids=jobids,
        owner=who,
        network_server=_optional(data, "network_server"),
        vo=_optional(data, "vo"),
        destination=_optional(data, "destination"),
        states=states,
    )


def _optional(data: Mapping[str, object], name: str) -> str | None:
    value = data.get(name)
    return None if value is None else _text(name, value)


def parse_flags(data: object, base: Flags | None = None) -> Flags:
    """
    The C{flags} object of a request: given flags change C{base} (default: none set).

    @raise NotifError: unknown flags, values that are not booleans.
    """
    if not isinstance(data, Mapping):
        raise NotifError("flags must be an object")
    unknown = set(data) - set(FLAG_NAMES)
    if unknown:
        raise NotifError(
            f"unknown flags {', '.join(sorted(map(str, unknown)))} (known: {', '.join(FLAG_NAMES)})"
        )
    for name, value in data.items():
        if not isinstance(value, bool):
            raise NotifError(f"flag {name} must be true or false")
    return attrs.evolve(base or Flags(), **dict(data))


def check_body(data: object) -> Mapping[str, Any]:
    """
    @return: a request body (parsed JSON) known to be an object of known keys.
    @raise NotifError: it is not.
    """
    if not isinstance(data, Mapping):
        raise NotifError("the body must be a JSON object")
    unknown = set(data) - _BODY_NAMES
    if unknown:
        raise NotifError(
            f"unknown keys {', '.join(sorted(map(str, unknown)))}"
            f" (known: {', '.join(sorted(_BODY_NAMES))})"
        )
    return data


# -- validity ---------------------------------------------------------------------


@attrs.frozen
class ValidityRules:
    """
    How long registrations live: C{default} seconds unless asked, at most C{maximum}.
    """

    default: int = DEFAULT_VALIDITY
    maximum: int = MAX_VALIDITY

    def __attrs_post_init__(self) -> None:
        if self.default < 1 or self.maximum < 1:
            raise ValueError("validities must be positive")


def valid_until(
    now: float,
    requested: object,
    rules: ValidityRules,
    *,
    cert_not_after: int | None = None,
) -> int:
    """
    The end of a registration's validity: C{now} plus the requested seconds
    (C{None}: the default), capped by the maximum and by the end of the
    registrant's proxy certificate (C{cert_not_after}, seconds since the epoch).

    @raise NotifError: a requested validity that is no positive number of
        seconds, or a certificate that has expired.
    """
    if requested is None:
        seconds = min(rules.default, rules.maximum)
    else:
        if isinstance(requested, bool) or not isinstance(requested, (int, float)):
            raise NotifError("validity must be a number of seconds")
        if requested <= 0:
            raise NotifError("validity must be positive")
        seconds = int(min(requested, rules.maximum))
    until = int(now) + max(seconds, 1)
    if cert_not_after is not None:
        if cert_not_after <= now:
            raise NotifError("the client certificate has expired")
        until = min(until, int(cert_not_after))
    return until


# -- matching ---------------------------------------------------------------------


def _vo_of(status: JobStatus) -> str | None:
    """
    The VO of a job: the first group of its owner's first FQAN (C{/vo/...}).
    """
    for fqan in status.user_fqans:
        parts = [p for p in fqan.split("/") if p]
        if parts:
            return parts[0]
    return None


def conditions_hold(conditions: Conditions, status: JobStatus, jobid: str) -> bool:
    """
    Whether a job's status satisfies every given condition.
    """
    if conditions.uniques and unique_of(jobid) not in conditions.uniques:
        return False
    if conditions.owner is not None and not (
        status.owner and same_dn(status.owner, conditions.owner)
    ):
        return False
    if conditions.network_server is not None and not _same_host(
        status.network_server, conditions.network_server
    ):
        return False
    if conditions.destination is not None and not _same_host(
        status.destination, conditions.destination
    ):
        return False
    if conditions.vo is not None:
        vo = _vo_of(status)
        if vo is None or vo.lower() != conditions.vo.strip("/").lower():
            return False
    if conditions.states:
        wanted = conditions.folded_states
        if status.state.lower() not in wanted and (status.cream_state or "").lower() not in wanted:
            return False
    return True


def _same_host(have: str | None, want: str) -> bool:
    return have is not None and have.strip().lower() == want.strip().lower()


def matches(
    registration: Registration,
    before: JobStatus | None,
    after: JobStatus,
    jobid: str,
    now: float,
) -> bool:
    """
    Whether the change of a job's status from C{before} to C{after} is notified
    to a registration: it is valid at C{now}, its conditions hold for C{after},
    and its flags let the change through (C{state_changes_only}: the state or
    the CREAM state changed; C{terminal_only}: C{after} is a terminal state).
    C{before} L{None} is a bootstrap (the job's current state).
    """
    if registration.expired(now):
        return False
    flags = registration.flags
    if flags.terminal_only and after.state not in NOTIFY_TERMINAL:
        return False
    if (
        flags.state_changes_only
        and before is not None
        and before.state == after.state
        and before.cream_state == after.cream_state
    ):
        return False
    return conditions_hold(registration.conditions, after, jobid)


# -- the index --------------------------------------------------------------------


class RegistrationIndex:
    """
    Registrations by what selects them: by the unique part of each job id of
    their conditions, else by their owner condition (normalized DN), else in the
    "all jobs" set. L{candidates} of a job looks at the job's and its owner's
    entries and the "all jobs" set only, so its cost does not depend on the
    registrations for unrelated jobs and owners.
    """

    def __init__(self) -> None:
        self.by_unique: dict[str, Registration] = {}
        self.by_job: dict[str, set[str]] = {}
        self.by_owner: dict[str, set[str]] = {}
        self.all_jobs: set[str] = set()
        #: Registrations held per owner (normalized DN).
        self.held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.by_unique)

    def __contains__(self, unique: object) -> bool:
        return unique in self.by_unique

    def get(self, unique: str) -> Registration | None:
        return self.by_unique.get(unique)

    def _keys(self, reg: Registration) -> Iterator[tuple[dict[str, set[str]] | None, str]]:
        if reg.conditions.jobids:
            for jobid in reg.conditions.jobids:
                yield self.by_job, unique_of(jobid)
        elif reg.conditions.owner is not None:
            yield self.by_owner, normalize_dn(reg.conditions.owner)
        else:
            yield None, ""

    def add(self, reg: Registration) -> None:
        """
        Add or replace a registration.
        """
        self.remove(reg.unique)
        self.by_unique[reg.unique] = reg
        owner = normalize_dn(reg.owner)
        self.held[owner] = self.held.get(owner, 0) + 1
        for table, key in self._keys(reg):
            if table is None:
                self.all_jobs.add(reg.unique)
            else:
                table.setdefault(key, set()).add(reg.unique)

    def remove(self, unique: str) -> Registration | None:
        reg = self.by_unique.pop(unique, None)
        if reg is None:
            return None
        owner = normalize_dn(reg.owner)
        left = self.held.get(owner, 1) - 1
        if left:
            self.held[owner] = left
        else:
            self.held.pop(owner, None)
        for table, key in self._keys(reg):
            if table is None:
                self.all_jobs.discard(unique)
            else:
                entry = table.get(key)
                if entry is not None:
                    entry.discard(unique)
                    if not entry:
                        del table[key]
        return reg

    def candidates(self, jobid: str, owner: str | None) -> list[Registration]:
        """
        @return: the registrations that may match an event of C{jobid} (owned by
            C{owner}), each once, in the order of their uniques.
        """
        by_unique = self.by_unique
        entry = self.by_job.get(unique_of(jobid)) if self.by_job else None
        by_owner = self.by_owner.get(normalize_dn(owner)) if owner and self.by_owner else None
        if not by_owner and not self.all_jobs:
            # The common case: registrations by job id only.
            return [by_unique[u] for u in sorted(entry)] if entry else []
        found: set[str] = set(self.all_jobs)
        if entry:
            found.update(entry)
        if by_owner:
            found.update(by_owner)
        return [by_unique[u] for u in sorted(found)]

    def count_of(self, owner: str) -> int:
        """
        @return: how many registrations C{owner} holds (no scan).
        """
        return self.held.get(normalize_dn(owner), 0)

    def of_owner(self, owner: str) -> list[Registration]:
        """
        @return: the registrations an owner holds (a scan: for listings only).
        """
        return sorted(
            (r for r in self.by_unique.values() if same_dn(r.owner, owner)),
            key=lambda r: r.created,
        )


# -- messages ---------------------------------------------------------------------


def anonymize_dn(dn: str) -> str:
    """
    A DN replaced by a stable pseudonym (the same DN always gives the same one).
    """
    return "anonymized:" + hashlib.sha256(normalize_dn(dn).encode("utf-8")).hexdigest()[:32]


def message_status(status: JobStatus, jobid: str, *, jdl: bool, anonymized: bool) -> dict[str, Any]:
    """
    The status a message carries: the public status (as C{/<job>?format=json}
    shows it), without the JDL unless asked for, the people in it pseudonymized
    (and its ACL and FQANs left out) when anonymized.
    """
    data = public_dict(status)
    if data.get("jobId") is None:
        data["jobId"] = jobid
    if not jdl:
        for name in JDL_FIELDS:
            data.pop(name, None)
    if anonymized:
        for name in _DN_FIELDS:
            value = data.get(name)
            if isinstance(value, str) and value:
                data[name] = anonymize_dn(value)
        data["acl"] = []
        data["user_fqans"] = []
    return data


def status_message(status: JobStatus, jobid: str, *, anonymized: bool) -> bytes:
    """
    A status message's body as stored (L{status_body} of the status's
    L{JobStatus.to_compact_json}).
    """
    return status_body(status_head(jobid, anonymized), status.event_count, status.to_compact_json())


def status_head(jobid: str, anonymized: bool) -> bytes:
    """
    The start of the stored bodies of a job's status messages (L{status_body}):
    one per job and view, shared by all its messages.
    """
    return b'{"kind":"status","jobid":%s,"view":"%s","nevents":' % (
        json.dumps(jobid).encode("utf-8"),
        b"anonymized" if anonymized else b"full",
    )


def status_body(head: bytes, nevents: int, status_json: str | bytes) -> bytes:
    """
    A status message's body as stored: a JSON object without its C{seq}, the
    status in its compact form (C{status_json}, L{JobStatus.to_compact_json}:
    the fields at their defaults left out; L{render_message} reads it back as
    the whole status; its JDL fields only for a registration with the C{jdl}
    flag when the message was queued), whether the registrant may see it only
    anonymized (C{head}, L{status_head}), and the job's event count at that
    moment (for the history). L{render_message} makes what the client gets of
    it (the JDL only with the C{jdl} flag).
    """
    if isinstance(status_json, str):
        status_json = status_json.encode("utf-8")
    return b'%s%d,"status":%s}' % (head, nevents, status_json)


def render_message(seq: int, body: bytes, flags: Flags) -> tuple[bytes, int | None]:
    """
    What the client gets of a stored message: C{{"seq", "kind", "jobid", "status"}}
    with the public status (L{message_status}: JDL fields only with the C{jdl}
    flag, pseudonyms when anonymized by flag or by rights), and C{"jdl"} with
    the C{jdl} flag. A gap marker is returned as it is.

    @return: the JSON object (without the history), and for a status message of
        a registration with the C{history} flag the job's event count at that
        message (the events to attach), else L{None}.
    """
    if not body.startswith(b'{"kind":"status"'):
        return with_seq(seq, body), None
    data = json.loads(body)
    status = JobStatus.from_json_dict(data["status"])
    jobid = data["jobid"]
    anonymized = flags.anonymized or data.get("view") == "anonymized"
    out: dict[str, Any] = {
        "seq": seq,
        "kind": "status",
        "jobid": jobid,
        "status": message_status(status, jobid, jdl=flags.jdl, anonymized=anonymized),
    }
    if flags.jdl:
        text = status.jdl or status.cream_jdl
        if text:
            out["jdl"] = text
    upto = data.get("nevents") if flags.history else None
    return json.dumps(out, separators=(",", ":")).encode("utf-8"), upto


def gap_message(dropped: int) -> bytes:
    """
    The body of a gap marker: C{dropped} messages were dropped at its place.
    """
    return b'{"kind":"gap","dropped":%d}' % dropped


def with_seq(seq: int, body: bytes) -> bytes:
    """
    A stored body (a JSON object) with its sequence number as the first key.
    """
    return b'{"seq":%d,%s' % (seq, body[1:])


# -- queue bounds -----------------------------------------------------------------


@attrs.frozen
class QueueBounds:
    """
    Most status messages, and most bytes of them, one registration's queue holds.
    """

    max_messages: int = 10_000
    max_bytes: int = 10 * 1024 * 1024

    def __attrs_post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("queue bounds must be positive")


@attrs.frozen
class Trim:
    """
    What to drop from the head of a queue: the status messages up to C{upto}
    (a sequence number), C{count} of them, C{size} bytes.
    """

    upto: int
    count: int
    size: int


def trim(
    count: int, size: int, oldest: Iterable[tuple[int, int]], bounds: QueueBounds
) -> Trim | None:
    """
    The oldest status messages to drop so that a queue of C{count} messages and
    C{size} bytes keeps within C{bounds}.

    @param oldest: C{(seq, size)} of the queue's status messages, oldest first
        (read lazily: only as many as are dropped, and one more).
    @return: L{None} when the queue is within its bounds.
    """
    if count <= bounds.max_messages and size <= bounds.max_bytes:
        return None
    dropped = dropped_size = 0
    upto = None
    for seq, length in oldest:
        if count - dropped <= bounds.max_messages and size - dropped_size <= bounds.max_bytes:
            break
        dropped += 1
        dropped_size += length
        upto = seq
    if upto is None:
        return None
    return Trim(upto, dropped, dropped_size)


# -- Server-Sent Events -----------------------------------------------------------


def sse_event(seq: int, kind: str, data: bytes) -> bytes:
    """
    One Server-Sent Event: C{id}, C{event} and one C{data} line (the JSON has no newline).
    """
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode("ascii"), data)


#: The keep-alive comment of an idle stream.
SSE_KEEPALIVE = b": keep-alive\n\n"


def sse_end(reason: str) -> bytes:
    """
    The last event of a stream whose registration expired or was dropped.
    """
    return b"event: end\ndata: %s\n\n" % json.dumps({"reason": reason}).encode("utf-8")
