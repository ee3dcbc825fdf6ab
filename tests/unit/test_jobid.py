# -*- test-case-name: tests.unit.test_jobid -*-
"""
Tests for L{lbtwist.core.jobid}.
"""

from __future__ import annotations

import base64
import hashlib
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core.errors import JOBID_FORMAT, InvalidValue, JobIdFormat
from lbtwist.core.jobid import (
    CREAM_PORT_SHIFT,
    DEFAULT_PORT,
    JobId,
    generate,
    parse_endpoint,
    query_candidates,
    relay_destination,
    subjob,
    unique_of,
)

URLSAFE = frozenset(string.ascii_letters + string.digits + "-_")
HOSTS = st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True)
PORTS = st.integers(min_value=1, max_value=65535)
UNIQUES = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/"
    ),
    min_size=1,
    max_size=40,
)


class ParseTests(SynchronousTestCase):
    """
    L{JobId.parse} and L{JobId.__str__}.
    """

    def test_explicitPort(self) -> None:
        jid = JobId.parse("https://devel15.cnaf.infn.it:9000/-rlI2VjgDKbgkg0Lr7ylnw")
        self.assertEqual(jid, JobId("devel15.cnaf.infn.it", 9000, "-rlI2VjgDKbgkg0Lr7ylnw"))

    def test_defaultPort(self) -> None:
        """
        Without a port, the port is 9000, and it is written out explicitly.
        """
        jid = JobId.parse("https://lb.example.org/abc")
        self.assertEqual(jid.port, DEFAULT_PORT)
        self.assertEqual(str(jid), "https://lb.example.org:9000/abc")

    def test_creamId(self) -> None:
        jid = JobId.parse("https://ce.example.org:8443/CREAM123456789")
        self.assertTrue(jid.is_cream)
        self.assertEqual(
            (jid.host, jid.port, jid.unique), ("ce.example.org", 8443, "CREAM123456789")
        )
        self.assertFalse(JobId.parse("https://lb.example.org:9000/xCREAM1").is_cream)

    def test_endpoints(self) -> None:
        jid = JobId.parse("https://lb.example.org:9000/abc")
        self.assertEqual(jid.query_endpoint, ("lb.example.org", 9000))
        self.assertEqual(jid.store_endpoint, ("lb.example.org", 9001))

    def test_ipv6(self) -> None:
        jid = JobId.parse("https://[::1]:9000/abc")
        self.assertEqual(jid.host, "::1")
        self.assertEqual(str(jid), "https://[::1]:9000/abc")

    def test_rejected(self) -> None:
        """
        Other schemes, empty host or unique, a unique with '/' or spaces and bad
        ports raise L{JobIdFormat} with code 1409.
        """
        for bad in [
            "http://lb.example.org:9000/abc",
            "HTTPS://lb.example.org:9000/abc",
            "lb.example.org:9000/abc",
            "",
            "https://",
            "https:///abc",
            "https://:9000/abc",
            "https://lb.example.org:9000",
            "https://lb.example.org:9000/",
            "https://lb.example.org/",
            "https://lb.example.org:9000/a/b",
            "https://lb.example.org:9000/a b",
            "https://lb.example.org:9000/a\tb",
            "https://lb.example.org:9000/abc\n",
            "https://lb.example.org:/abc",
            "https://lb.example.org:x9000/abc",
            "https://lb.example.org:+900/abc",
            "https://lb.example.org:0/abc",
            "https://lb.example.org:65536/abc",
            "https://lb.example.org:9000:1/abc",
            "https://lb example.org:9000/abc",
            "https://[::1/abc",
            "https://[]:9000/abc",
            "https://[::1]x/abc",
        ]:
            with self.assertRaises(JobIdFormat, msg=bad) as cm:
                JobId.parse(bad)
            self.assertEqual(cm.exception.code, JOBID_FORMAT)

    @settings(max_examples=200, deadline=None)
    @given(HOSTS, PORTS, UNIQUES)
    def test_roundTrip(self, host: str, port: int, unique: str) -> None:
        jid = JobId(host, port, unique)
        self.assertEqual(JobId.parse(str(jid)), jid)


class GenerateTests(SynchronousTestCase):
    """
    L{generate} and L{subjob}.
    """

    def test_deterministic(self) -> None:
        """
        The unique part depends only on the inputs given.
        """
        a = generate("lb.example.org", now=1_700_000_000_000_000, pid=42, rnd=b"\x01\x02")
        b = generate("lb.example.org", now=1_700_000_000_000_000, pid=42, rnd=b"\x01\x02")
        self.assertEqual(a, b)
        self.assertEqual((a.host, a.port), ("lb.example.org", DEFAULT_PORT))
        others = {
            generate("lb.example.org", now=1_700_000_000_000_001, pid=42, rnd=b"\x01\x02"),
            generate("lb.example.org", now=1_700_000_000_000_000, pid=43, rnd=b"\x01\x02"),
            generate("lb.example.org", now=1_700_000_000_000_000, pid=42, rnd=b"\x01\x03"),
            generate("lb2.example.org", now=1_700_000_000_000_000, pid=42, rnd=b"\x01\x02"),
        }
        self.assertEqual(len({o.unique for o in others} | {a.unique}), 5)

    def test_port(self) -> None:
        jid = generate("lb.example.org", 9100, now=0, pid=1, rnd=b"")
        self.assertEqual(str(jid), f"https://lb.example.org:9100/{jid.unique}")

    @settings(max_examples=200, deadline=None)
    @given(
        HOSTS, PORTS, st.integers(min_value=0, max_value=2**62), st.integers(0, 2**22), st.binary()
    )
    def test_unique22UrlSafe(self, host: str, port: int, now: int, pid: int, rnd: bytes) -> None:
        """
        A generated unique part is always 22 URL-safe base64 characters, and the
        id parses back.
        """
        jid = generate(host, port, now=now, pid=pid, rnd=rnd)
        self.assertEqual(len(jid.unique), 22)
        self.assertTrue(set(jid.unique) <= URLSAFE, jid.unique)
        self.assertEqual(JobId.parse(str(jid)), jid)

    def test_subjobKnownValue(self) -> None:
        """
        The sub-job unique part is base64url(MD5("<parent unique>,<seed>,<index>")),
        unpadded, on the parent's server.
        """
        parent = JobId("lb.example.org", 9100, "parentUnique")
        expected = (
            base64.urlsafe_b64encode(hashlib.md5(b"parentUnique,seed,0").digest())
            .decode()
            .rstrip("=")
        )
        self.assertEqual(subjob(parent, "seed", 0), JobId("lb.example.org", 9100, expected))

    @settings(max_examples=200, deadline=None)
    @given(UNIQUES, st.text(max_size=20), st.integers(0, 10_000), st.integers(0, 10_000))
    def test_subjobDistinct(self, unique: str, seed: str, i: int, j: int) -> None:
        """
        Sub-job ids are deterministic and distinct for distinct indexes.
        """
        parent = JobId("lb.example.org", 9000, unique)
        self.assertEqual(subjob(parent, seed, i), subjob(parent, seed, i))
        self.assertEqual(len(subjob(parent, seed, i).unique), 22)
        if i != j:
            self.assertNotEqual(subjob(parent, seed, i), subjob(parent, seed, j))


class QueryCandidatesTests(SynchronousTestCase):
    """
    L{query_candidates} and L{parse_endpoint}.
    """

    def test_plain(self) -> None:
        self.assertEqual(
            query_candidates("https://lb.example.org:9000/abc", endpoint=None, env={}),
            [("lb.example.org", 9000)],
        )
        self.assertEqual(
            query_candidates("https://lb.example.org:9100/abc", endpoint=None, env={}),
            [("lb.example.org", 9100)],
        )

    def test_creamShifted(self) -> None:
        """
        A CREAM unique part on a port other than 9000 tries port + 557 first.
        """
        self.assertEqual(CREAM_PORT_SHIFT, 557)
        self.assertEqual(
            query_candidates("https://ce.example.org:8443/CREAM123", endpoint=None, env={}),
            [("ce.example.org", 9000), ("ce.example.org", 8443)],
        )

    def test_creamOnDefaultPort(self) -> None:
        self.assertEqual(
            query_candidates("https://ce.example.org:9000/CREAM123", endpoint=None, env={}),
            [("ce.example.org", 9000)],
        )
        self.assertEqual(
            query_candidates("https://ce.example.org/CREAM123", endpoint=None, env={}),
            [("ce.example.org", 9000)],
        )

    def test_creamShiftOverflow(self) -> None:
        """
        A shifted port that would not be a port is not tried.
        """
        self.assertEqual(
            query_candidates("https://ce.example.org:65500/CREAM1", endpoint=None, env={}),
            [("ce.example.org", 65500)],
        )

    def test_jobIdObject(self) -> None:
        jid = JobId("ce.example.org", 8443, "CREAM1")
        self.assertEqual(
            query_candidates(jid, endpoint=None, env={}),
            [("ce.example.org", 9000), ("ce.example.org", 8443)],
        )

    def test_endpointWins(self) -> None:
        env = {"GLITE_WMS_QUERY_SERVER": "env.example.org:9002"}
        for text, expected in [
            ("lbq.example.org:9005", ("lbq.example.org", 9005)),
            ("lbq.example.org", ("lbq.example.org", 9000)),
            ("https://lbq.example.org:9005/", ("lbq.example.org", 9005)),
            ("https://lbq.example.org:9005", ("lbq.example.org", 9005)),
            ("https://lbq.example.org/", ("lbq.example.org", 9000)),
            ("[::1]:9005", ("::1", 9005)),
        ]:
            self.assertEqual(
                query_candidates("https://ce.example.org:8443/CREAM1", endpoint=text, env=env),
                [expected],
                text,
            )

    def test_env(self) -> None:
        jid = "https://ce.example.org:8443/CREAM1"
        self.assertEqual(
            query_candidates(jid, endpoint=None, env={"GLITE_WMS_QUERY_SERVER": "q.example.org"}),
            [("q.example.org", 9000)],
        )
        self.assertEqual(
            query_candidates(jid, endpoint=None, env={"EDG_WL_QUERY_SERVER": "old.example.org:1"}),
            [("old.example.org", 1)],
        )
        both = {"GLITE_WMS_QUERY_SERVER": "new.example.org:2", "EDG_WL_QUERY_SERVER": "old:1"}
        self.assertEqual(query_candidates(jid, endpoint=None, env=both), [("new.example.org", 2)])

    def test_emptySettingsIgnored(self) -> None:
        self.assertEqual(
            query_candidates(
                "https://lb.example.org:9000/abc",
                endpoint="",
                env={"GLITE_WMS_QUERY_SERVER": "", "EDG_WL_QUERY_SERVER": ""},
            ),
            [("lb.example.org", 9000)],
        )

    def test_badJobId(self) -> None:
        self.assertRaises(
            JobIdFormat, query_candidates, "http://lb.example.org/abc", endpoint="q:1", env={}
        )

    def test_badEndpoint(self) -> None:
        """
        A malformed configured server raises L{InvalidValue}.
        """
        for bad in [
            "q:",
            "q:abc",
            "q:70000",
            "https://q:9000/path",
            "http://q:9000/",
            ":9000",
            " ",
        ]:
            self.assertRaises(InvalidValue, parse_endpoint, bad)
            self.assertRaises(
                InvalidValue,
                query_candidates,
                "https://lb.example.org/abc",
                endpoint=None,
                env={"GLITE_WMS_QUERY_SERVER": bad},
            )


class StoreHelperTests(SynchronousTestCase):
    """
    The job-id questions the store and the relay policy ask, answered by the one parser.
    """

    def test_unique_of(self) -> None:
        self.assertEqual(unique_of("https://lb.example.org:9000/Hq3tK8vW"), "Hq3tK8vW")
        self.assertEqual(unique_of("https://lb.example.org/Hq3tK8vW"), "Hq3tK8vW")
        self.assertEqual(unique_of("https://[2001:db8::1]:8443/CREAM42"), "CREAM42")
        # A bare CREAM id (CREAMAccepted's local_jobid) is its own key.
        self.assertEqual(unique_of("CREAM42"), "CREAM42")
        self.assertEqual(unique_of("not a job id"), "not a job id")

    def test_relay_destination(self) -> None:
        """
        A WMS job's events go to its server's store port: query port + 1.
        """
        self.assertEqual(
            relay_destination("https://lb.example.org:9000/U1", ()), "lb.example.org:9001"
        )
        self.assertEqual(relay_destination("https://lb.example.org/U1", ()), "lb.example.org:9001")
        self.assertEqual(
            relay_destination("https://lb.example.org:7846/U1", ()), "lb.example.org:7847"
        )
        self.assertEqual(
            relay_destination("https://lb.example.org/U1", ()),
            "{}:{}".format(*JobId.parse("https://lb.example.org/U1").store_endpoint),
        )

    def test_relay_destination_host_lower_case(self) -> None:
        """
        Host names compare and are written in lower case (as the old URL split did).
        """
        self.assertEqual(relay_destination("https://LB.Example.ORG/U1", ()), "lb.example.org:9001")
        self.assertIsNone(
            relay_destination("https://LB.Example.ORG/U1", {("lb.example.org", 9000)})
        )

    def test_relay_destination_ipv6(self) -> None:
        self.assertEqual(relay_destination("https://[2001:db8::1]:9000/U1", ()), "2001:db8::1:9001")

    def test_local_and_cream_not_relayed(self) -> None:
        self.assertIsNone(relay_destination("https://ce.example.org:8443/CREAM42", ()))
        self.assertIsNone(
            relay_destination("https://ce.example.org:9000/U1", {("ce.example.org", 9000)})
        )
        self.assertEqual(
            relay_destination("https://ce.example.org:9010/U1", {("ce.example.org", 9000)}),
            "ce.example.org:9011",
        )

    def test_no_job_id_not_relayed(self) -> None:
        for text in ("not a job id", "https://lb.example.org:port/U1", "https://lb.example.org/"):
            self.assertIsNone(relay_destination(text, ()), text)

    @given(HOSTS, PORTS, UNIQUES)
    @settings(max_examples=200)
    def test_agrees_with_parse(self, host: str, port: int, unique: str) -> None:
        """
        Both helpers answer from L{JobId.parse}: the same unique part and endpoint.
        """
        text = f"https://{host}:{port}/{unique}"
        try:
            jid = JobId.parse(text)
        except JobIdFormat:
            self.assertIsNone(relay_destination(text, ()))
            return
        self.assertEqual(unique_of(text), jid.unique)
        expected = None if jid.is_cream else f"{host}:{port + 1}"
        self.assertEqual(relay_destination(text, ()), expected)
