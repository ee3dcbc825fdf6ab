# -*- test-case-name: tests.unit.test_cli -*-
"""
What every C{lbtwist} subcommand gets: its environment and streams, injected
so that tests run the commands without touching the process.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

import attrs

#: The intake socket used when neither C{-S} nor the environment names one.
DEFAULT_SOCKET = os.path.join("lbtwist-state", "events.sock")

#: Environment variable naming the intake socket (L&B's name for its proxy socket).
SOCKET_ENV = "GLITE_WMS_LBPROXY_STORE_SOCK"

#: The serve socket used when neither an option nor the environment names one.
DEFAULT_SERVE_SOCKET = os.path.join("lbtwist-state", "serve.sock")

#: Environment variable naming the proxy's serve (query) socket.
SERVE_SOCKET_ENV = "GLITE_WMS_LBPROXY_SERVE_SOCK"


def _now() -> int:
    return time.time_ns() // 1000


@attrs.define
class CLIContext:
    """
    The outside world of one command run.

    @ivar now: returns the current time in microseconds since the epoch.
    @ivar random_bytes: returns that many random bytes.
    @ivar fqdn: returns this host's fully qualified name.
    @ivar hostname: returns this host's name as C{gethostname()} gives it (L&B's HOST).
    @ivar login: returns the local user's login name.
    """

    env: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    stdout: TextIO = attrs.field(factory=lambda: sys.stdout)
    stderr: TextIO = attrs.field(factory=lambda: sys.stderr)
    stdin: TextIO = attrs.field(factory=lambda: sys.stdin)
    now: Callable[[], int] = _now
    random_bytes: Callable[[int], bytes] = os.urandom
    pid: int = attrs.field(factory=os.getpid)
    fqdn: Callable[[], str] = socket.getfqdn
    hostname: Callable[[], str] = socket.gethostname
    login: Callable[[], str] = getpass.getuser


def env_first(env: Mapping[str, str], *names: str) -> str | None:
    """
    The first non-empty value among the environment variables C{names}.
    """
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def default_socket(env: Mapping[str, str]) -> str:
    """
    The intake socket: C{$GLITE_WMS_LBPROXY_STORE_SOCK}, else L{DEFAULT_SOCKET}.
    """
    return env_first(env, SOCKET_ENV) or DEFAULT_SOCKET


def default_serve_socket(env: Mapping[str, str]) -> str:
    """
    The serve socket: C{$GLITE_WMS_LBPROXY_SERVE_SOCK}, else L{DEFAULT_SERVE_SOCKET}.
    """
    return env_first(env, SERVE_SOCKET_ENV) or DEFAULT_SERVE_SOCKET
