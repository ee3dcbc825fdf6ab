# -*- test-case-name: tests.unit.test_store_sqlite -*-
"""
This machine's raw SQLite ceiling: WAL, synchronous=FULL, N rows per fsync'ed commit.

Run: C{.venv/bin/python bench/sqlite_ceiling.py [count]}. The intake benchmark imports
L{measure} to compare the service with the disk's limit.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time

#: About the size of a CREAM event line.
_LINE = "x" * 600


def measure(path: str, batch: int, count: int) -> dict[str, float]:
    """
    Insert C{count} rows into a fresh table at C{path}, C{batch} rows per transaction.

    @return: C{batch}, C{rows}, C{commits}, C{seconds}, C{rows_per_s}, C{commits_per_s}.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("DROP TABLE IF EXISTS ceiling")
        conn.execute(
            "CREATE TABLE ceiling (id INTEGER PRIMARY KEY, jobid TEXT NOT NULL,"
            " seqno INTEGER NOT NULL, line TEXT NOT NULL)"
        )
        conn.execute("CREATE UNIQUE INDEX ceiling_job ON ceiling (jobid, seqno)")
        commits = 0
        start = time.perf_counter()
        for first in range(0, count, batch):
            rows = [
                (f"https://ce.example.org:9000/job{n // 10}", n % 10, _LINE)
                for n in range(first, min(first + batch, count))
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO ceiling (jobid, seqno, line) VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
            commits += 1
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return {
        "batch": float(batch),
        "rows": float(count),
        "commits": float(commits),
        "seconds": seconds,
        "rows_per_s": count / seconds,
        "commits_per_s": commits / seconds,
    }


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else 20_000
    figures = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", ".")) as tmp:
        for batch in (1, 16, 256):
            n = min(count, 2_000) if batch == 1 else count
            result = measure(os.path.join(tmp, f"ceiling-{batch}.sqlite"), batch, n)
            figures.append(
                f"batch={batch}: {result['rows_per_s']:.0f} rows/s"
                f" {result['commits_per_s']:.0f} commits/s"
            )
    figures.append(f"reproduce: .venv/bin/python bench/sqlite_ceiling.py {count}")
    sys.stdout.write("; ".join(figures) + "\n")


if __name__ == "__main__":
    main(sys.argv)
