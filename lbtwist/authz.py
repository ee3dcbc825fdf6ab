# -*- test-case-name: tests.test_authz -*-
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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from lbtwist.identity import Identity, same_dn

ACTIONS = (
    "ADMIN_ACCESS",
    "READ_ALL",
    "PURGE",
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
    What authorization needs of a job (L{lbtwist.states.status.JobStatus}
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
