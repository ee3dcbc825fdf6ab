# -*- test-case-name: tests.unit.test_docs -*-
"""
The repository's documentation stands on its own: no product file (README, docs,
sample configurations, the package, the plugins, the benchmarks) refers to files
outside the repository, and every C{docs/<name>.md} it points to exists, as does
the section a pointer names (C{docs/reference.md, Job ids and ports}).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]

#: What the product is made of (files or directories below the repository root).
PRODUCT = ("README.md", "docs", "etc", "lbtwist", "twisted", "bench")

#: References to the planners' documents outside the repository.
OUTSIDE = re.compile(
    r"\.\./shared|/work/shared|design\.md|design\s+(?:section|sections|§|\d)",
    re.IGNORECASE,
)

#: A pointer to a doc, optionally with a section: C{docs/x.md, Section} or
#: C{docs/x.md, "section"}.
POINTER = re.compile(
    r"docs/(?P<doc>[A-Za-z0-9_-]+\.md)"
    r"(?:[,:]\s+(?:\"(?P<quoted>[^\"\n]+)\"|(?P<plain>[A-Z][^).;:,\"`}\n]*)))?"
)

#: A relative Markdown link inside C{docs/}: C{[text](relay.md#anchor)}.
MD_LINK = re.compile(r"\]\((?P<target>[A-Za-z0-9_./-]+\.md)(?:#[^)]*)?\)")


def product_files(root: Path = ROOT) -> Iterator[Path]:
    """
    The text files of the product, in a stable order.
    """
    for name in PRODUCT:
        top = root / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".gz", ".cache"):
                continue
            yield path


def outside_references(text: str) -> list[tuple[int, str]]:
    """
    @return: C{(line number, text)} of every reference to a file outside the
        repository.
    """
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if OUTSIDE.search(line)
    ]


def headings(text: str) -> list[str]:
    """
    The headings of a Markdown text, without their C{#}s and section numbers.
    """
    found = []
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            found.append(re.sub(r"^\d+(?:\.\d+)*\.?\s+", "", title))
    return found


def broken_pointers(text: str, docs: Path) -> list[str]:
    """
    @param docs: the C{docs} directory the pointers resolve in.
    @return: one line per pointer to a missing doc, or to a section (the start of
        a heading, case ignored) the doc does not have.
    """
    broken = []
    # Doc comments wrap lines: read a pointer across a line break.
    flat = re.sub(r"\s*\n\s*(?:#:?|\*|//)?\s*", " ", text)
    for match in POINTER.finditer(flat):
        target = docs / match["doc"]
        if not target.is_file():
            broken.append(f"docs/{match['doc']}: no such file")
            continue
        section = (match["quoted"] or match["plain"] or "").strip()
        if not section:
            continue
        titles = [t.lower() for t in headings(target.read_text("utf-8"))]
        if not any(t.startswith(section.lower()) for t in titles):
            broken.append(f"docs/{match['doc']}: no section {section!r}")
    for match in MD_LINK.finditer(text):
        if not (docs / match["target"]).is_file():
            broken.append(f"{match['target']}: no such file")
    return broken


class CheckerTests(SynchronousTestCase):
    """
    The checks themselves, on made-up texts.
    """

    def test_outside(self) -> None:
        """
        Citations of the planners' contract are found, plain words are not.
        """
        text = (
            "ok line\n"
            "# Intake bounds (design section 7)\n"
            "see ../shared/design.md\n"
            "Target (design 14): fast\n"
            "a good design of the store\n"
        )
        self.assertEqual([n for n, _ in outside_references(text)], [2, 3, 4])

    def test_pointers(self) -> None:
        """
        A pointer to a missing doc or section is broken; a pointer to the start of a
        heading, in any case and across a line break, is not.
        """
        docs = Path(self.mktemp())
        docs.mkdir()
        (docs / "ref.md").write_text(
            "# Ref\n\n## 3. Job ids and ports\n\n### The CREAM machine (x)\n"
        )
        good = (
            "(docs/ref.md, Job ids and ports) docs/ref.md, The CREAM\n"
            '    # machine) docs/ref.md, "job ids" docs/ref.md, sections 4 and 5 docs/ref.md'
        )
        self.assertEqual(broken_pointers(good, docs), [])
        bad = "docs/nope.md and (docs/ref.md, Event order) and [x](gone.md#a)"
        self.assertEqual(
            broken_pointers(bad, docs),
            [
                "docs/nope.md: no such file",
                "docs/ref.md: no section 'Event order'",
                "gone.md: no such file",
            ],
        )


class RepositoryDocsTests(SynchronousTestCase):
    """
    The repository's own files.
    """

    def test_product_files_found(self) -> None:
        """
        The product files are where the checks look for them.
        """
        names = {p.relative_to(ROOT).as_posix() for p in product_files()}
        for expected in ("README.md", "docs/architecture.md", "etc/lbproxy.conf", "lbtwist/tap.py"):
            self.assertIn(expected, names)

    def test_no_outside_references(self) -> None:
        """
        No product file refers to the planners' documents outside the repository.
        """
        found = [
            f"{path.relative_to(ROOT)}:{number}: {line}"
            for path in product_files()
            for number, line in outside_references(path.read_text("utf-8", "replace"))
        ]
        self.assertEqual(found, [])

    def test_doc_pointers_resolve(self) -> None:
        """
        Every C{docs/<name>.md} a product file points to exists and has the section
        the pointer names; so do the relative links between the docs.
        """
        found = [
            f"{path.relative_to(ROOT)}: {problem}"
            for path in product_files()
            for problem in broken_pointers(path.read_text("utf-8", "replace"), ROOT / "docs")
        ]
        self.assertEqual(found, [])
