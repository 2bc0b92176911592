"""Write the trace definitions of schemas/evaluation.schema.json from the typed events.

The events of a trace are defined once, in engine/runtime/events.py; their JSON Schema is
generated from those classes (`trace_schema`). This puts it into the evaluation's schema,
replacing every `trace_*` definition there:

    .venv/bin/python scripts/trace_schema.py           # rewrite the definitions
    .venv/bin/python scripts/trace_schema.py --check   # exit 1 if they are out of date

tests/test_trace_events.py fails while they differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.runtime.events import trace_schema

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "evaluation.schema.json"


def updated(schema: dict[str, object]) -> dict[str, object]:
    defs = schema.get("$defs")
    assert isinstance(defs, dict)
    kept = {k: v for k, v in defs.items() if not k.startswith("trace_")}
    return {**schema, "$defs": {**kept, **trace_schema()}}


def main(argv: list[str]) -> int:
    current = json.loads(SCHEMA.read_text(encoding="utf-8"))
    new = updated(current)
    if "--check" in argv:
        if new != current:
            print(f"{SCHEMA.name}: the trace definitions are out of date; run {__file__}")
            return 1
        return 0
    SCHEMA.write_text(json.dumps(new, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
