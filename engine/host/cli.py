"""`cart-cds`: validate rules, evaluate a patient's facts.

Exit codes: 0 success (for an evaluation: complete, warnings allowed); 1 the rules have
problems (or a check failed); 2 bad usage or input that cannot be read as facts at all;
3 an evaluation was printed but is incomplete (some facts could not be used).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from engine.errors import FactError, RuleSetError
from engine.explain.report import evaluation_text, timeline_text, to_json
from engine.host.cli_tools import diff_command, docs_command
from engine.language.ruleset import Scalar
from engine.runtime.api import Engine, load_rules
from engine.runtime.problems import InputProblem
from engine.runtime.reading import load_facts_text


def _parse_policy(values: tuple[str, ...]) -> dict[str, Scalar]:
    """`name=value` pairs; the value is read as JSON when it parses (8, true, "x"), else text."""
    out: dict[str, Scalar] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not name=value", param_hint="--policy")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if not isinstance(value, str | int | float | bool):
            raise click.BadParameter(f"{item!r}: the value must be a number, true/false or text")
        out[name] = value
    return out


def _load(rules: str | None, policy: tuple[str, ...]) -> Engine:
    try:
        return load_rules(rules, policy=_parse_policy(policy))
    except RuleSetError as exc:
        _rule_problems(exc)


def _rule_problems(exc: RuleSetError) -> NoReturn:
    """Print every problem of a rule set on standard error and exit 1."""
    for problem in exc.problems:
        click.echo(str(problem), err=True)
    click.echo(f"{len(exc.problems)} problem(s) in the rules", err=True)
    raise SystemExit(1) from exc


EXIT_INCOMPLETE = 3


def _read_facts(path: str) -> list[object]:
    return _read_input(path)[0]


def _read_input(path: str) -> tuple[list[object], list[InputProblem]]:
    """The raw facts of a file (or stdin), and the problems a FHIR Bundle's entries had."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.FileError(path, hint=exc.strerror or str(exc)) from exc
    try:
        if text.removeprefix("\ufeff").lstrip().startswith("{"):
            from engine.host.fhir import is_fhir_bundle, read_bundle

            try:
                doc = json.loads(text.removeprefix("\ufeff"))
            except json.JSONDecodeError:
                doc = None  # NDJSON or bad JSON: load_facts_text names the line
            if is_fhir_bundle(doc):
                mapped = read_bundle(doc)
                return [*mapped.facts], list(mapped.problems)
        return load_facts_text(text), []
    except FactError as exc:
        click.echo(f"{path}: {exc}", err=True)
        raise SystemExit(2) from exc


RULES_OPTION = click.option(
    "--rules",
    "rules",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Rules directory (default: the bundled rules).",
)
POLICY_OPTION = click.option(
    "--policy",
    "policy",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a policy parameter of policy.yaml (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cart-cds")
def cli() -> None:
    """Clinical decision support for CAR-T cell therapy: rules as data on durable-rules."""


@cli.command()
@click.argument("rules_dir", required=False, type=click.Path(file_okay=False))
@POLICY_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def validate(rules_dir: str | None, policy: tuple[str, ...], fmt: str) -> None:
    """Check every rule file; print every problem (exit 1) or a one-line summary (exit 0)."""
    try:
        engine = load_rules(rules_dir, policy=_parse_policy(policy))
    except RuleSetError as exc:
        if fmt == "json":
            click.echo(to_json({"ok": False, "problems": [p.as_dict() for p in exc.problems]}))
        else:
            for problem in exc.problems:
                click.echo(str(problem))
            click.echo(f"{len(exc.problems)} problem(s)")
        raise SystemExit(1) from exc
    rs = engine.ruleset
    summary = {
        "ok": True,
        "ruleset": rs.name,
        "version": rs.version,
        "digest": rs.digest,
        "files": len(rs.files),
        "rules": len(rs.rules),
        "skipped": len(rs.skipped),
        "compiled_rules": len(engine.compiled.rules),
        "parameters": len(rs.parameters),
    }
    if fmt == "json":
        click.echo(to_json(summary))
    else:
        click.echo(
            f"ok: {rs.name} {rs.version}: {len(rs.files)} files, {len(rs.rules)} rules "
            f"({len(rs.skipped)} skipped), {len(engine.compiled.rules)} compiled, "
            f"{len(rs.parameters)} policy parameters, sha256 {rs.digest[:12]}"
        )


@cli.command()
@click.argument("facts", type=click.Path(allow_dash=True))
@click.option(
    "--as-of", "as_of", default=None, help="Logical time (ISO 8601); default: latest fact."
)
@RULES_OPTION
@POLICY_OPTION
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json")
@click.option("--timeline", is_flag=True, help="Evaluate after each distinct fact time.")
@click.option("--no-trace", is_flag=True, help="Leave the trace out of the text format.")
def evaluate(
    facts: str,
    as_of: str | None,
    rules: str | None,
    policy: tuple[str, ...],
    fmt: str,
    timeline: bool,
    no_trace: bool,
) -> None:
    """Evaluate one patient's FACTS (a JSON array or NDJSON file, or - for stdin)."""
    if timeline and as_of is not None:
        raise click.UsageError("--timeline evaluates at every fact time; drop --as-of")
    engine = _load(rules, policy)
    raw, problems = _read_input(facts)
    result: Any
    if timeline:
        result = engine.timeline(raw, problems=problems)
        click.echo(to_json(result) if fmt == "json" else timeline_text(result))
        final = result[-1] if result else {"status": "incomplete" if problems else "complete"}
        if final["status"] == "incomplete":
            raise SystemExit(EXIT_INCOMPLETE)
        return
    try:
        result = engine.evaluate(raw, as_of=as_of, problems=problems)
    except ValueError as exc:  # a malformed --as-of
        raise click.BadParameter(str(exc), param_hint="--as-of") from exc
    click.echo(to_json(result) if fmt == "json" else evaluation_text(result, trace=not no_trace))
    if result["status"] == "incomplete":
        raise SystemExit(EXIT_INCOMPLETE)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["markdown"]), default="markdown")
def vocabulary(fmt: str) -> None:
    """Print the input vocabulary: fact types, observations, controlled terms and synonyms
    (docs/vocabulary.md is its output)."""
    from engine.explain.vocabulary import vocabulary_markdown

    click.echo(vocabulary_markdown(), nl=False)


@cli.group()
def scenario() -> None:
    """Worked patient scenarios with expected outputs (docs/scenarios.md)."""


@scenario.command("run")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@RULES_OPTION
@POLICY_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--verbose", "-v", is_flag=True, help="List passing checks too.")
@click.option("--only", "only", multiple=True, metavar="ID", help="Run only these scenario ids.")
@click.option("--coverage", is_flag=True, help="Report which rules fired and which never did.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write the coverage report as a self-contained HTML page (implies --coverage).",
)
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 100),
    metavar="N",
    help="Exit 1 when fewer than N% of the active rules fired (implies --coverage).",
)
def scenario_run(
    paths: tuple[str, ...],
    rules: str | None,
    policy: tuple[str, ...],
    fmt: str,
    verbose: bool,
    only: tuple[str, ...],
    coverage: bool,
    html_out: str | None,
    fail_under: float | None,
) -> None:
    """Evaluate every scenario of PATHS (files, or directories of *.yaml) and compare each
    expected value with what came out; exit 1 on any mismatch (docs/scenarios.md)."""
    from engine.host.coverage import CoverageRun
    from engine.host.scenarios import engine_factory, load_scenarios, report_text, run_scenario

    base = _load(rules, policy)  # report rule problems once, before any scenario runs
    factory = engine_factory(rules, _parse_policy(policy), loaded=base)
    measuring = CoverageRun(base) if coverage or html_out or fail_under is not None else None
    observe = measuring.observer if measuring is not None else None

    scenarios = [s for p in paths for s in load_scenarios(p) if not only or s.id in only]
    results = [run_scenario(s, factory, observe) for s in scenarios]
    report = measuring.report() if measuring is not None else None
    if fmt == "json":
        listed = [r.as_dict() for r in results]
        click.echo(
            to_json({"scenarios": listed, "coverage": report.as_dict()} if report else listed)
        )
    else:
        click.echo(report_text(results, verbose=verbose))
        if report is not None:
            click.echo(report.text())
    if report is not None and html_out is not None:
        try:
            CoverageRun.write_html(report, html_out)
        except OSError as exc:
            raise click.FileError(html_out, hint=exc.strerror or str(exc)) from exc
        click.echo(f"wrote {html_out}", err=True)
    if not results or not all(r.ok for r in results):
        raise SystemExit(1)
    if report is not None and fail_under is not None and report.percent < fail_under:
        click.echo(
            f"coverage {report.percent:.1f}% is under --fail-under {fail_under:g}%", err=True
        )
        raise SystemExit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, type=click.IntRange(1, 65535), show_default=True)
@click.option(
    "--store",
    "store",
    default="cart-cds.sqlite",
    envvar="CART_CDS_STORE",
    show_default=True,
    metavar="PATH_OR_URL",
    help="The fact store and decision log: a SQLite file path, or a postgresql:// URL "
    "(default: $CART_CDS_STORE, else ./cart-cds.sqlite, as `cart-cds audit`).",
)
@RULES_OPTION
@POLICY_OPTION
@click.option("--jwks", metavar="FILE_OR_URL", help="JWK Set of the clients' public keys.")
@click.option("--issuer", "issuers", multiple=True, metavar="ISS", help="Allowed token issuer.")
@click.option("--base-url", metavar="URL", help="URL clients call (default http://HOST:PORT).")
@click.option("--insecure-dev", is_flag=True, help="No authentication: development only.")
@click.option("--cache-size", default=128, type=click.IntRange(0), show_default=True)
@click.option("--live-sessions", default=16, type=click.IntRange(0), show_default=True)
@click.option(
    "--admin-jwks",
    metavar="FILE_OR_URL",
    help="JWK Set of the admin keys: tokens they sign may reload the rules.",
)
@click.option(
    "--admin-issuer",
    "admin_issuers",
    multiple=True,
    metavar="ISS",
    help="Allowed admin token issuer (default: the --issuer list).",
)
def serve(
    host: str,
    port: int,
    store: str,
    rules: str | None,
    policy: tuple[str, ...],
    jwks: str | None,
    issuers: tuple[str, ...],
    base_url: str | None,
    insecure_dev: bool,
    cache_size: int,
    live_sessions: int,
    admin_jwks: str | None,
    admin_issuers: tuple[str, ...],
) -> None:
    """Run the CDS Hooks services and the JSON API over a patient fact store (docs/service.md).
    SIGHUP (or POST /admin/rules/reload) reloads the rules without a restart."""
    from engine.host.service import run_cli

    engine = _load(rules, policy)
    raise SystemExit(
        run_cli(engine, store, host=host, port=port, jwks=jwks, issuers=issuers,
                base_url=base_url, insecure_dev=insecure_dev, cache_size=cache_size,
                live_sessions=live_sessions, rules=rules, policy=_parse_policy(policy),
                admin_jwks=admin_jwks, admin_issuers=admin_issuers)
    )  # fmt: skip


@cli.command()
@RULES_OPTION
@POLICY_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text")
def policy(rules: str | None, policy: tuple[str, ...], fmt: str) -> None:
    """List the policy parameters in force: value, alternatives, conflict, sources."""
    from engine.explain.report import policy_markdown, policy_rows, scalar_text

    engine = _load(rules, policy)
    rows = policy_rows(engine.ruleset)
    if fmt == "json":
        click.echo(to_json(rows))
    elif fmt == "markdown":
        click.echo(policy_markdown(rows), nl=False)
    else:
        for r in rows:
            other = ""
            if r["choices"]:
                other = f" (choices: {', '.join(scalar_text(c) for c in r['choices'])})"
            if r["alternatives"]:
                other += (
                    " (alternatives: "
                    + ", ".join(f"{k}={scalar_text(v)}" for k, v in r["alternatives"].items())
                    + ")"
                )
            conflict = f" [{r['conflict']}]" if r["conflict"] else ""
            unit = f" {r['unit']}" if r["unit"] else ""
            click.echo(
                f"{r['name']} = {scalar_text(r['value'])}{unit}{other}{conflict}  {r['location']}"
            )


@cli.command("explain")
@click.argument("facts", type=click.Path(allow_dash=True), required=False)
@click.option(
    "--decision",
    "decision",
    default=None,
    metavar="ID",
    help="Explain a recorded decision of the audit log instead of a facts file.",
)
@click.option(
    "--store",
    "store",
    default=None,
    metavar="PATH_OR_URL",
    help="The decision log's store (default: $CART_CDS_STORE, else ./cart-cds.sqlite).",
)
@click.option(
    "--as-of", "as_of", default=None, help="Logical time (ISO 8601); default: latest fact."
)
@RULES_OPTION
@POLICY_OPTION
@click.option("--why-not", "why_not_rule", metavar="RULE_ID", help="Why did this rule not fire?")
@click.option(
    "--code", "codes", multiple=True, metavar="CODE", help="Explain only this recommendation."
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="OUT.html",
    help="Write a self-contained HTML report (chart, chains, withdrawals) to this file.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def explain_command(
    facts: str | None,
    decision: str | None,
    store: str | None,
    as_of: str | None,
    rules: str | None,
    policy: tuple[str, ...],
    why_not_rule: str | None,
    codes: tuple[str, ...],
    html_out: str | None,
    fmt: str,
) -> None:
    """Explain FACTS, or a recorded decision (--decision ID): each recommendation's chain of
    rules and facts (docs/explain.md)."""
    from engine.explain.explanation import explain, why_not_at
    from engine.explain.html_report import render_html, timeline_as_of

    if why_not_rule is not None and html_out is not None:
        raise click.UsageError("--why-not prints one rule's answer; drop --html")
    if (facts is None) == (decision is None):
        raise click.UsageError("give FACTS or --decision ID (one of them)")
    recorded: Any = None
    if decision is not None:
        engine, raw, recorded = _recorded_decision(decision, store)
        as_of = as_of or recorded.as_of
    else:
        engine = _load(rules, policy)
        raw = _read_facts(str(facts))
    try:
        if why_not_rule is not None:
            answer = why_not_at(engine, raw, why_not_rule, as_of=as_of)
            click.echo(to_json(answer.as_dict()) if fmt == "json" else answer.text())
            return
        if html_out is not None:
            steps = timeline_as_of(engine, raw, as_of)
            if not steps:
                raise click.UsageError(f"{facts or decision}: no facts to report")
            try:
                Path(html_out).write_text(render_html(steps, raw, engine), encoding="utf-8")
            except OSError as exc:
                raise click.FileError(html_out, hint=exc.strerror or str(exc)) from exc
            click.echo(f"wrote {html_out}", err=True)
            return
        if recorded is not None and as_of == recorded.as_of:
            evaluation = dict(recorded.evaluation)  # what was said, as recorded
        else:
            evaluation = engine.evaluate(raw, as_of=as_of)
        explanation = explain(evaluation, raw, engine, codes=codes or None)
    except ValueError as exc:  # a malformed --as-of
        raise click.BadParameter(str(exc), param_hint="--as-of") from exc
    click.echo(to_json(explanation.as_dict()) if fmt == "json" else explanation.text())


def _recorded_decision(ref: str, store: str | None) -> tuple[Engine, list[Any], Any]:
    """A recorded decision's engine (its recorded rules and policy), facts and record."""
    from engine.host.audit import AuditError, open_log
    from engine.host.store import StoreError

    try:
        with open_log(store) as log:
            found = log.get(ref)
            return log.engine_for(found), list(found.facts), found
    except (AuditError, StoreError) as exc:
        click.echo(f"cart-cds explain: {exc}", err=True)
        raise SystemExit(2) from exc


# --------------------------------------------------------------------------- audit

AUDIT_STORE_OPTION = click.option(
    "--store",
    "store",
    default=None,
    metavar="PATH_OR_URL",
    help="The store: a SQLite file or a postgresql:// URL "
    "(default: $CART_CDS_STORE, else ./cart-cds.sqlite).",
)
AUDIT_FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text"
)


class _AuditGroup(click.Group):
    """Exit codes of the audit commands: 2 for no such store or decision, 1 for a log
    that cannot be used (a missing or altered rule set, a broken head)."""

    def invoke(self, ctx: click.Context) -> Any:
        from engine.host.audit import AuditError, DecisionNotFound
        from engine.host.store import StoreError

        try:
            return super().invoke(ctx)
        except (AuditError, StoreError) as exc:
            click.echo(f"cart-cds audit: {exc}", err=True)
            code = 1 if isinstance(exc, AuditError) and not isinstance(exc, DecisionNotFound) else 2
            raise SystemExit(code) from exc


@cli.group(cls=_AuditGroup)
def audit() -> None:
    """The decision log: record evaluations, verify the chain, replay (docs/audit.md)."""


@audit.command("record")
@click.argument("facts", type=click.Path(allow_dash=True))
@AUDIT_STORE_OPTION
@click.option(
    "--as-of", "as_of", default=None, help="Logical time (ISO 8601); default: latest fact."
)
@RULES_OPTION
@POLICY_OPTION
@click.option("--patient", default=None, metavar="ID", help="The patient the facts are of.")
def audit_record(
    facts: str,
    store: str | None,
    as_of: str | None,
    rules: str | None,
    policy: tuple[str, ...],
    patient: str | None,
) -> None:
    """Evaluate FACTS and append the evaluation to the decision log; prints its id."""
    from engine.host.audit import open_log

    engine = _load(rules, policy)
    raw = _read_facts(facts)
    with open_log(store, create=True) as log:
        try:
            decision, evaluation = log.record(engine, raw, as_of=as_of, patient=patient)
        except ValueError as exc:  # a malformed --as-of
            raise click.BadParameter(str(exc), param_hint="--as-of") from exc
    click.echo(f"recorded decision {decision.id} as record {decision.seq}")
    errors = [p for p in evaluation["input_problems"] if p["severity"] == "error"]
    if errors:
        click.echo(
            f"the evaluation is incomplete: {len(errors)} input problem(s) (recorded too)",
            err=True,
        )


@audit.command("verify")
@AUDIT_STORE_OPTION
@AUDIT_FORMAT_OPTION
def audit_verify(store: str | None, fmt: str) -> None:
    """Check the hash chain, the head and the stored rule sets; exit 1 naming the first
    bad record. Prints the head hash: compare it with a copy kept elsewhere."""
    from engine.host.audit import open_log

    with open_log(store) as log:
        result = log.verify()
    click.echo(to_json(result.as_dict()) if fmt == "json" else result.text())
    if not result.ok:
        raise SystemExit(1)


@audit.command("replay")
@click.argument("decision", metavar="ID")
@AUDIT_STORE_OPTION
@click.option(
    "--rules",
    "rules",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Replay under these rules (default: the rule set recorded with the decision).",
)
@AUDIT_FORMAT_OPTION
def audit_replay(decision: str, store: str | None, rules: str | None, fmt: str) -> None:
    """Re-evaluate decision ID and compare: exit 0 if identical, 1 if different."""
    from engine.host.audit import open_log

    with open_log(store) as log:
        try:
            result = log.replay(decision, rules=rules)
        except RuleSetError as exc:
            _rule_problems(exc)
    click.echo(to_json(result.as_dict()) if fmt == "json" else result.text())
    if not result.identical:
        raise SystemExit(1)


@audit.command("show")
@click.argument("decision", metavar="ID")
@AUDIT_STORE_OPTION
@AUDIT_FORMAT_OPTION
def audit_show(decision: str, store: str | None, fmt: str) -> None:
    """Show a recorded decision: facts, rules, engine, evaluation, hashes."""
    from engine.host.audit import open_log

    with open_log(store) as log:
        found = log.get(decision)
    click.echo(to_json(found.as_dict()) if fmt == "json" else found.text())


@audit.command("list")
@AUDIT_STORE_OPTION
@click.option("--patient", default=None, metavar="ID", help="Only this patient's decisions.")
@AUDIT_FORMAT_OPTION
def audit_list(store: str | None, patient: str | None, fmt: str) -> None:
    """List the recorded decisions in order: seq, id, time, patient, as_of, rules."""
    from engine.host.audit import open_log

    with open_log(store) as log:
        found = list(log.decisions(patient=patient))
    if fmt == "json":
        click.echo(
            to_json(
                [
                    {
                        "seq": d.seq,
                        "id": d.id,
                        "recorded_at": d.recorded_at,
                        "patient": d.patient,
                        "as_of": d.evaluation.get("as_of"),
                        "ruleset": dict(d.ruleset),
                        "hash": d.hash,
                    }
                    for d in found
                ]
            )
        )
        return
    for d in found:
        click.echo(d.summary())
    click.echo(f"{len(found)} decision(s)", err=True)


cli.add_command(diff_command)
cli.add_command(docs_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code instead of exiting (for tests and embedding)."""
    try:
        cli.main(args=argv, prog_name="cart-cds", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 2
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()
