"""Cohort replay: many patients' facts evaluated on a process pool or a Dask cluster.

- `sources`: where the patients come from (a directory of fact files, an NDJSON file
  with a `patient` field per fact, the fact store), read lazily in patient order;
- `rules`: the rule files and policy as one picklable value, shipped once per worker,
  and the engine each worker process loads from it, lazily and once;
- `work`: one task evaluates a batch of patients (at `as_of`, or at every time point);
- `rows`: its evaluations as plain rows: what changed in the findings and
  recommendations at each time point, and a summary per patient;
- `runners`: the same tasks on a local process pool or a Dask cluster;
- `tables`: the rows as flat, deterministically ordered parquet and CSV files;
- `replay`: a run from end to end;
- `diff`: which patients' outcomes change between two rule sets;
- `cli`: `cart-cds cohort run|diff`.
"""

from engine.host.cohort.rules import RulesSpec
from engine.host.cohort.sources import CohortError, PatientFacts

__all__ = ["CohortError", "PatientFacts", "RulesSpec"]
