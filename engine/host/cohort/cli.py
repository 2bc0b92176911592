"""`cart-cds cohort run|diff` (docs/cohort.md). Heavy imports wait for the command.

Exit codes: 0 success (for `diff`: no patient's outcome changes); 1 problems in the rules,
or (`diff`) some outcomes change; 2 bad usage or an unreadable source.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from engine.host.cohort.rules import RulesSpec

__all__ = ["cohort"]

F = TypeVar("F", bound=Callable[..., Any])


def _common(fn: F) -> F:
    """The options `run` and `diff` share."""
    options = [
        click.argument("source", required=False, metavar="[SOURCE]"),
        click.option("--store", metavar="PATH_OR_URL",
                     help="Read every patient of this fact store (SQLite file or "
                          "postgresql:// URL) instead of a SOURCE."),
        click.option("--as-of", "as_of", metavar="T",
                     help="Evaluate once, as of T (ISO 8601); default: at every time point."),
        click.option("--policy", "policy", multiple=True, metavar="NAME=VALUE",
                     help="Override a policy parameter (repeatable)."),
        click.option("--dask-scheduler", "scheduler", metavar="tcp://HOST:PORT",
                     help="Run the batches on this Dask cluster instead of local processes."),
        click.option("--workers", type=click.IntRange(1), default=None,
                     help="Local worker processes (default: the number of CPUs)."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar on standard error (default: when it is a terminal)."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _checked_as_of(as_of: str | None) -> None:
    from engine.host.cohort.work import epoch

    if as_of is not None and epoch(as_of) is None:
        raise click.BadParameter(f"{as_of!r} is not an ISO 8601 time", param_hint="--as-of")


@click.group("cohort")
def cohort() -> None:
    """Replay many patients on a process pool or a Dask cluster (docs/cohort.md)."""


@cohort.command("run")
@_common
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Write DIR/{findings,recommendations,summary}.{parquet,csv}.")  # fmt: skip
@click.option("--rules", type=click.Path(exists=True, file_okay=False), default=None,
              help="Rules directory (default: the bundled rules).")  # fmt: skip
def cohort_run(
    source: str | None,
    store: str | None,
    as_of: str | None,
    policy: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    progress: bool | None,
    out: str,
    rules: str | None,
) -> None:
    """Evaluate every patient of SOURCE (a directory of fact files, one per patient, or an
    NDJSON file with a `patient` field per fact) or of --store."""
    from engine.host.cohort.replay import run_cohort
    from engine.host.cohort.sources import open_source
    from engine.host.cohort.tables import overview

    _checked_as_of(as_of)
    spec = _spec(rules, policy)
    source_ = _guard(lambda: open_source(source, store))
    summary, counts = _guard(lambda: run_cohort(source_, spec, Path(out), as_of=as_of,
                                                workers=workers, scheduler=scheduler,
                                                progress=progress))  # fmt: skip
    click.echo(overview(summary))
    for name, rows in counts.items():
        click.echo(f"wrote {Path(out, name)}.parquet and .csv ({rows} rows)")


@cohort.command("diff")
@click.argument("old_rules", type=click.Path(exists=True, file_okay=False))
@click.argument("new_rules", type=click.Path(exists=True, file_okay=False))
@_common
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def cohort_diff(
    old_rules: str,
    new_rules: str,
    source: str | None,
    store: str | None,
    as_of: str | None,
    policy: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    progress: bool | None,
    fmt: str,
) -> None:
    """Which patients' outcomes (findings, recommendations, grades, decisions) would change
    from OLD_RULES to NEW_RULES: exit 0 if none, 1 if some."""
    from engine.host.cohort.diff import diff_cohort
    from engine.host.cohort.replay import checked
    from engine.host.cohort.sources import open_source

    _checked_as_of(as_of)
    old, new = _spec(old_rules, policy), _spec(new_rules, policy)
    for spec in (old, new):
        _guard(functools.partial(checked, spec))  # every problem of either rule set first
    source_ = _guard(lambda: open_source(source, store))
    patients, changes = _guard(lambda: diff_cohort(source_, old, new, as_of=as_of,
                                                   workers=workers, scheduler=scheduler,
                                                   progress=progress))  # fmt: skip
    if fmt == "json":
        doc = {"patients": patients, "changed": [c.as_dict() for c in changes]}
        click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        for change in changes:
            click.echo(change.text())
        click.echo(f"{len(changes)} of {patients} patient(s) change")
    if changes:
        raise SystemExit(1)


def _spec(rules: str | None, policy: tuple[str, ...]) -> RulesSpec:
    from engine.host.cli import _parse_policy
    from engine.host.cohort.rules import RulesSpec

    overrides = _parse_policy(policy)
    return _guard(lambda: RulesSpec.read(rules, overrides))


T = TypeVar("T")


def _guard(call: Callable[[], T]) -> T:
    """Rule problems: exit 1 with each; a cohort problem: exit 2 with its message."""
    from engine.errors import RuleSetError
    from engine.host.cli import _rule_problems
    from engine.host.cohort.sources import CohortError

    try:
        return call()
    except RuleSetError as exc:
        _rule_problems(exc)
    except CohortError as exc:
        click.echo(f"cart-cds cohort: {exc}", err=True)
        raise SystemExit(2) from exc
