"""Hot reload of the rules in the service: a request finishes on the rules it began with,
the next ones get the new rules; an invalid rule set is refused with its located problems
and the old one stays; only an admin key may reload; SIGHUP rereads the directory in
service. Against a real server under concurrent requests: no request fails and none mixes
rule sets (every answer and every record names one digest, and its cards carry it)."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Keys, Service, make_keys, write_jwks

import engine
from engine.errors import RuleSetError
from engine.host.audit import open_log
from engine.host.reload import RuleHolder
from engine.language.validate import digest_of

REPO = Path(__file__).resolve().parent.parent
SMALL = REPO / "tests" / "cases" / "valid_rules" / "full-language"
PATIENT_VIEW = "/cds-services/cart-t-patient-view"
# three antipyretic doses within 24 h with oxygen for hypoxia: the small rule set's ICU card
FACTS: list[dict[str, Any]] = [
    {"id": "inf", "type": "procedure", "time": "2025-03-01T10:00:00Z", "name": "car_t_infusion",
     "status": "done"},
    {"id": "o2", "type": "oxygen_support", "time": "2025-03-02T08:00:00Z", "device": "low_flow_nc",
     "flow_L_min": 2, "indication": "hypoxia"},
    *({"id": f"apap{i}", "type": "medication_admin", "time": f"2025-03-02T1{i}:00:00Z",
       "drug": "acetaminophen", "dose": 650, "unit": "mg", "route": "PO"} for i in range(3)),
]  # fmt: skip


def rule_dirs(root: Path) -> dict[str, Path]:
    """`a`, `b` (the same rules, other bytes: another digest) and `bad` (an unknown field)."""
    dirs = {name: root / name for name in ("a", "b", "bad")}
    for path in dirs.values():
        shutil.copytree(SMALL, path)
    with (dirs["b"] / "policy.yaml").open("a", encoding="utf-8") as f:
        f.write("# the same rules, other bytes\n")
    crs = dirs["bad"] / "crs.yaml"
    good, bad = "{name: car_t_infusion, status: done}", "{nmae: car_t_infusion, status: done}"
    crs.write_text(crs.read_text("utf-8").replace(good, bad), encoding="utf-8")
    return dirs


# -- the holder, in process ------------------------------------------------------------------


@dataclass
class Parts:
    engine: engine.Engine
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def test_a_pinned_request_keeps_its_rules_through_a_reload_and_they_close_after_it(
    tmp_path: Path,
) -> None:
    dirs = rule_dirs(tmp_path)
    holder = RuleHolder(engine.load_rules(dirs["a"]), Parts, str(dirs["a"]))
    request = holder.pin()
    old = next(request)  # a request in flight
    done = holder.reload(str(dirs["b"]))
    assert done.changed and done.previous is old and holder.current is done.current
    assert old.engine.ruleset.digest == digest_of(dirs["a"])
    assert holder.current.engine.ruleset.digest == digest_of(dirs["b"])
    assert old.retired and not old.parts.closed  # still in use
    later = holder.pin()
    assert next(later) is holder.current  # a new request gets the new rules
    request.close()  # the request ends
    assert old.parts.closed and not holder.current.parts.closed
    later.close()


def test_an_invalid_rule_set_is_refused_and_the_rules_in_service_stay(tmp_path: Path) -> None:
    dirs = rule_dirs(tmp_path)
    holder = RuleHolder(engine.load_rules(dirs["a"]), Parts, str(dirs["a"]))
    before = holder.current
    with pytest.raises(RuleSetError) as refused:
        holder.reload(str(dirs["bad"]))
    assert [(p.file, p.line) for p in refused.value.problems] == [("bad/crs.yaml", 26)]
    assert "unknown field 'nmae'" in refused.value.problems[0].message
    assert holder.current is before and not before.retired
    same = holder.reload(str(dirs["a"]))  # the same files: nothing to do
    assert not same.changed and holder.current is before


# -- a real server -------------------------------------------------------------------------------


@dataclass
class Server:
    service: Service
    clients: Keys
    admins: Keys
    dirs: dict[str, Path]
    store: Path
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = self.service.client()

    def call(self, method: str, path: str, keys: Keys | None = None, **kw: Any) -> httpx.Response:
        token = (keys or self.clients).token(self.service.base_url + path.split("?")[0])
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)

    def reload(self, rules: str | None) -> httpx.Response:
        body = {"rules": rules} if rules is not None else None
        return self.call("POST", "/admin/rules/reload", self.admins, json=body)

    def digest(self) -> str:
        answer = self.call("GET", "/admin/rules", self.admins)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["digest"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("reload")
    dirs = rule_dirs(workdir)
    clients, admins = make_keys("EC"), make_keys("EC")
    jwks = write_jwks(workdir / "clients.json", clients)
    admin_jwks = write_jwks(workdir / "admins.json", admins)
    store = workdir / "facts.sqlite3"
    extra = ["--rules", str(dirs["a"]), "--admin-jwks", str(admin_jwks)]
    service = Service(store=str(store), workdir=workdir, jwks=jwks, extra=extra)
    service.start()
    up = Server(service, clients, admins, dirs, store)
    assert up.call("POST", "/patients/p1/facts", json=FACTS).status_code == 200
    yield up
    up.http.close()
    service.stop()


def test_only_an_admin_key_may_reload(server: Server) -> None:
    http = server.http
    assert http.post("/admin/rules/reload").status_code == 401
    as_client = server.call("POST", "/admin/rules/reload", server.clients)
    assert as_client.status_code == 401 and "admin token" in as_client.json()["detail"]
    assert server.digest() == digest_of(server.dirs["a"])


def test_an_invalid_rule_set_is_refused_with_its_located_problems(server: Server) -> None:
    answer = server.reload(str(server.dirs["bad"]))
    assert answer.status_code == 422
    body = answer.json()
    assert "the rules in service are unchanged" in body["detail"]
    assert [p["location"] for p in body["problems"]] == ["bad/crs.yaml:26:19"]
    assert "unknown field 'nmae'" in body["problems"][0]["reason"]
    assert server.digest() == digest_of(server.dirs["a"])


def test_a_directory_no_file_system_can_name_is_refused_not_a_server_error(
    server: Server,
) -> None:
    """A NUL byte or an unpaired surrogate in the path (found by the schema fuzzer: 500)."""
    # JSON escapes, as a client sends them; the request model refuses the surrogate itself
    for bad, reason in (("rules\\u0000dir", "is not a usable path"), ("x\\ud800", "string")):
        body = '{"rules": "' + bad + '"}'
        answer = server.call(
            "POST", "/admin/rules/reload", server.admins, content=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert answer.status_code == 422, answer.text
        assert reason in answer.json()["problems"][0]["reason"]
    assert server.digest() == digest_of(server.dirs["a"])


def test_concurrent_requests_during_reloads_never_fail_nor_mix_rule_sets(server: Server) -> None:
    digests = {digest_of(server.dirs[n]) for n in ("a", "b")}
    seen: list[tuple[str, httpx.Response]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(kind: str) -> None:
        with server.service.client() as http:
            while not stop.is_set():
                path, method, kw = {
                    "view": (PATIENT_VIEW, "POST", {"json": {
                        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                        "context": {"userId": "Practitioner/1", "patientId": "p1"}}}),
                    "evaluate": ("/evaluate", "POST", {"json": FACTS}),
                    "record": ("/patients/p1/evaluation?record=true", "GET", {}),
                }[kind]  # fmt: skip
                url = server.service.base_url + path.split("?")[0]
                headers = {"Authorization": f"Bearer {server.clients.token(url)}"}
                try:
                    answer = http.request(method, path, headers=headers, **kw)
                except httpx.HTTPError as exc:
                    failures.append(f"{kind}: {exc!r}")
                    continue
                seen.append((kind, answer))

    threads = [threading.Thread(target=client, args=(k,)) for k in ("view", "evaluate", "record")]
    for t in threads:
        t.start()
    try:
        for name in ("b", "a", "b", "a", "b"):
            answer = server.reload(str(server.dirs[name]))
            assert answer.status_code == 200 and answer.json()["changed"], answer.text
            assert answer.json()["rules"]["digest"] == digest_of(server.dirs[name])
            count = len(seen)
            while len(seen) < count + 12 and not failures:  # requests on these rules too
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    assert [(k, a.status_code) for k, a in seen if a.status_code != 200] == []
    answered: set[str] = set()
    cards: dict[str, str] = {}  # card uuid -> the digest its detail names
    for kind, answer in seen:
        body = answer.json()
        if kind == "view":
            named = {
                m
                for c in body["cards"]
                for m in re.findall(r"sha256 `([0-9a-f]{12})`", c["detail"])
            }
            assert len(named) == 1, named  # one rule set per answer
            digest = next(d for d in digests if d[:12] in named)
            assert [c["summary"] for c in body["cards"]][-1].startswith("Three antipyretic doses")
            cards.update({c["uuid"]: digest for c in body["cards"]})
        else:
            digest = body["ruleset"]["digest"]
            assert [r["code"] for r in body["recommendations"]] == ["ICU_ADMISSION"]
            if kind == "record":
                with open_log(str(server.store)) as log:
                    recorded = log.get(body["decision_id"])
                assert recorded.ruleset["digest"] == digest
                assert recorded.evaluation["ruleset"]["digest"] == digest
        assert digest in digests
        answered.add(digest)
    assert answered == digests  # both rule sets answered while the clients ran
    with sqlite3.connect(server.store) as db:
        issued = dict(db.execute("SELECT uuid, ruleset_digest FROM cards").fetchall())
    assert {u: issued[u] for u in cards} == cards  # each card recorded with its own rule set


def test_sighup_rereads_the_directory_in_service(server: Server) -> None:
    current = Path(server.call("GET", "/admin/rules", server.admins).json()["directory"])
    with (current / "policy.yaml").open("a", encoding="utf-8") as f:
        f.write("# edited in place\n")
    expected = digest_of(current)
    assert server.digest() != expected
    assert server.service.process is not None
    server.service.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while server.digest() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.digest() == expected
    assert "rules reloaded: case 0.1.0" in server.service.log()
