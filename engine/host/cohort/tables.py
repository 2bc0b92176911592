"""The rows of a cohort run as flat files: DIR/findings, recommendations, summary, each
as `.parquet` and `.csv`, plus `cohort.json` (the rules, policy and counts).

Rows are sorted on every column, in column order, so the files depend only on the rules,
the facts and `as_of`: never on the worker count, the batch size or the finishing order.
Nothing run-dependent (wall time, host, worker ids) is written. Rows are written as the
batches finish, so memory holds a few batches, not the cohort.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.host.cohort.rows import (
    FINDING_COLUMNS,
    RECOMMENDATION_COLUMNS,
    SUMMARY_COLUMNS,
    BatchResult,
    Row,
)

__all__ = ["TABLES", "CohortWriter", "overview", "sort_rows"]

ROW_GROUP = 50_000  # rows per Parquet row group

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


class _TableFile:
    """One table as Parquet and CSV, written as rows come, in row groups of a fixed size
    (so the bytes do not depend on how the rows were batched); `.part` names until done."""

    def __init__(self, out: Path, name: str, columns: Sequence[str]) -> None:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        self.columns = columns
        self.paths = [out / f"{name}.parquet", out / f"{name}.csv"]
        schema = _table(columns, []).schema
        self._parquet = pq.ParquetWriter(self._part(0), schema, compression="zstd")
        self._csv = pcsv.CSVWriter(self._part(1), schema)
        self._buffer: list[Row] = []
        self.rows = 0

    def _part(self, n: int) -> Path:
        return self.paths[n].with_name(self.paths[n].name + ".part")

    def add(self, rows: Sequence[Row]) -> None:
        self._buffer += rows
        while len(self._buffer) >= ROW_GROUP:
            self._write(self._buffer[:ROW_GROUP])
            del self._buffer[:ROW_GROUP]

    def _write(self, rows: Sequence[Row]) -> None:
        table = _table(self.columns, rows)
        self._parquet.write_table(table, row_group_size=ROW_GROUP)
        self._csv.write_table(table)
        self.rows += len(rows)

    def close(self, keep: bool) -> None:
        if keep and self._buffer:
            self._write(self._buffer)
        self._parquet.close()
        self._csv.close()
        for n, path in enumerate(self.paths):
            if keep:
                self._part(n).replace(path)
            else:
                self._part(n).unlink(missing_ok=True)


class CohortWriter:
    """Takes batch results in any order (`deliver`) and writes them in batch order, each
    batch's rows sorted: batches are consecutive runs of patients in id order, so the
    files are sorted on every column, whatever the batch size or finishing order."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.summary: list[Row] = []
        self._files = {name: _TableFile(out, name, cols) for name, cols in TABLES.items()}
        self._waiting: dict[int, BatchResult] = {}
        self._next = 0

    def deliver(self, number: int, key: str, result: BatchResult) -> None:
        self._waiting[number] = result
        while self._next in self._waiting:
            ready = self._waiting.pop(self._next)
            for name, file in self._files.items():
                file.add(sort_rows(getattr(ready, name)))
            self.summary += sort_rows(ready.summary)
            self._next += 1

    def close(self, manifest: Mapping[str, Any] | None) -> dict[str, int]:
        """Finish the files and write `cohort.json` (`manifest` None: a failed run, the
        partial files are removed); returns rows per table."""
        for file in self._files.values():
            file.close(keep=manifest is not None)
        counts = {name: file.rows for name, file in self._files.items()}
        if manifest is not None:
            doc = json.dumps({**manifest, "rows": counts}, indent=2, sort_keys=True)
            (self.out / "cohort.json").write_text(doc + "\n", "utf-8")
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
