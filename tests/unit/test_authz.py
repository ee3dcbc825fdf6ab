# -*- test-case-name: tests.unit.test_authz -*-
"""
Tests for L{lbtwist.security.authz}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.security.authz import (
    ACTIONS,
    Decision,
    Policy,
    PolicyError,
    can_read,
    load_policy,
    normalize_fqan,
    parse_policy,
)
from lbtwist.security.identity import Identity

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
            from lbtwist.core.states.status import JobStatus
        except ImportError:  # pragma: no cover
            raise self.skipTest("states not available") from None
        status = JobStatus()
        status.owner = OWNER
        status.acl = [ace(OTHER)]
        self.assertTrue(can_read(who(OWNER), status, Policy()).allowed)
        self.assertTrue(can_read(who(OTHER), status, Policy()).allowed)
        self.assertFalse(can_read(who(PILOT), status, Policy()).allowed)


RELAY = "/DC=org/DC=example/OU=Hosts/CN=relay.example.org"
GRANTEE = "/DC=org/DC=example/OU=People/CN=Grantee"
TAGGER = "/DC=org/DC=example/OU=People/CN=Tagger"
JOBID = "https://lb.example.org:9000/AuthzTableJob0000000001"

WRITE_POLICY = f"""
resource "LB" {{
    action "ADMIN_ACCESS" {{ rule permit {{ subject = "{ADMIN}" }} }}
    action "REGISTER_JOBS" {{ rule permit {{ subject = "{RELAY}" }} }}
    action "LOG_WMS_EVENTS" {{ rule permit {{ subject = "{RELAY}" }} }}
    action "LOG_CE_EVENTS" {{ rule permit {{ subject = "{RELAY}" }} }}
    action "LOG_GENERAL_EVENTS" {{ rule permit {{ subject = "{RELAY}" }} }}
    action "GRANT_OWNERSHIP" {{ rule permit {{ subject = "{OWNER}" }} }}
}}
"""


def event(kind: str, user: str = OWNER, source: str = "UserInterface", **fields: object) -> Any:
    from lbtwist.core.events import make_event

    defaults: dict[str, dict[str, object]] = {
        "RegJob": {"jobtype": "SIMPLE", "ns": "https://wms.example.org:7443/wmproxy"},
        "ChangeACL": {
            "user_id": OTHER,
            "user_id_type": "DN",
            "permission": "READ",
            "permission_type": "ALLOW",
            "operation": "ADD",
        },
        "GrantPayloadOwnership": {"payload_owner": GRANTEE},
        "UserTag": {"name": "color", "value": "blue"},
        "Abort": {"reason": "stop"},
        "Accepted": {"from": "UserInterface", "from_host": "ui.example.org"},
    }
    values = {**defaults.get(kind, {}), **fields}
    return make_event(
        kind,
        jobid=JOBID,
        date=1_700_000_000_000_000,
        host="ui.example.org",
        user=user,
        source=source,
        seqcode="UI=000001:NS=0000000001:WM=000000:BH=0000000000:JSS=000000:LM=000000:LRMS=000000:APP=000000:LBS=000000",
        **values,
    )


class MayWriteTests(SynchronousTestCase):
    """
    The store port's write authorization (L{may_write}) as a table: event kind
    x peer kind x job state -> allowed or refused, and why.
    """

    def setUp(self) -> None:
        self.policy = parse_policy(WRITE_POLICY)

    def rows(self) -> list[tuple[str, Any, Identity | None, Job | None, Policy, bool, str]]:
        p, no = self.policy, Policy()
        owned = Job()
        granted = Job(payload_owner=GRANTEE)
        tags = Job(acl=[ace(TAGGER, perm="TAG")])
        tag_denied = Job(acl=[ace(RELAY, perm="TAG", ptype="DENY")])
        supers: list[tuple[str, Any, Identity | None, Job | None, Policy, bool, str]] = []
        for kind in ("RegJob", "Abort", "ChangeACL", "GrantPayloadOwnership", "UserTag"):
            supers.append(
                (f"admin {kind}", event(kind, user=OTHER), who(ADMIN), owned, p, True, "super user")
            )
            supers.append((f"anon {kind}", event(kind), None, owned, p, False, "anonymous"))
        return [
            # RegJob of a new job: the peer as the owner it names, a relay, a super user.
            ("reg self", event("RegJob"), who(OWNER), None, no, True, "registers itself"),
            ("reg self case", event("RegJob"), who(OWNER.upper()), None, no, True, "itself"),
            (
                "reg for other",
                event("RegJob", user=OTHER),
                who(OWNER),
                None,
                no,
                False,
                "REGISTER_JOBS",
            ),
            ("reg relay", event("RegJob", user=OTHER), who(RELAY), None, p, True, "REGISTER_JOBS"),
            (
                "reg relay no policy",
                event("RegJob", user=OTHER),
                who(RELAY),
                None,
                no,
                False,
                "REGISTER_JOBS",
            ),
            ("reg grey", event("RegJob"), who(OWNER), Job(owner=None), no, True, "itself"),
            # RegJob of an owned job: its owner or a relay (the store decides EEXIST).
            ("reg again owner", event("RegJob"), who(OWNER), owned, no, True, "owner"),
            (
                "reg takeover",
                event("RegJob", user=OTHER),
                who(OTHER),
                owned,
                no,
                False,
                "another owner",
            ),
            ("reg takeover claim", event("RegJob"), who(OTHER), owned, no, False, "another owner"),
            (
                "reg relay owned",
                event("RegJob", user=OTHER),
                who(RELAY),
                owned,
                p,
                True,
                "REGISTER_JOBS",
            ),
            # Other events: the stored owner, a relay by action, a super user.
            ("abort owner", event("Abort"), who(OWNER), owned, no, True, "owner"),
            (
                "abort stranger",
                event("Abort", user=OTHER),
                who(OTHER),
                owned,
                no,
                False,
                "not the job's owner",
            ),
            (
                "abort stranger claims owner",
                event("Abort"),
                who(OTHER),
                owned,
                no,
                False,
                "LOG_GENERAL_EVENTS",
            ),
            ("abort no job", event("Abort"), who(OWNER), None, no, False, "no owner"),
            (
                "abort relay",
                event("Abort", source="NetworkServer"),
                who(RELAY),
                owned,
                p,
                True,
                "LOG_WMS_EVENTS",
            ),
            (
                "abort relay no policy",
                event("Abort", source="NetworkServer"),
                who(RELAY),
                owned,
                no,
                False,
                "LOG_WMS_EVENTS",
            ),
            (
                "ce relay",
                event("Running", source="LRMS", node="wn"),
                who(RELAY),
                owned,
                p,
                True,
                "LOG_CE_EVENTS",
            ),
            (
                "relay grey",
                event("Abort", source="NetworkServer"),
                who(RELAY),
                None,
                p,
                True,
                "LOG_WMS_EVENTS",
            ),
            # ChangeACL: the owner only.
            ("acl owner", event("ChangeACL"), who(OWNER), owned, no, True, "owner"),
            (
                "acl stranger",
                event("ChangeACL", user=OTHER, user_id=OTHER),
                who(OTHER),
                owned,
                p,
                False,
                "only the job's owner",
            ),
            ("acl relay", event("ChangeACL"), who(RELAY), owned, p, False, "only the job's owner"),
            ("acl no job", event("ChangeACL"), who(OWNER), None, no, False, "only the job's owner"),
            # GrantPayloadOwnership: the owner with GRANT_OWNERSHIP.
            (
                "grant owner",
                event("GrantPayloadOwnership"),
                who(OWNER),
                owned,
                p,
                True,
                "GRANT_OWNERSHIP",
            ),
            (
                "grant owner no policy",
                event("GrantPayloadOwnership"),
                who(OWNER),
                owned,
                no,
                False,
                "GRANT_OWNERSHIP",
            ),
            (
                "grant stranger",
                event("GrantPayloadOwnership", user=OTHER),
                who(OTHER),
                owned,
                p,
                False,
                "only the job's owner",
            ),
            (
                "grant relay",
                event("GrantPayloadOwnership"),
                who(RELAY),
                owned,
                p,
                False,
                "only the job's owner",
            ),
            # TakePayloadOwnership: the DN granted, as itself.
            (
                "take grantee",
                event("TakePayloadOwnership", user=GRANTEE),
                who(GRANTEE),
                granted,
                no,
                True,
                "granted",
            ),
            (
                "take not granted",
                event("TakePayloadOwnership", user=OTHER),
                who(OTHER),
                granted,
                p,
                False,
                "not granted",
            ),
            (
                "take nothing granted",
                event("TakePayloadOwnership", user=GRANTEE),
                who(GRANTEE),
                owned,
                no,
                False,
                "not granted",
            ),
            (
                "take owner",
                event("TakePayloadOwnership"),
                who(OWNER),
                owned,
                p,
                False,
                "not granted",
            ),
            (
                "take for other",
                event("TakePayloadOwnership", user=OTHER),
                who(GRANTEE),
                granted,
                no,
                False,
                "DG.USER",
            ),
            (
                "take relay",
                event("TakePayloadOwnership", user=GRANTEE),
                who(RELAY),
                granted,
                p,
                False,
                "not granted",
            ),
            # UserTag: owner, payload owner, ACL TAG holder, relay.
            ("tag owner", event("UserTag"), who(OWNER), owned, no, True, "owner"),
            (
                "tag payload owner",
                event("UserTag", user=GRANTEE),
                who(GRANTEE),
                granted,
                no,
                True,
                "payload owner",
            ),
            ("tag acl", event("UserTag", user=TAGGER), who(TAGGER), tags, no, True, "TAG allowed"),
            (
                "tag read acl only",
                event("UserTag", user=OTHER),
                who(OTHER),
                Job(acl=[ace(OTHER)]),
                no,
                False,
                "not the job's owner",
            ),
            (
                "tag stranger",
                event("UserTag", user=OTHER),
                who(OTHER),
                tags,
                no,
                False,
                "not the job's owner",
            ),
            ("tag relay", event("UserTag"), who(RELAY), owned, p, True, "LOG_GENERAL_EVENTS"),
            ("tag relay denied", event("UserTag"), who(RELAY), tag_denied, p, False, "TAG denied"),
            (
                "tag owner denied",
                event("UserTag"),
                who(OWNER),
                Job(acl=[ace(OWNER, perm="TAG", ptype="DENY")]),
                no,
                True,
                "owner",
            ),
            # Super users: the policy's ADMIN_ACCESS or --super-user.
            ("super by option", event("ChangeACL"), who(OTHER), owned, no, True, "super user"),
            *supers,
        ]

    def test_table(self) -> None:
        from lbtwist.security.authz import may_write

        for name, ev, identity, job, policy, allowed, reason in self.rows():
            supers = (OTHER,) if name == "super by option" else ()
            d = may_write(identity, ev, job, policy, supers)
            self.assertIsInstance(d, Decision)
            self.assertEqual(d.allowed, allowed, (name, d))
            self.assertIn(reason, d.reason, name)

    def test_write_key_covers_what_the_answer_reads(self) -> None:
        """
        Two table rows with the same peer, policy and L{write_key} get the same
        answer: a per-connection cache keyed by it never lets a refused event
        through on an allowed one's answer.
        """
        from lbtwist.security.authz import may_write, write_key

        seen: dict[tuple[object, ...], bool] = {}
        jobs = [None, Job(), Job(owner=OTHER), Job(owner=None), Job(payload_owner=GRANTEE)]
        rows = self.rows()
        peers = {r[2] for r in rows}
        for _, ev, _, _, _, _, _ in rows:
            for job in jobs:
                key = write_key(ev, job)
                if key is None:
                    continue
                for peer in peers:
                    for policy in (self.policy, Policy()):
                        answer = may_write(peer, ev, job, policy).allowed
                        full = (peer, id(policy), key)
                        self.assertEqual(seen.setdefault(full, answer), answer, (ev.type, job))
        self.assertIsNone(write_key(event("UserTag"), Job()))
        self.assertIsNone(write_key(event("TakePayloadOwnership"), Job()))
        # The stored owner is in the key, the claimed DG.USER is not.
        self.assertNotEqual(
            write_key(event("Abort"), Job()), write_key(event("Abort"), Job(owner=OTHER))
        )
        self.assertEqual(
            write_key(event("Abort"), Job()), write_key(event("Abort", user=OTHER), Job())
        )

    def test_required_action(self) -> None:
        from lbtwist.security.authz import required_action

        self.assertEqual(required_action(event("RegJob")), "REGISTER_JOBS")
        self.assertEqual(required_action(event("Abort", source="NetworkServer")), "LOG_WMS_EVENTS")
        self.assertEqual(required_action(event("Abort", source="CREAMInterface")), "LOG_CE_EVENTS")
        self.assertEqual(required_action(event("Abort", source="LRMS")), "LOG_CE_EVENTS")
        self.assertEqual(required_action(event("UserTag")), "LOG_GENERAL_EVENTS")


class JobRightsTests(SynchronousTestCase):
    """
    L{JobRights}: what authorization keeps of a job, and how events change it.
    """

    def test_of_status(self) -> None:
        from lbtwist.core.states.status import JobStatus
        from lbtwist.security.authz import JobRights

        status = JobStatus(owner=OWNER, acl=[ace(OTHER)], payload_owner=GRANTEE)
        self.assertEqual(JobRights.of(status), JobRights(OWNER, (ace(OTHER),), GRANTEE))
        self.assertEqual(JobRights.of(JobStatus()), JobRights())

    def test_after(self) -> None:
        from lbtwist.security.authz import JobRights

        new = JobRights().after(event("RegJob"))
        self.assertEqual(new.owner, OWNER)
        # A later RegJob never moves the owner.
        self.assertEqual(new.after(event("RegJob", user=OTHER)).owner, OWNER)
        acl = new.after(event("ChangeACL", permission="TAG"))
        self.assertEqual([e["user_id"] for e in acl.acl], [OTHER])
        removed = acl.after(event("ChangeACL", permission="TAG", operation="REMOVE"))
        self.assertEqual(removed.acl, ())
        granted = new.after(event("GrantPayloadOwnership"))
        self.assertEqual(granted.payload_owner, GRANTEE)
        taken = granted.after(event("TakePayloadOwnership", user=GRANTEE))
        self.assertEqual(taken.payload_owner, GRANTEE)
        self.assertIs(new.after(event("Abort")), new)
