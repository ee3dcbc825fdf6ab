# -*- test-case-name: tests.unit.test_typing -*-
"""
The typing contract of the package: C{mypy lbtwist} checks the core and the
security layer as C{mypy --strict} would.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent.parent

#: The flags C{--strict} turns on that mypy can set per module.
STRICT = frozenset(
    {
        "disallow_any_generics",
        "disallow_subclassing_any",
        "disallow_untyped_calls",
        "disallow_untyped_defs",
        "disallow_incomplete_defs",
        "check_untyped_defs",
        "disallow_untyped_decorators",
        "warn_unused_ignores",
        "warn_return_any",
        "no_implicit_reexport",
        "strict_equality",
        "extra_checks",
    }
)

#: The packages held to it.
STRICT_PACKAGES = ("lbtwist.core", "lbtwist.security")


class StrictOverridesTests(SynchronousTestCase):
    def overrides(self) -> list[dict[str, object]]:
        with open(ROOT / "pyproject.toml", "rb") as f:
            found: list[dict[str, object]] = tomllib.load(f)["tool"]["mypy"]["overrides"]
        return found

    def test_strict_packages(self) -> None:
        """
        Each strict package and its modules have one override with every strict
        flag on (none left out, none off).
        """
        for package in STRICT_PACKAGES:
            [override] = [o for o in self.overrides() if package in o["module"]]  # type: ignore[operator]
            self.assertIn(f"{package}.*", override["module"])  # type: ignore[arg-type]
            on = {k for k, v in override.items() if v is True}
            self.assertEqual(STRICT - on, set(), package)
            self.assertEqual({k for k, v in override.items() if v is False}, set(), package)
