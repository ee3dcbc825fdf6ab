# -*- test-case-name: tests.unit.test_seqcode -*-
"""
Sequence codes and the order of a job's events.

A gLite seqcode holds one counter per producing component; a producer bumps
its own counter before each event, so codes compare as tuples of counters.
CREAM's direct jobs carry opaque seqcodes instead, which say nothing about
order; those events are ordered by (DATE, arrival).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from attrs import field, frozen

from lbtwist.core.errors import InvalidValue

COUNTERS: tuple[str, ...] = ("UI", "NS", "WM", "BH", "JSS", "LM", "LRMS", "APP", "LBS")
_WIDTHS: tuple[int, ...] = (6, 10, 6, 10, 6, 6, 6, 6, 6)

SOURCE_COUNTER: dict[str, str] = {
    "UserInterface": "UI",
    "NetworkServer": "NS",
    "WorkloadManager": "WM",
    "BigHelper": "BH",
    "JobController": "JSS",
    "LogMonitor": "LM",
    "LRMS": "LRMS",
    "Application": "APP",
    "LBServer": "LBS",
}
_SOURCE_COUNTER_FOLDED = {k.lower(): v for k, v in SOURCE_COUNTER.items()}

_GLITE = re.compile(":".join(rf"{name}=([0-9]+)" for name in COUNTERS[:-1]) + r"(?::LBS=([0-9]+))?")


def _to_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _check_counters(instance: object, attribute: object, value: tuple[int, ...]) -> None:
    if len(value) != len(COUNTERS) or any(
        not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in value
    ):
        raise InvalidValue(f"a seqcode needs {len(COUNTERS)} non-negative counters: {value!r}")


@frozen
class GliteSeqCode:
    """
    A gLite sequence code.

    @ivar counters: the counters, in L{COUNTERS} order.
    """

    counters: tuple[int, ...] = field(
        default=(0,) * len(COUNTERS), converter=_to_tuple, validator=_check_counters
    )

    @classmethod
    def parse(cls, text: str) -> GliteSeqCode:
        """
        Parse the 9-counter form or the older 8-counter form (no LBS).

        @raise InvalidValue: if C{text} is not a gLite seqcode.
        """
        match = _GLITE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidValue(f"not a gLite seqcode: {text!r}")
        return cls(tuple(int(g) if g is not None else 0 for g in match.groups()))

    def format(self) -> str:
        """
        The 9-counter text form.
        """
        return ":".join(
            f"{name}={value:0{width}d}"
            for name, width, value in zip(COUNTERS, _WIDTHS, self.counters, strict=True)
        )

    def __str__(self) -> str:
        return self.format()

    def get(self, name: str) -> int:
        """
        The value of counter C{name} (one of L{COUNTERS}).
        """
        return self.counters[_index(name)]

    def with_counter(self, name: str, value: int) -> GliteSeqCode:
        """
        A copy with counter C{name} set to C{value}.
        """
        counters = list(self.counters)
        counters[_index(name)] = value
        return GliteSeqCode(tuple(counters))

    def incremented(self, source: str) -> GliteSeqCode:
        """
        The code a producer of C{source} logs next: its counter plus one.

        Sources without a counter (CREAM, PBS, VM ones) leave the code as is.
        """
        name = _SOURCE_COUNTER_FOLDED.get(source.lower())
        if name is None:
            return self
        return self.with_counter(name, self.get(name) + 1)


def _index(name: str) -> int:
    try:
        return COUNTERS.index(name)
    except ValueError:
        raise InvalidValue(f"no seqcode counter {name!r}") from None


def parse_seqcode(text: str) -> GliteSeqCode | None:
    """
    The gLite seqcode in C{text}, or C{None} if it is opaque (e.g. CREAM's).
    """
    try:
        return GliteSeqCode.parse(text)
    except InvalidValue:
        return None


class _Ordered(Protocol):
    @property
    def jobid(self) -> str: ...

    @property
    def seqcode(self) -> str: ...

    @property
    def date(self) -> int: ...


def ordering_key(event: _Ordered, arrival: int) -> tuple[int, ...]:
    """
    The sort key of C{event} among its job's events.

    Events of a direct CREAM job (its job id's unique part starts with C{CREAM}) give
    C{(0, date, arrival)} whatever their seqcode: CREAM logs opaque codes, while tools
    (C{job-reg -c}, the Job Wrapper) may log gLite ones for the same job, and only DATE
    orders the two kinds consistently. Other jobs: gLite seqcodes give
    C{(1, *counters, date, arrival)}, opaque ones C{(0, date, arrival)}. So WMS jobs
    (including those run by CREAM, whose events carry the WMS seqcode) sort by counters,
    ties broken by DATE then arrival. In the rare non-CREAM job mixing both kinds, opaque
    events sort first.

    @param event: anything with C{jobid: str}, C{seqcode: str} and C{date: int}
        (microseconds).
    @param arrival: the store's arrival number, the last tie breaker.
    @return: a tuple of ints only.
    """
    if _is_cream_job(event.jobid):
        return (0, event.date, arrival)
    code = parse_seqcode(event.seqcode)
    if code is None:
        return (0, event.date, arrival)
    return (1, *code.counters, event.date, arrival)


def _is_cream_job(jobid: str) -> bool:
    """
    Whether C{jobid} (C{https://host:port/unique}) names a direct CREAM job.
    """
    return jobid.rpartition("/")[2].startswith("CREAM")


def next_seqcode(text: str | None, source: str) -> str:
    """
    The seqcode to log next after C{text}, for a producer of C{source}.

    Nothing given starts from zero counters; an opaque code is returned as is.
    """
    if not text:
        return GliteSeqCode().incremented(source).format()
    code = parse_seqcode(text)
    if code is None:
        return text
    return code.incremented(source).format()


def bump_lrms(text: str, by: int) -> str:
    """
    C{text} with its LRMS counter raised by C{by} (generated events, design section 6).

    @raise InvalidValue: if C{text} is not a gLite seqcode.
    """
    code = GliteSeqCode.parse(text)
    return code.with_counter("LRMS", code.get("LRMS") + by).format()
