# -*- test-case-name: tests.unit.test_layers -*-
"""
The daemons' protocols and services: the framings, the local intake, the
store port, the relay to the server, the HTTPS query port and the capped logs.

Builds on L{lbtwist.store}, L{lbtwist.security} and L{lbtwist.core}; never
imports the clients, the command line or the twistd plugin.
"""
