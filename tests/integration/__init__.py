"""
Tests that need a server started for them (a private PostgreSQL cluster).
"""
