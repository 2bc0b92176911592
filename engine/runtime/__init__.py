"""The runtime: facts in, the matcher over durable-rules, the per-patient session with its
truth maintenance and trace, and the `Engine` that holds a compiled rule set.

Imports `engine.language`; never `engine.explain` or `engine.host`.
"""
