# -*- test-case-name: tests.unit.test_errors -*-
"""
Exceptions carrying L&B error codes.

L&B reports its own codes (1401..1409) for event format problems and plain errno
values for the rest; every error raised by lbtwist's core carries one of them.
"""

from __future__ import annotations

import errno

# L&B's own codes (glite/lb/context.h).
BROKEN_ULM = 1401
EVENT_UNDEF = 1402
MSG_INCOMPLETE = 1403
KEY_DUPLICITY = 1404
KEY_MISUSE = 1405
JOBID_FORMAT = 1409

CODE_NAMES: dict[int, str] = {
    BROKEN_ULM: "BROKEN_ULM",
    EVENT_UNDEF: "EVENT_UNDEF",
    MSG_INCOMPLETE: "MSG_INCOMPLETE",
    KEY_DUPLICITY: "KEY_DUPLICITY",
    KEY_MISUSE: "KEY_MISUSE",
    JOBID_FORMAT: "JOBID_FORMAT",
    errno.EPERM: "EPERM",
    errno.EINVAL: "EINVAL",
    errno.E2BIG: "E2BIG",
    errno.EAGAIN: "EAGAIN",
    errno.ENOSPC: "ENOSPC",
    errno.ENOENT: "ENOENT",
    errno.EEXIST: "EEXIST",
}


class LBError(Exception):
    """
    Base of every lbtwist error that has an L&B code.

    @ivar code: the L&B or errno code.
    @ivar message: human-readable text naming what is wrong and where.
    """

    code: int = errno.EINVAL

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{CODE_NAMES.get(self.code, self.code)}: {self.message}"


class BrokenULM(LBError):
    code = BROKEN_ULM


class EventUndefined(LBError):
    code = EVENT_UNDEF


class MessageIncomplete(LBError):
    code = MSG_INCOMPLETE


class KeyDuplicity(LBError):
    code = KEY_DUPLICITY


class KeyMisuse(LBError):
    code = KEY_MISUSE


class JobIdFormat(LBError):
    code = JOBID_FORMAT


class InvalidValue(LBError):
    code = errno.EINVAL


class TooBig(LBError):
    code = errno.E2BIG


class PermissionDenied(LBError):
    code = errno.EPERM


class TryAgain(LBError):
    code = errno.EAGAIN


class NoSpace(LBError):
    code = errno.ENOSPC


class UnknownJob(LBError):
    code = errno.ENOENT


class AlreadyExists(LBError):
    """
    A registration the stored job refuses (EXCL of an existing job, or another owner).
    """

    code = errno.EEXIST
