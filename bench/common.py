"""
Helpers shared by the benchmarks: a pipelined connection to a service's
intake socket, latency summaries and their one-line form.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


class IntakePipe:
    """
    A non-blocking connection to an intake (AF_UNIX) socket: what is added to
    C{pending} is sent as the socket takes it, answers are read a chunk at a time.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: the intake socket.
        """
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        #: Bytes not sent yet.
        self.pending = b""
        self._buf = b""

    def send(self) -> None:
        """
        Send what the socket takes of C{pending} now.
        """
        if self.pending:
            try:
                self.pending = self.pending[self.sock.send(self.pending) :]
            except BlockingIOError:
                pass

    def receive(
        self, timeout: float, clock: Callable[[], float] = time.perf_counter
    ) -> tuple[float, list[bytes]]:
        """
        Wait up to C{timeout} seconds for a chunk of answers.

        @param clock: read once a chunk has come.
        @return: C{clock()} when the chunk came (0.0 if none did) and the
            complete answers it ended (without LF).
        @raise ConnectionError: the service closed the connection.
        """
        got = 0.0
        answers: list[bytes] = []
        for _key, _mask in self.selector.select(timeout):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("intake closed the connection")
            self._buf += chunk
            got = clock()
            while b"\n" in self._buf:
                answer, _, self._buf = self._buf.partition(b"\n")
                answers.append(answer)
        return got, answers

    def close(self) -> None:
        self.selector.close()
        self.sock.close()


def summary(times: list[float]) -> dict[str, float]:
    """
    The count, median, 99th percentile and maximum of C{times} (seconds), in ms.
    """
    ordered = sorted(times)
    return {
        "n": len(times),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def fmt(name: str, r: Mapping[str, Any], width: int = 40) -> str:
    """
    One line: C{name} padded to C{width}, then C{key=value} for each figure
    (floats with two decimals).
    """
    return f"{name:<{width}} " + "  ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
    )
