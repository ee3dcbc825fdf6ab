#!/usr/bin/env python3
"""
Move a tree from the flat lbtwist layout to the layer packages.

Usage (from the repository root, on any branch)::

    python3 tools/relayout.py [--move] [--dry-run] [PATH ...]

Rewrites, in every text file under the given paths (default: C{lbtwist tests
bench twisted tools docs etc README.md pyproject.toml .ci}):

  - C{import lbtwist.X}, C{from lbtwist.X import ...}, C{from lbtwist import X, Y};
  - dotted names in strings and comments (C{lbtwist.tls.RefusalLog},
    C{test-case-name: tests.test_tls}, mock/patch targets);
  - file paths (C{lbtwist/tls.py}, C{tests/test_tls.py}).

With C{--move}, modules and tests still at their old place (for example a
branch that added C{lbtwist/txproducer.py} or C{tests/test_store_fold.py}) are
moved first with C{git mv}. Running it twice changes nothing the second time.
Afterwards run C{ruff check --fix lbtwist tests bench twisted} to re-sort the
imports and C{ruff format}.

With C{--resolve-imports}, after a C{git merge} between a branch in the old
layout and one in the new, conflicts that are only import lines (one side
old, one side new) are settled with the old side rewritten; other conflicts
stay for a human.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

#: Old module (below C{lbtwist.}) -> new module path (below C{lbtwist.}).
MODULES: dict[str, str] = {
    # core: pure, no Twisted
    "errors": "core.errors",
    "ulm": "core.ulm",
    "events": "core.events",
    "jobid": "core.jobid",
    "seqcode": "core.seqcode",
    "ilproto": "core.ilproto",
    "states": "core.states",
    "translate": "core.translate",
    # security: certificates, identities, authorization
    "tls": "security.tls",
    "identity": "security.identity",
    "authz": "security.authz",
    "devcerts": "security.devcerts",
    # service: the daemons' protocols and services
    "framing": "service.framing",
    "intake": "service.intake",
    "storeport": "service.storeport",
    "relay": "service.relay",
    "web": "service.web",
    "logs": "service.logs",
    # client: what talks to the daemons
    "client": "client.query",
    "producer": "client.producer",
    "txproducer": "client.txproducer",
}

#: Old directories (package data) -> new ones, below C{lbtwist/}.
DATA_DIRS: dict[str, str] = {"data": "core/data"}

#: Sub-modules of the new C{lbtwist.client} package: C{lbtwist.client.<one of
#: these>} is already new and must not be rewritten again.
CLIENT_NEW = ("query", "producer", "txproducer", "servesock", "notify")

DEFAULT_PATHS = (
    "lbtwist",
    "tests",
    "bench",
    "twisted",
    "tools",
    "docs",
    "etc",
    "README.md",
    "pyproject.toml",
    ".ci",
)
SUFFIXES = {".py", ".md", ".txt", ".conf", ".toml", ".sh", ".cfg", ".ini", ".rst", ""}
SELF = Path(__file__).resolve()

_names = "|".join(sorted(MODULES, key=len, reverse=True))

# lbtwist.X (dotted), not preceded by a word character or a dot.
_DOTTED = re.compile(r"(?<![\w.])lbtwist\.(" + _names + r")\b")
# lbtwist/X.py and lbtwist/X/ (paths).
_PATH = re.compile(r"(?<![\w.])lbtwist/(" + _names + r")(\.py\b|/)")
_DATA = re.compile(r"(?<![\w.])lbtwist/(" + "|".join(DATA_DIRS) + r")/")
# tests.test_x and tests/test_x.py.
_TEST_DOTTED = re.compile(r"(?<![\w.])tests\.(test_\w+)")
_TEST_PATH = re.compile(r"(?<![\w./])tests/(test_\w+\.py)")
# from lbtwist import a, b as c  # comment
_FROM_ROOT = re.compile(
    r"^(?P<indent>[ \t]*)from lbtwist import (?P<names>[^()\n#]+?)(?P<tail>[ \t]*#.*)?$", re.M
)


_FROM_TESTS = re.compile(
    r"^(?P<indent>[ \t]*)from tests import (?P<names>[^()\n#]+?)(?P<tail>[ \t]*#.*)?$", re.M
)
# importlib.resources.files("lbtwist").joinpath("data/...")
_RESOURCE = re.compile(
    r"""files\((["'])lbtwist\1\)(\s*\.joinpath\(["'](?:""" + "|".join(DATA_DIRS) + r")/)"
)


def _from_tests(match: re.Match[str]) -> str:
    indent, tail = match.group("indent"), match.group("tail") or ""
    names = [n.strip() for n in match.group("names").split(",") if n.strip()]
    moved = [n for n in names if n.startswith("test_")]
    if not moved:
        return match.group(0)
    lines = []
    kept = [n for n in names if not n.startswith("test_")]
    if kept:
        lines.append(f"{indent}from tests import {', '.join(kept)}")
    lines.append(f"{indent}from tests.unit import {', '.join(moved)}")
    lines[0] += tail
    return "\n".join(lines)


def _dotted(match: re.Match[str]) -> str:
    old = match.group(1)
    if old == "client":
        rest = match.string[match.end() :]
        if re.match(r"\.(?:" + "|".join(CLIENT_NEW) + r")\b", rest):
            return match.group(0)  # lbtwist.client.query...: already new
        if re.match(r"\s+import\s+\(?\s*(?:" + "|".join(CLIENT_NEW) + r")\b", rest):
            return match.group(0)  # from lbtwist.client import query: already new
        before = match.string[: match.start()]
        if before.endswith('"') and rest.startswith('"'):
            return match.group(0)  # "lbtwist.client": the new package's name
    return "lbtwist." + MODULES[old]


def _path(match: re.Match[str]) -> str:
    old, end = match.group(1), match.group(2)
    if old == "client" and end == "/":
        return match.group(0)  # already the new package
    new = MODULES[old].replace(".", "/")
    return f"lbtwist/{new}{end}"


def _from_root(match: re.Match[str]) -> str:
    indent, tail = match.group("indent"), match.group("tail") or ""
    groups: dict[str, list[str]] = {}
    for item in match.group("names").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, alias = item.partition(" as ")
        name, alias = name.strip(), alias.strip()
        if name in MODULES:
            parent, _, leaf = ("lbtwist." + MODULES[name]).rpartition(".")
            bound = alias or name
            groups.setdefault(parent, []).append(leaf if leaf == bound else f"{leaf} as {bound}")
        else:
            groups.setdefault("lbtwist", []).append(item)
    if list(groups) == ["lbtwist"]:
        return match.group(0)
    lines = [f"{indent}from {parent} import {', '.join(names)}" for parent, names in groups.items()]
    lines[0] += tail
    return "\n".join(lines)


#: A line carrying this marker is left as it is (an old name kept on purpose).
KEEP = "relayout: keep"
#: A file carrying this marker is left as it is (the script's own tests).
SKIP_FILE = "relayout: skip" + " this file"


def rewrite(text: str) -> str:
    """
    The text with every old module path replaced by the new one (lines
    marked with L{KEEP} excepted).
    """
    if KEEP in text:
        return "".join(
            line if KEEP in line else _rewrite(line) for line in text.splitlines(keepends=True)
        )
    return _rewrite(text)


def _rewrite(text: str) -> str:
    text = _FROM_ROOT.sub(_from_root, text)
    text = _FROM_TESTS.sub(_from_tests, text)
    text = _RESOURCE.sub(r"files(\1lbtwist.core\1)\2", text)
    text = _DOTTED.sub(_dotted, text)
    text = _PATH.sub(_path, text)
    text = _DATA.sub(lambda m: "lbtwist/" + DATA_DIRS[m.group(1)] + "/", text)
    text = _TEST_DOTTED.sub(r"tests.unit.\1", text)
    text = _TEST_PATH.sub(r"tests/unit/\1", text)
    return text


_CONFLICT = re.compile(
    r"^<<<<<<< [^\n]*\n(?P<ours>.*?)^(?:\|\|\|\|\|\|\| [^\n]*\n.*?)?=======\n(?P<theirs>.*?)^>>>>>>> [^\n]*\n",
    re.M | re.S,
)
_IMPORT_LINE = re.compile(r"^\s*(?:from \S+ import .*|import \S+.*|[\w, ]+,?|\)|)$")


def _only_imports(block: str) -> bool:
    return all(_IMPORT_LINE.match(line) for line in block.splitlines())


def resolve_imports(text: str) -> str:
    """
    Settle the merge conflicts that only the move made: a conflict whose two
    sides hold nothing but import lines, one side in the old layout and the
    other in the new one, becomes the old side rewritten (it carries the
    branch's own change) plus the new side's lines it lacks (an import the
    move only re-sorted into the block). C{ruff check --fix} then sorts the
    block and drops what is unused.
    """

    def settle(match: re.Match[str]) -> str:
        ours, theirs = match.group("ours"), match.group("theirs")
        if not (_only_imports(ours) and _only_imports(theirs)):
            return match.group(0)
        old_ours, old_theirs = rewrite(ours) != ours, rewrite(theirs) != theirs
        if old_ours == old_theirs:
            return match.group(0)
        settled = rewrite(ours if old_ours else theirs)
        other = theirs if old_ours else ours
        if "(" in other:
            extra = [other] if other not in settled else []
        else:
            have = set(settled.splitlines())
            extra = [
                line + "\n" for line in other.splitlines() if line.strip() and line not in have
            ]
        return settled + "".join(extra)

    return _CONFLICT.sub(settle, text)


def _git_mv(old: Path, new: Path, dry: bool) -> None:
    print(f"move {old} -> {new}")
    if dry:
        return
    new.parent.mkdir(parents=True, exist_ok=True)
    init = new.parent / "__init__.py"
    if new.suffix == ".py" and new.name != "__init__.py" and not init.exists():
        init.write_text("")
        subprocess.run(["git", "add", str(init)], check=True)
    subprocess.run(["git", "mv", str(old), str(new)], check=True)


def move_leftovers(root: Path, dry: bool) -> None:
    """
    C{git mv} modules, packages and tests still at their old place.
    """
    pkg = root / "lbtwist"
    for old, new in MODULES.items():
        target = pkg / (new.replace(".", "/"))
        for src, dst in ((pkg / f"{old}.py", target.with_suffix(".py")), (pkg / old, target)):
            if old == "client" and src == pkg / old:
                continue  # lbtwist/client/ is the new package
            if src.is_file() and src.suffix == ".py" and not dst.exists():
                _git_mv(src, dst, dry)
            elif src.is_dir() and (src / "__init__.py").exists():
                for f in sorted(src.rglob("*")):
                    if f.is_file() and "__pycache__" not in f.parts:
                        d = dst / f.relative_to(src)
                        if not d.exists():
                            _git_mv(f, d, dry)
    for old, new in DATA_DIRS.items():
        src = pkg / old
        if src.is_dir():
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    d = pkg / new / f.relative_to(src)
                    if not d.exists():
                        _git_mv(f, d, dry)
    for test in sorted((root / "tests").glob("test_*.py")):
        dst = root / "tests" / "unit" / test.name
        if not dst.exists():
            _git_mv(test, dst, dry)


def files_under(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = [d for d in dirnames if d not in {".venv", "__pycache__", ".git"}]
                for name in filenames:
                    f = Path(dirpath) / name
                    if f.suffix in SUFFIXES:
                        found.append(f)
    return [f for f in found if f.resolve() != SELF]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS))
    parser.add_argument("--move", action="store_true", help="git mv files left at old paths")
    parser.add_argument("--dry-run", action="store_true", help="only say what would change")
    parser.add_argument(
        "--resolve-imports",
        action="store_true",
        help="settle merge conflicts between old-layout and new-layout import lines",
    )
    args = parser.parse_args(argv)
    if args.move:
        move_leftovers(Path("."), args.dry_run)
    changed = 0
    for f in files_under(args.paths):
        try:
            text = f.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if SKIP_FILE in text:
            continue
        new = resolve_imports(text) if args.resolve_imports else text
        new = rewrite(new)
        if new != text:
            changed += 1
            print(f"rewrite {f}")
            if not args.dry_run:
                f.write_text(new, "utf-8")
    print(f"{changed} file(s) rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
