# -*- test-case-name: tests.unit.test_serve -*-
"""
A blocking client of the proxy's serve socket (C{docs/protocol.md}, section 12), for
C{lbtwist logevent -x}, C{status -x} and C{log -x}. Imports no Twisted, so that
C{lbtwist logevent} stays light.
"""

from __future__ import annotations

import json
import socket
from types import TracebackType
from typing import Any

from lbtwist.core.errors import LBError

#: Largest answer line read, in bytes.
MAX_ANSWER = 64 * 1024 * 1024


class ServeClient:
    """
    One connection to a serve socket; requests are answered in order.
    """

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        """
        @raise OSError: the socket cannot be reached (the error names it).
        """
        self._buffer = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            if e.errno is not None and not e.filename:
                raise type(e)(e.errno, e.strerror, path) from None
            raise

    def request(self, word: str, jobid: str) -> str:
        """
        Send C{<word> <jobid>} and return the text after C{OK }.

        @raise LBError: the server answered C{ERR <code> <text>} (or garbage).
        """
        if any(c.isspace() for c in jobid) or not jobid:
            raise LBError(f"bad job id {jobid!r}", 22)
        self._sock.sendall(f"{word} {jobid}\n".encode())
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_ANSWER:
                raise LBError("answer too long", 7)
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("serve socket closed before its answer")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\n")
        answer = raw.decode("utf-8", "replace")
        if answer.startswith("OK "):
            return answer[3:]
        if answer.startswith("ERR "):
            code, _, text = answer[4:].partition(" ")
            raise LBError(text, int(code) if code.isdigit() else 71)
        raise LBError(f"bad answer from the serve socket: {answer[:80]!r}", 71)

    def seqcode(self, jobid: str) -> str:
        """
        The job's current sequence code (of its last event).
        """
        return self.request("SEQCODE", jobid)

    def status(self, jobid: str) -> dict[str, Any]:
        """
        The job's status, as the query port's JSON.
        """
        data = json.loads(self.request("STATUS", jobid))
        if not isinstance(data, dict):
            raise LBError("bad STATUS answer (not an object)", 71)
        return data

    def events(self, jobid: str) -> list[str]:
        """
        The job's events as ULM lines, in arrival order.
        """
        data = json.loads(self.request("EVENTS", jobid))
        if not isinstance(data, list):
            raise LBError("bad EVENTS answer (not a list)", 71)
        return [str(line) for line in data]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
