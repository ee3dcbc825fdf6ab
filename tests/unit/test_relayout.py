# -*- test-case-name: tests.unit.test_relayout -*-
# relayout: skip this file (it holds old names on purpose)
"""
Tests for C{tools/relayout.py}, the rewrite from the flat module layout to
the layer packages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "relayout.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relayout", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


relayout = load()

OLD = """# -*- test-case-name: tests.test_intake -*-
from lbtwist import config, logs
from lbtwist import client
from lbtwist import tls  # type: ignore[attr-defined]
from lbtwist.client import QueryClient
from lbtwist.producer import LBProducer
import lbtwist.states.status
from lbtwist.web.render import error_body
from tests import test_states, traces
from tests.test_tls import Fixture
patch = "lbtwist.relay.host_credentials"
table = files("lbtwist").joinpath("data/events.tsv")
see lbtwist/tls.py, lbtwist/web/ and tests/test_tls.py
"""

NEW = """# -*- test-case-name: tests.unit.test_intake -*-
from lbtwist import config
from lbtwist.service import logs
from lbtwist.client import query as client
from lbtwist.security import tls  # type: ignore[attr-defined]
from lbtwist.client.query import QueryClient
from lbtwist.client.producer import LBProducer
import lbtwist.core.states.status
from lbtwist.service.web.render import error_body
from tests import traces
from tests.unit import test_states
from tests.unit.test_tls import Fixture
patch = "lbtwist.service.relay.host_credentials"
table = files("lbtwist.core").joinpath("data/events.tsv")
see lbtwist/security/tls.py, lbtwist/service/web/ and tests/unit/test_tls.py
"""


class RewriteTests(SynchronousTestCase):
    def test_rewrite(self) -> None:
        """
        Imports, dotted names, resource look-ups and paths of the old layout
        get their new names.
        """
        self.assertEqual(relayout.rewrite(OLD).splitlines(), NEW.splitlines())

    def test_idempotent(self) -> None:
        """
        New names stay as they are: running the script twice changes nothing.
        """
        self.assertEqual(relayout.rewrite(NEW), NEW)
        self.assertEqual(
            relayout.rewrite('packages = ["lbtwist.client"]'), 'packages = ["lbtwist.client"]'
        )

    def test_keep(self) -> None:
        """
        A line marked C{relayout: keep} keeps its old name.
        """
        text = 'OLD = "lbtwist.logs.logger"  # relayout: keep\nfrom lbtwist import logs\n'
        self.assertEqual(
            relayout.rewrite(text),
            'OLD = "lbtwist.logs.logger"  # relayout: keep\nfrom lbtwist.service import logs\n',
        )

    def test_tree_is_new(self) -> None:
        """
        Nothing in the package, the tests or the benchmarks still uses an old name.
        """
        root = SCRIPT.parents[1]
        stale = [
            str(f.relative_to(root))
            for f in relayout.files_under(
                [str(root / d) for d in ("lbtwist", "tests", "bench", "twisted")]
            )
            if f.suffix == ".py"
            and relayout.SKIP_FILE not in f.read_text("utf-8")
            and relayout.rewrite(f.read_text("utf-8")) != f.read_text("utf-8")
        ]
        self.assertEqual(stale, [])


CONFLICTED = """\
<<<<<<< HEAD
from lbtwist.core.errors import LBError
from lbtwist.core.seqcode import ordering_key
=======
from lbtwist.errors import LBError, TryAgain
>>>>>>> main
x = 1
<<<<<<< HEAD
real = 1
=======
real = 2
>>>>>>> main
"""


class ResolveTests(SynchronousTestCase):
    def test_import_conflict(self) -> None:
        """
        An import-only conflict between the layouts becomes the old side
        rewritten plus the new side's other lines (ruff's import sorting merges
        the two C{lbtwist.core.errors} lines); any other conflict stays.
        """
        self.assertEqual(
            relayout.resolve_imports(CONFLICTED),
            "from lbtwist.core.errors import LBError, TryAgain\n"
            "from lbtwist.core.errors import LBError\n"
            "from lbtwist.core.seqcode import ordering_key\n"
            "x = 1\n" + CONFLICTED.split("x = 1\n", 1)[1],
        )

    def test_same_layout(self) -> None:
        """
        A conflict of imports both in the new layout is left to a human.
        """
        both_new = CONFLICTED.replace("lbtwist.errors", "lbtwist.core.errors")
        self.assertEqual(relayout.resolve_imports(both_new), both_new)
