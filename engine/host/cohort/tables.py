"""The rows of a cohort run as flat files: DIR/findings, recommendations, summary, each
as `.parquet` and `.csv`, plus `cohort.json` (the rules, policy and counts).

Rows are sorted on every column, in column order, so the files depend only on the rules,
the facts and `as_of`: never on the worker count, the batch size or the finishing order.
Nothing run-dependent (wall time, host, worker ids) is written.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.host.cohort.work import (
    FINDING_COLUMNS,
    RECOMMENDATION_COLUMNS,
    SUMMARY_COLUMNS,
    BatchResult,
    Row,
)

__all__ = ["TABLES", "overview", "sort_rows", "write_tables"]

_INT = {"step", "grade", "facts", "time_points", "crs_grade", "crs_max_grade", "icans_grade",
        "icans_max_grade", "recommendations", "critical", "incomplete_evaluations",
        "input_problems"}  # fmt: skip
TABLES: dict[str, tuple[str, ...]] = {
    "findings": FINDING_COLUMNS,
    "recommendations": RECOMMENDATION_COLUMNS,
    "summary": SUMMARY_COLUMNS,
}


def sort_rows(rows: Sequence[Row]) -> list[Row]:
    def key(row: Row) -> tuple[tuple[bool, Any], ...]:
        return tuple((v is None, 0 if v is None else v) for v in row)

    return sorted(rows, key=key)


def _table(columns: Sequence[str], rows: Sequence[Row]) -> Any:
    import pyarrow as pa

    schema = pa.schema([(c, pa.int64() if c in _INT else pa.string()) for c in columns])
    data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    return pa.Table.from_pydict(data, schema=schema)


def write_tables(out: Path, result: BatchResult, manifest: Mapping[str, Any]) -> dict[str, int]:
    """Write every table (parquet and CSV) and the manifest; returns rows per table."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name, columns in TABLES.items():
        rows = sort_rows(getattr(result, name))
        table = _table(columns, rows)
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
        pcsv.write_csv(table, out / f"{name}.csv")
        counts[name] = len(rows)
    doc = {**manifest, "rows": counts}
    (out / "cohort.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
    return counts


def overview(summary: Sequence[Row]) -> str:
    """A few lines for the terminal: patients, decisions, worst grades, incomplete."""
    col = {c: i for i, c in enumerate(SUMMARY_COLUMNS)}

    def hist(name: str) -> str:
        counts = Counter("-" if r[col[name]] is None else str(r[col[name]]) for r in summary)
        return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))

    incomplete = sum(1 for r in summary if r[col["incomplete_evaluations"]])
    errors = sum(1 for r in summary if r[col["error"]])
    points = sum(r[col["time_points"]] for r in summary)
    return "\n".join(
        [
            f"{len(summary)} patient(s), {points} evaluation(s)",
            f"eligibility (last decision): {hist('eligibility_last')}",
            f"CRS worst grade: {hist('crs_max_grade')}",
            f"ICANS worst grade: {hist('icans_max_grade')}",
            f"patients with an incomplete evaluation: {incomplete}; errors: {errors}",
        ]
    )
