# -*- test-case-name: tests.test_authz -*-
"""
Tests for L{lbtwist.authz}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.authz import (
    ACTIONS,
    Decision,
    Policy,
    PolicyError,
    can_read,
    load_policy,
    normalize_fqan,
    parse_policy,
)
from lbtwist.identity import Identity

OWNER = "/DC=org/DC=example/OU=People/CN=Owner"
ADMIN = "/DC=org/DC=example/OU=People/CN=Admin"
READER = "/DC=org/DC=example/OU=People/CN=Reader"
OTHER = "/DC=org/DC=example/OU=People/CN=Other"
PILOT = "/DC=org/DC=example/OU=People/CN=Pilot"

POLICY = """
# L&B authorization policy
resource "LB" {
    action "ADMIN_ACCESS" {
        rule permit { subject = "/DC=org/DC=example/OU=People/CN=Admin" }
        rule permit {
            fqan = "/vo/Role=lcgadmin"   # VO admins
        }
    }
    action "READ_ALL" {
        rule permit { subject = "/dc=org/dc=example/ou=people/cn=reader" }
        rule permit { fqan = "/monitor" }
    }
    action "STATUS_FOR_MONITORING" {
        rule permit { subject = ".*" }
    }
    action "LOG_CE_EVENTS" {
        rule permit { fqan = ".*" }
        rule deny { fqan = "/vo/banned" }
    }
}
"""


@attrs.frozen
class Job:
    owner: str | None = OWNER
    acl: Sequence[Mapping[str, str]] = ()
    payload_owner: str | None = None


def ace(user_id: str, kind: str = "DN", perm: str = "READ", ptype: str = "ALLOW") -> dict[str, str]:
    return {"user_id": user_id, "user_id_type": kind, "permission": perm, "permission_type": ptype}


def who(dn: str, *fqans: str) -> Identity:
    return Identity(dn, tuple(fqans))


class PolicyParserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = parse_policy(POLICY)

    def test_actions(self) -> None:
        self.assertEqual(
            set(self.policy.rules),
            {"ADMIN_ACCESS", "READ_ALL", "STATUS_FOR_MONITORING", "LOG_CE_EVENTS"},
        )
        self.assertEqual(len(self.policy.rules["ADMIN_ACCESS"]), 2)

    def test_permits(self) -> None:
        table = [
            ("ADMIN_ACCESS", who(ADMIN), True),
            ("ADMIN_ACCESS", who(ADMIN.upper()), True),
            ("ADMIN_ACCESS", who(OTHER, "/vo/Role=lcgadmin/Capability=NULL"), True),
            ("ADMIN_ACCESS", who(OTHER, "/vo"), False),
            ("ADMIN_ACCESS", who(OTHER), False),
            ("READ_ALL", who(READER), True),
            ("READ_ALL", who(OTHER, "/monitor/Role=NULL/Capability=NULL"), True),
            ("STATUS_FOR_MONITORING", who(OTHER), True),
            ("LOG_CE_EVENTS", who(OTHER), False),
            ("LOG_CE_EVENTS", who(OTHER, "/vo"), True),
            ("LOG_CE_EVENTS", who(OTHER, "/vo", "/vo/banned"), False),
            ("PURGE", who(ADMIN), False),
        ]
        for action, identity, expected in table:
            self.assertEqual(self.policy.permits(action, identity), expected, (action, identity))

    def test_every_action_known(self) -> None:
        text = (
            'resource "LB" {\n'
            + "".join(f'action "{a}" {{ rule permit {{ subject = ".*" }} }}\n' for a in ACTIONS)
            + "}\n"
        )
        policy = parse_policy(text)
        self.assertEqual(set(policy.rules), set(ACTIONS))

    def test_empty(self) -> None:
        self.assertEqual(parse_policy("# nothing\n\n"), Policy())
        self.assertFalse(Policy().permits("READ_ALL", who(ADMIN)))

    def test_escaped_quote(self) -> None:
        policy = parse_policy(
            'resource "LB" { action "READ_ALL" { rule permit { subject = "/CN=a \\"b\\"" } } }'
        )
        self.assertTrue(policy.permits("READ_ALL", who('/CN=a "b"')))

    def test_errors_name_line(self) -> None:
        table = [
            ('resource "LB" {\n  action "NOPE" {\n', 2, "unknown action"),
            ('resource "XX" { }', 1, "unknown resource"),
            (
                'resource "LB" {\n action "PURGE" {\n rule allow { subject = "x" } } }',
                3,
                "permit or deny",
            ),
            (
                'resource "LB" {\n action "PURGE" {\n rule permit {\n user = "x" } } }',
                4,
                "unknown attribute",
            ),
            (
                'resource "LB" {\n action "PURGE" {\n rule permit {\n subject "x" } } }',
                4,
                "expected =",
            ),
            ('resource "LB" {\n action "PURGE" {\n rule permit { } } }', 3, "empty rule"),
            ('resource "LB" {\n action "PURGE" {\n', 3, "end of file"),
            ('resource "LB" {\n\n @ }', 3, "unexpected text"),
            (
                'resource "LB" {\n action "PURGE" { rule permit { subject = "x\n" } } }',
                2,
                "unexpected",
            ),
            ("action", 1, "expected resource"),
        ]
        for text, line, words in table:
            e = self.assertRaises(PolicyError, parse_policy, text)
            self.assertEqual(e.line, line, (text, str(e)))
            self.assertIn(words, str(e), text)

    def test_load_policy(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(POLICY + "\nbroken")
        e = self.assertRaises(PolicyError, load_policy, path)
        self.assertIn(path, str(e))
        with open(path, "w") as f:
            f.write(POLICY)
        self.assertEqual(load_policy(path), parse_policy(POLICY))

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=60))
    def test_garbage_never_crashes(self, text: str) -> None:
        try:
            parse_policy(text)
        except PolicyError as e:
            self.assertGreaterEqual(e.line, 1)


class FQANTests(SynchronousTestCase):
    def test_normalize(self) -> None:
        self.assertEqual(normalize_fqan("/vo/Role=NULL/Capability=NULL"), "/vo")
        self.assertEqual(normalize_fqan("/vo/g/Role=prod"), "/vo/g/Role=prod")


class CanReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = parse_policy(POLICY)

    def test_table(self) -> None:
        no = Policy()
        table: list[tuple[Identity, Job, Policy, Sequence[str], bool, str]] = [
            (who(OWNER), Job(), no, (), True, "owner"),
            (who(OWNER.lower()), Job(), no, (), True, "owner"),
            (who(OTHER), Job(), no, (), False, "not the owner"),
            (who(OTHER), Job(owner=None), no, (), False, "not the owner"),
            (who(ADMIN), Job(), self.policy, (), True, "super user"),
            (who(OTHER), Job(), no, (OTHER,), True, "super user"),
            (who(OTHER, "/vo/Role=lcgadmin"), Job(), self.policy, (), True, "super user"),
            (who(READER), Job(), self.policy, (), True, "READ_ALL"),
            (who(OTHER), Job(acl=[ace(OTHER)]), no, (), True, "ACL"),
            (who(OTHER), Job(acl=[ace(OTHER, perm="TAG")]), no, (), False, "not the owner"),
            (who(OTHER, "/vo/g"), Job(acl=[ace("/vo/g", "FQAN")]), no, (), True, "ACL"),
            (
                who(OTHER, "/vo/g/Role=NULL/Capability=NULL"),
                Job(acl=[ace("/vo/g", "FQAN")]),
                no,
                (),
                True,
                "ACL",
            ),
            (who(OTHER, "/vo/g/Role=x"), Job(acl=[ace("/vo/g", "GROUP")]), no, (), True, "ACL"),
            (who(OTHER, "/vo/h"), Job(acl=[ace("/vo/g", "GROUP")]), no, (), False, "not"),
            (
                who(OTHER, "/vo/g"),
                Job(acl=[ace(OTHER), ace("/vo/g", "FQAN", ptype="DENY")]),
                no,
                (),
                False,
                "denied",
            ),
            (
                who(OTHER),
                Job(acl=[ace(OTHER, ptype="DENY"), ace(OTHER)]),
                no,
                (),
                False,
                "denied",
            ),
            # DENY in the ACL does not lock out the owner or admins.
            (who(OWNER), Job(acl=[ace(OWNER, ptype="DENY")]), no, (), True, "owner"),
            (who(ADMIN), Job(acl=[ace(ADMIN, ptype="DENY")]), self.policy, (), True, "super"),
            (who(PILOT), Job(payload_owner=PILOT), no, (), True, "payload owner"),
            (who(OTHER), Job(payload_owner=PILOT), no, (), False, "not"),
            # A policy action other than ADMIN_ACCESS/READ_ALL grants nothing here.
            (who(OTHER), Job(), self.policy, (), False, "not"),
        ]
        for identity, job, policy, supers, allowed, reason in table:
            d = can_read(identity, job, policy, supers)
            self.assertIsInstance(d, Decision)
            self.assertEqual(d.allowed, allowed, (identity, job))
            self.assertEqual(bool(d), allowed)
            self.assertIn(reason, d.reason, (identity, job))

    def test_job_status_works(self) -> None:
        """
        The real job status type carries what can_read needs.
        """
        try:
            from lbtwist.states.status import JobStatus
        except ImportError:  # pragma: no cover
            raise self.skipTest("states not available") from None
        status = JobStatus()
        status.owner = OWNER
        status.acl = [ace(OTHER)]
        self.assertTrue(can_read(who(OWNER), status, Policy()).allowed)
        self.assertTrue(can_read(who(OTHER), status, Policy()).allowed)
        self.assertFalse(can_read(who(PILOT), status, Policy()).allowed)
