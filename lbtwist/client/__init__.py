# -*- test-case-name: tests.unit.test_layers -*-
"""
What talks to the daemons: the HTTPS query client (C{query}) and the event
producers (C{producer}, and the Twisted one, C{txproducer}).

Builds on L{lbtwist.security} and L{lbtwist.core}; never imports the services.
"""
