# -*- test-case-name: tests.unit.test_cli_notify -*-
"""
Tests for L{lbtwist.cli.notify}: C{lbtwist notify} prints what
C{glite-lb-notify} prints, finds its server as L&B and our query commands
do, and C{receive} goes on where the last receiver stopped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from lbtwist.cli import notify as cli
from lbtwist.cli import notifyargs
from lbtwist.cli.common import CLIContext
from lbtwist.cli.main import build_parser, run
from lbtwist.client.notify import Notification, NotifId
from lbtwist.client.query import QueryError
from tests.unit.test_notify_client import (
    JOB,
    NID,
    OWNER,
    FakeResponse,
    make_client,
    registration,
    sse,
)

#: 2026-12-02 00:00:00 UTC.
NOW = 1796169600


def parse(*argv: str) -> argparse.Namespace:
    args, extra = build_parser("lbtwist.cli.notifyargs").parse_known_args(["notify", *argv])
    assert not extra, extra
    return args


class Streams:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.ctx = CLIContext(
            env=env or {}, stdout=self.out, stderr=self.err, now=lambda: NOW * 1_000_000
        )


class CommandTests(SynchronousTestCase):
    """
    C{new}, C{bind}, C{refresh}, C{change}, C{drop}, C{list}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.io = Streams()
        self.answer = registration(valid_until=1241074758)
        self.client, self.agent = make_client(
            self.clock,
            {
                ("POST", "/notif"): lambda r: FakeResponse(201, self.answer),
                ("PUT", "/notif/abc123"): lambda r: FakeResponse(200, self.answer),
                ("DELETE", "/notif/abc123"): lambda r: FakeResponse(200, {"dropped": NID}),
                ("GET", "/notif"): lambda r: FakeResponse(
                    200, {"registrations": [self.answer, registration(id=NID + "2")]}
                ),
            },
        )

    def run_cmd(self, command: Any, *argv: str, env: dict[str, str] | None = None) -> int:
        if env is not None:
            self.io = Streams(env)
        d = Deferred.fromCoroutine(command(self.client, parse(*argv), self.io.ctx))
        return int(self.successResultOf(d))

    def test_new_prints_as_glite_lb_notify(self) -> None:
        self.assertEqual(self.run_cmd(cli.cmd_new, "new", "-j", JOB, "-t", "7200"), 0)
        self.assertEqual(
            self.io.out.getvalue(),
            f"notification ID: {NID}\nvalid: '2009-04-30 06:59:18 UTC' (1241074758)\n",
        )
        self.assertEqual(
            self.agent.last().json(),
            {"conditions": {"jobid": [JOB]}, "validity": 7200},
        )

    def test_new_conditions_and_flags(self) -> None:
        self.run_cmd(
            cli.cmd_new, "new", "-O", "-n", "https://wms:7443/x", "-v", "atlas",
            "--state", "done,ABORTED", "-S", "running", "-c", "-H", "-B", "-J", "-N",
        )  # fmt: skip
        self.assertEqual(
            self.agent.last().json(),
            {
                "conditions": {
                    "owner": "self",
                    "network_server": "https://wms:7443/x",
                    "vo": "atlas",
                    "states": ["Done", "Aborted", "Running"],
                },
                "flags": {
                    "state_changes_only": True,
                    "terminal_only": True,
                    "history": True,
                    "bootstrap": True,
                    "jdl": True,
                    "anonymized": True,
                },
            },
        )
        self.run_cmd(cli.cmd_new, "new", "-o", OWNER, "-T")
        self.assertEqual(
            self.agent.last().json(),
            {"conditions": {"owner": OWNER}, "flags": {"terminal_only": True}},
        )

    def test_new_json(self) -> None:
        self.run_cmd(cli.cmd_new, "new", "--json")
        self.assertEqual(json.loads(self.io.out.getvalue())["id"], NID)

    def test_servers(self) -> None:
        cream = "https://ce.example.org:8443/CREAM123456789"
        self.run_cmd(cli.cmd_new, "new", "-j", cream, env={})
        self.assertEqual(self.agent.last().base, "https://ce.example.org:9000")
        self.run_cmd(cli.cmd_new, "new", "-j", cream, env={"GLITE_WMS_NOTIF_SERVER": "lb:9555"})
        self.assertEqual(self.agent.last().base, "https://lb:9555")
        self.run_cmd(cli.cmd_new, "new", "-m", "other:1", env={"GLITE_WMS_NOTIF_SERVER": "lb:1"})
        self.assertEqual(self.agent.last().base, "https://other:1")
        self.run_cmd(cli.cmd_new, "new", env={"GLITE_WMS_QUERY_SERVER": "q:9"})
        self.assertEqual(self.agent.last().base, "https://q:9")
        self.run_cmd(cli.cmd_new, "new", env={})
        self.assertEqual(self.agent.last().base, "https://localhost:9000")

    def test_cream_candidates_in_order(self) -> None:
        args = parse("new", "-j", "https://ce.example.org:8443/CREAM123456789")
        self.assertEqual(
            cli.new_bases(args, Streams().ctx),
            ["https://ce.example.org:9000", "https://ce.example.org:8443"],
        )

    def test_bind_and_refresh(self) -> None:
        self.run_cmd(cli.cmd_bind, "bind", NID)
        self.assertEqual(self.agent.last().json(), {})
        self.run_cmd(cli.cmd_bind, "bind", "-t", "60", NID)
        self.assertEqual(self.agent.last().json(), {"validity": 60})
        self.run_cmd(cli.cmd_refresh, "refresh", NID)
        self.assertEqual(self.agent.last().json(), {"validity": 3600})
        self.assertEqual(
            self.io.out.getvalue(), "valid until: '2009-04-30 06:59:18 UTC' (1241074758)\n" * 3
        )

    def test_id_names_its_server(self) -> None:
        self.run_cmd(cli.cmd_drop, "drop", "NOTIF:abc123", env={"GLITE_WMS_NOTIF_SERVER": "x:7"})
        self.assertEqual(self.agent.last().url, "https://x:7/notif/abc123")
        self.run_cmd(cli.cmd_drop, "drop", NID, env={"GLITE_WMS_NOTIF_SERVER": "x:7"})
        self.assertEqual(self.agent.last().url, "https://localhost:9000/notif/abc123")
        self.run_cmd(cli.cmd_drop, "drop", "-m", "y:8", NID)
        self.assertEqual(self.agent.last().url, "https://y:8/notif/abc123")
        self.assertEqual(self.io.out.getvalue(), "")

    def test_change(self) -> None:
        self.run_cmd(cli.cmd_change, "change", NID, JOB)
        self.assertEqual(self.agent.last().json(), {"conditions": {"jobid": [JOB]}})
        self.run_cmd(cli.cmd_change, "change", NID, "--state", "done", "-c")
        self.assertEqual(
            self.agent.last().json(),
            {"conditions": {"states": ["Done"]}, "flags": {"state_changes_only": True}},
        )
        d = Deferred.fromCoroutine(cli.cmd_change(self.client, parse("change", NID), self.io.ctx))
        self.assertIn("give the new conditions", str(self.failureResultOf(d, QueryError).value))

    def test_list(self) -> None:
        self.run_cmd(cli.cmd_list, "list")
        lines = self.io.out.getvalue().splitlines()
        self.assertEqual(lines[0], f"{NID}\t'2009-04-30 06:59:18 UTC' (1241074758)\tjobid={JOB}")
        self.assertEqual(lines[-1], "Found 2 notifications")

    def test_bad_input_one_line(self) -> None:
        for argv, text in (
            (["notify", "drop", "https://localhost:9000/abc"], "bad notification ID"),
            (["notify", "drop", "NOTIF:abc"], "names no server"),
            (["notify", "new", "-m", "a/b"], "bad query server"),
        ):
            io_ = Streams()
            self.assertEqual(run(argv, io_.ctx), 1)
            self.assertEqual(io_.out.getvalue(), "")
            self.assertEqual(io_.err.getvalue().count("\n"), 1, io_.err.getvalue())
            self.assertIn(text, io_.err.getvalue())
        for argv, text in (
            (["notify", "new", "--state", "running,Bogus"], "'Bogus' is not a valid state name"),
            (["notify", "receive", "-f", "owner,nosuch", NID], "nosuch: invalid argument"),
            (["notify", "new", "-o", "x", "-O"], "not allowed with argument"),
            (["notify", "new", "-t", "0"], "not a positive number"),
        ):
            io_ = Streams()
            self.assertEqual(run(argv, io_.ctx), 2)
            self.assertIn(text, io_.err.getvalue())

    def test_no_credentials(self) -> None:
        io_ = Streams({"HOME": "/nonexistent"})
        self.assertEqual(run(["notify", "drop", NID], io_.ctx), 1)
        self.assertIn("lbtwist notify: no credentials", io_.err.getvalue())


class OutputTests(SynchronousTestCase):
    """
    A message as L&B's receive prints it.
    """

    def message(self, **status: Any) -> Notification:
        return Notification(seq=1, kind="status", jobid=JOB, status={"jobId": JOB, **status})

    def test_default_owner(self) -> None:
        m = self.message(state="Running", owner=OWNER)
        self.assertEqual(cli.message_lines(m, ["owner"]), f"{JOB}\tRunning\n\t{OWNER}\n")

    def test_fields(self) -> None:
        m = self.message(
            state="Done",
            destination="ce/queue",
            location=None,
            stateEnterTime="2009-04-30T06:59:18.000000Z",
            exit_code=0,
            resubmitted=False,
            reason="two\nlines\tand a tab",
            jdl='[ VirtualOrganisation = "atlas"; Executable = "/bin/true" ]',
        )
        fields = notifyargs.parse_fields("Destination,location,stateentertime,exit_code,resubmitted,"
                                  "reason,jdl:VirtualOrganisation,jdl:Nothing")  # fmt: skip
        self.assertEqual(
            cli.message_lines(m, fields),
            f"{JOB}\tDone\n\tce/queue\t(null)\t'2009-04-30 06:59:18 UTC'\t0\t0\t"
            "two\\nlines\\tand a tab\tatlas\t(null)\n",
        )


class ReceiveTests(SynchronousTestCase):
    """
    C{lbtwist notify receive}: bind, print, keep the place, resume.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.home = self.mktemp()
        os.makedirs(self.home)
        self.io = Streams({"HOME": self.home})
        self.valid = NOW + 3600
        self.client, self.agent = make_client(
            self.clock,
            {("PUT", "/notif/abc123"): lambda r: FakeResponse(
                200, registration(valid_until=self.valid))},
        )  # fmt: skip

    def receive(self, *argv: str) -> tuple[cli.Receiver, Deferred[int]]:
        receiver = cli.Receiver(self.client, parse("receive", *argv, NID), self.io.ctx, self.clock)
        return receiver, Deferred.fromCoroutine(receiver.run())

    def stream(self, after: int) -> FakeResponse:
        sent = self.agent.last()
        self.assertEqual(sent.path, "/notif/abc123/stream")
        self.assertEqual(sent.header("last-event-id"), str(after))
        return sent.answer(FakeResponse(200, stream=True, content_type=b"text/event-stream"))

    @property
    def seq_file(self) -> str:
        return os.path.join(self.home, ".lbtwist", "notify", "localhost_9000_abc123.seq")

    def test_prints_keeps_place_and_resumes(self) -> None:
        receiver, done = self.receive()
        self.assertEqual(self.agent.sent[0].json(), {})
        self.assertEqual(
            self.io.err.getvalue(),
            "notification is valid until: '2026-12-02 01:00:00 UTC' (1796173200)\n",
        )
        body = self.stream(after=0)
        body.send(sse(1, "Submitted") + sse(2, "Running"))
        self.assertEqual(
            self.io.out.getvalue(),
            f"{JOB}\tSubmitted\n\t{OWNER}\n{JOB}\tRunning\n\t{OWNER}\n",
        )
        with open(self.seq_file) as f:
            self.assertEqual(f.read(), "2\n")
        receiver.stop()
        self.assertEqual(self.successResultOf(done), 0)
        # A new receiver: from where the last one stopped.
        self.io = Streams({"HOME": self.home})
        receiver, done = self.receive()
        self.stream(after=2).send(sse(3, "Done"))
        self.assertEqual(self.io.out.getvalue(), f"{JOB}\tDone\n\t{OWNER}\n")
        receiver.stop()
        # --from wins over the file.
        receiver, done = self.receive("--from", "1")
        self.stream(after=1)

    def test_timeout_gap_and_seq_file_option(self) -> None:
        path = os.path.join(self.home, "place")
        receiver, done = self.receive("-i", "120", "--seq-file", path, "-t", "600")
        self.assertEqual(self.agent.sent[0].json(), {"validity": 600})
        body = self.stream(after=0)
        body.send('id: 5\nevent: gap\ndata: {"seq": 5, "kind": "gap", "dropped": 4}\n\n')
        self.assertIn("4 notifications dropped", self.io.err.getvalue())
        self.assertEqual(self.io.out.getvalue(), "")
        self.clock.advance(119)
        self.assertNoResult(done)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(done), 0)
        with open(path) as f:
            self.assertEqual(f.read(), "5\n")

    def test_expired_ends_with_status_1(self) -> None:
        receiver, done = self.receive()
        body = self.stream(after=0)
        body.send('event: end\ndata: {"reason": "expired"}\n\n')
        body.finish()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertIn(f"notification {NID} has expired", self.io.err.getvalue())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refresh_at_half_validity(self) -> None:
        receiver, done = self.receive("-r", "-t", "1800", "--idle-timeout", "4000", "-i", "9000")
        self.assertIn("next refresh '2026-12-02 00:30:00 UTC' (1796171400)", self.io.err.getvalue())
        body = self.stream(after=0)
        self.valid = NOW + 5400
        self.clock.advance(1800)
        refresh = self.agent.sent[-1]
        self.assertEqual((refresh.method, refresh.json()), ("PUT", {"validity": 1800}))
        self.assertIn("valid until: '2026-12-02 01:30:00 UTC'", self.io.err.getvalue())
        self.assertFalse(body.finished)
        receiver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_refresh_tried_again(self) -> None:
        """
        A refresh that fails is reported on stderr and tried again after
        C{--refresh-retry} seconds; the stream goes on meanwhile.
        """
        receiver, done = self.receive(
            "-r", "--refresh-retry", "30", "--idle-timeout", "4000", "-i", "9000"
        )
        body = self.stream(after=0)
        self.agent.routes[("PUT", "/notif/abc123")] = lambda r: FakeResponse(503, {})
        self.clock.advance(1800)
        self.assertIn("warning: refresh failed (HTTP 503", self.io.err.getvalue())
        puts = [s for s in self.agent.sent if s.method == "PUT"]
        self.assertEqual(len(puts), 2)
        self.agent.routes[("PUT", "/notif/abc123")] = lambda r: FakeResponse(
            200, registration(valid_until=NOW + 7200)
        )
        self.clock.advance(29)
        self.assertEqual(len([s for s in self.agent.sent if s.method == "PUT"]), 2)
        self.clock.advance(1)
        self.assertEqual(len([s for s in self.agent.sent if s.method == "PUT"]), 3)
        self.assertFalse(body.finished)
        receiver.stop()
        self.assertEqual(self.successResultOf(done), 0)

    def test_survives_a_restart_of_the_service(self) -> None:
        receiver, done = self.receive()
        body = self.stream(after=0)
        body.send(sse(1) + sse(2))
        body.finish(Failure(ResponseFailed([Failure(ierror.ConnectionLost())])))
        self.clock.advance(60)
        self.agent.last().fail(ierror.ConnectionRefusedError())
        self.clock.advance(60)
        self.stream(after=2).send(sse(2) + sse(3))
        self.assertEqual(self.io.out.getvalue().count(f"{JOB}\t"), 3)
        err = self.io.err.getvalue().splitlines()
        self.assertEqual(len([e for e in err if e.endswith("; reconnecting")]), 1, err)
        self.assertIn("lbtwist notify: reconnected, going on after message 2", err)
        receiver.stop()

    def test_closed_pipe(self) -> None:
        class Closed(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError()

        self.io.ctx.stdout = Closed()
        receiver, done = self.receive()
        self.stream(after=0).send(sse(1))
        self.failureResultOf(done, BrokenPipeError)

    def test_bad_seq_file(self) -> None:
        os.makedirs(os.path.dirname(self.seq_file))
        with open(self.seq_file, "w") as f:
            f.write("garbage")
        self.assertRaises(QueryError, cli.read_seq, self.seq_file)
        io_ = Streams({"HOME": self.home})
        self.assertEqual(run(["notify", "receive", NID], io_.ctx), 1)
        self.assertIn("not a sequence number", io_.err.getvalue())
        self.assertEqual(NotifId.parse(NID).unique, "abc123")
