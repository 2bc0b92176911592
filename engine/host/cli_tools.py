"""The informaticist's tools on the command line: `cart-cds diff` and `cart-cds docs`
(registered on the `cart-cds` group by engine.host.cli)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from engine.errors import RuleSetError
from engine.explain.report import to_json
from engine.runtime.api import Engine, load_rules

PARALLEL_FROM = 16  # scenarios from which `cart-cds diff` runs the two sides in two processes


def _rules(path: str, what: str) -> Engine:
    """The rules of a directory, or exit 2 printing every problem (a rule set that does not
    load is a usage error for the diff: 1 means 'changed')."""
    try:
        return load_rules(path)
    except RuleSetError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{what} {path}: {len(exc.problems)} problem(s) in the rules", err=True)
        raise SystemExit(2) from exc


@click.command("diff")
@click.argument("old", type=click.Path(exists=True, file_okay=False))
@click.argument("new", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--scenarios",
    "scenarios",
    multiple=True,
    type=click.Path(exists=True),
    metavar="DIR_OR_FILE",
    help="Compare the outcomes over these scenarios (repeatable).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes for the scenarios: 1 runs both rule sets here, one after the other; "
    f"default 2 from {PARALLEL_FROM} scenarios on (on 2 or more cores), else 1.",
)
def diff_command(
    old: str, new: str, scenarios: tuple[str, ...], fmt: str, jobs: int | None
) -> None:
    """What changed from the rules in OLD to those in NEW: rules added, removed and changed
    (a changed rule needs a new version), policy values, and with --scenarios every scenario
    and time point whose findings or recommendations change. Exit 0 nothing changed,
    1 changed, 2 a rule changed without a new version or bad usage (docs/tools.md)."""
    from engine.host.diff import run
    from engine.host.diff_text import diff_text
    from engine.host.scenarios import load_scenarios

    titles = {f"{s.file}#{s.id}": s.title for p in scenarios for s in load_scenarios(p)}
    if scenarios and not titles:
        raise click.UsageError(f"no scenarios in {', '.join(scenarios)}")
    if jobs is None:  # two processes pay for their start-up only over many scenarios
        jobs = min(2, os.cpu_count() or 1) if len(titles) >= PARALLEL_FROM else 1
    result = run(
        _rules(old, "old"), _rules(new, "new"), old, new, scenarios, jobs=jobs, titles=titles
    )
    click.echo(to_json(result.as_dict()) if fmt == "json" else diff_text(result))
    raise SystemExit(result.exit_code)


@click.command("docs")
@click.argument("out_dir", type=click.Path(file_okay=False, writable=True))
@click.option(
    "--rules",
    "rules",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Rules directory (default: the bundled rules).",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    metavar="FILE",
    help="The clinical reference in Markdown, rendered and linked from every source "
    "(default: docs/reference/cart-clinical-reference.md of the checkout).",
)
def docs_command(out_dir: str, rules: str | None, reference: str | None) -> None:
    """Write the rule catalogue, a static HTML site entered at OUT_DIR/index.html: phases,
    rules in plain language, findings, policy parameters, sources (docs/tools.md)."""
    from engine.explain.site import default_reference, write_site
    from engine.host.cli import _load

    engine = _load(rules, ())
    source = Path(reference) if reference is not None else default_reference()
    if source is None:
        click.echo(
            "no clinical reference found: sources are not linked (use --reference)", err=True
        )
    try:
        written = write_site(engine.ruleset, Path(out_dir), source)
    except OSError as exc:
        raise click.FileError(out_dir, hint=exc.strerror or str(exc)) from exc
    click.echo(f"wrote {len(written)} files to {out_dir} (open {Path(out_dir) / 'index.html'})")


__all__ = ["diff_command", "docs_command"]
