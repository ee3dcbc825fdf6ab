# -*- test-case-name: tests.unit.test_layers -*-
"""
The L&B model, pure: ULM lines, events, job ids, DNs, sequence codes, the IL
wire codec, the state machines, the CREAM translation and the relay policy a
proxy's store is given.

Nothing here imports Twisted or any other layer of lbtwist, and nothing reads
the clock: every other layer builds on it.
"""
