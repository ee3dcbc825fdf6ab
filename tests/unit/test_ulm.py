# -*- test-case-name: tests.unit.test_ulm -*-
"""
Tests for L{lbtwist.core.ulm}.
"""

from __future__ import annotations

import errno
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.core import ulm
from lbtwist.core.errors import (
    BROKEN_ULM,
    KEY_DUPLICITY,
    BrokenULM,
    InvalidValue,
    KeyDuplicity,
    TooBig,
)
from lbtwist.core.ulm import (
    DEFAULT_MAX_FIELDS,
    DEFAULT_MAX_SIZE,
    escape,
    format_date,
    format_fields,
    parse_date,
    parse_fields,
    unescape,
)

keys = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)
values = st.text(max_size=40)


class ParseFieldsTests(SynchronousTestCase):
    """
    L{parse_fields} splits a ULM line into its fields.
    """

    def test_bareAndQuoted(self) -> None:
        """
        Bare tokens and quoted strings both give the value; order and key
        spelling are kept.
        """
        self.assertEqual(
            parse_fields('DATE=20080928052456.355641 Host="a b" dg.x=1'),
            [("DATE", "20080928052456.355641"), ("Host", "a b"), ("dg.x", "1")],
        )

    def test_escapes(self) -> None:
        """
        Inside quotes C{\\"}, C{\\\\} and C{\\n} are escapes and C{\\X} is C{X}.
        """
        self.assertEqual(
            parse_fields(r'A="q\"b\\n\nz\t\x"'),
            [("A", 'q"b\\n\nztx')],
        )

    def test_separators(self) -> None:
        """
        Runs of spaces and tabs separate fields; leading and trailing blanks
        and the trailing LF or CRLF are ignored.
        """
        expected = [("A", "1"), ("B", "2"), ("C", "")]
        self.assertEqual(parse_fields(' A=1 \t  B="2"\tC= \n'), expected)
        self.assertEqual(parse_fields(b'A=1 B="2" C=""\r\n'), expected)

    def test_empty(self) -> None:
        """
        An empty line has no fields.
        """
        self.assertEqual(parse_fields("\n"), [])

    def test_bytesUTF8(self) -> None:
        """
        Bytes are decoded as UTF-8; invalid UTF-8 is a broken line.
        """
        self.assertEqual(parse_fields('A="žluťoučký"'.encode()), [("A", "žluťoučký")])
        err = self.assertRaises(BrokenULM, parse_fields, b'A="\xff"')
        self.assertIn("position 3", err.message)

    def assertBroken(self, line: str, *words: str) -> None:
        """
        C{line} is a broken ULM line; the message contains every word.
        """
        err = self.assertRaises(BrokenULM, parse_fields, line)
        self.assertEqual(err.code, BROKEN_ULM)
        for word in words:
            self.assertIn(word, err.message)

    def test_missingEquals(self) -> None:
        """
        A key without C{=} names the key and the position.
        """
        self.assertBroken("A=1 HOST", "HOST", "position 8")
        self.assertBroken('A=1 HOST "x"', "HOST", "position 8")

    def test_badKeyCharacter(self) -> None:
        """
        A key with a character other than letters, digits, C{.-_} is broken.
        """
        self.assertBroken("A=1 DG.X!=2", "DG.X", "'!'", "position 8")
        self.assertBroken("A=1 =2", "position 4")

    def test_unterminatedQuote(self) -> None:
        """
        An unterminated quote names the key and where the quote opens.
        """
        self.assertBroken('A=1 B="abc', "unterminated", "B", "position 6")
        self.assertBroken('B="abc\\"', "unterminated", "B", "position 2")
        self.assertBroken('B="abc\\', "unterminated", "B", "position 2")

    def test_quoteNotFollowedByBlank(self) -> None:
        """
        A closing quote must be followed by whitespace or the end.
        """
        self.assertBroken('B="abc"d E=1', "B", "position 7")

    def test_backslashOutsideQuotes(self) -> None:
        """
        A backslash in a bare value is broken.
        """
        self.assertBroken("A=1 B=a\\b", "backslash", "B", "position 7")

    def test_quoteInBareValue(self) -> None:
        """
        A quote in the middle of a bare value is broken.
        """
        self.assertBroken('A=ab"c"', "quote", "A", "position 4")

    def test_lineFeedInside(self) -> None:
        """
        A raw line feed inside the event is broken, quoted or not.
        """
        self.assertBroken('A="x\ny"', "line feed", "position 4")
        self.assertBroken("A=x\nB=y\n", "line feed", "position 3")

    def test_duplicateKey(self) -> None:
        """
        Keys are compared case-insensitively for duplicates.
        """
        err = self.assertRaises(KeyDuplicity, parse_fields, 'DG.USER="a" A=1 dg.user="b"')
        self.assertEqual(err.code, KEY_DUPLICITY)
        self.assertIn("dg.user", err.message)

    def test_maxFields(self) -> None:
        """
        More than C{max_fields} fields is too big.
        """
        line = " ".join(f"K{i}=v" for i in range(DEFAULT_MAX_FIELDS))
        self.assertEqual(len(parse_fields(line)), DEFAULT_MAX_FIELDS)
        err = self.assertRaises(TooBig, parse_fields, line + " X=1")
        self.assertEqual(err.code, errno.E2BIG)
        self.assertRaises(TooBig, parse_fields, "A=1 B=2 C=3", max_fields=2)

    def test_maxSize(self) -> None:
        """
        A line longer than C{max_size} bytes (not counting the LF) is too big,
        for bytes and text (measured in UTF-8).
        """
        self.assertEqual(parse_fields('A="xxxx"\n', max_size=8), [("A", "xxxx")])
        self.assertRaises(TooBig, parse_fields, 'A="xxxxx"', max_size=8)
        self.assertRaises(TooBig, parse_fields, b'A="xxxxx"', max_size=8)
        self.assertRaises(TooBig, parse_fields, 'A="žžž"', max_size=8)
        self.assertEqual(DEFAULT_MAX_SIZE, 4 * 1024 * 1024)

    def test_bigValue(self) -> None:
        """
        A value of several megabytes with many escapes parses (linear time).
        """
        body = 'x = \\"y\\"; ' * 200_000
        fields = parse_fields(f'A=1 DG.REGJOB.JDL="{body}" B=2')
        self.assertEqual(fields[1][1], 'x = "y"; ' * 200_000)
        self.assertEqual(fields[2], ("B", "2"))

    def test_bigBrokenValue(self) -> None:
        """
        A broken multi-megabyte line is diagnosed (in linear time).
        """
        err = self.assertRaises(BrokenULM, parse_fields, "A" * 3_000_000)
        self.assertIn("position 3000000", err.message)
        err = self.assertRaises(BrokenULM, parse_fields, 'A="' + "x" * 3_000_000)
        self.assertIn("unterminated", err.message)


class FormatTests(SynchronousTestCase):
    """
    L{escape}, L{unescape} and L{format_fields}.
    """

    def test_escape(self) -> None:
        """
        Only quote, backslash and newline are escaped.
        """
        self.assertEqual(escape('a"b\\c\nd\te\r'), 'a\\"b\\\\c\\nd\te\r')
        self.assertEqual(unescape('a\\"b\\\\c\\nd\\te'), 'a"b\\c\ndte')

    def test_formatQuoting(self) -> None:
        """
        Values are quoted except those of DATE, PROG, LVL, DG.PRIORITY and
        ARR_DATE, which stay bare unless they need quoting.
        """
        self.assertEqual(
            format_fields(
                [
                    ("DATE", "20080928052456.355641"),
                    ("HOST", "h"),
                    ("PROG", "edg-wms"),
                    ("LVL", "SYSTEM"),
                    ("DG.PRIORITY", "0"),
                    ("DG.X", ""),
                    ("PROG", "a b"),
                ]
            ),
            'DATE=20080928052456.355641 HOST="h" PROG=edg-wms LVL=SYSTEM'
            ' DG.PRIORITY=0 DG.X="" PROG="a b"',
        )

    def test_formatBadKey(self) -> None:
        """
        A key that cannot be written is refused.
        """
        self.assertRaises(InvalidValue, format_fields, [("A B", "x")])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(keys, values), max_size=10, unique_by=lambda kv: kv[0].upper()))
    def test_roundTrip(self, pairs: list[tuple[str, str]]) -> None:
        """
        Parsing a formatted line gives the fields back, whatever the values.
        """
        line = format_fields(pairs)
        self.assertNotIn("\n", line)
        self.assertEqual(parse_fields(line + "\n"), pairs)
        self.assertEqual(parse_fields(line.encode("utf-8")), pairs)

    @settings(max_examples=200, deadline=None)
    @given(values)
    def test_escapeRoundTrip(self, value: str) -> None:
        """
        L{unescape} inverts L{escape}.
        """
        self.assertEqual(unescape(escape(value)), value)


class DateTests(SynchronousTestCase):
    """
    L{parse_date} and L{format_date}.
    """

    def test_dotted(self) -> None:
        """
        C{YYYYMMDDHHMMSS.uuuuuu} is UTC, in microseconds.
        """
        self.assertEqual(parse_date("19700101000000.000000"), 0)
        self.assertEqual(parse_date("20080928052456.355641"), 1222579496355641)
        self.assertEqual(format_date(1222579496355641), "20080928052456.355641")

    def test_java(self) -> None:
        """
        The 20-digit Java form C{yyyyMMddHHmmssSSS000} is accepted.
        """
        self.assertEqual(parse_date("20080928052456355000"), 1222579496355000)

    def test_java_form_known_day_fast(self) -> None:
        """
        The 20-digit Java form on a day seen before needs no calendar (the
        regular expression and C{datetime} are not used), as the usual form.
        """
        from lbtwist.core import ulm

        parse_date("20080928000000.000000")
        self.patch(ulm, "_DATE_RE", None)
        self.assertEqual(parse_date("20080928052456355000"), 1222579496355000)
        self.assertEqual(parse_date("20080928052456.355641"), 1222579496355641)

    def test_bad(self) -> None:
        """
        Anything else is a broken line naming the field.
        """
        for text in [
            "",
            "20080928052456",
            "20080928052456.35564",
            "20080928052456.3556411",
            "2008092805245.6355641",
            "2008092805245635500",
            "20081328052456.355641",
            "20080931052456.355641",
            "20080928052460.355641",
            "2008-09-28 05:24:56",
            " 20080928052456.355641",
        ]:
            err = self.assertRaises(BrokenULM, parse_date, text)
            self.assertIn("DATE", err.message)
        err = self.assertRaises(BrokenULM, parse_date, "x", key="ARR_DATE")
        self.assertIn("ARR_DATE", err.message)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=-62135596800 * 10**6, max_value=253402300799999999))
    def test_roundTrip(self, us: int) -> None:
        """
        Formatting then parsing any time from year 1 to 9999 is exact.
        """
        text = format_date(us)
        self.assertEqual(len(text), 21)
        self.assertEqual(parse_date(text), us)


# The line grammar written as two passes (validate the whole line, then extract),
# the definition the one-pass scanner of parse_fields must agree with.
_REFERENCE_LINE = re.compile(rf"[ \t]*+(?:{ulm._FIELD}(?:[ \t]++|\Z))*+")
_REFERENCE_FIELD = re.compile(ulm._FIELD)

near_ulm = st.text(alphabet='AB.=" \\\tx\n\r', max_size=30) | st.lists(
    st.sampled_from(['A="x y"', "B=1", 'C=""', "D=", 'E="a\\"b"', " ", "\t", '"', "\\", "=", "x"]),
    max_size=8,
).map("".join)


class ScannerTests(SynchronousTestCase):
    """
    The one-pass scanner accepts exactly the lines of the two-pass grammar.
    """

    @settings(max_examples=500, deadline=None)
    @given(near_ulm)
    def test_same_as_two_passes(self, text: str) -> None:
        body = text[:-1] if text.endswith("\n") else text
        body = body[:-1] if text.endswith("\r\n") else body
        if _REFERENCE_LINE.fullmatch(body) is None:
            self.assertRaises(BrokenULM, parse_fields, text)
            return
        expected = [(k, unescape(q) if q else b) for k, q, b in _REFERENCE_FIELD.findall(body)]
        if len({k.upper() for k, _ in expected}) != len(expected):
            self.assertRaises(KeyDuplicity, parse_fields, text)
        else:
            self.assertEqual(parse_fields(text), expected)

    def test_trailing_and_leading_blanks(self) -> None:
        self.assertEqual(parse_fields(' \tA=1 B="2"\t '), [("A", "1"), ("B", "2")])
        self.assertEqual(parse_fields(" \t "), [])

    def test_garbage_after_fields(self) -> None:
        err = self.assertRaises(BrokenULM, parse_fields, 'A=1 B="2"x C=3')
        self.assertIn("position 9", err.message)


class DateCacheTests(SynchronousTestCase):
    """
    Dates seen before are computed from the cached day; results do not change.
    """

    def test_cached_day_same_result(self) -> None:
        self.patch(ulm, "_DAYS", {})
        first = parse_date("20080928052456.355641")
        self.assertIn("20080928", ulm._DAYS)
        self.assertEqual(parse_date("20080928052456.355641"), first)
        self.assertEqual(parse_date("20080928235959355000"), 1222646399355000)

    def test_cached_day_bad_time(self) -> None:
        """
        A bad time of day on a cached date is still refused.
        """
        self.patch(ulm, "_DAYS", {})
        parse_date("20080928052456.355641")
        for text in (
            "20080928240000.000000",
            "20080928056000.000000",
            "20080928052460.000000",
            "20080928a52456.355641",
            "20080928052456.35564x",
            "20080928052456x355641",
            "20080928\u0665\u0665\u0665\u0665\u0665\u0665.355641",
            "20080928052456.\u0665\u0665\u0665\u0665\u0665\u0665",
        ):
            self.assertRaises(BrokenULM, parse_date, text)

    def test_cache_bounded(self) -> None:
        self.patch(ulm, "_DAYS", {})
        self.patch(ulm, "_DAYS_CACHE_SIZE", 3)
        for day in range(1, 10):
            us = parse_date(f"200809{day:02d}000000.000000")
            self.assertEqual(format_date(us), f"200809{day:02d}000000.000000")
            self.assertLessEqual(len(ulm._DAYS), 3)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=-62135596800 * 10**6, max_value=253402300799999999))
    def test_twice_same(self, us: int) -> None:
        text = format_date(us)
        self.assertEqual(parse_date(text), us)
        self.assertEqual(parse_date(text), us)
