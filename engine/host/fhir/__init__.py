"""FHIR R4 in: the resources of a Bundle become engine facts, as `schemas/fhir-mapping.yaml`
says, and everything that does not become a fact is an input problem with a reason.

The mapping is data (validated by `schemas/fhir-mapping.schema.json` when it is loaded);
the standard codes live in the vocabularies it names (`schemas/observations.json`,
`schemas/terms.json`). The readers (one module per resource type) only know how to read
the FHIR elements the mapping names. docs/fhir.md says what maps, which times are read,
what each status means and what is reported.

Fact ids are ``<ResourceType>/<id>``, so a corrected or amended resource (same id) is a
new version of the same fact, and an entered-in-error one retracts it. A resource that
yields several facts numbers the others ``#<n>``: ``#i`` is component i of an
Observation, ``#o2`` the oxygen support its O2 flow component stands for, ``#1`` the end
of a period (an infusion stopped, oxygen ended, a discharge).
"""

from __future__ import annotations

from engine.host.fhir.legacy import Unmapped, bundle_to_facts
from engine.host.fhir.mapping import load_mapping
from engine.host.fhir.reader import MappedBundle, is_fhir_bundle, read_bundle

__all__ = [
    "MappedBundle",
    "Unmapped",
    "bundle_to_facts",
    "is_fhir_bundle",
    "load_mapping",
    "read_bundle",
]
