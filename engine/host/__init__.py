"""Host integration: the command line, the CDS Hooks service and its auth, FHIR input, the
fact store, the audit log and the scenario runner.

The top layer: it may import every other layer; nothing imports it.
"""
