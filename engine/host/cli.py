"""`cart-cds`: validate rules, evaluate a patient's facts.

Exit codes: 0 success (for an evaluation: complete, warnings allowed); 1 the rules have
problems (or a check failed); 2 bad usage or input that cannot be read as facts at all;
3 an evaluation was printed but is incomplete (some facts could not be used).
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from engine.errors import FactError, RuleSetError
from engine.explain.report import evaluation_text, timeline_text, to_json
from engine.host.cli_tools import diff_command, docs_command
from engine.host.cohort.cli import cohort
from engine.host.inputs import as_facts
from engine.language.ruleset import Scalar
from engine.runtime.api import Engine, load_rules
from engine.runtime.jsontext import printable
from engine.runtime.problems import InputProblem
from engine.runtime.reading import read_facts_file, read_facts_stream


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

_COLOURS = {"critical": ("red", True), "warning": ("yellow", False), "head": (None, True)}


def _style(text: str, kind: str) -> str:
    """Colour by severity; click.echo drops the colour when the output is not a terminal."""
    colour, bold = _COLOURS.get(kind, (None, False))
    return click.style(text, fg=colour, bold=bold) if colour or bold else text


def _read_input(path: str) -> tuple[list[object], list[InputProblem]]:
    """The facts of FACTS (a file, or - for standard input): a JSON array, NDJSON or a
    FHIR R4 Bundle, and the input problems of the Bundle's entries that did not map. A body
    that cannot be read as facts at all exits 2 with one line (docs/limits.md)."""
    return as_facts(_read_raw(path))


def _read_raw(path: str) -> list[object]:
    """FACTS as given (a Bundle not yet mapped); exits 2 on a body refused as a whole."""
    try:
        return read_facts_stream(sys.stdin.buffer) if path == "-" else read_facts_file(path)
    except FactError as exc:
        click.echo(printable(f"{path}: {exc}").replace("\n", " "), err=True)
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
        "rules": rs.authored_rules,
        "named_conditions": len(rs.concepts),
        "decision_tables": len(rs.tables),
        "aggregates": len(rs.aggregates),
        "skipped": len(rs.skipped),
        "compiled_rules": len(engine.compiled.rules),
        "parameters": len(rs.parameters),
        "warnings": [w.as_dict() for w in rs.warnings],
    }
    if fmt == "json":
        click.echo(to_json(summary))
    else:
        for warning in rs.warnings:
            click.echo(f"warning: {warning}")
        click.echo(
            f"ok: {rs.name} {rs.version}: {len(rs.files)} files, {rs.authored_rules} rules "
            f"({len(rs.tables)} decision tables; {len(rs.skipped)} skipped), "
            f"{len(rs.concepts)} named conditions, {len(rs.aggregates)} aggregates, "
            f"{len(engine.compiled.rules)} compiled, {len(rs.parameters)} policy parameters, "
            f"sha256 {rs.digest[:12]}"
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
@click.option("--trace", "show_trace", is_flag=True, help="Text format: add the trace.")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Text format: add the rules' working state and the trace.",
)
@click.option("--no-trace", is_flag=True, hidden=True, help="The default now (kept for scripts).")
def evaluate(
    facts: str,
    as_of: str | None,
    rules: str | None,
    policy: tuple[str, ...],
    fmt: str,
    timeline: bool,
    show_trace: bool,
    verbose: bool,
    no_trace: bool,
) -> None:
    """Evaluate one patient's FACTS (a JSON array or NDJSON file, or - for stdin)."""
    if timeline and as_of is not None:
        raise click.UsageError("--timeline evaluates at every fact time; drop --as-of")
    raw, problems = _read_input(facts)  # a body refused as a whole: before the rules load
    engine = _load(rules, policy)
    result: Any
    if timeline:
        result = engine.timeline(raw, problems=problems, received_at=time.time())
        click.echo(
            to_json(result)
            if fmt == "json"
            else timeline_text(result, trace=show_trace or verbose, style=_style)
        )
        final = result[-1] if result else {"status": "incomplete" if problems else "complete"}
        if final["status"] == "incomplete":
            raise SystemExit(EXIT_INCOMPLETE)
        return
    try:
        result = engine.evaluate(raw, as_of=as_of, problems=problems, received_at=time.time())
    except ValueError as exc:  # a malformed --as-of
        raise click.BadParameter(str(exc), param_hint="--as-of") from exc
    text = evaluation_text(result, trace=show_trace and not no_trace, verbose=verbose, style=_style)
    click.echo(to_json(result) if fmt == "json" else text)
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
@click.option("--live-sessions", default=900, type=click.IntRange(0), show_default=True)
@click.option(
    "--max-token-lifetime",
    default=300,
    type=click.IntRange(1),
    show_default=True,
    metavar="SECONDS",
    help="Refuse a client JWT whose exp - iat is longer (CDS Hooks: 5 minutes).",
)
@click.option(
    "--fhir-server",
    "fhir_servers",
    multiple=True,
    metavar="URL",
    help="A FHIR base URL the service may query when a call has no prefetch "
    "(repeatable; docs/service.md).",
)
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
    max_token_lifetime: int,
    fhir_servers: tuple[str, ...],
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
                live_sessions=live_sessions, max_token_lifetime=max_token_lifetime,
                fhir_servers=fhir_servers, rules=rules, policy=_parse_policy(policy),
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


@cli.command()
def contract() -> None:
    """Print the evaluation contract (docs/evaluation.md): its keys and each public finding
    with its fields, from schemas/evaluation.schema.json."""
    from engine.language.contract import contract_markdown

    click.echo(contract_markdown(), nl=False)


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
        engine, given, recorded = _recorded_decision(decision, store)
        raw, problems = as_facts(given)
        as_of = as_of or recorded.as_of
    else:
        engine = _load(rules, policy)
        raw, problems = _read_input(str(facts))
    try:
        if why_not_rule is not None:
            answer = why_not_at(engine, raw, why_not_rule, as_of=as_of)
            click.echo(to_json(answer.as_dict()) if fmt == "json" else answer.text())
            return
        if html_out is not None:
            steps = timeline_as_of(engine, raw, as_of, received_at=time.time())
            if not steps:
                raise click.UsageError(f"{facts or decision}: no facts to report")
            try:
                html = printable(render_html(steps, raw, engine))
                Path(html_out).write_text(html, encoding="utf-8")
            except OSError as exc:
                raise click.FileError(html_out, hint=exc.strerror or str(exc)) from exc
            click.echo(f"wrote {html_out}", err=True)
            return
        if recorded is not None and as_of == recorded.as_of:
            evaluation = dict(recorded.evaluation)  # what was said, as recorded
        else:
            evaluation = engine.evaluate(
                raw, as_of=as_of, problems=problems, received_at=time.time()
            )
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

    raw = _read_raw(facts)  # a Bundle is recorded as given, and mapped on every replay
    engine = _load(rules, policy)
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
@click.option(
    "--checkpoint",
    "checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="A signed checkpoint (audit checkpoint): the log must still extend it.",
)
@click.option(
    "--public-key",
    "public_key",
    default=None,
    metavar="FILE",
    help="The trusted Ed25519 public key (PEM) the checkpoint must be signed with "
    "(default: $CART_CDS_AUDIT_PUBLIC_KEY, else the key in the checkpoint).",
)
@AUDIT_FORMAT_OPTION
def audit_verify(
    store: str | None, checkpoint: str | None, public_key: str | None, fmt: str
) -> None:
    """Check the hash chain, the head and the stored rule sets (and, with --checkpoint,
    that the log still extends a signed head kept elsewhere); exit 1 naming the first bad
    record. Opens the store read-only: verifying never writes."""
    from engine.host.audit import AuditError, Checkpoint, load_public_key, open_log

    witnessed = None
    if checkpoint is not None:
        try:
            witnessed = Checkpoint.from_dict(json.loads(Path(checkpoint).read_text("utf-8")))
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot read the checkpoint {checkpoint!r}: {exc}") from None
    trusted = load_public_key(public_key)
    with open_log(store) as log:
        result = log.verify(witnessed, trusted_key=trusted)
    click.echo(to_json(result.as_dict()) if fmt == "json" else result.text())
    if not result.ok:
        raise SystemExit(1)


@audit.command("checkpoint")
@AUDIT_STORE_OPTION
@click.option(
    "--key",
    "key",
    default=None,
    metavar="FILE",
    help="The Ed25519 private key (PEM) to sign with (default: $CART_CDS_AUDIT_KEY).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="FILE",
    help="Write the checkpoint here (default: standard output).",
)
def audit_checkpoint(store: str | None, key: str | None, out: str | None) -> None:
    """Sign the log's head (record count, head hash, time) after verifying it; keep the
    checkpoint where the database's writers cannot change it (docs/audit.md)."""
    from engine.host.audit import load_signing_key, open_log, sign_checkpoint

    signing = load_signing_key(key)
    with open_log(store) as log:
        made = sign_checkpoint(log, signing)
    text = to_json(made.as_dict())
    if out is None:
        click.echo(text)
        return
    try:
        Path(out).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise click.FileError(out, hint=exc.strerror or str(exc)) from exc
    click.echo(f"checkpoint of {made.count} records, head {made.head}, written to {out}", err=True)


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


cli.add_command(cohort)
cli.add_command(diff_command)
cli.add_command(docs_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code instead of exiting (for tests and embedding)."""
    for stream in (sys.stdout, sys.stderr):  # a lone surrogate in the input never crashes
        if isinstance(stream, io.TextIOWrapper):  # the output: written as its escape
            stream.reconfigure(errors="backslashreplace")
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
