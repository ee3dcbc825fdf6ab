"""
Deterministic unit tests (no processes, no sockets, no sleeps): the fast
developer loop, C{trial tests.unit}.
"""
