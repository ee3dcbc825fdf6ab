# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{lbtwist} command: L&B-compatible client tools (see C{lbtwist.cli.main}).
"""
