# -*- test-case-name: tests.unit.test_web_render -*-
"""
Tests for the HTML builder of L{lbtwist.service.web.render}: every value escaped as
it is put in, the output the same as L{twisted.web.template}'s for the same tree.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.template import Tag, flattenString, tags

from lbtwist.core.events import parse_event
from lbtwist.service.web import render
from lbtwist.service.web.render import Markup, element, escape, escape_attribute
from lbtwist.store.interface import JobSummary, StoredEvent
from tests import traces

EVIL = "<script>alert(\"x\")</script> & 'q' \\n é"


def flat(tree: Any) -> str:
    out: list[Any] = []
    flattenString(None, tree).addBoth(out.append)
    [result] = out
    assert isinstance(result, bytes), result
    return result.decode("utf-8")


class EscapeTests(SynchronousTestCase):
    def test_text(self) -> None:
        self.assertEqual(
            escape(EVIL), EVIL.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        )
        self.assertIsInstance(escape(EVIL), Markup)
        self.assertEqual(escape(42), "42")

    def test_markup_unchanged(self) -> None:
        made = element("b", None, EVIL)
        self.assertIs(escape(made), made)
        self.assertEqual(element("i", None, made), f"<i>{made}</i>")

    def test_attribute(self) -> None:
        self.assertEqual(escape_attribute('a"b<&>'), "a&quot;b&lt;&amp;&gt;")

    def test_names_are_checked(self) -> None:
        self.assertRaises(ValueError, element, "a onclick", None)
        self.assertRaises(ValueError, element, "a", {'x="y"': "1"})
        self.assertRaises(ValueError, element, "", None)


class SameAsTemplateTests(SynchronousTestCase):
    """
    What L{element} writes is what twisted.web.template writes for the same tree.
    """

    def test_elements(self) -> None:
        cases: list[tuple[Markup, Tag]] = [
            (element("p", None, EVIL), tags.p(EVIL)),
            (element("a", {"href": EVIL}, EVIL), tags.a(href=EVIL)(EVIL)),
            (
                element("td", {"class": "v", "title": EVIL}, "a", None, ["b", ["c", EVIL]]),
                tags.td(class_="v", title=EVIL)("a", "b", "c", EVIL),
            ),
            (element("br"), tags.br()),
            (element("meta", {"charset": "utf-8"}), tags.meta(charset="utf-8")),
            (element("td"), tags.td()),
            (element("p", None, element("br"), "x"), tags.p(tags.br(), "x")),
        ]
        for mine, theirs in cases:
            self.assertEqual(mine, flat(theirs))

    def test_event_rows(self) -> None:
        """
        The history rows, built as strings, match the template tree they replace,
        hostile field values included.
        """
        tagged = traces.ulm_line(
            "UserTag",
            date=traces.date_text(500),
            host=traces.CE_HOST,
            source="CREAMExecutor",
            jobid=traces.DIRECT_JOBID,
            seqcode="no_seqcodes_with_cream_execute_99_0",
            name="note",
            value=EVIL,
        )
        lines = traces.cream_done_ok_unpurged() + [tagged]
        lines += [line + ' DG.GENERATED_BY="lbproxy"' for line in lines[-2:]]
        generated = 0
        for n, line in enumerate(lines):
            ev = parse_event(line)
            generated += ev.generated
            stored = StoredEvent(traces.DIRECT_JOBID, n + 1, ev.date, line, ev)
            self.assertEqual(render._event_row(stored), flat(template_event_row(stored)))
        self.assertEqual(generated, 2)

    def test_job_list_page(self) -> None:
        jobs = [
            JobSummary(f"https://h:9000/{EVIL}", EVIL, EVIL, None, EVIL),
            JobSummary("https://h:9000/CREAM1", "/DC=x/CN=u", "Done", "CREAM", "2024-01-01"),
        ]
        link = "/?owner=%2A&limit=1&cursor=x"
        head = tags.tr([tags.th(n) for n in ("job", "state", "type", "owner", "last update")])
        rows = [
            tags.tr(
                tags.td(tags.a(href=render.job_link(j.jobid))(j.jobid)),
                tags.td(j.state or ""),
                tags.td(j.jobtype or ""),
                tags.td(j.owner or ""),
                tags.td(j.last_update or ""),
            )
            for j in jobs
        ]
        body = [
            tags.h1("Jobs (2)"),
            tags.table(tags.thead(head), tags.tbody(rows)),
            tags.p(tags.a(href=link)("next page")),
        ]
        page = tags.html(lang="en")(
            tags.head(tags.meta(charset="utf-8"), tags.title("Jobs"), tags.style(render._STYLE)),
            tags.body(body),
        )
        expected = "<!DOCTYPE html>\n" + flat(page) + "\n"
        self.assertEqual(render.jobs_html(jobs, link).decode("utf-8"), expected)
        self.assertNotIn("<script", expected)


def template_event_row(stored: StoredEvent) -> Tag:
    """
    A history row as twisted.web.template trees built it.
    """
    ev = stored.event
    own: list[Any] = []
    for k, v in ev.fields.items():
        if own:
            own.append(tags.br())
        own.append(render._cell(f"{k}={v}"))
    row = tags.tr(class_="generated") if ev.generated else tags.tr()
    return row(
        tags.td(render._cell(render.format_iso(ev.date))),
        tags.td(render._cell(ev.type)),
        tags.td(render._cell(ev.source)),
        tags.td(render._cell(ev.host)),
        tags.td(class_="v")(render._cell(ev.seqcode)),
        tags.td(class_="v")(own),
    )
