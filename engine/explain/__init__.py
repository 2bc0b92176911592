"""Explanation: why-not, chains back to the input facts, text and HTML reports, CDS Hooks
cards. Consumes evaluations and sessions.

Imports `engine.runtime` and `engine.language`; never `engine.host`.
"""
