# -*- test-case-name: tests.unit.test_statelock -*-
"""
The one lock of a state directory: C{<state-dir>/lbtwist.lock}, an exclusive
C{flock} held by the running service for its whole life, and by the offline
commands that write the store (C{lbtwist purge --state-dir}, C{lbtwist load}),
so that none of them runs beside another. The file holds the holder's pid.

C{twistd} takes it in C{makeService}, before it goes to the background (a
second instance is refused on the terminal, in one line), and hands the held
lock to its store; the descriptor survives the fork, and the daemon writes its
own pid into the file once it runs (L{StateLock.write_pid}).
"""

from __future__ import annotations

import errno
import fcntl
import os

from lbtwist.core.errors import LBError

#: The lock file of a state directory.
LOCK_FILE = "lbtwist.lock"

#: What an offline command that finds the directory in use may do instead.
DEFAULT_HINT = "stop it, or purge through the service (lbtwist purge -m HOST:PORT)"


class StateDirBusy(LBError):
    """
    Another process holds the lock of a state directory (C{EBUSY}).

    @ivar state_dir: the directory.
    @ivar holder: the pid in its lock file (C{?} when unreadable).
    """

    def __init__(self, state_dir: str, holder: str, hint: str = DEFAULT_HINT) -> None:
        self.state_dir = state_dir
        self.holder = holder
        super().__init__(
            f"another lbtwist uses {state_dir}: it is in use by process {holder}"
            f" (a running service?): {hint}",
            errno.EBUSY,
        )


def lock_path(state_dir: str) -> str:
    """
    @return: the lock file of C{state_dir}.
    """
    return os.path.join(state_dir, LOCK_FILE)


class StateLock:
    """
    The held lock of one state directory (L{acquire} takes it).

    @ivar state_dir: the directory.
    @ivar fd: the lock file's descriptor while held, else L{None}.
    """

    def __init__(self, state_dir: str, fd: int) -> None:
        self.state_dir = state_dir
        self.fd: int | None = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def write_pid(self) -> None:
        """
        Write this process's pid into the lock file (again: a daemon after its fork).
        """
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        """
        Let the lock go (idempotent).
        """
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def acquire(state_dir: str, *, hint: str = DEFAULT_HINT) -> StateLock:
    """
    Take the lock of C{state_dir} without waiting (the one function that takes it).

    @param hint: what to do instead, for the error.
    @raise StateDirBusy: another process (or another holder in this one) has it.
    @raise OSError: the lock file cannot be opened.
    """
    fd = os.open(lock_path(state_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        except OSError:
            holder = "?"
        os.close(fd)
        raise StateDirBusy(state_dir, holder, hint) from None
    except BaseException:
        os.close(fd)
        raise
    lock = StateLock(state_dir, fd)
    lock.write_pid()
    return lock


__all__ = ["DEFAULT_HINT", "LOCK_FILE", "StateDirBusy", "StateLock", "acquire", "lock_path"]
