# -*- test-case-name: tests.unit.test_notif -*-
"""
Tests for L{lbtwist.core.notif}: conditions, flags, validity, matching, the index,
queue bounds and the SSE framing (pure; times passed in).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.notif import (
    Conditions,
    Flags,
    NotifError,
    QueueBounds,
    Registration,
    RegistrationIndex,
    Trim,
    ValidityRules,
    anonymize_dn,
    check_body,
    gap_message,
    matches,
    message_status,
    parse_conditions,
    parse_flags,
    registration_id,
    render_message,
    sse_end,
    sse_event,
    status_body,
    status_head,
    status_message,
    trim,
    unique_of_id,
    valid_until,
    with_seq,
)
from lbtwist.core.states.status import JobStatus

OWNER = "/DC=org/DC=example/CN=Jana Novakova"
OTHER = "/DC=org/DC=example/CN=Eve Stranger"
JOB = "https://ce.example.org:9000/CREAM000000001"
JOB2 = "https://ce.example.org:9000/CREAM000000002"
NOW = 1_700_000_000


def status(state: str = "Running", **kw: object) -> JobStatus:
    s = JobStatus(state=state, owner=OWNER, **kw)  # type: ignore[arg-type]
    return s


def reg(
    conditions: Conditions | None = None, flags: Flags | None = None, until: int = NOW + 60
) -> Registration:
    return Registration(
        unique="u1",
        owner=OWNER,
        conditions=conditions or Conditions(),
        flags=flags or Flags(),
        valid_until=until,
    )


class ParseTests(SynchronousTestCase):
    def test_conditions(self) -> None:
        c = parse_conditions(
            {
                "jobid": [JOB, JOB],
                "owner": "self",
                "network_server": "ns.example.org",
                "vo": "atlas",
                "destination": "ce:8443/cream-pbs-long",
                "states": "Running,Done",
            },
            owner=OWNER,
        )
        self.assertEqual(c.jobids, (JOB,))
        self.assertEqual(c.owner, OWNER)
        self.assertEqual(c.states, ("Running", "Done"))
        self.assertEqual(
            c.to_dict(),
            {
                "jobid": [JOB],
                "owner": OWNER,
                "network_server": "ns.example.org",
                "vo": "atlas",
                "destination": "ce:8443/cream-pbs-long",
                "states": ["Running", "Done"],
            },
        )
        self.assertEqual(parse_conditions({"jobid": JOB}, owner=OWNER).jobids, (JOB,))

    def test_bad_conditions(self) -> None:
        for data, words in [
            ([], "must be an object"),
            ({"x": 1}, "unknown conditions x"),
            ({"jobid": 5}, "job id"),
            ({"jobid": ["j"] * 1001}, "more than 1000"),
            ({"owner": ""}, "non-empty"),
            ({"owner": "x" * 2000}, "longer than"),
            ({"states": []}, "non-empty"),
            ({"vo": 3}, "non-empty string"),
        ]:
            with self.assertRaises(NotifError) as e:
                parse_conditions(data, owner=OWNER)
            self.assertIn(words, str(e.exception), data)

    def test_flags(self) -> None:
        f = parse_flags({"history": True, "jdl": True})
        self.assertEqual((f.history, f.jdl, f.bootstrap), (True, True, False))
        g = parse_flags({"jdl": False}, f)
        self.assertEqual((g.history, g.jdl), (True, False))
        self.assertRaises(NotifError, parse_flags, {"nope": True})
        self.assertRaises(NotifError, parse_flags, {"jdl": 1})
        self.assertRaises(NotifError, parse_flags, [])

    def test_body(self) -> None:
        self.assertEqual(check_body({"validity": 5}), {"validity": 5})
        self.assertRaises(NotifError, check_body, [])
        self.assertRaises(NotifError, check_body, {"valid": 5})

    def test_spec_round_trip(self) -> None:
        r = Registration(
            "u9",
            OWNER,
            ("/atlas",),
            Conditions(jobids=(JOB,), states=("Done",)),
            Flags(terminal_only=True),
            NOW + 5,
            NOW,
        )
        back = Registration.from_spec("u9", OWNER, ["/atlas"], r.spec_json(), NOW + 5, NOW)
        self.assertEqual(back, r)

    def test_ids(self) -> None:
        rid = registration_id("abc", "https://lb.example.org:9000/")
        self.assertEqual(rid, "https://lb.example.org:9000/NOTIF:abc")
        self.assertEqual(unique_of_id(rid), "abc")
        self.assertEqual(unique_of_id("NOTIF:abc"), "abc")
        self.assertEqual(unique_of_id("abc"), "abc")


class ValidityTests(SynchronousTestCase):
    rules = ValidityRules(default=7200, maximum=86400)

    def test_default(self) -> None:
        self.assertEqual(valid_until(NOW, None, self.rules), NOW + 7200)

    def test_requested_and_capped(self) -> None:
        self.assertEqual(valid_until(NOW, 60, self.rules), NOW + 60)
        self.assertEqual(valid_until(NOW, 10**9, self.rules), NOW + 86400)

    def test_default_above_maximum(self) -> None:
        rules = ValidityRules(default=500, maximum=100)
        self.assertEqual(valid_until(NOW, None, rules), NOW + 100)

    def test_proxy_lifetime(self) -> None:
        self.assertEqual(valid_until(NOW, 3600, self.rules, cert_not_after=NOW + 10), NOW + 10)
        self.assertEqual(valid_until(NOW, 30, self.rules, cert_not_after=NOW + 1000), NOW + 30)
        with self.assertRaises(NotifError):
            valid_until(NOW, 30, self.rules, cert_not_after=NOW)

    def test_bad(self) -> None:
        for value in (0, -1, "1", True, [1]):
            self.assertRaises(NotifError, valid_until, NOW, value, self.rules)
        self.assertRaises(ValueError, ValidityRules, 0, 10)


class MatchTests(SynchronousTestCase):
    def test_every_event_without_flags(self) -> None:
        r = reg()
        self.assertTrue(matches(r, status("Running"), status("Running"), JOB, NOW))

    def test_expired(self) -> None:
        r = reg(until=NOW)
        self.assertFalse(matches(r, None, status(), JOB, NOW))
        self.assertTrue(matches(r, None, status(), JOB, NOW - 1))

    def test_state_changes_only(self) -> None:
        r = reg(flags=Flags(state_changes_only=True))
        self.assertFalse(matches(r, status("Running"), status("Running"), JOB, NOW))
        self.assertTrue(matches(r, status("Scheduled"), status("Running"), JOB, NOW))
        # a new CREAM state is a change too
        self.assertTrue(
            matches(
                r,
                status("Running", cream_state="Running"),
                status("Running", cream_state="Really-running"),
                JOB,
                NOW,
            )
        )
        self.assertTrue(matches(r, None, status("Running"), JOB, NOW))  # bootstrap

    def test_terminal_only(self) -> None:
        r = reg(flags=Flags(terminal_only=True))
        self.assertFalse(matches(r, status("Scheduled"), status("Running"), JOB, NOW))
        for state in ("Done", "Aborted", "Cancelled", "Cleared", "Purged"):
            self.assertTrue(matches(r, status("Running"), status(state), JOB, NOW), state)

    def test_job_condition(self) -> None:
        r = reg(Conditions(jobids=(JOB,)))
        self.assertTrue(matches(r, None, status(), JOB, NOW))
        self.assertTrue(matches(r, None, status(), "CREAM000000001", NOW))
        self.assertFalse(matches(r, None, status(), JOB2, NOW))

    def test_owner_condition(self) -> None:
        r = reg(Conditions(owner="/dc=org/dc=EXAMPLE/cn=jana novakova"))
        self.assertTrue(matches(r, None, status(), JOB, NOW))
        theirs = status()
        theirs.owner = OTHER
        self.assertFalse(matches(r, None, theirs, JOB, NOW))
        theirs.owner = None
        self.assertFalse(matches(r, None, theirs, JOB, NOW))

    def test_host_vo_destination_states(self) -> None:
        s = status(
            "Running",
            network_server="NS.example.org",
            destination="ce.example.org:8443/cream-pbs-long",
            user_fqans=["/atlas/Role=NULL/Capability=NULL"],
            cream_state="Really-running",
        )
        for cond, expected in [
            (Conditions(network_server="ns.example.org"), True),
            (Conditions(network_server="other.example.org"), False),
            (Conditions(destination="ce.example.org:8443/cream-pbs-long"), True),
            (Conditions(destination="ce.example.org:8443/cream-pbs-short"), False),
            (Conditions(vo="atlas"), True),
            (Conditions(vo="/ATLAS"), True),
            (Conditions(vo="cms"), False),
            (Conditions(states=("running",)), True),
            (Conditions(states=("Really-Running",)), True),
            (Conditions(states=("Done",)), False),
            (Conditions(vo="atlas", states=("Done",)), False),
        ]:
            self.assertEqual(matches(reg(cond), None, s, JOB, NOW), expected, cond)
        self.assertFalse(matches(reg(Conditions(vo="atlas")), None, status(), JOB, NOW))


class IndexTests(SynchronousTestCase):
    def test_candidates_by_job_owner_and_all(self) -> None:
        index = RegistrationIndex()
        by_job = Registration("a", OWNER, conditions=Conditions(jobids=(JOB,)))
        by_owner = Registration("b", OWNER, conditions=Conditions(owner=OWNER.upper()))
        everything = Registration("c", OTHER)
        for r in (by_job, by_owner, everything):
            index.add(r)
        # many unrelated registrations are never candidates
        for i in range(200):
            index.add(
                Registration(f"x{i}", OTHER, conditions=Conditions(jobids=(f"CREAM9{i:08d}",)))
            )
            index.add(Registration(f"y{i}", OTHER, conditions=Conditions(owner=f"/CN=u{i}")))
        self.assertEqual([r.unique for r in index.candidates(JOB, OWNER)], ["a", "b", "c"])
        self.assertEqual([r.unique for r in index.candidates(JOB2, OTHER)], ["c"])
        self.assertEqual([r.unique for r in index.candidates(JOB, None)], ["a", "c"])
        self.assertEqual(len(index), 403)

    def test_replace_and_remove(self) -> None:
        index = RegistrationIndex()
        index.add(Registration("a", OWNER, conditions=Conditions(jobids=(JOB,))))
        index.add(Registration("a", OWNER, conditions=Conditions(jobids=(JOB2,))))
        self.assertEqual(index.candidates(JOB, None), [])
        self.assertEqual([r.unique for r in index.candidates(JOB2, None)], ["a"])
        self.assertIsNotNone(index.remove("a"))
        self.assertIsNone(index.remove("a"))
        self.assertEqual((index.by_job, index.by_owner, index.all_jobs), ({}, {}, set()))

    def test_of_owner(self) -> None:
        index = RegistrationIndex()
        index.add(Registration("a", OWNER, created=2))
        index.add(Registration("b", OWNER.lower(), created=1))
        index.add(Registration("c", OTHER))
        self.assertEqual([r.unique for r in index.of_owner(OWNER)], ["b", "a"])
        self.assertEqual((index.count_of(OWNER.upper()), index.count_of(OTHER)), (2, 1))
        index.add(Registration("a", OTHER))  # moved to another owner
        index.remove("c")
        self.assertEqual((index.count_of(OWNER), index.count_of(OTHER)), (1, 1))
        index.remove("a")
        index.remove("b")
        self.assertEqual(index.held, {})


class MessageTests(SynchronousTestCase):
    def test_status_without_jdl_by_default(self) -> None:
        s = status(jdl="[ Executable = x ]")
        data = message_status(s, JOB, jdl=False, anonymized=False)
        self.assertNotIn("jdl", data)
        self.assertEqual(data["jobId"], JOB)
        self.assertEqual(data["owner"], OWNER)
        self.assertNotIn("event_count", data)
        stored = status_message(s, JOB, anonymized=False)
        out, upto = render_message(4, stored, Flags(jdl=True))
        body = json.loads(out)
        self.assertEqual(upto, None)
        self.assertEqual((body["seq"], body["kind"], body["jobid"]), (4, "status", JOB))
        self.assertEqual(body["jdl"], "[ Executable = x ]")
        self.assertEqual(body["status"]["jdl"], "[ Executable = x ]")
        body = json.loads(render_message(4, stored, Flags())[0])
        self.assertNotIn("jdl", body)
        self.assertNotIn("jdl", body["status"])
        self.assertEqual(body["status"], message_status(s, JOB, jdl=False, anonymized=False))

    def test_anonymized(self) -> None:
        s = status(payload_owner=OTHER, user_fqans=["/atlas"], acl=[{"user_id": OTHER}])
        data = message_status(s, JOB, jdl=False, anonymized=True)
        self.assertEqual(data["owner"], anonymize_dn(OWNER))
        self.assertEqual(data["payload_owner"], anonymize_dn(OTHER))
        self.assertEqual((data["acl"], data["user_fqans"]), ([], []))
        self.assertNotIn(OWNER, json.dumps(data))
        self.assertEqual(anonymize_dn(OWNER), anonymize_dn(OWNER.upper()))
        self.assertNotEqual(anonymize_dn(OWNER), anonymize_dn(OTHER))
        # by the registrant's rights, or by its flag
        by_rights = render_message(1, status_message(s, JOB, anonymized=True), Flags())[0]
        by_flag = render_message(
            1, status_message(s, JOB, anonymized=False), Flags(anonymized=True)
        )[0]
        self.assertEqual(by_rights, by_flag)
        self.assertNotIn(OWNER.encode(), by_rights)

    def test_jdl_stored_but_sent_only_with_the_flag(self) -> None:
        """
        The stored body is the status in its compact form (JDL fields
        included); the client gets the JDL only with the flag.
        """
        s = status(jdl="[ Executable = x ]", cream_jdl="[ Executable = y ]")
        stored = status_message(s, JOB, anonymized=False)
        self.assertEqual(json.loads(stored)["status"], json.loads(s.to_compact_json()))
        self.assertEqual(JobStatus.from_json_dict(json.loads(stored)["status"]), s)
        self.assertNotIn(b"Executable", render_message(1, stored, Flags())[0])
        self.assertIn(b"Executable = y", render_message(1, stored, Flags(jdl=True))[0])

    def test_body_of_a_serialised_status(self) -> None:
        """
        L{status_body} makes the same body of the status's text, as str or bytes.
        """
        s = status(event_count=3)
        head = status_head(JOB, False)
        stored = status_message(s, JOB, anonymized=False)
        self.assertEqual(status_body(head, 3, s.to_compact_json()), stored)
        self.assertEqual(status_body(head, 3, s.to_compact_json().decode()), stored)
        self.assertEqual(
            json.loads(status_body(status_head(JOB, True), 3, s.to_json()))["view"], "anonymized"
        )

    def test_history_count(self) -> None:
        s = status(event_count=7)
        stored = status_message(s, JOB, anonymized=False)
        self.assertEqual(render_message(1, stored, Flags(history=True))[1], 7)
        self.assertIsNone(render_message(1, stored, Flags())[1])

    def test_gap_rendered_as_is(self) -> None:
        self.assertEqual(
            render_message(9, gap_message(2), Flags(jdl=True)),
            (b'{"seq":9,"kind":"gap","dropped":2}', None),
        )

    def test_with_seq(self) -> None:
        self.assertEqual(
            json.loads(with_seq(5, gap_message(3))), {"seq": 5, "kind": "gap", "dropped": 3}
        )

    def test_sse(self) -> None:
        self.assertEqual(
            sse_event(3, "status", b'{"seq":3}'), b'id: 3\nevent: status\ndata: {"seq":3}\n\n'
        )
        self.assertEqual(sse_end("expired"), b'event: end\ndata: {"reason": "expired"}\n\n')


class TrimTests(SynchronousTestCase):
    def test_within_bounds(self) -> None:
        bounds = QueueBounds(max_messages=3, max_bytes=100)
        self.assertIsNone(trim(3, 100, iter([(1, 50)]), bounds))

    def test_count(self) -> None:
        bounds = QueueBounds(max_messages=3, max_bytes=1000)
        queue = [(1, 10), (2, 10), (3, 10), (4, 10), (5, 10)]
        self.assertEqual(trim(5, 50, iter(queue), bounds), Trim(2, 2, 20))

    def test_bytes(self) -> None:
        bounds = QueueBounds(max_messages=100, max_bytes=25)
        queue = [(1, 10), (2, 10), (3, 10), (4, 10)]
        self.assertEqual(trim(4, 40, iter(queue), bounds), Trim(2, 2, 20))

    def test_reads_lazily(self) -> None:
        read = []

        def oldest():  # type: ignore[no-untyped-def]
            for seq in range(1, 10_000):
                read.append(seq)
                yield seq, 1

        trim(10_000, 10_000, oldest(), QueueBounds(max_messages=9_998, max_bytes=10**9))
        self.assertEqual(read, [1, 2, 3])

    def test_bad_bounds(self) -> None:
        self.assertRaises(ValueError, QueueBounds, 0, 1)
        self.assertRaises(ValueError, QueueBounds, 1, 0)
