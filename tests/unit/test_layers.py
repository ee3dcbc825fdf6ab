# -*- test-case-name: tests.unit.test_layers -*-
"""
The import rule of the package layout: dependencies only point down.

Every module of C{lbtwist} is parsed with L{ast} (nothing is imported) and
each of its imports, at any depth (lazy imports in functions and
C{TYPE_CHECKING} blocks count too), is checked against L{LAYERS}.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import lbtwist

ROOT = Path(lbtwist.__file__).resolve().parent

#: The layers, lowest first, and the modules or packages (below C{lbtwist.})
#: in each. A module may import its own layer and the layers listed before it.
#: C{config} is the option table: it holds the defaults and validators the
#: ports are built with, imports only the core and is read by every layer
#: above it. The package itself (C{lbtwist}: C{__version__}) imports nothing.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("root", ("",)),
    ("core", ("core",)),
    ("config", ("config",)),
    ("security", ("security",)),
    ("store", ("store",)),
    ("service", ("service",)),
    ("client", ("client",)),
    ("cli", ("cli",)),
    ("top", ("tap", "logs", "__main__", "testing")),
]

#: Layers on the same level that must not import each other.
SIBLINGS = {frozenset({"service", "client"})}


def layer_of(module: str) -> str:
    """
    The layer of an C{lbtwist} module name (C{lbtwist.security.tls}).
    """
    parts = module.split(".")
    assert parts[0] == "lbtwist", module
    head = parts[1] if len(parts) > 1 else ""
    for name, members in LAYERS:
        if head in members:
            return name
    raise LookupError(f"{module}: in no layer of tests.unit.test_layers.LAYERS")


RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# service and client share a level: neither is above the other.
RANK["client"] = RANK["service"]
RANK["cli"] = RANK["service"] + 1
RANK["top"] = RANK["cli"] + 1


def modules() -> Iterator[tuple[str, Path]]:
    """
    Every module of the package: its dotted name and its file.
    """
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports_of(module: str, source: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """
    The modules a source imports (absolute names, relative ones resolved),
    with their line numbers. C{from lbtwist.x import y} names
    C{lbtwist.x.y} when C{y} is a module, C{lbtwist.x} otherwise.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if base.startswith("lbtwist") and _is_module(candidate):
                    yield node.lineno, candidate
                else:
                    yield node.lineno, base


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations() -> list[str]:
    """
    One readable line per import that breaks the rule.
    """
    found = []
    for module, path in modules():
        source = path.read_text("utf-8")
        found.extend(check(module, source, path.name == "__init__.py"))
    return found


def check(module: str, source: str, is_package: bool = False) -> list[str]:
    """
    The rule's violations in one module's source.
    """
    found = []
    mine = layer_of(module)
    for line, target in imports_of(module, source, is_package):
        where = f"{module} (line {line}) imports {target}"
        if mine == "core":
            if target == "twisted" or target.startswith("twisted."):
                found.append(f"{where}: the core imports no Twisted")
                continue
        if target != "lbtwist" and not target.startswith("lbtwist."):
            continue
        theirs = layer_of(target)
        if theirs == mine:
            continue
        if frozenset({mine, theirs}) in SIBLINGS:
            found.append(f"{where}: the {mine} layer does not import the {theirs} layer")
        elif RANK[theirs] >= RANK[mine]:
            found.append(f"{where}: the {mine} layer imports the higher {theirs} layer")
    return found


class LayerRuleTests(SynchronousTestCase):
    """
    The package keeps to its layers.
    """

    def test_tree(self) -> None:
        """
        No module of C{lbtwist} imports upward, and the core is pure.
        """
        problems = violations()
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_everyModuleHasALayer(self) -> None:
        """
        A new top-level module must be given a layer in L{LAYERS}.
        """
        for module, _ in modules():
            layer_of(module)

    def test_coreImportsReactor(self) -> None:
        """
        A core module importing the reactor, or anything from Twisted, breaks the rule.
        """
        for bad in (
            "from twisted.internet import reactor\n",
            "def f():\n    import twisted.internet.defer\n",
            "from twisted.logger import Logger\n",
        ):
            [problem] = check("lbtwist.core.events", bad)
            self.assertIn("lbtwist.core.events (line ", problem)
            self.assertIn("imports twisted", problem)
            self.assertIn("the core imports no Twisted", problem)

    def test_coreImportsUpper(self) -> None:
        """
        A core module importing the store, a service, security or the options breaks the rule.
        """
        for bad, target in (
            ("from lbtwist.store.sqlite import SQLiteStore\n", "lbtwist.store.sqlite"),
            ("from lbtwist.service import intake\n", "lbtwist.service.intake"),
            ("from lbtwist.security.tls import RefusalLog\n", "lbtwist.security.tls"),
            ("from lbtwist import config\n", "lbtwist.config"),
            ("from ...service.web import render\n", "lbtwist.service.web.render"),
        ):
            [problem] = check("lbtwist.core.states.glite", bad)
            self.assertIn(f"imports {target}", problem)

    def test_upward(self) -> None:
        """
        An import of a higher layer is named with the module, line and target.
        """
        self.assertEqual(
            check("lbtwist.store.batch", "import os\n\nfrom lbtwist.service.relay import x\n"),
            [
                "lbtwist.store.batch (line 3) imports lbtwist.service.relay: "
                "the store layer imports the higher service layer"
            ],
        )
        [problem] = check("lbtwist.security.tls", "from lbtwist.tap import makeService\n")
        self.assertIn("the security layer imports the higher top layer", problem)
        [problem] = check("lbtwist.service.relay", "from lbtwist.cli import main\n")
        self.assertIn("the service layer imports the higher cli layer", problem)

    def test_siblings(self) -> None:
        """
        The services and the clients do not import each other.
        """
        [problem] = check("lbtwist.client.query", "from lbtwist.service.web import render\n")
        self.assertIn("the client layer does not import the service layer", problem)
        [problem] = check("lbtwist.service.intake", "from lbtwist.client import producer\n")
        self.assertIn("the service layer does not import the client layer", problem)

    def test_downward(self) -> None:
        """
        Imports of lower layers, of the own layer and of other libraries are fine.
        """
        self.assertEqual(
            check(
                "lbtwist.service.storeport",
                "from twisted.internet import reactor\n"
                "from lbtwist.core.events import Event\n"
                "from lbtwist.security import tls\n"
                "from lbtwist.store.interface import OutboxEntry\n"
                "from lbtwist import config\n"
                "from lbtwist.service.relay import host_credentials\n",
            ),
            [],
        )
        self.assertEqual(check("lbtwist.tap", "from lbtwist.service import intake\n"), [])
        self.assertEqual(check("lbtwist.cli.main", "from lbtwist import __version__\n"), [])


#: What the store must not import: the role it plays is a policy it is given
#: (L{lbtwist.core.relaypolicy}), and DNs are normalized in the core.
STORE_FORBIDDEN = ("lbtwist.core.translate", "lbtwist.security", "lbtwist.service")

#: What the command line must not import of the store: it reads a store
#: through L{lbtwist.store.open_reader}.
CLI_FORBIDDEN_STORE = ("lbtwist.store.sqlite", "lbtwist.store.batch")


def forbidden_imports(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """
    The imports of C{package}'s modules that name one of C{forbidden} (or below it).
    """
    found = []
    for module, path in modules():
        if module != package and not module.startswith(package + "."):
            continue
        source = path.read_text("utf-8")
        for line, target in imports_of(module, source, path.name == "__init__.py"):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                found.append(f"{module} (line {line}) imports {target}")
    return found


class RoleNeutralStoreTests(SynchronousTestCase):
    """
    The store knows no role; the CLI reads it through its public reader.
    """

    def test_store_knows_no_role(self) -> None:
        """
        No store module imports the translation, security or a service.
        """
        problems = forbidden_imports("lbtwist.store", STORE_FORBIDDEN)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_cli_reads_through_open_reader(self) -> None:
        """
        The command line imports no store internals.
        """
        problems = forbidden_imports("lbtwist.cli", CLI_FORBIDDEN_STORE)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_one_dn_normalization(self) -> None:
        """
        The store and the security layer compare DNs with the core's one function.
        """
        from lbtwist.core import dn
        from lbtwist.security import identity
        from lbtwist.store import query

        self.assertIs(identity.normalize_dn, dn.normalize_dn)
        self.assertIs(identity.same_dn, dn.same_dn)
        self.assertEqual(
            query.owner_key("/DC=org/CN=A/E=a@b"), dn.normalize_dn("/dc=org/cn=a/emailAddress=a@b")
        )
