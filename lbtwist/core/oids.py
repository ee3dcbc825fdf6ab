# -*- test-case-name: tests.unit.test_identity -*-
"""
Object identifiers of certificate names, shared by the full identity code
(L{lbtwist.security.identity}) and the producer CLI's light DN reader
(L{lbtwist.cli.identity}). Imports nothing, so the producer's fast lane can use it.
"""

#: Attribute short names as OpenSSL prints them in slash-form DNs.
SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.46": "dnQualifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}
