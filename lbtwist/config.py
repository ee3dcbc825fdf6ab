# -*- test-case-name: tests.unit.test_config -*-
"""
INI configuration loading and the embedded defaults.

A configuration file has one section per role (C{[lbproxy]} or C{[lbserver]}); its keys are
the long command-line option names (C{state-dir = /var/lib/lbtwist}; C{state_dir} is accepted
too). Repeatable options take several values separated by newlines or commas. Options given
on the command line override the file; the file overrides the built-in defaults.
"""

from __future__ import annotations

import configparser
from collections.abc import Iterable, Mapping

from lbtwist.core.errors import InvalidValue

DEFAULT_STATE_DIR = "./lbtwist-state"

# Intake bounds (design section 7); every one is an option.
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_EVENT_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_FIELDS = 100
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_INTAKE_IDLE_TIMEOUT = 60
DEFAULT_INTAKE_BACKLOG = 1024

DEFAULT_RELAY_WINDOW = 64
DEFAULT_MAX_FUTURE_SKEW = 86_400  # seconds
DEFAULT_REFOLD_SLICE = 100  # events

#: Events per page of a job's history (queries).
DEFAULT_PAGE_EVENTS = 500
# Bounds of the TLS ports (docs/limits.md); every one is an option.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_HANDSHAKES = 64
DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 8
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64
DEFAULT_STORE_MAX_CONNECTIONS = 256
DEFAULT_STORE_IDLE_TIMEOUT = 300.0
DEFAULT_QUERY_MAX_CONNECTIONS = 256
DEFAULT_QUERY_IDLE_TIMEOUT = 60.0
# HTTP request head bounds of the query port.
DEFAULT_MAX_REQUEST_LINE = 16 * 1024
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_MAX_HEADERS = 100
# Rate limit of TLS refusal log lines (per identical line; in all per interval).
DEFAULT_TLS_LOG_INTERVAL = 60
DEFAULT_TLS_LOG_BURST = 50


def normalize_key(key: str) -> str:
    """
    Map an option name as written in a file or on the command line to its canonical form.

    @return: the name in lower case with C{-} between words (C{state_dir} -> C{state-dir}).
    """
    return key.strip().lower().replace("_", "-")


def split_values(text: str) -> list[str]:
    """
    Split the value of a repeatable option into its items (newline- or comma-separated).
    """
    items: list[str] = []
    for line in text.splitlines():
        items.extend(part.strip() for part in line.split(","))
    return [item for item in items if item]


def read_config(path: str, section: str, known: Iterable[str]) -> dict[str, str]:
    """
    Read one role's section of an INI file.

    @param path: the file.
    @param section: C{lbproxy} or C{lbserver}.
    @param known: the canonical option names the role accepts.
    @return: canonical option name -> raw string value.
    @raise InvalidValue: the file cannot be read, lacks the section, or names an unknown key.
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise InvalidValue(f"cannot read configuration {path}: {e}") from e
    if not parser.has_section(section):
        raise InvalidValue(f"configuration {path} has no [{section}] section")
    allowed = set(known)
    values: dict[str, str] = {}
    for key, value in parser.items(section):
        name = normalize_key(key)
        if name not in allowed:
            raise InvalidValue(
                f"configuration {path}: unknown key {key!r} in [{section}]"
                f" (known: {', '.join(sorted(allowed))})"
            )
        values[name] = value
    return values


def parse_bool(name: str, text: str) -> bool:
    """
    Parse a boolean configuration value (C{yes/no}, C{true/false}, C{on/off}, C{1/0}).
    """
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise InvalidValue(f"{name}: expected a boolean, got {text!r}")


def merge(
    explicit: Mapping[str, object], from_file: Mapping[str, str], defaults: Mapping[str, object]
) -> dict[str, object]:
    """
    Combine the three layers: explicit command-line values win over the file, which wins over
    the defaults. A command-line value of C{None} (or an empty list) means "not given".
    """
    result: dict[str, object] = dict(defaults)
    result.update(from_file)
    for key, value in explicit.items():
        if value is None or value == [] or value is False:
            continue
        result[key] = value
    return result
