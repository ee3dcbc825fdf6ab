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
from lbtwist.core.states import compute_status
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
        """
        The list rows, built as strings, match the template tree: the job link,
        the state with its colour class, CREAM state, exit code, the date.
        """
        jobs = [
            JobSummary(f"https://h:9000/{EVIL}", EVIL, EVIL, None, EVIL, EVIL, None),
            JobSummary(
                "https://h:9000/CREAM1",
                "/DC=x/CN=u",
                "Done",
                "CREAM",
                "2024-01-01T10:00:00.000000Z",
                "DONE-FAILED",
                3,
                1,
            ),
        ]
        link = "/?owner=%2A&limit=1&cursor=x"
        page = render.jobs_html(jobs, link).decode("utf-8")
        rows = [
            tags.tr(
                tags.td(tags.a(href=render.job_link(j.jobid))(j.jobid)),
                tags.td(class_=render.state_class(j.state, j.done_code))(j.state or ""),
                tags.td(j.cream_state or ""),
                tags.td("" if j.exit_code is None else str(j.exit_code)),
                tags.td(j.jobtype or ""),
                tags.td(j.owner or ""),
                tags.td(template_time(j.last_update)),
            )
            for j in jobs
        ]
        self.assertIn(flat(tags.tbody(rows)), page)
        self.assertIn('<td class="state-done-failed">Done</td>', page)
        self.assertIn(flat(tags.p(tags.a(href=link)("next page"))), page)
        self.assertNotIn("<script", page)


def template_time(iso: str | None) -> Any:
    """
    A C{<time>} element as twisted.web.template builds it.
    """
    if not iso:
        return ""
    return tags.time(title=iso)(render.human_date(iso))


def template_seqcode(seqcode: str | None) -> Any:
    text = seqcode or ""
    if len(text) <= render.SEQCODE_SHOWN:
        return text
    return tags.details(class_="seq")(
        tags.summary(text[: render.SEQCODE_SHOWN], "\u2026"), tags.code(text)
    )


def template_event_row(stored: StoredEvent) -> Tag:
    """
    A history row as twisted.web.template trees build it.
    """
    ev = stored.event
    own: list[Any] = []
    for k, v in ev.fields.items():
        if own:
            own.append(tags.br())
        own.append(f"{k}={v}")
    row = tags.tr(class_="generated") if ev.generated else tags.tr()
    return row(
        tags.td(template_time(render.format_iso(ev.date))),
        tags.td(render._cell(ev.type)),
        tags.td(render._cell(ev.source)),
        tags.td(render._cell(ev.host)),
        tags.td(class_="v")(template_seqcode(ev.seqcode)),
        tags.td(class_="v")(own),
    )


class PieceTests(SynchronousTestCase):
    """
    The pieces of the pages: dates, colour classes, the timeline, the JDL, the
    seqcode, the filter form, error pages.
    """

    def test_human_date(self) -> None:
        self.assertEqual(render.human_date("2024-03-14T09:26:53.001000Z"), "2024-03-14 09:26:53")
        self.assertEqual(render.human_date("yesterday"), "yesterday")
        self.assertEqual(
            render.time_element("2024-03-14T09:26:53.001000Z"),
            '<time title="2024-03-14T09:26:53.001000Z">2024-03-14 09:26:53</time>',
        )
        self.assertEqual(render.time_element(None), "")
        self.assertEqual(render.time_element(EVIL), flat(template_time(EVIL)))

    def test_state_class(self) -> None:
        cases = [
            (("Done", 0), "state-done-ok"),
            (("Done", "OK"), "state-done-ok"),
            (("Done", None), "state-done-ok"),
            (("Done", 1), "state-done-failed"),
            (("Done", "FAILED"), "state-done-failed"),
            (("Done", 2), "state-cancelled"),
            (("Cancelled", None), "state-cancelled"),
            (("Aborted", None), "state-aborted"),
            (("Running", None), "state-other"),
            ((None, None), "state-other"),
            ((EVIL, EVIL), "state-other"),
        ]
        for (state, code), expected in cases:
            self.assertEqual(render.state_class(state, code), expected, (state, code))

    def test_timeline(self) -> None:
        t0 = 1_710_408_413_001_000
        html = render.timeline(
            {"Running": t0 + 65_000_000, "Submitted": t0, "Done": t0 + 3_725_000_000}, "Done"
        )
        states = [part.split("</span>")[0] for part in html.split('<span class="state">')[1:]]
        self.assertEqual(states, ["Submitted", "Running", "Done"])
        self.assertIn('<li class="state-done-ok current">', html)
        self.assertIn("(+1m 05s)", html)
        self.assertIn("(+1h 02m)", html)
        self.assertIn("2024-03-14 09:26:53</time>", html)
        self.assertEqual(render.timeline({}, None), "")
        evil = render.timeline({EVIL: t0}, EVIL)
        self.assertNotIn("<script", evil)
        self.assertIn("&lt;script&gt;", evil)

    def test_seqcode(self) -> None:
        self.assertEqual(render.seqcode_cell("short"), "short")
        self.assertEqual(render.seqcode_cell(None), "")
        long = traces.glite_seqcode(UI=2, NS=4)
        self.assertGreater(len(long), 90)
        cell = render.seqcode_cell(long)
        self.assertIn(f"<summary>{long[: render.SEQCODE_SHOWN]}\u2026</summary>", cell)
        self.assertIn(f"<code>{long}</code>", cell)
        self.assertNotIn("<script", render.seqcode_cell(EVIL * 3))

    def job_page(self, lines: list[str]) -> str:
        stored = []
        for n, line in enumerate(lines):
            ev = parse_event(line)
            stored.append(StoredEvent(traces.DIRECT_JOBID, n + 1, ev.date, line, ev))
        status = compute_status((s.event, s.seqno) for s in stored)
        return render.status_html(status, stored).decode("utf-8")

    def test_failed_job_page(self) -> None:
        page = self.job_page(traces.cream_done_failed())
        self.assertIn('name="viewport"', page)
        self.assertIn('class="badge state state-done-failed"', page)
        self.assertIn('<ol class="timeline">', page)
        self.assertIn('<a href="/" class="back">', page)
        self.assertIn('<pre class="jdl" id="jdl">', page)
        self.assertNotIn("stateEnterTimes", page)

    def test_hostile_jdl(self) -> None:
        line = traces.ulm_line(
            "RegJob",
            date=traces.date_text(0),
            host=traces.CE_HOST,
            source="CREAMInterface",
            jobid=traces.DIRECT_JOBID,
            seqcode="no_seqcodes_with_cream_execute_0_0",
            jdl=f'[\n  Executable = "{EVIL}";\n]',
            ns=traces.CREAM_ENDPOINT,
            jobtype="CREAM",
        )
        page = self.job_page([line])
        self.assertNotIn("<script", page)
        self.assertIn('&lt;script&gt;alert("x")&lt;/script&gt;', page)
        # The JDL as text: its line breaks are line breaks, not a written backslash-n.
        jdl = page.split('<pre class="jdl" id="jdl">')[1].split("</pre>")[0]
        self.assertTrue(jdl.startswith('[\n  Executable = "&lt;script&gt;'), jdl)
        self.assertEqual(jdl.count("\n"), 2)

    def test_filter_form(self) -> None:
        page = render.jobs_html([], None, [("state", "Done"), ("owner", EVIL), ("x", "y")])
        text = page.decode("utf-8")
        self.assertIn('<form class="filter" method="get" action="/">', text)
        self.assertIn('<option value="Done" selected="selected">Done</option>', text)
        self.assertIn(f'value="{escape_attribute(EVIL)}"', text)
        self.assertNotIn("<script", text)
        for name in render.FILTER_FIELDS:
            self.assertIn(f'name="{name}"', text)

    def test_error_page(self) -> None:
        page = render.error_html(404, f"no job {EVIL!r}").decode("utf-8")
        self.assertIn("<title>404 Not found</title>", page)
        self.assertIn('<a href="/" class="back">', page)
        self.assertIn('<p class="message">no job', page)
        self.assertNotIn("<script", page)


class ResourceHTMLTests(SynchronousTestCase):
    """
    The query resource's HTML answers: error pages for browsers, JSON errors for
    the others, the filter form's empty fields, the CREAM state and exit code.
    """

    def setUp(self) -> None:
        from tests.unit import test_web

        self.web = test_web
        self.store = test_web.store_with(
            traces.cream_done_ok_unpurged(), traces.cream_aborted(), traces.cream_done_failed()
        )
        self.h = test_web.Harness(self.store)

    def test_error_page_for_browsers(self) -> None:
        req = self.h.get("/CREAM000000001", accept="text/html,*/*;q=0.8")
        self.assertEqual(req.responseCode, 404)
        self.assertEqual(self.web.ctype(req), b"text/html; charset=utf-8")
        page = self.web.body(req).decode()
        self.assertIn("<title>404 Not found</title>", page)
        self.assertIn("no job 'CREAM000000001'", page)
        req = self.h.get("/CREAM000000001?format=json", accept="text/html")
        self.assertEqual(self.web.ctype(req), b"application/json; charset=utf-8")
        self.assertEqual(self.web.as_json(req)["error"], 404)
        req = self.h.get("/CREAM000000001", accept="application/json")
        self.assertEqual(self.web.as_json(req)["error"], 404)
        req = self.h.get("/?state=nosuch", accept="text/html")
        self.assertEqual(req.responseCode, 400)
        self.assertIn(b'<h1 class="error">400 Bad request</h1>', self.web.body(req))

    def test_empty_form_fields(self) -> None:
        """
        The form sends every field, empty ones too: they mean no filter.
        """
        req = self.h.get("/?state=&owner=&jobtype=&since=&until=", accept="text/html")
        self.assertEqual(req.responseCode, 200, self.web.body(req))
        page = self.web.body(req).decode()
        self.assertEqual(page.count('<tr><td><a href="/'), 3)
        self.assertIn('<td class="state-done-failed">Done</td><td>Done-failed</td><td>3</td>', page)
        req = self.h.get("/?state=Aborted&owner=&since=", accept="text/html")
        page = self.web.body(req).decode()
        self.assertEqual(page.count('<tr><td><a href="/'), 1)
        self.assertIn('<option value="Aborted" selected="selected">', page)
