"""
lbtwist: a Logging & Bookkeeping server-proxy for CREAM computing elements, on Twisted.
"""

__version__ = "0.1.0"
