# -*- test-case-name: tests.unit.test_tap -*-
"""
The C{twistd lbproxy} and C{twistd lbserver} plugins; all logic lives in L{lbtwist.tap}.
"""

from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbtwist L&B proxy",
    "lbtwist.tap.proxy",
    "L&B server-proxy for a CREAM CE: event intake, job states, queries, relay.",
    "lbproxy",
)

lbserver = ServiceMaker(
    "lbtwist L&B server",
    "lbtwist.tap.server",
    "Central L&B server: store port, job states, queries.",
    "lbserver",
)
