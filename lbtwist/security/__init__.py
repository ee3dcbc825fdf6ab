# -*- test-case-name: tests.unit.test_layers -*-
"""
Who is talking: TLS contexts and ports, peer identities (X.509 and VOMS),
the authorization rules and the development certificates.

Imports only L{lbtwist.core} and the option table L{lbtwist.config}.
"""
