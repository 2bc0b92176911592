"""The rule language: YAML loading, schemas and their located errors, the fact vocabulary,
the rule set model, validation and compilation onto durable-rules' JSON form.

The lowest layer: it imports nothing from `engine.runtime`, `engine.explain` or
`engine.host`.
"""
