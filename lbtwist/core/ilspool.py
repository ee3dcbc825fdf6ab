# -*- test-case-name: tests.unit.test_ilspool -*-
"""
The pure parts of the interlogger-compatible intake: the poke codec and the
bookkeeping of one spool file.

L&B's producers (the Java C{ContextIL} CREAM uses, the C library's file mode)
append each event line to a per-job file C{<prefix>.<unique part of the job id>}
and may then I{poke} the interlogger's UNIX socket: the file offset the line was
written at, a C long in host byte order (8 bytes on the 64-bit machines L&B runs
on), then the line up to and including its LF. A poke is only a hint: the line
is taken from the file, and the poke's text is trusted only when it is found at
that offset there.

L{FileCursor} keeps what was read of one file: the offset committed in the store
(with the events before it), the line boundary reached by reading (committed
once the events read are stored), and whether the reader is skipping the rest
of an over-long line. A partial last line (the producer mid-append) is left in
the file until its LF arrives.

Nothing here touches the reactor, the clock or the file system.
"""

from __future__ import annotations

import re
import struct

import attrs

from lbtwist.core.errors import LBError, TooBig

#: The poke header: the offset, a native C long (ContextIL's JNI side sends it so).
POKE_HEADER = struct.Struct("=q")

#: Suffix of L&B's interlogger sidecar files (job id, bytes committed).
CTL_SUFFIX = ".ctl"

_JOBID = re.compile(rb'(?:^|\s)DG\.JOBID="([^"]*)"', re.IGNORECASE)
_UNIQUE = re.compile(r"https://[^/\s]+/([^/\s?#]+)")


class PokeError(LBError):
    """
    A poke connection broke the protocol (its text too long, or no LF).
    """


def encode_poke(offset: int, line: bytes) -> bytes:
    """
    The bytes a producer sends for a line written at C{offset}.

    @param line: the event line; an LF is added when missing.
    """
    if not line.endswith(b"\n"):
        line += b"\n"
    return POKE_HEADER.pack(offset) + line


@attrs.define
class PokeDecoder:
    """
    Incremental decoder of one poke connection (one or more pokes).

    @ivar max_line: longest line accepted in bytes (LF included).
    """

    max_line: int
    _buffer: bytes = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """
        @return: the complete pokes, C{(offset, line with its LF)}.
        @raise PokeError: a line longer than C{max_line}, or a negative offset.
        """
        buffer = self._buffer + data
        pokes: list[tuple[int, bytes]] = []
        size = POKE_HEADER.size
        while len(buffer) > size:
            end = buffer.find(b"\n", size)
            if end < 0:
                if len(buffer) - size > self.max_line:
                    raise TooBig(f"poke longer than {self.max_line} bytes")
                break
            if end + 1 - size > self.max_line:
                raise TooBig(f"poke longer than {self.max_line} bytes")
            (offset,) = POKE_HEADER.unpack_from(buffer)
            if offset < 0:
                raise PokeError(f"poke with negative offset {offset}")
            pokes.append((offset, buffer[size : end + 1]))
            buffer = buffer[end + 1 :]
        self._buffer = buffer
        return pokes

    @property
    def pending(self) -> int:
        """
        Bytes of an incomplete poke held.
        """
        return len(self._buffer)

    def finish(self) -> tuple[int, bytes] | None:
        """
        The connection ended: the incomplete poke held, if it has its offset and
        some text, as C{(offset, the text it has)}; the buffer is emptied.

        ContextIL's native poke sends as many bytes as its line has UTF-16 code
        units, so a line with non-ASCII characters comes without its end (and
        its LF): what came is still a prefix of the line in the file.
        """
        buffer, self._buffer = self._buffer, b""
        size = POKE_HEADER.size
        if len(buffer) <= size:
            return None
        (offset,) = POKE_HEADER.unpack_from(buffer)
        if offset < 0:
            return None
        return offset, buffer[size:]


def spool_file_of(prefix: str, line: bytes) -> str | None:
    """
    The spool file a producer wrote C{line} to: C{<prefix>.<unique part>} of its
    C{DG.JOBID}, or L{None} when the line names no usable job id (no path
    separators are let through).
    """
    match = _JOBID.search(line)
    if match is None:
        return None
    try:
        jobid = match.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None
    unique = _UNIQUE.fullmatch(jobid)
    if unique is None or unique.group(1) in (".", ".."):
        return None
    return f"{prefix}.{unique.group(1)}"


def is_spool_name(base: str, name: str) -> bool:
    """
    Whether the directory entry C{name} is a spool file of prefix base name
    C{base} (C{<base>.<anything>} but not a C{.ctl} sidecar).
    """
    return (
        len(name) > len(base) + 1
        and name.startswith(base)
        and name[len(base)] == "."
        and not name.endswith(CTL_SUFFIX)
    )


def parse_ctl(text: str) -> int | None:
    """
    The offset committed to the bookkeeping server in an interlogger C{.ctl}
    sidecar (three lines: job id, bytes committed to the logging server, to the
    bookkeeping server), or L{None} when the text is not one.
    """
    parts = text.split("\n")
    if len(parts) < 3:
        return None
    try:
        committed = int(parts[2])
    except ValueError:
        return None
    return committed if committed >= 0 else None


@attrs.define
class Taken:
    """
    What one read of a spool file gave.

    @ivar lines: the complete lines, C{(offset, line without its LF)}.
    @ivar too_long: offsets of lines dropped for being longer than the limit.
    @ivar boundary: the offset after the last complete line (what may be
        committed once the lines are stored).
    """

    lines: list[tuple[int, bytes]]
    too_long: list[int]
    boundary: int


@attrs.define
class FileCursor:
    """
    The reading state of one spool file.

    @ivar inode: the file's inode (a new one means a new file: read from 0).
    @ivar committed: offset stored in the store with the events before it.
    @ivar boundary: offset after the last complete line read (>= C{committed};
        the lines in between are being stored).
    @ivar skip_from: start of an over-long line being skipped, or L{None}.
    @ivar read: offset up to which bytes were looked at (>= C{boundary}; above
        it only while skipping).
    """

    inode: int
    committed: int = 0
    boundary: int = 0
    skip_from: int | None = None
    read: int = 0

    @classmethod
    def at(cls, inode: int, offset: int) -> FileCursor:
        """
        A cursor on a file whose bytes before C{offset} are stored.
        """
        return cls(inode, offset, offset, None, offset)

    def take(self, data: bytes, max_line: int) -> Taken:
        """
        Take the complete lines of C{data}, the bytes of the file from C{self.read}.

        @param max_line: longest line in bytes (LF excluded); longer ones are
            dropped (reported in L{Taken.too_long}) up to their LF.
            Callers read more than C{max_line + 1} bytes at a time (or to the end
            of the file), so a cut partial line is never taken for an over-long one.
        """
        lines: list[tuple[int, bytes]] = []
        too_long: list[int] = []
        base = self.read
        pos = 0
        size = len(data)
        if self.skip_from is not None:
            end = data.find(b"\n")
            if end < 0:
                self.read = base + size
                return Taken(lines, too_long, self.boundary)
            too_long.append(self.skip_from)
            self.skip_from = None
            pos = end + 1
        while pos < size:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            if end - pos > max_line:
                too_long.append(base + pos)
            else:
                lines.append((base + pos, data[pos:end]))
            pos = end + 1
        self.boundary = base + pos
        self.read = self.boundary
        if size - pos > max_line:
            # Partial, but already too long: skip it up to its LF.
            self.skip_from = base + pos
            self.read = base + size
        return Taken(lines, too_long, self.boundary)

    def stored(self, boundary: int) -> None:
        """
        The lines up to C{boundary} are stored (and the offset with them).
        """
        if boundary > self.committed:
            self.committed = boundary

    def rewind(self) -> None:
        """
        Storing failed: read again from the committed offset.
        """
        self.boundary = self.read = self.committed
        self.skip_from = None

    def restart(self, inode: int) -> None:
        """
        The file was replaced or truncated: read it from its start.
        """
        self.inode = inode
        self.committed = self.boundary = self.read = 0
        self.skip_from = None

    @property
    def settled(self) -> bool:
        """
        Everything read is stored and no line is being skipped.
        """
        return self.committed == self.boundary == self.read and self.skip_from is None


__all__ = [
    "CTL_SUFFIX",
    "POKE_HEADER",
    "FileCursor",
    "PokeDecoder",
    "PokeError",
    "Taken",
    "encode_poke",
    "is_spool_name",
    "parse_ctl",
    "spool_file_of",
]
