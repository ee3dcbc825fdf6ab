# -*- test-case-name: tests.unit.test_storeport -*-
"""
Tests for L{lbtwist.service.storeport}: the server's store port, alone over a
StringTransport and behind the relay over in-memory TLS with real certificates.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbtwist.core import ilproto
from lbtwist.core.events import parse_event
from lbtwist.security.authz import JobRights, Policy, parse_policy
from lbtwist.security.identity import Identity, PeerIdentity, slash_dn
from lbtwist.security.tls import ClientConnectionCreator, ServerContextSource, client_context
from lbtwist.service.relay import RelayService, RelaySettings
from lbtwist.service.storeport import (
    StorePortFactory,
    authorization_summary,
    may_log,
    required_action,
)
from lbtwist.testing import MemoryStore
from tests import traces
from tests.certs import NOW, TestCA
from tests.logcapture import capture_log

JOB = "https://lb01.example.org:9000/JobAaaaaaaaaaaaaaaaaaaa"
OWNER = traces.WMS_USER
RELAY_DN = "/DC=org/DC=example/CN=host/relay.example.org"


def policy_for(dn: str, *actions: str) -> Policy:
    body = "".join(f'action "{a}" {{ rule permit {{ subject = "{dn}" }} }}\n' for a in actions)
    return parse_policy(f'resource "LB" {{\n{body}}}\n')


class Server:
    """
    A store port factory on a memory store, one StringTransport connection.
    """

    def __init__(self, peer: str | None, **kw: Any) -> None:
        self.store = kw.pop("store", None) or MemoryStore(Clock(), relay=False)
        identity = Identity(peer) if peer is not None else None
        self.factory = StorePortFactory(self.store, identify=lambda t: identity, **kw)
        self.transport = StringTransport()
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._replies = ilproto.ILReplyDecoder()

    def send(self, *lines: str) -> None:
        self.proto.dataReceived(
            b"".join(ilproto.encode_il_msg(line.encode() + b"\n") for line in lines)
        )

    def replies(self) -> list[tuple[int, int]]:
        data = self.transport.value()
        self.transport.clear()
        return [(r.major, r.minor) for r in self._replies.feed(data)]

    def stored(self, jobid: str = JOB) -> list[str]:
        out: list[Any] = []
        self.store.events(jobid).addCallback(out.extend)
        return [s.line for s in out]


OK = (0, 0)
PERM = (ilproto.LB_PERM, errno.EPERM)
ENOENT = (ilproto.LB_DBERR, errno.ENOENT)


class StorePortTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines = traces.wms_prelude(JOB)

    def test_owner_registers_and_logs(self) -> None:
        s = Server(OWNER)
        s.send(*self.lines)
        self.assertEqual(s.replies(), [OK] * len(self.lines))
        self.assertEqual(sorted(s.stored()), sorted(self.lines))
        self.assertEqual(s.factory.stats.accepted, len(self.lines))

    def test_regjob_first(self) -> None:
        s = Server(OWNER)
        s.send(*self.lines[1:3])
        self.assertEqual(s.replies(), [ENOENT, ENOENT])
        self.assertEqual(s.stored(), [])
        s.send(self.lines[0])
        s.send(*self.lines[1:3])
        self.assertEqual(s.replies(), [OK, OK, OK])

    def test_grey_jobs(self) -> None:
        s = Server(RELAY_DN, grey_jobs=True, policy=policy_for(RELAY_DN, "LOG_WMS_EVENTS"))
        s.send(*self.lines[1:3])
        self.assertEqual(s.replies(), [OK, OK])

    def test_grey_job_has_no_owner(self) -> None:
        """
        A grey job has no stored owner: DG.USER claiming the peer does not make
        it the owner, only relays and super users log there.
        """
        s = Server(OWNER, grey_jobs=True)
        s.send(*self.lines[1:3])
        self.assertEqual(s.replies(), [PERM, PERM])
        self.assertEqual(s.stored(), [])

    def test_known_job_looked_up_in_store(self) -> None:
        store = MemoryStore(Clock(), relay=False)
        first = Server(OWNER, store=store)
        first.send(self.lines[0])
        self.assertEqual(first.replies(), [OK])
        again = Server(OWNER, store=store)
        again.send(*self.lines[1:])
        self.assertEqual(again.replies(), [OK] * (len(self.lines) - 1))

    def test_stranger_refused(self) -> None:
        s = Server("/DC=org/DC=example/CN=Somebody Else")
        s.send(self.lines[0])
        self.assertEqual(s.replies(), [PERM])
        s2 = Server(None)
        s2.send(self.lines[0])
        self.assertEqual(s2.replies(), [PERM])

    def test_trusted_relay_by_policy(self) -> None:
        s = Server(RELAY_DN, policy=policy_for(RELAY_DN, "LOG_WMS_EVENTS"))
        s.send(self.lines[0])
        self.assertEqual(s.replies(), [PERM])
        s = Server(RELAY_DN, policy=policy_for(RELAY_DN, "REGISTER_JOBS", "LOG_WMS_EVENTS"))
        s.send(*self.lines)
        self.assertEqual(s.replies(), [OK] * len(self.lines))

    def test_super_user(self) -> None:
        s = Server(RELAY_DN, super_users=[RELAY_DN.upper()])
        s.send(*self.lines)
        self.assertEqual(s.replies(), [OK] * len(self.lines))

    def test_required_actions(self) -> None:
        reg, acc = parse_event(self.lines[0]), parse_event(self.lines[1])
        self.assertEqual(required_action(reg), "REGISTER_JOBS")
        self.assertEqual(required_action(acc), "LOG_WMS_EVENTS")
        self.assertEqual(required_action(acc.evolve(source="CREAMExecutor")), "LOG_CE_EVENTS")
        self.assertEqual(required_action(acc.evolve(source="LRMS")), "LOG_CE_EVENTS")
        self.assertEqual(required_action(acc.evolve(source="Application")), "LOG_GENERAL_EVENTS")
        ce = policy_for(RELAY_DN, "LOG_CE_EVENTS")
        relay = Identity(RELAY_DN)
        self.assertTrue(may_log(relay, acc.evolve(source="LRMS"), ce, ()))
        self.assertFalse(may_log(relay, acc, ce, ()))
        # The owner is the job's stored owner, not DG.USER.
        self.assertFalse(may_log(Identity(OWNER.lower()), acc, Policy(), ()))
        owned = JobRights(owner=OWNER)
        self.assertTrue(may_log(Identity(OWNER.lower()), acc, Policy(), (), owned))

    def test_duplicate_ok_stored_once(self) -> None:
        s = Server(OWNER)
        s.send(*self.lines[:3])
        s.send(*self.lines[:3])
        self.assertEqual(s.replies(), [OK] * 6)
        self.assertEqual(len(s.stored()), 3)
        self.assertEqual(s.factory.stats.duplicates, 3)

    def test_reply_only_when_durable(self) -> None:
        pending: list[tuple[Any, Deferred[Any]]] = []

        def runner(work: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((work, d))
            return d

        store = MemoryStore(Clock(), relay=False, runner=runner)
        s = Server(OWNER, store=store)
        s.send(self.lines[0])
        self.assertEqual(s.replies(), [])
        work, d = pending.pop()
        d.callback(work())
        self.assertEqual(s.replies(), [OK])

    def test_bad_event_answered_in_order(self) -> None:
        s = Server(OWNER)
        s.send(self.lines[0], "DATE=garbage", self.lines[1])
        replies = s.replies()
        self.assertEqual(replies[0], OK)
        self.assertEqual(replies[1][0], ilproto.LB_PROTO)
        self.assertEqual(replies[2], OK)

    def test_logd_framing(self) -> None:
        s = Server(OWNER)
        s.proto.dataReceived(ilproto.encode_logd(self.lines[0].encode() + b"\n"))
        self.assertEqual(s.transport.value(), ilproto.encode_logd_answer(0))

    def test_broken_framing_closes(self) -> None:
        s = Server(OWNER)
        s.send(self.lines[0])
        s.proto.dataReceived(b"  xx garbage header\n")
        self.assertEqual(s.replies()[0], OK)
        self.assertTrue(s.transport.disconnecting)

    def test_line_framing_refused(self) -> None:
        s = Server(OWNER)
        s.proto.dataReceived(self.lines[0].encode() + b"\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.stored(), [])

    def test_connections_counted(self) -> None:
        """
        Connections are counted, not refused: the TLS port bounds them
        (tests.unit.test_ports).
        """
        s = Server(OWNER)
        extra = s.factory.buildProtocol(None)
        transport = StringTransport()
        extra.makeConnection(transport)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(s.factory.stats.connections, 2)
        s.proto.connectionLost()
        extra.connectionLost()
        self.assertEqual(s.factory.stats.connections, 0)


class StorePortNoDelayTests(SynchronousTestCase):
    def test_replies_without_nagle(self) -> None:
        """
        The store port turns Nagle's algorithm off on each connection's socket.
        """

        class TCP(StringTransport):
            no_delay: list[bool] = []

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.no_delay.append(enabled)

        factory = StorePortFactory(MemoryStore(Clock(), relay=False), identify=lambda t: None)
        proto = factory.buildProtocol(None)
        tcp = TCP()
        proto.makeConnection(tcp)
        self.assertEqual(tcp.no_delay, [True])


class StorePortFramingTests(SynchronousTestCase):
    """
    The store port on the shared framing module.
    """

    def setUp(self) -> None:
        self.lines = traces.wms_prelude(JOB)

    def test_oversize_read_to_its_end(self) -> None:
        """
        An oversize IL message is read to its end, answered E2BIG in its
        place, and the connection goes on.
        """
        s = Server(OWNER, max_line=2000)
        big = ilproto.encode_il_msg(b"x" * 10000)
        s.send(self.lines[0])
        s.proto.dataReceived(big[:5000])
        self.assertEqual(s.replies(), [OK])
        s.proto.dataReceived(big[5000:])
        s.send(self.lines[1])
        self.assertEqual(s.replies(), [(ilproto.LB_PROTO, errno.E2BIG), OK])
        self.assertFalse(s.transport.disconnecting)

    def test_oversize_logd(self) -> None:
        s = Server(OWNER, max_line=len(self.lines[0]) + 2)
        s.proto.dataReceived(
            ilproto.encode_logd(b"x" * 10000) + ilproto.encode_logd(self.lines[0].encode())
        )
        self.assertEqual(
            s.transport.value(),
            ilproto.encode_logd_answer(errno.E2BIG) + ilproto.encode_logd_answer(0),
        )
        self.assertFalse(s.transport.disconnecting)

    def test_header_shape(self) -> None:
        """
        IL is recognized by the whole 17-byte header: a line starting with a
        space is line framing, which the store port refuses.
        """
        s = Server(OWNER)
        s.proto.dataReceived(b"  ")
        self.assertFalse(s.transport.disconnecting)
        s.proto.dataReceived(b"DATE=2024")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.transport.value(), b"")
        s = Server(OWNER)
        data = ilproto.encode_il_msg(self.lines[0].encode() + b"\n")
        for i in range(len(data)):
            s.proto.dataReceived(data[i : i + 1])
        self.assertEqual(s.replies(), [OK])


STRANGER = "/DC=org/DC=example/O=People/CN=Mallory Stranger"
GRANTEE = "/DC=org/DC=example/O=People/CN=Pilot Factory"
TAGGER = "/DC=org/DC=example/O=People/CN=Tag Writer"
OTHER_JOB = "https://lb01.example.org:9000/JobBbbbbbbbbbbbbbbbbbbb"
EEXIST = (ilproto.LB_PROTO, errno.EEXIST)


def ev_line(
    kind: str,
    user: str,
    n: int,
    *,
    jobid: str = JOB,
    source: str = "UserInterface",
    priority: int = 0,
    **fields: str,
) -> str:
    """
    One event of C{kind} on C{jobid} claiming DG.USER C{user} (distinct per C{n}).
    """
    line = traces.ulm_line(
        kind,
        date=traces.date_text(1000 + n),
        host="ui.example.org",
        source=source,
        jobid=jobid,
        seqcode=traces.glite_seqcode(UI=100 + n),
        user=user,
        **fields,
    )
    return line.replace("DG.PRIORITY=0", f"DG.PRIORITY={priority}")


def regjob(user: str, n: int, jobid: str = JOB, priority: int = 0) -> str:
    return ev_line(
        "RegJob",
        user,
        n,
        jobid=jobid,
        source="NetworkServer",
        priority=priority,
        ns="https://wms01.example.org:7443/wmproxy",
        jobtype="SIMPLE",
    )


def change_acl(user: str, n: int, who: str, permission: str = "READ") -> str:
    return ev_line(
        "ChangeACL",
        user,
        n,
        user_id=who,
        user_id_type="DN",
        permission=permission,
        permission_type="ALLOW",
        operation="ADD",
    )


class Peers:
    """
    One store port factory on a memory store, a StringTransport connection per
    peer DN (the identity comes from the transport).
    """

    def __init__(self, **kw: Any) -> None:
        self.store = kw.pop("store", None) or MemoryStore(Clock(), relay=False)
        self.status_calls = 0
        real = self.store.status

        def status(jobid: str) -> Any:
            self.status_calls += 1
            return real(jobid)

        self.store.status = status  # type: ignore[method-assign]
        self.factory = StorePortFactory(self.store, identify=lambda t: t.peer, **kw)

    def connect(self, dn: str | None) -> Connection:
        return Connection(self.factory, dn)

    def owner(self) -> str | None:
        return self.successResult(self.store.status(JOB)).owner

    def stored(self, jobid: str = JOB) -> list[str]:
        return [s.line for s in self.successResult(self.store.events(jobid))]

    @staticmethod
    def successResult(d: Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addCallback(out.append)
        return out[0]


class Connection:
    def __init__(self, factory: StorePortFactory, dn: str | None) -> None:
        self.transport = StringTransport()
        self.transport.peer = Identity(dn) if dn is not None else None  # type: ignore[attr-defined]
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._decoder = ilproto.ILReplyDecoder()

    def send(self, *lines: str) -> list[ilproto.ILReply]:
        self.proto.dataReceived(
            b"".join(ilproto.encode_il_msg(line.encode() + b"\n") for line in lines)
        )
        data = self.transport.value()
        self.transport.clear()
        return list(self._decoder.feed(data))

    def codes(self, *lines: str) -> list[tuple[int, int]]:
        return [(r.major, r.minor) for r in self.send(*lines)]


class WriteAuthorizationTests(SynchronousTestCase):
    """
    Who may write what at the store port: against the job's stored owner, ACL
    and payload owner, never the DG.USER an event claims.
    """

    def setUp(self) -> None:
        self.peers = Peers()
        self.alice = self.peers.connect(OWNER)
        self.assertEqual(self.alice.codes(regjob(OWNER, 0)), [OK])

    def test_stranger_cannot_rewrite_a_job(self) -> None:
        """
        The attack of issue 8: B, with a valid certificate, logs Abort,
        ChangeACL, TakePayloadOwnership and a second RegJob on A's job.
        """
        bob = self.peers.connect(STRANGER)
        before = self.peers.stored()
        attacks = [
            ev_line("Abort", STRANGER, 1, reason="mine now"),
            ev_line("Abort", OWNER, 2, reason="claims to be A"),
            change_acl(STRANGER, 3, STRANGER),
            change_acl(OWNER, 4, STRANGER),
            ev_line("TakePayloadOwnership", STRANGER, 5),
            regjob(STRANGER, 6),
            regjob(OWNER, 7),
            ev_line("UserTag", STRANGER, 8, name="x", value="y"),
        ]
        replies = bob.send(*attacks)
        self.assertEqual([(r.major, r.minor) for r in replies], [PERM] * len(attacks))
        for reply in replies:
            self.assertIn(STRANGER, reply.text)
            self.assertIn(JOB, reply.text)
        self.assertIn("only the job's owner may change its ACL", replies[2].text)
        self.assertIn("registered to another owner", replies[5].text)
        self.assertEqual(self.peers.stored(), before)
        self.assertEqual(self.peers.owner(), OWNER)
        self.assertEqual(self.peers.factory.stats.refused, len(attacks))
        # A still logs on its job.
        self.assertEqual(self.alice.codes(ev_line("Abort", OWNER, 9, reason="done")), [OK])

    def test_refusal_logged_with_peer_job_event_reason(self) -> None:
        try:
            # Where warnings are rate-limited process-wide: a fresh budget here.
            from lbtwist.service import logs  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            pass
        else:
            self.patch(logs, "LIMITER", logs.WarningLimiter())
        logged = capture_log(self)
        self.peers.connect(STRANGER).send(change_acl(STRANGER, 1, STRANGER))
        from twisted.logger import formatEvent

        texts = [formatEvent(e) for e in logged if "refused" in formatEvent(e)]
        self.assertEqual(len(texts), 1, texts)
        for part in (STRANGER, JOB, "ChangeACL", "only the job's owner"):
            self.assertIn(part, texts[0])

    def test_cached_answer_not_keyed_by_claimed_user(self) -> None:
        """
        B's own job and A's job on one connection: an answer for B's job (B
        owns it) is not reused for A's job because the events claim the same
        DG.USER.
        """
        bob = self.peers.connect(STRANGER)
        mine = ev_line("Abort", STRANGER, 1, jobid=OTHER_JOB, reason="mine")
        self.assertEqual(bob.codes(regjob(STRANGER, 0, OTHER_JOB), mine), [OK, OK])
        self.assertEqual(bob.codes(ev_line("Abort", STRANGER, 2, reason="theirs")), [PERM])
        # And the other way round, in one chunk.
        carol = self.peers.connect(STRANGER)
        theirs = ev_line("Abort", STRANGER, 3, reason="theirs")
        mine = ev_line("Abort", STRANGER, 4, jobid=OTHER_JOB, reason="mine")
        self.assertEqual(carol.codes(theirs, mine), [PERM, OK])

    def test_acl_and_payload_ownership(self) -> None:
        policy = policy_for(OWNER, "GRANT_OWNERSHIP")
        peers = Peers(policy=policy)
        alice = peers.connect(OWNER)
        # Registration, ACL and grant in one chunk: decided on the job as the
        # chunk leaves it.
        grant = ev_line("GrantPayloadOwnership", OWNER, 2, payload_owner=GRANTEE)
        self.assertEqual(
            alice.codes(regjob(OWNER, 0), change_acl(OWNER, 1, TAGGER, "TAG"), grant),
            [OK, OK, OK],
        )
        tagger, pilot, mallory = (peers.connect(d) for d in (TAGGER, GRANTEE, STRANGER))
        self.assertEqual(tagger.codes(ev_line("UserTag", TAGGER, 3, name="a", value="1")), [OK])
        take = ev_line("TakePayloadOwnership", GRANTEE, 4)
        self.assertEqual(mallory.codes(ev_line("TakePayloadOwnership", STRANGER, 5)), [PERM])
        self.assertEqual(
            mallory.codes(ev_line("UserTag", STRANGER, 5, name="a", value="2")), [PERM]
        )
        self.assertEqual(pilot.codes(take), [OK])
        self.assertEqual(pilot.codes(ev_line("UserTag", GRANTEE, 6, name="b", value="1")), [OK])
        self.assertEqual(peers.successResult(peers.store.status(JOB)).payload_owner, GRANTEE)
        # Without GRANT_OWNERSHIP even the owner may not grant.
        bare = Peers()
        owner = bare.connect(OWNER)
        self.assertEqual(owner.codes(regjob(OWNER, 0), grant), [OK, PERM])

    def test_acl_change_seen_by_other_connections(self) -> None:
        """
        The cached rights follow what this port stores: a TAG granted, then
        revoked, through one connection decides the next events of another.
        """
        tagger = self.peers.connect(TAGGER)
        tag = ev_line("UserTag", TAGGER, 1, name="a", value="1")
        self.assertEqual(tagger.codes(tag), [PERM])
        self.assertEqual(self.alice.codes(change_acl(OWNER, 2, TAGGER, "TAG")), [OK])
        self.assertEqual(tagger.codes(tag), [OK])
        revoke = change_acl(OWNER, 3, TAGGER, "TAG").replace('"ADD"', '"REMOVE"')
        self.assertEqual(self.alice.codes(revoke), [OK])
        self.assertEqual(tagger.codes(ev_line("UserTag", TAGGER, 4, name="a", value="2")), [PERM])

    def test_exclusive_and_takeover_registrations(self) -> None:
        """
        The owner's exclusive RegJob of its registered job, and a trusted
        relay's RegJob for another owner: EEXIST, a permanent (PROTO) reply.
        """
        replies = self.alice.send(regjob(OWNER, 1, priority=64))
        self.assertEqual([(r.major, r.minor) for r in replies], [EEXIST])
        self.assertIn("already registered", replies[0].text)
        self.assertEqual(self.alice.codes(regjob(OWNER, 0)), [OK])  # a duplicate
        peers = Peers(store=self.peers.store, policy=policy_for(RELAY_DN, "REGISTER_JOBS"))
        relay = peers.connect(RELAY_DN)
        self.assertEqual(relay.codes(regjob(STRANGER, 2)), [EEXIST])
        self.assertEqual(peers.owner(), OWNER)

    def test_one_lookup_per_job_and_chunk_then_cached(self) -> None:
        peers = Peers(store=self.peers.store)
        alice = peers.connect(OWNER)
        lines = [ev_line("UserTag", OWNER, n, name=f"t{n}", value="v") for n in range(1, 5)]
        self.assertEqual(alice.codes(*lines[:3]), [OK] * 3)
        self.assertEqual(peers.status_calls, 1)
        self.assertEqual(peers.factory.known[JOB], JobRights(owner=OWNER))
        self.assertEqual(peers.connect(OWNER).codes(lines[3]), [OK])
        self.assertEqual(peers.status_calls, 1)

    def test_trusted_relay_needs_no_lookup(self) -> None:
        policy = policy_for(RELAY_DN, "REGISTER_JOBS", "LOG_WMS_EVENTS", "LOG_GENERAL_EVENTS")
        peers = Peers(policy=policy)
        lines = traces.wms_prelude(JOB)
        self.assertEqual(peers.connect(RELAY_DN).codes(*lines), [OK] * len(lines))
        self.assertEqual(peers.status_calls, 0)
        # A relay's ChangeACL is refused whatever the policy: only the owner
        # changes the ACL.
        self.assertEqual(peers.connect(RELAY_DN).codes(change_acl(OWNER, 1, RELAY_DN)), [PERM])

    def test_start_up_summary(self) -> None:
        closed = authorization_summary(None, Policy(), ())
        self.assertIn("no policy file: only job owners and super users (0) may log", closed)
        policy = policy_for(RELAY_DN, "REGISTER_JOBS", "LOG_CE_EVENTS")
        opened = authorization_summary("/etc/lb/policy.conf", policy, ["/CN=a", "/CN=b"])
        self.assertIn("policy /etc/lb/policy.conf (actions LOG_CE_EVENTS, REGISTER_JOBS)", opened)
        self.assertIn("super users (2)", opened)


class DiskError(OSError):
    """
    A failed commit (logged by the store).
    """


class ManualCommits:
    """
    A memory store whose commits run when the test says, counting store calls.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []
        self.store = MemoryStore(Clock(), relay=False, runner=self._runner)
        self.calls: list[int] = []
        real = self.store.store

        def store(items: list[Any]) -> Deferred[Any]:
            self.calls.append(len(items))
            return real(items)

        self.store.store = store  # type: ignore[method-assign]

    def _runner(self, work: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((work, d))
        return d

    def commit(self) -> None:
        """
        Run the oldest commit group.
        """
        work, d = self.pending.pop(0)
        d.callback(work())

    def fail(self) -> None:
        """
        Fail the oldest commit group (nothing written).
        """
        _, d = self.pending.pop(0)
        d.errback(DiskError("disk I/O error"))


class RegistrationOrderTests(SynchronousTestCase):
    """
    A job counts as registered only once its RegJob is committed; events that
    depend on a RegJob still being committed wait for it, and fail with it.
    """

    def setUp(self) -> None:
        self.lines = traces.wms_prelude(JOB)
        self.commits = ManualCommits()
        self.server = Server(OWNER, store=self.commits.store)

    def other_connection(self) -> tuple[Any, StringTransport]:
        proto = self.server.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_one_store_call_per_chunk(self) -> None:
        s = self.server
        s.send(*self.lines)
        self.assertEqual(self.commits.calls, [len(self.lines)])
        self.commits.commit()
        self.assertEqual(s.replies(), [OK] * len(self.lines))

    def test_later_chunks_wait_and_go_together(self) -> None:
        s = self.server
        s.send(self.lines[0])
        s.send(*self.lines[1:3])
        s.send(*self.lines[3:])
        # One store call running; what came meanwhile waits, then goes in one call.
        self.assertEqual(self.commits.calls, [1])
        self.assertNotIn(JOB, s.factory.known)
        self.commits.commit()
        self.assertIn(JOB, s.factory.known)
        self.assertEqual(self.commits.calls, [1, len(self.lines) - 1])
        self.commits.commit()
        self.assertEqual(s.replies(), [OK] * len(self.lines))
        self.assertEqual(len(s.stored()), len(self.lines))

    def test_failed_registration_not_known(self) -> None:
        s = self.server
        s.send(self.lines[0])
        s.send(*self.lines[1:3])
        self.commits.fail()
        self.assertEqual(len(self.flushLoggedErrors(DiskError)), 1)
        self.assertNotIn(JOB, s.factory.known)
        self.assertEqual(s.factory.pending, {})
        # The later events find no registration: ENOENT, nothing stored.
        self.assertEqual(s.replies(), [(ilproto.LB_DBERR, errno.EAGAIN), ENOENT, ENOENT])
        self.assertEqual(self.commits.pending, [])
        self.assertEqual(s.stored(), [])

    def test_other_connection_waits_for_pending_registration(self) -> None:
        s = self.server
        s.send(self.lines[0])
        proto, transport = self.other_connection()
        proto.dataReceived(
            b"".join(ilproto.encode_il_msg(ln.encode() + b"\n") for ln in self.lines[1:3])
        )
        # Neither answered nor submitted before the RegJob is committed.
        self.assertEqual(self.commits.calls, [1])
        self.assertEqual(transport.value(), b"")
        self.commits.commit()
        self.assertEqual(self.commits.calls, [1, 2])
        self.commits.commit()
        replies = ilproto.ILReplyDecoder().feed(transport.value())
        self.assertEqual([(r.major, r.minor) for r in replies], [OK, OK])
        self.assertEqual(s.replies(), [OK])

    def test_other_connection_fails_with_pending_registration(self) -> None:
        s = self.server
        s.send(self.lines[0])
        proto, transport = self.other_connection()
        proto.dataReceived(
            b"".join(ilproto.encode_il_msg(ln.encode() + b"\n") for ln in self.lines[1:3])
        )
        self.commits.fail()
        self.assertEqual(len(self.flushLoggedErrors(DiskError)), 1)
        # Failed with the RegJob (to be sent again), never stored without it.
        replies = ilproto.ILReplyDecoder().feed(transport.value())
        self.assertEqual(
            [(r.major, r.minor) for r in replies], [(ilproto.LB_DBERR, errno.EAGAIN)] * 2
        )
        self.assertEqual(self.commits.calls, [1])
        self.assertEqual(s.stored(), [])
        self.assertEqual(s.factory.pending, {})

    def test_lost_connection_drops_what_was_not_submitted(self) -> None:
        s = self.server
        s.send(self.lines[0])
        s.send(*self.lines[1:])
        s.proto.connectionLost()
        self.commits.commit()
        self.assertEqual(self.commits.calls, [1])
        self.assertEqual(s.stored(), [self.lines[0]])

    def test_back_pressure(self) -> None:
        s = Server(OWNER, store=self.commits.store, max_inflight=4)
        s.send(*self.lines[:3])
        self.assertEqual(s.transport.producerState, "producing")
        s.send(*self.lines[3:6])
        self.assertEqual(s.transport.producerState, "paused")
        self.commits.commit()
        self.commits.commit()
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.replies(), [OK] * 6)


class RelayPipelineTests(SynchronousTestCase):
    """
    A trusted relay's stream needs no job state: each chunk goes to the store as
    it arrives, queued behind the commit running, so the store's next group is
    ready when that one ends (no round trip through the connection between
    commits).
    """

    def setUp(self) -> None:
        self.lines = traces.wms_prelude(JOB)
        self.commits = ManualCommits()
        policy = policy_for(RELAY_DN, "REGISTER_JOBS", "LOG_WMS_EVENTS", "LOG_GENERAL_EVENTS")
        self.server = Server(RELAY_DN, store=self.commits.store, policy=policy)

    def test_chunks_queued_while_committing(self) -> None:
        s = self.server
        s.send(self.lines[0])
        s.send(*self.lines[1:3])
        s.send(*self.lines[3:])
        # The job's later events follow its RegJob (still committing) into the store.
        self.assertEqual(self.commits.calls, [1, 2, len(self.lines) - 3])
        self.assertEqual(s.replies(), [])
        self.commits.commit()
        self.assertEqual(s.replies(), [OK])
        # What was queued meanwhile is the next group, one commit.
        self.assertEqual(len(self.commits.pending), 1)
        self.commits.commit()
        self.assertEqual(s.replies(), [OK] * (len(self.lines) - 1))
        self.assertEqual(s.stored(), self.lines)
        self.assertEqual(s.proto._own_regs, {})

    def test_failed_registration_resent_by_the_relay(self) -> None:
        """
        The RegJob's commit fails: it is answered EAGAIN (the relay reconnects and
        sends it again, with everything after it); the events queued behind it are
        committed by the next group, so the resend finds them as duplicates.
        """
        s = self.server
        s.send(self.lines[0])
        s.send(*self.lines[1:3])
        self.commits.fail()
        self.assertEqual(len(self.flushLoggedErrors(DiskError)), 1)
        self.commits.commit()
        self.assertEqual(s.replies(), [(ilproto.LB_DBERR, errno.EAGAIN), OK, OK])
        s.send(*self.lines[:3])
        self.commits.commit()
        self.assertEqual(s.replies(), [OK] * 3)
        self.assertEqual(s.stored(), self.lines[:3])


@implementer(IStreamClientEndpoint)
class MemoryTLSEndpoint:
    """
    Connects the relay to a store port factory over iosim, both ends with TLS.
    """

    def __init__(self, creator: Any, source: Any, server: Any, clock: Clock) -> None:
        self.creator = creator
        self.source = source
        self.server = server
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        addr = IPv4Address("TCP", "127.0.0.1", 9001)
        client = TLSMemoryBIOFactory(self.creator, True, factory, self.clock).buildProtocol(addr)
        server = TLSMemoryBIOFactory(self.source, False, self.server, self.clock).buildProtocol(
            addr
        )
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client.wrappedProtocol)

    def flush(self) -> None:
        for _ in range(10):
            self.clock.advance(0.01)
            for pump in self.pumps:
                pump.pump()


class RelayToStorePortTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir(parents=True)
        ca = TestCA.create()
        ca_dir = base / "certificates"
        ca.install(ca_dir, ca.crl())
        server_host = ca.host("lb01.example.org")
        relay_host = ca.host("ce.example.org")
        self.relay_dn = slash_dn(relay_host.cert.subject)
        server_pem = server_host.write(base / "server.pem")
        relay_pem = relay_host.write(base / "relay.pem")
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.source = ServerContextSource(server_pem, None, ca_dir, verify_time=NOW)
        self.context = client_context(relay_pem, None, ca_dir, verify_time=NOW, crl="off")
        self.proxy_store = MemoryStore(self.clock, relay=True, proxy_host="ce.example.org")
        self.server_store = MemoryStore(self.clock, relay=False)

    def run_relay(self, hostname: str, policy: Policy) -> tuple[StorePortFactory, Any]:
        factory = StorePortFactory(
            self.server_store,
            identify=PeerIdentity.for_source(
                self.source, clock=self.clock, voms_dir=None
            ).of_transport,
            policy=policy,
        )
        endpoint = MemoryTLSEndpoint(
            ClientConnectionCreator(hostname, self.context), self.source, factory, self.clock
        )
        relay = RelayService(
            self.proxy_store,
            self.clock,
            lambda dest: endpoint,
            RelaySettings(window=8, ack_delay=0),
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        lines = traces.wms_prelude(JOB)
        self.successResultOf(self.proxy_store.store([(ln, parse_event(ln)) for ln in lines]))
        endpoint.flush()
        return factory, lines

    def test_relayed_over_tls_to_trusted_relay(self) -> None:
        policy = policy_for(self.relay_dn, "REGISTER_JOBS", "LOG_WMS_EVENTS")
        factory, lines = self.run_relay("lb01.example.org", policy)
        stored = self.successResultOf(self.server_store.events(JOB))
        self.assertEqual(sorted(s.line for s in stored), sorted(lines))
        self.assertEqual(self.successResultOf(self.proxy_store.outbox_pending()), [])
        self.assertEqual(factory.stats.accepted, len(lines))

    def test_untrusted_relay_rejected(self) -> None:
        factory, lines = self.run_relay("lb01.example.org", Policy())
        self.assertEqual(self.successResultOf(self.server_store.events(JOB)), [])
        rejected = self.successResultOf(self.proxy_store.rejected())
        self.assertEqual(len(rejected), len(lines))
        self.assertEqual({r.major for r in rejected}, {ilproto.LB_PERM})

    def test_wrong_server_name_not_delivered(self) -> None:
        policy = policy_for(self.relay_dn, "REGISTER_JOBS", "LOG_WMS_EVENTS")
        factory, lines = self.run_relay("other.example.org", policy)
        self.assertEqual(self.successResultOf(self.server_store.events(JOB)), [])
        self.assertEqual(len(self.successResultOf(self.proxy_store.outbox_pending())), len(lines))
        self.assertEqual(factory.stats.accepted, 0)
