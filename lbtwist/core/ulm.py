# -*- test-case-name: tests.unit.test_ulm -*-
"""
The ULM line codec used by L&B events.

A line is space-separated C{KEY=VALUE} fields; a value is a bare token or a
double-quoted string in which C{\\"}, C{\\\\} and C{\\n} are the escapes (on
reading, C{\\X} gives C{X} for any other C{X}).  Parsing is one regular
expression pass over the whole line (fields, or the first place where none fits),
so it stays linear even for the multi-megabyte JDLs of DAG registrations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from lbtwist.core.errors import BrokenULM, InvalidValue, KeyDuplicity, TooBig

DEFAULT_MAX_FIELDS = 100
DEFAULT_MAX_SIZE = 4 * 1024 * 1024

#: Keys L&B writes with a bare (unquoted) value.
BARE_KEYS = frozenset({"DATE", "PROG", "LVL", "DG.PRIORITY", "ARR_DATE"})

_KEY = r"[A-Za-z0-9._-]++"
_QUOTED_BODY = r'[^"\\\n]*+(?:\\.[^"\\\n]*+)*+'
_BARE = r'[^ \t"\\\n]*+'
_FIELD = rf'({_KEY})=(?:"({_QUOTED_BODY})"|({_BARE}))'

# One pass over the line: each match is a field followed by whitespace or the end,
# or, from the first place where no field fits, the whole rest of the line (group 4).
# So a line is well formed exactly when its last match has no group 4.
_SCAN_RE = re.compile(rf"[ \t]*+(?:{_FIELD}(?=[ \t]|\Z)|(.+))", re.S)
_KEY_RE = re.compile(_KEY)
_QUOTED_BODY_RE = re.compile(_QUOTED_BODY)
_BARE_RE = re.compile(_BARE)
_SPACE_RE = re.compile(r"[ \t]*+")
_ESCAPE_RE = re.compile(r"\\(.)", re.S)
_SAFE_BARE_RE = re.compile(r'[^\s"\\]+')

_DATE_RE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})\.?([0-9]{6})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _unescape_one(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char


def unescape(text: str) -> str:
    """
    Decode the body of a quoted ULM value.

    @param text: the characters between the quotes.
    @return: the value, with C{\\n} as a newline and C{\\X} as C{X}.
    """
    if "\\" not in text:
        return text
    return _ESCAPE_RE.sub(_unescape_one, text)


def escape(value: str) -> str:
    """
    Encode a value for use between double quotes.

    @return: C{value} with C{"}, C{\\} and newline escaped (nothing else).
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _check_size(text: str, max_size: int) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_size:
        raise TooBig(f"event of {size} bytes exceeds the limit of {max_size} bytes")


def parse_fields(
    line: str | bytes,
    *,
    max_fields: int = DEFAULT_MAX_FIELDS,
    max_size: int = DEFAULT_MAX_SIZE,
) -> list[tuple[str, str]]:
    """
    Split one ULM line into its fields.

    @param line: the line, with or without its trailing LF (or CRLF).
    @return: (key as written, unescaped value) pairs in line order.
    @raise BrokenULM: malformed line; the message names the key and the
        0-based character position.
    @raise KeyDuplicity: a key appears twice (compared case-insensitively).
    @raise TooBig: more than C{max_fields} fields or C{max_size} bytes.
    """
    triples = scan_fields(line, max_fields, max_size)
    if len({upper for _, upper, _ in triples}) != len(triples):
        raise duplicate_error(triples)
    return [(key, value) for key, _, value in triples]


def scan_fields(line: str | bytes, max_fields: int, max_size: int) -> list[tuple[str, str, str]]:
    """
    L{parse_fields} with each key also in upper case: C{(key, KEY, value)} triples,
    but without the check for duplicate keys (see L{duplicate_error}).

    Raises as L{parse_fields} does otherwise; for the event parser, which looks
    keys up in upper case anyway and finds duplicates as it does.
    """
    if isinstance(line, bytes):
        if line[-1:] == b"\n":
            line = line[:-2] if line[-2:] == b"\r\n" else line[:-1]
        if len(line) > max_size:
            raise TooBig(f"event of {len(line)} bytes exceeds the limit of {max_size} bytes")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BrokenULM(f"invalid UTF-8 at position {e.start}") from None
    else:
        text = line
        if text[-1:] == "\n":
            text = text[:-2] if text[-2:] == "\r\n" else text[:-1]
        if len(text) * 4 > max_size:
            _check_size(text, max_size)
    found = _SCAN_RE.findall(text)
    if found and found[-1][3]:
        _diagnose(text)
    if len(found) > max_fields:
        raise TooBig(f"event has {len(found)} fields, more than the limit of {max_fields}")
    if "\\" in text:
        triples = [
            (key, key.upper(), unescape(quoted) if quoted else bare)
            for key, quoted, bare, _ in found
        ]
    else:
        triples = [(key, key.upper(), quoted or bare) for key, quoted, bare, _ in found]
    return triples


def duplicate_error(triples: list[tuple[str, str, str]]) -> KeyDuplicity:
    """
    @return: the error naming the first key of C{triples} seen twice.
    """
    seen: set[str] = set()
    for key, folded, _ in triples:
        if folded in seen:
            return KeyDuplicity(f"duplicate key {key}")
        seen.add(folded)
    raise ValueError("no duplicate key")


def _diagnose(text: str) -> NoReturn:
    """
    Walk a line the fast path rejected and raise the precise L{BrokenULM}.
    """
    if "\n" in text:
        raise BrokenULM(f"line feed inside the event at position {text.index(chr(10))}")
    pos = 0
    end = len(text)
    key = ""
    while True:
        pos = _SPACE_RE.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            raise BrokenULM("malformed ULM line")  # pragma: no cover - defensive
        match = _KEY_RE.match(text, pos)
        if match is None:
            after = f" after key {key}" if key else ""
            raise BrokenULM(f"bad character {text[pos]!r} at position {pos}{after}")
        key = match.group()
        pos = match.end()
        if pos >= end or text[pos] in " \t":
            raise BrokenULM(f"key {key} without '=' at position {pos}")
        if text[pos] != "=":
            raise BrokenULM(f"bad character {text[pos]!r} in key {key} at position {pos}")
        pos += 1
        if pos < end and text[pos] == '"':
            start = pos
            pos = _QUOTED_BODY_RE.match(text, pos + 1).end()  # type: ignore[union-attr]
            if pos >= end or text[pos] != '"':
                raise BrokenULM(f"unterminated quote in value of {key} at position {start}")
            pos += 1
            if pos < end and text[pos] not in " \t":
                raise BrokenULM(
                    f"quote closing the value of {key} not followed by whitespace at position {pos}"
                )
        else:
            pos = _BARE_RE.match(text, pos).end()  # type: ignore[union-attr]
            if pos < end and text[pos] == "\\":
                raise BrokenULM(f"backslash outside quotes in value of {key} at position {pos}")
            if pos < end and text[pos] == '"':
                raise BrokenULM(f"unexpected quote in value of {key} at position {pos}")


def format_fields(pairs: Iterable[tuple[str, str]]) -> str:
    """
    Write fields as one ULM line (without LF).

    Values are quoted, except those of L{BARE_KEYS} when they are plain tokens,
    as L&B writes them.

    @raise InvalidValue: a key that is not a valid ULM key.
    """
    out = []
    for key, value in pairs:
        if _KEY_RE.fullmatch(key) is None:
            raise InvalidValue(f"invalid ULM key {key!r}")
        if key.upper() in BARE_KEYS and _SAFE_BARE_RE.fullmatch(value):
            out.append(f"{key}={value}")
        else:
            out.append(f'{key}="{escape(value)}"')
    return " ".join(out)


def parse_date(text: str, *, key: str = "DATE") -> int:
    """
    Parse an L&B timestamp.

    Accepts C{YYYYMMDDHHMMSS.uuuuuu} and the 20-digit form without the dot
    written by the Java producer (C{yyyyMMddHHmmssSSS000}).

    @param key: the field name to put in error messages.
    @return: microseconds since the epoch, UTC.
    @raise BrokenULM: not a valid timestamp.
    """
    days = _DAYS.get(text[:8])
    size = len(text)
    if days is not None and (size == 20 or size == 21 and text[14] == ".") and text.isascii():
        # Either form on a known day: digits checked, no calendar needed.
        clock, micro_text = text[8:14], text[-6:]
        if clock.isdigit() and micro_text.isdigit():
            hms = int(clock)
            hour, minute, second = hms // 10000, hms // 100 % 100, hms % 100
            if hour < 24 and minute < 60 and second < 60:
                return (days * 86400 + hour * 3600 + minute * 60 + second) * 1_000_000 + int(
                    micro_text
                )
    match = _DATE_RE.fullmatch(text)
    if match is None:
        raise BrokenULM(f"{key}: bad timestamp {text!r}, want YYYYMMDDHHMMSS.uuuuuu")
    ymd = text[:8]
    year, month, day, hour, minute, second, micro = map(int, match.groups())
    try:
        when = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as e:
        raise BrokenULM(f"{key}: bad timestamp {text!r}: {e}") from None
    if len(_DAYS) >= _DAYS_CACHE_SIZE:
        _DAYS.clear()
    _DAYS[ymd] = (when.date() - _EPOCH.date()).days
    return (when - _EPOCH) // _ONE_US


# Days since the epoch of the valid dates seen lately (C{YYYYMMDD} -> days): the
# events of a stream share a few dates, so most timestamps need no calendar.
_DAYS_CACHE_SIZE = 4096
_DAYS: dict[str, int] = {}


def format_date(us: int) -> str:
    """
    Write microseconds since the epoch as C{YYYYMMDDHHMMSS.uuuuuu} (UTC).
    """
    when = _EPOCH + timedelta(microseconds=us)
    return (
        f"{when.year:04d}{when.month:02d}{when.day:02d}"
        f"{when.hour:02d}{when.minute:02d}{when.second:02d}.{when.microsecond:06d}"
    )
