# -*- test-case-name: tests.e2e.test_bench_memory -*-
"""
A short run of C{bench/memory.py} (a small store, seconds of load): the benchmark
starts its server and proxy, loads them, reports their memory and cleans up.
"""

from __future__ import annotations

import io
import os
import re
from contextlib import redirect_stdout

from bench import memory
from tests.e2e.harness import E2ECase


class MemoryBenchTests(E2ECase):
    def test_short_run(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        out = io.StringIO()
        argv = ["--jobs", "300", "--minutes", "0.05", "--rate", "200", "--producers", "2"]
        argv += ["--clients", "1", "--query-rate", "20", "--dir", base]
        with redirect_stdout(out):
            self.assertEqual(memory.main(argv), 0)
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[-1].startswith("memory: 300 jobs, 0.05 min mixed load"), lines[-1])
        self.assertIn("[python -m bench.memory --jobs 300", lines[-1])
        load = next(line for line in lines if line.startswith("load:"))
        found = re.search(
            r"(\d+) events logged \((\d+) refused\), (\d+) stored at the server,"
            r" relay backlog (\d+); (\d+) queries \((\d+) not 200\)",
            load,
        )
        assert found is not None, load
        logged, refused, relayed, backlog, queries, bad = map(int, found.groups())
        self.assertGreater(logged, 100)
        self.assertEqual((refused, backlog, bad), (0, 0, 0))
        # Every logged event reached the server, with the gLite events the proxy generated.
        self.assertGreaterEqual(relayed, logged)
        self.assertGreater(queries, 20)
        for name in ("proxy", "server"):
            line = next(x for x in lines if x.startswith(f"{name}: RSS start"))
            self.assertRegex(line, r"after \d+ MB, peak \(VmHWM\) \d+ MB")
