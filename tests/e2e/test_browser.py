# -*- test-case-name: tests.e2e.test_browser -*-
"""
The web pages in a real browser: headless Chromium against a running
C{twistd lbproxy} (development PKI), asserting on the rendered DOM.

Chromium is driven over the DevTools protocol on a pipe
(C{--remote-debugging-pipe}: JSON messages ending in NUL on file descriptors 3
and 4), so no driver binary or extra Python package is needed. The service wants
a client certificate (mutual TLS); rather than teaching the browser's NSS store
to pick one, each test runs a small forwarder on loopback that the browser talks
plain HTTP to and that opens a TLS connection to the service with the dev user's
certificate and key, checking the service against the dev CA.

Skipped (with the reason) when C{/usr/bin/chromium} or C{chromium} is absent.
Screenshots of the pages go to C{$LBTWIST_SCREENSHOTS} when it is set.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from lbtwist.core.events import parse_event
from tests import traces
from tests.e2e import harness
from tests.e2e.harness import E2ECase, LBService, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: The flags this box and CI need (closed network, no sandbox in containers).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)

#: Longest wait for one browser answer or page load (seconds).
TIMEOUT = 30.0


class Forwarder:
    """
    A loopback TCP listener: each connection is forwarded over TLS to
    C{127.0.0.1:port} with a client certificate.

    Each forwarded connection has two pump threads, one a direction. When one
    direction ends, both sockets are shut down before they are closed: a bare
    C{close} would not wake the other thread's C{recv}, and the browser's side
    would stay open with nobody reading it (the browser then waits for ever on
    a kept-alive connection).
    """

    def __init__(self, port: int, cert: Path, key: Path, ca_dir: Path) -> None:
        self.target = ("127.0.0.1", port)
        self.context = ssl.create_default_context(capath=str(ca_dir))
        self.context.check_hostname = False
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                plain, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(plain,), daemon=True).start()

    def _serve(self, plain: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(socket.create_connection(self.target, timeout=TIMEOUT))
        except OSError:
            plain.close()
            return
        # The connect and handshake are bounded; after them the service's own
        # idle timeout decides how long a kept-alive connection lives.
        tls.settimeout(None)
        back = threading.Thread(target=self._pump, args=(tls, plain), daemon=True)
        back.start()
        self._pump(plain, tls)
        back.join()
        for s in (plain, tls):
            s.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                # socket.socket's shutdown, not SSLSocket's: that one also
                # drops the TLS state the other pump thread may be using.
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        # shutdown wakes the thread blocked in accept (close alone does not).
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


class Browser:
    """
    One headless Chromium with one page, driven over the DevTools pipe.
    """

    def __init__(self, profile: str) -> None:
        assert CHROMIUM is not None
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child reads commands on fd 3 and writes answers on fd 4 (bash puts
        # the pipe there: fd numbers above 9 are beyond a POSIX shell).
        r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        os.makedirs(profile, exist_ok=True)
        #: Chromium's own messages, next to its profile.
        self.log_path = profile.rstrip("/") + ".log"
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-',
                "bash",
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(r, w),
        )
        log.close()
        os.close(r)
        os.close(w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable", session=True)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        result: dict[str, Any] = json.loads(message)
        return result

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """
        Send one DevTools command and wait for its answer (events met meanwhile
        are kept for L{wait_event}).
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            got = self._read_message(deadline)
            if got.get("id") == self._next_id:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                answer: dict[str, Any] = got["result"]
                return answer
            self._events.append(got)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    del self._events[i]
                    return event
            self._events.append(self._read_message(deadline))

    def open(self, url: str, width: int = 1200, height: int = 900) -> None:
        """
        Load C{url} in a viewport C{width} CSS pixels wide and wait for its load event.
        """
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        self._events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page (DevTools evaluation:
        the page itself runs no script, its CSP forbids it).
        """
        answer = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, path: str, whole: bool = True) -> None:
        """
        Write a PNG of the page (C{whole}: all of it, else the viewport).
        """
        data = self.call(
            "Page.captureScreenshot", session=True, format="png", captureBeyondViewport=whole
        )
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _owned_by(lines: list[str], owner: str) -> list[str]:
    return [line.replace(f'DG.USER="{traces.CREAM_USER}"', f'DG.USER="{owner}"') for line in lines]


class BrowserTests(E2ECase):
    """
    Each test: a service with a failed, a successful and an aborted job of the
    dev user, a browser; it loads pages and reads the DOM.
    """

    if CHROMIUM is None:
        skip = "chromium is not installed (apt-get install chromium)"

    service: LBService
    forwarder: Forwarder
    browser: Browser
    base: Path

    def setUp(self) -> None:
        from lbtwist.security.devcerts import USER_NAME
        from lbtwist.security.identity import slash_dn

        self.base = Path(tempfile.mkdtemp(prefix="lbtwist-browser-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        port = free_port()
        self.service = LBService(
            str(self.base / "svc"), ["--query", f"tcp:{port}:interface=127.0.0.1"]
        )
        self.addCleanup(self.service.cleanup)
        self.service.start()
        owner = slash_dn(USER_NAME)
        self.jobs: dict[str, list[str]] = {
            "failed": traces.cream_done_failed(),
            "ok": traces.cream_done_ok_unpurged(),
            "aborted": traces.cream_aborted(),
        }
        with harness.connect(self.service.socket_path) as s:
            for lines in self.jobs.values():
                for line in _owned_by(lines, owner):
                    s.sendall(harness.logd_frame(line))
                    assert harness.logd_read_reply(s) == 0, line
        devcerts = Path(self.service.state_dir) / "devcerts"
        harness.wait_for_port(port, self.service)
        self.forwarder = Forwarder(
            port,
            devcerts / "user" / "usercert.pem",
            devcerts / "user" / "userkey.pem",
            devcerts / "certificates",
        )
        self.addCleanup(self.forwarder.close)
        self.browser = Browser(str(self.base / "profile"))
        self.addCleanup(self.browser.close)

    def url(self, path: str, **params: str) -> str:
        query = ("?" + urlencode(params)) if params else ""
        return f"http://127.0.0.1:{self.forwarder.port}{path}{query}"

    def unique(self, name: str) -> str:
        return parse_event(self.jobs[name][0]).jobid.rsplit("/", 1)[1]

    def shot(self, name: str, width: int) -> None:
        where = os.environ.get("LBTWIST_SCREENSHOTS")
        if where:
            self.browser.screenshot(os.path.join(where, f"{name}-{width}.png"), width > 600)

    def rows(self) -> list[list[str]]:
        return list(
            self.browser.js(
                "Array.from(document.querySelectorAll('table.jobs tbody tr'))"
                ".map(r => Array.from(r.cells).map(c => c.innerText))"
            )
        )

    def test_list_page_and_filter(self) -> None:
        """
        The list shows the filter form and the CREAM state and exit code columns;
        choosing a state in the form and submitting it (a GET form) lists only
        the jobs in that state, the choice kept in the form.
        """
        b = self.browser
        b.open(self.url("/"))
        self.shot("list", 1200)
        heads = b.js("Array.from(document.querySelectorAll('table.jobs th')).map(h => h.innerText)")
        self.assertIn("CREAM state", heads)
        self.assertIn("exit code", heads)
        self.assertEqual(len(self.rows()), 3)
        by_state = {row[0].rsplit("/", 1)[1]: row for row in self.rows()}
        failed = by_state[self.unique("failed")]
        self.assertEqual((failed[1], failed[2], failed[3]), ("Done", "Done-failed", "3"))
        self.assertEqual(b.js("document.querySelector('form.filter').method"), "get")
        names = b.js("Array.from(document.querySelectorAll('form.filter [name]')).map(e => e.name)")
        self.assertEqual(names, ["state", "owner", "jobtype", "since", "until"])
        # Fill in and submit the form as a user would (the page runs no script).
        b.js("document.querySelector('form.filter select[name=state]').value = 'Aborted'")
        b._events.clear()
        b.js("document.querySelector('form.filter button').click()")
        b.wait_event("Page.loadEventFired")
        self.assertIn("state=Aborted", b.js("location.search"))
        rows = self.rows()
        self.assertEqual([r[1] for r in rows], ["Aborted"])
        self.assertEqual(rows[0][0].rsplit("/", 1)[1], self.unique("aborted"))
        self.assertEqual(b.js("document.querySelector('select[name=state]').value"), "Aborted")
        self.assertEqual(
            b.js("document.querySelector('table.jobs tbody td:nth-child(2)').className"),
            "state-aborted",
        )
        # The job link leads to the job page.
        b._events.clear()
        b.js("document.querySelector('table.jobs tbody a').click()")
        b.wait_event("Page.loadEventFired")
        self.assertEqual(b.js("location.pathname"), "/" + self.unique("aborted"))

    def test_failed_job_page(self) -> None:
        """
        A done-failed job's page: the failed colour, the timeline, the JDL with
        its line breaks, a link back to the list; dates in one line.
        """
        b = self.browser
        b.open(self.url("/" + self.unique("failed")))
        self.shot("job", 1200)
        self.assertIn("state-done-failed", b.js("document.getElementById('state').className"))
        color = b.js("getComputedStyle(document.getElementById('state')).backgroundColor")
        self.assertEqual(color, "rgb(248, 212, 212)")
        steps = b.js(
            "Array.from(document.querySelectorAll('ol.timeline li .state')).map(e => e.innerText)"
        )
        self.assertEqual(steps[0], "Submitted")
        self.assertEqual(steps[-1], "Done")
        jdl = b.js("document.getElementById('jdl').innerText")
        self.assertTrue(jdl.startswith("["), jdl)
        self.assertNotIn("\\n", jdl)
        self.assertEqual(b.js("document.querySelector('a.back').getAttribute('href')"), "/")
        # Every date is one line high (no wrapping mid-token).
        heights = b.js(
            "Array.from(document.querySelectorAll('time')).map(t => t.getClientRects().length)"
        )
        self.assertTrue(heights)
        self.assertEqual(set(heights), {1})
        self.assertNotIn("stateEnterTimes", b.js("document.body.innerText"))

    def test_narrow_viewport(self) -> None:
        """
        On a 400 px wide screen neither page scrolls sideways.
        """
        b = self.browser
        for name, path in (("job", "/" + self.unique("failed")), ("list", "/")):
            b.open(self.url(path), width=400, height=800)
            self.shot(name, 400)
            width = b.js("document.documentElement.scrollWidth")
            self.assertLessEqual(width, 400, name)

    def test_unknown_job_html_error(self) -> None:
        """
        An unknown job gives the browser an HTML error page (JSON clients still
        get JSON).
        """
        b = self.browser
        b.open(self.url("/NoSuchJob000"))
        self.assertEqual(b.js("document.title"), "404 Not found")
        self.assertIn("no job", b.js("document.querySelector('p.message').innerText"))
        self.assertEqual(b.js("document.querySelector('a.back').getAttribute('href')"), "/")
        b.open(self.url("/NoSuchJob000", format="json"))
        answer = json.loads(b.js("document.body.innerText"))
        self.assertEqual(answer["error"], 404)
