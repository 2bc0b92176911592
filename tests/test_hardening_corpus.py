"""The bad-input corpus (tests/cases/hardening/): facts files, rule directories and HTTP
bodies, each with the exact outcome: a named refusal (its code, and the CLI's exit code
or the HTTP status), or accepted. Never a traceback, never a 500."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Hardened

from engine.host.cli import main
from engine.runtime.reading import REFUSALS, BodyRefused, read_facts_file

CASES = Path(__file__).resolve().parent / "cases" / "hardening"
MINIMAL = Path(__file__).resolve().parent / "cases" / "valid_rules" / "minimal"


def _cases(name: str) -> list[Any]:
    cases = yaml.safe_load((CASES / name).read_text(encoding="utf-8"))
    return [pytest.param(c, id=c["id"]) for c in cases]


def _body(case: dict[str, Any]) -> bytes:
    """The bytes of a case's body: `text` (in `encoding`), `hex`, `make` or `json`."""
    if "json" in case:
        return json.dumps(case["json"]).encode("utf-8")
    if "hex" in case:
        return bytes.fromhex(case["hex"])
    if "make" in case:
        make = case["make"]
        text = make["head"] + make["unit"] * make["count"] + make["tail"]
        return text.encode("utf-8", errors="surrogatepass")
    return str(case["text"]).encode(case.get("encoding", "utf-8"))


# --------------------------------------------------------------------------- facts files


def _facts_path(case: dict[str, Any], tmp_path: Path) -> Path:
    special = case.get("path")
    if special is None:
        path = tmp_path / "facts.json"
        path.write_bytes(_body(case))
        return path
    if special == "directory":
        path = tmp_path / case["name"]
        path.mkdir()
        return path
    if special == "missing":
        return tmp_path / "no-such-facts.json"
    if special == "fifo":
        path = tmp_path / "pipe.json"
        os.mkfifo(path)
        return path
    if special == "devzero_link":
        path = tmp_path / "zero.json"
        path.symlink_to("/dev/zero")
        return path
    assert special == "devnull"
    return Path("/dev/null")


@pytest.mark.parametrize("case", _cases("facts.yaml"))
def test_a_facts_file_is_refused_with_its_code_or_accepted(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _facts_path(case, tmp_path)
    expected = case["expect"]
    if expected == "accepted":
        assert isinstance(read_facts_file(path), list)
        return
    assert expected in REFUSALS
    with pytest.raises(BodyRefused) as refused:
        read_facts_file(path)
    assert refused.value.code == expected
    # the CLI: exit 2, one line on standard error naming the file, nothing on standard out
    assert main(["evaluate", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith(f"{path}: ")
    assert "Traceback" not in out.err


# --------------------------------------------------------------------------- rule directories


def _rules_dir(case: dict[str, Any], tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(MINIMAL, rules)
    outside = tmp_path / "outside"
    outside.mkdir()
    for old, new in case.get("rename", {}).items():
        (rules / old).rename(rules / new)
    if "move_out" in case:
        (rules / case["move_out"]).rename(outside / case["move_out"])
    for name, text in case.get("write", {}).items():
        (rules / name).write_text(text, encoding="utf-8")
    for name, data in case.get("write_hex", {}).items():
        (rules / name).write_bytes(bytes.fromhex(data))
    for name, size in case.get("write_size", {}).items():
        (rules / name).write_bytes(b"#" * size)
    for name, target in case.get("link", {}).items():
        (rules / name).symlink_to(target.replace("{outside}", str(outside)))
    for name in case.get("fifo", []):
        os.mkfifo(rules / name)
    for name in case.get("mkdir", []):
        (rules / name).mkdir()
    for name, (prefix, replacement) in case.get("line", {}).items():
        lines = (rules / name).read_text(encoding="utf-8").split("\n")
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(prefix))
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
        lines[index] = indent + replacement
        (rules / name).write_text("\n".join(lines), encoding="utf-8")
    if case.get("link_dir"):
        link = tmp_path / "linked-rules"
        link.symlink_to(rules, target_is_directory=True)
        return link
    return rules


@pytest.mark.parametrize("case", _cases("rules.yaml"))
def test_a_rules_directory_is_loaded_whole_or_each_surprise_is_reported(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = _rules_dir(case, tmp_path)
    code = main(["validate", str(rules)])
    out = capsys.readouterr().out
    expected = case["expect"]
    if expected == "accepted":
        assert code == 0, out
        assert out.startswith("ok: ")
        return
    assert code == 1, out
    place = f"{rules.name}/{expected['file']}:"
    lines = [line for line in out.splitlines() if line.startswith(place)]
    assert lines, out
    assert any(expected["message"] in line for line in lines), out
    if "absent" in expected:
        assert expected["absent"] not in out


# --------------------------------------------------------------------------- HTTP bodies

ROUTES = {
    "facts": "/patients/{patient}/facts",
    "evaluate": "/evaluate",
    "patient-view": "/cds-services/cart-t-patient-view",
    "order-select": "/cds-services/cart-t-order-select",
    "order-sign": "/cds-services/cart-t-order-sign",
    "feedback": "/cds-services/cart-t-patient-view/feedback",
}


@pytest.mark.parametrize("case", _cases("http.yaml"))
def test_an_http_body_gets_its_exact_status_and_code(
    case: dict[str, Any], hardened: Hardened
) -> None:
    service, keys = hardened.service, hardened.keys
    path = ROUTES[case["route"]].format(patient=f"hc-{uuid.uuid4().hex[:8]}")
    token = case.get("token", {})
    bearer = keys.token(
        service.base_url + path,
        lifetime=token.get("lifetime", 300.0),
        claims=token.get("claims"),
    )
    headers = {
        "Authorization": f"Bearer {bearer}",
        "Content-Type": case.get("content_type", "application/json"),
    }
    with httpx.Client(base_url=service.base_url, timeout=60.0) as client:
        r = client.post(path, content=_body(case), headers=headers)
    expected = case["expect"]
    assert r.status_code == expected["status"], r.text
    body = r.json()
    assert isinstance(body, dict)
    if r.status_code >= 400:
        assert body["detail"]
        assert body.get("code") == expected["code"], body
