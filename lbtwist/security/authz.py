# -*- test-case-name: tests.unit.test_authz -*-
"""
Authorization decisions on identity values (pure: no I/O but L{load_policy}).

The policy file is L&B's format::

    resource "LB" {
        action "ADMIN_ACCESS" {
            rule permit { subject = "/DC=org/DC=example/CN=Admin" }
            rule permit { fqan = "/vo/Role=lcgadmin" }
        }
    }

C{".*"} is the only wildcard; C{#} starts a comment.

L{may_write} decides who may log which event on which job at the server's
store port (the table is in C{docs/security.md}).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from lbtwist.core.events import Event
from lbtwist.core.states.status import JobStatus, apply_common
from lbtwist.security.identity import Identity, same_dn

ACTIONS = (
    "ADMIN_ACCESS",
    "READ_ALL",
    "PURGE",
    "TRACE",
    "STATUS_FOR_MONITORING",
    "GET_STATISTICS",
    "REGISTER_JOBS",
    "LOG_WMS_EVENTS",
    "LOG_CE_EVENTS",
    "LOG_GENERAL_EVENTS",
    "GRANT_OWNERSHIP",
    "READ_ANONYMIZED",
)
ATTRIBUTES = ("subject", "fqan")

#: Sources whose events need LOG_WMS_EVENTS when a relay logs them.
WMS_SOURCES = frozenset(
    ("NetworkServer", "WorkloadManager", "JobController", "LogMonitor", "BigHelper")
)

#: Events that change who may do what on a job (owner, ACL, payload owner).
ACCESS_EVENTS = frozenset(("RegJob", "ChangeACL", "GrantPayloadOwnership", "TakePayloadOwnership"))
WILDCARD = ".*"


class PolicyError(ValueError):
    """
    A malformed policy file.

    @ivar line: 1-based line number of the problem.
    """

    def __init__(self, message: str, line: int, source: str = "policy") -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.line = line
        self.message = message


def normalize_fqan(fqan: str) -> str:
    """
    Drop C{/Role=NULL} and C{/Capability=NULL}: C{/vo/Role=NULL/Capability=NULL}
    is the same FQAN as C{/vo}.
    """
    parts = [p for p in fqan.strip().split("/") if p and p not in ("Role=NULL", "Capability=NULL")]
    return "/" + "/".join(parts)


def fqan_group(fqan: str) -> str:
    """
    @return: the group part of an FQAN (without Role and Capability).
    """
    parts = [p for p in fqan.strip().split("/") if p and "=" not in p]
    return "/" + "/".join(parts)


@attrs.frozen
class Rule:
    """
    One C{rule permit|deny { attribute = "value" ... }}: matches when any of
    its attributes matches.
    """

    permit: bool
    matches: tuple[tuple[str, str], ...]

    def applies(self, identity: Identity) -> bool:
        for attribute, value in self.matches:
            if attribute == "subject":
                if value == WILDCARD or same_dn(value, identity.dn):
                    return True
            elif attribute == "fqan":
                if value == WILDCARD and identity.fqans:
                    return True
                wanted = normalize_fqan(value)
                if any(normalize_fqan(f) == wanted for f in identity.fqans):
                    return True
        return False


@attrs.frozen
class Policy:
    """
    Rules by action name.
    """

    rules: Mapping[str, tuple[Rule, ...]] = attrs.field(factory=dict)

    def permits(self, action: str, identity: Identity) -> bool:
        """
        @return: whether a permit rule of C{action} matches and no deny rule does.
        """
        rules = self.rules.get(action, ())
        if any(not r.permit and r.applies(identity) for r in rules):
            return False
        return any(r.permit and r.applies(identity) for r in rules)


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}=])
    """,
    re.VERBOSE,
)


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    tokens = []
    line = 1
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            snippet = text[pos : pos + 10].split("\n")[0]
            raise PolicyError(f"unexpected text {snippet!r}", line, source)
        kind = m.lastgroup or ""
        value = m.group()
        if kind == "newline":
            line += 1
        elif kind == "string":
            tokens.append(("string", re.sub(r"\\(.)", r"\1", value[1:-1]), line))
        elif kind in ("word", "punct"):
            tokens.append((kind, value, line))
        pos = m.end()
    tokens.append(("end", "", line))
    return tokens


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = _tokens(text, source)
        self.pos = 0

    def _error(self, message: str) -> PolicyError:
        kind, value, line = self.tokens[self.pos]
        found = "end of file" if kind == "end" else repr(value)
        return PolicyError(f"{message}, found {found}", line, self.source)

    def _peek(self) -> tuple[str, str, int]:
        return self.tokens[self.pos]

    def _expect(self, kind: str, value: str | None = None, what: str = "") -> tuple[str, int]:
        k, v, line = self.tokens[self.pos]
        if k != kind or (value is not None and v != value):
            raise self._error(f"expected {what or value or kind}")
        self.pos += 1
        return v, line

    def parse(self) -> Policy:
        rules: dict[str, list[Rule]] = {}
        while self._peek()[0] != "end":
            self._expect("word", "resource")
            name, line = self._expect("string", what="a resource name in quotes")
            if name != "LB":
                raise PolicyError(f'unknown resource {name!r} (only "LB")', line, self.source)
            self._expect("punct", "{")
            while self._peek()[1] != "}" or self._peek()[0] != "punct":
                self._expect("word", "action", what="action or }")
                action, line = self._expect("string", what="an action name in quotes")
                if action not in ACTIONS:
                    raise PolicyError(f"unknown action {action!r}", line, self.source)
                self._expect("punct", "{")
                bucket = rules.setdefault(action, [])
                while not (self._peek()[0] == "punct" and self._peek()[1] == "}"):
                    bucket.append(self._rule())
                self._expect("punct", "}")
            self._expect("punct", "}")
        return Policy({k: tuple(v) for k, v in rules.items()})

    def _rule(self) -> Rule:
        self._expect("word", "rule", what="rule or }")
        decision, line = self._expect("word", what="permit or deny")
        if decision not in ("permit", "deny"):
            raise PolicyError(f"expected permit or deny, found {decision!r}", line, self.source)
        self._expect("punct", "{")
        matches = []
        while not (self._peek()[0] == "punct" and self._peek()[1] == "}"):
            attribute, line = self._expect("word", what="subject or fqan")
            if attribute not in ATTRIBUTES:
                raise PolicyError(f"unknown attribute {attribute!r}", line, self.source)
            self._expect("punct", "=")
            value, _ = self._expect("string", what="a value in quotes")
            matches.append((attribute, value))
        if not matches:
            raise self._error("empty rule")
        self._expect("punct", "}")
        return Rule(decision == "permit", tuple(matches))


def parse_policy(text: str, source: str = "policy") -> Policy:
    """
    Parse an L&B policy.

    @raise PolicyError: with the line number of the first problem.
    """
    return _Parser(text, source).parse()


def load_policy(path: str | Path) -> Policy:
    """
    Read and parse a policy file (L{PolicyError} names the file and line).
    """
    return parse_policy(Path(path).read_text(), str(path))


class JobAccess(Protocol):
    """
    What authorization needs of a job (L{lbtwist.core.states.status.JobStatus}
    has these).
    """

    @property
    def owner(self) -> str | None: ...

    @property
    def acl(self) -> Sequence[Mapping[str, str]]: ...

    @property
    def payload_owner(self) -> str | None: ...


@attrs.frozen
class Decision:
    """
    An authorization answer and why (for logs and 403 messages).
    """

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def is_super_user(identity: Identity, policy: Policy, super_users: Iterable[str]) -> bool:
    """
    @return: whether C{identity} is in C{super_users} or has ADMIN_ACCESS.
    """
    return any(same_dn(dn, identity.dn) for dn in super_users) or policy.permits(
        "ADMIN_ACCESS", identity
    )


def _acl_entry_matches(entry: Mapping[str, str], identity: Identity) -> bool:
    kind = entry.get("user_id_type", "").upper()
    user_id = entry.get("user_id", "")
    if kind == "DN":
        return same_dn(user_id, identity.dn)
    if kind == "FQAN":
        wanted = normalize_fqan(user_id)
        return any(normalize_fqan(f) == wanted for f in identity.fqans)
    if kind == "GROUP":
        wanted = fqan_group(user_id)
        return any(fqan_group(f) == wanted for f in identity.fqans)
    return False


def acl_permits(
    acl: Iterable[Mapping[str, str]], identity: Identity, permission: str
) -> bool | None:
    """
    @return: L{False} if a matching DENY entry for C{permission} exists,
        L{True} if a matching ALLOW does, L{None} if no entry matches.
    """
    allowed = None
    for entry in acl:
        if entry.get("permission", "").upper() != permission:
            continue
        if not _acl_entry_matches(entry, identity):
            continue
        if entry.get("permission_type", "").upper() == "DENY":
            return False
        if entry.get("permission_type", "").upper() == "ALLOW":
            allowed = True
    return allowed


def can_read(
    identity: Identity,
    job: JobAccess,
    policy: Policy,
    super_users: Iterable[str] = (),
) -> Decision:
    """
    May C{identity} read C{job}? In order: the owner; super users
    (C{super_users} or ADMIN_ACCESS); READ_ALL; the job's ACL (a matching
    DENY wins); the payload owner.
    """
    if job.owner and same_dn(job.owner, identity.dn):
        return Decision(True, "owner")
    if is_super_user(identity, policy, super_users):
        return Decision(True, "super user")
    if policy.permits("READ_ALL", identity):
        return Decision(True, "READ_ALL")
    acl = acl_permits(job.acl, identity, "READ")
    if acl is False:
        return Decision(False, "denied by the job's ACL")
    if acl:
        return Decision(True, "allowed by the job's ACL")
    if job.payload_owner and same_dn(job.payload_owner, identity.dn):
        return Decision(True, "payload owner")
    return Decision(False, "not the owner and not allowed by policy or ACL")


def required_action(event: Event) -> str:
    """
    The policy action that lets a peer (a relay) log C{event} for somebody
    else: REGISTER_JOBS for a RegJob, otherwise chosen by the event's source.
    """
    if event.type == "RegJob":
        return "REGISTER_JOBS"
    source = event.source
    if source in WMS_SOURCES:
        return "LOG_WMS_EVENTS"
    if source.startswith("CREAM") or source == "LRMS":
        return "LOG_CE_EVENTS"
    return "LOG_GENERAL_EVENTS"


@attrs.frozen
class JobRights:
    """
    What a job's write authorization reads of its status (a L{JobAccess}):
    small, to be cached per job at the store port.
    """

    owner: str | None = None
    acl: tuple[Mapping[str, str], ...] = ()
    payload_owner: str | None = None

    @classmethod
    def of(cls, status: JobAccess) -> JobRights:
        # Owners repeat over many cached jobs: keep one copy of each DN.
        owner = status.owner
        return cls(
            sys.intern(owner) if owner else None,
            tuple(status.acl),
            status.payload_owner or None,
        )

    def after(self, event: Event) -> JobRights:
        """
        The rights once C{event} (accepted) is stored, as the state machines
        fold it: a RegJob sets the owner of a job that has none, ChangeACL and
        the payload ownership events go through L{apply_common}.
        """
        kind = event.type
        if kind == "RegJob":
            return self if self.owner else attrs.evolve(self, owner=event.user or None)
        if kind not in ACCESS_EVENTS:
            return self
        status = JobStatus(
            owner=self.owner, acl=[dict(e) for e in self.acl], payload_owner=self.payload_owner
        )
        apply_common(status, event)
        return JobRights.of(status)


_NO_JOB = "\0no job"


def write_key(event: Event, job: JobAccess | None) -> tuple[str | None, ...] | None:
    """
    Everything L{may_write} reads of C{event} and C{job}: two calls for one
    peer (same identity, policy and super users) with equal keys get the same
    answer. C{None} when the answer also depends on the ACL, the payload owner
    or DG.USER of an event that is not a registration (not worth caching).
    """
    kind = event.type
    if kind == "UserTag" or kind == "TakePayloadOwnership":
        return None
    owner = _NO_JOB if job is None else job.owner
    if kind == "RegJob":
        return (kind, owner, None if owner and owner is not _NO_JOB else event.user)
    if kind == "ChangeACL" or kind == "GrantPayloadOwnership":
        return (kind, owner)
    return ("", required_action(event), owner)


def may_write(
    identity: Identity | None,
    event: Event,
    job: JobAccess | None,
    policy: Policy,
    super_users: Iterable[str] = (),
) -> Decision:
    """
    May the peer C{identity} log C{event} on C{job} (C{None}: no such job, or
    not known yet)? "Owner" is the job's stored owner, never the DG.USER an
    event claims. In order:

      - an anonymous peer: never; a super user (C{super_users} or
        ADMIN_ACCESS): always;
      - RegJob of a job without an owner: the peer registering itself as the
        owner (DG.USER is its DN), or a peer with REGISTER_JOBS;
      - RegJob of an owned job: its owner or a peer with REGISTER_JOBS (the
        store then answers a duplicate OK, and a registration for another
        owner, or with the EXCL flag, EEXIST);
      - ChangeACL: the owner only;
      - GrantPayloadOwnership: the owner, if the policy grants it
        GRANT_OWNERSHIP;
      - TakePayloadOwnership: only the DN the payload ownership was granted
        to, logging as itself;
      - UserTag: the owner, the payload owner, an ACL TAG holder (a matching
        DENY refuses), or a relay (as below);
      - any other event: the owner, or a relay the policy permits the
        event's action (L{required_action}).
    """
    if identity is None:
        return Decision(False, "anonymous peer")
    if is_super_user(identity, policy, super_users):
        return Decision(True, "super user")
    kind = event.type
    dn = identity.dn
    owner = job.owner if job is not None else None
    is_owner = owner is not None and owner != "" and same_dn(owner, dn)
    if kind == "RegJob":
        if is_owner:
            return Decision(True, "owner")
        if policy.permits("REGISTER_JOBS", identity):
            return Decision(True, "REGISTER_JOBS")
        if owner:
            return Decision(False, "the job is registered to another owner")
        if event.user and same_dn(event.user, dn):
            return Decision(True, "registers itself as the owner")
        return Decision(False, "registers a job for another user without REGISTER_JOBS")
    if kind == "ChangeACL":
        if is_owner:
            return Decision(True, "owner")
        return Decision(False, "only the job's owner may change its ACL")
    if kind == "GrantPayloadOwnership":
        if not is_owner:
            return Decision(False, "only the job's owner may grant payload ownership")
        if policy.permits("GRANT_OWNERSHIP", identity):
            return Decision(True, "owner with GRANT_OWNERSHIP")
        return Decision(False, "the owner is not permitted GRANT_OWNERSHIP")
    if kind == "TakePayloadOwnership":
        granted = job.payload_owner if job is not None else None
        if not granted or not same_dn(granted, dn):
            return Decision(False, "payload ownership was not granted to this peer")
        if not event.user or not same_dn(event.user, dn):
            return Decision(False, "DG.USER is not the peer taking payload ownership")
        return Decision(True, "payload ownership granted to the peer")
    if is_owner:
        return Decision(True, "owner")
    if kind == "UserTag" and job is not None:
        if job.payload_owner and same_dn(job.payload_owner, dn):
            return Decision(True, "payload owner")
        tag = acl_permits(job.acl, identity, "TAG")
        if tag:
            return Decision(True, "TAG allowed by the job's ACL")
        if tag is False:
            return Decision(False, "TAG denied by the job's ACL")
    action = required_action(event)
    if policy.permits(action, identity):
        return Decision(True, action)
    if owner is None:
        return Decision(False, f"the job has no owner yet and the peer has no {action}")
    return Decision(False, f"not the job's owner and no {action}")
