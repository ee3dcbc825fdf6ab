"""
A producer that does what L&B's Java C{ContextIL} does (the logger CREAM uses),
for the spool intake's end-to-end tests and C{bench/spool.py}.

C{ContextIL.log}: the line gets C{DG.LLLID="0"} in front and an LF; it is
appended to C{<prefix>.<unique part of the job id>} under a lock taken with
C{tryLock()} (5 immediate attempts, then nothing is written); only when a socket
was given, a fresh connection to it gets the offset the line was written at (a
native 8-byte long) and the line, no reply is read and errors are ignored.

It is meant to be as lean a load generator as ContextIL is (it is leaner:
ContextIL opens each file twice and checks that it exists twice per event):
one open, lock, fstat, write, unlock and close per event, and with a socket
one socket, its connect attempts, one send and a close.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket

from lbtwist.core.ilspool import encode_poke

_DATE = re.compile(r"\bDATE=(\d{14})\.(\d{3})\d{3}\b")
_OWN = re.compile(r" (DG\.[A-Z_]+\.[A-Z_]+=)")


class LockedOut(Exception):
    """
    The file stayed locked for all of ContextIL's attempts (the event is lost).
    """


def java_form(line: str) -> str:
    """
    A harness ULM line as the Java producer writes it: C{DG.LLLID} first, DATE
    in the 20-digit form (milliseconds, then 000), two spaces before the event's
    own fields.
    """
    line = _DATE.sub(lambda m: f"DATE={m.group(1)}{m.group(2)}000", line, count=1)
    line = _OWN.sub(r"  \1", line, count=1)
    return 'DG.LLLID="0" ' + line


def spool_file(prefix: str, line: str) -> str:
    jobid = re.search(r'DG\.JOBID="([^"]*)"', line)
    assert jobid is not None, line
    return f"{prefix}.{jobid.group(1).rsplit('/', 1)[1]}"


class ContextILWriter:
    """
    One producer.

    @param prefix: the spool prefix (CREAM's C{LB_IL_PREFIX}).
    @param socket_path: the interlogger socket to poke, or L{None} (CREAM: never).
    @param fsync: fsync each append (ContextIL does not).
    @ivar locked_out: events given up because the file was locked.
    @ivar poke_errors: pokes that failed (ignored, as ContextIL does).
    """

    ATTEMPTS = 5

    def __init__(self, prefix: str, socket_path: str | None = None, fsync: bool = False) -> None:
        self.prefix = prefix
        self.socket_path = socket_path
        self.fsync = fsync
        self.locked_out = 0
        self.poke_errors = 0
        self.last_poke_error: OSError | None = None

    def log(self, line: str) -> int:
        """
        Log one event line (without LF).

        @return: the offset it was written at.
        @raise LockedOut: the file was locked on every attempt.
        """
        return self.append(spool_file(self.prefix, line), (line + "\n").encode("utf-8"))

    def append(self, name: str, data: bytes) -> int:
        """
        Log one event line already made (C{data}, with its LF) to its file C{name}:
        what ContextIL does once it has its message and file name.

        @return: the offset it was written at.
        @raise LockedOut: the file was locked on every attempt.
        """
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o660)
        try:
            for _ in range(self.ATTEMPTS):
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        continue
                    raise
                break
            else:
                self.locked_out += 1
                raise LockedOut(name)
            offset = os.fstat(fd).st_size
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if self.socket_path is not None:
            self.poke(offset, data)
        return offset

    #: ContextIL's connection attempts and timeout (seconds) of one poke.
    CONN_ATTEMPTS = 3
    TIMEOUT = 3.0

    def poke(self, offset: int, data: bytes) -> None:
        """
        What ContextIL's JNI side does: one non-blocking socket, C{connect} tried
        up to C{CONN_ATTEMPTS} times while the listen queue is full (C{EAGAIN}; it
        sleeps C{TIMEOUT // (CONN_ATTEMPTS + 1)} = 0 s between), then the poke
        written and the socket closed; any error ends the poke, ignored.
        """
        assert self.socket_path is not None
        message = encode_poke(offset, data)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            for _ in range(self.CONN_ATTEMPTS):
                error = s.connect_ex(self.socket_path)
                if error != errno.EAGAIN:
                    break
            if error:
                self.last_poke_error = OSError(error, os.strerror(error))
                self.poke_errors += 1
                return
            try:
                sent = s.send(message)
            except BlockingIOError:
                sent = 0
            if sent < len(message):
                # The socket's buffer is full: wait for it (ContextIL's timeout).
                s.settimeout(self.TIMEOUT)
                s.sendall(message[sent:])
        except OSError as e:
            self.last_poke_error = e
            self.poke_errors += 1
        finally:
            s.close()
