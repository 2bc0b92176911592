"""The service scales out on PostgreSQL: two `cart-cds serve` processes on one store answer
the same, whichever one the facts were posted to."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from servers import Service, crs_history, postgres

PATIENT_VIEW = "/cds-services/cart-t-patient-view"


def hook(patient: str) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/7", "patientId": patient},
    }


def card_content(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards without their uuids, which each issue gets anew."""
    return [{k: v for k, v in card.items() if k != "uuid"} for card in cards]


@pytest.mark.slow
def test_facts_posted_to_one_service_are_answered_the_same_by_the_other(tmp_path: Path) -> None:
    with postgres() as pg:
        url = pg.new_database()
        # behind one load balancer: one base URL (the cards link to it)
        shared = ["--base-url", "https://cds.example.org"]
        first = Service(store=url, workdir=tmp_path, insecure_dev=True, extra=shared)
        second = Service(store=url, workdir=tmp_path, insecure_dev=True, extra=shared)
        first.start()
        try:
            second.start()
            with first.client() as a, second.client() as b:
                facts = crs_history("scale-1", days=4)
                half = len(facts) // 2
                assert a.post("/patients/scale-1/facts", json=facts[:half]).status_code == 200
                answers = [c.post(PATIENT_VIEW, json=hook("scale-1")).json() for c in (a, b)]
                assert card_content(answers[0]["cards"]) == card_content(answers[1]["cards"])
                # the rest through the other service: the first one sees it too
                assert b.post("/patients/scale-1/facts", json=facts[half:]).status_code == 200
                views = [c.post(PATIENT_VIEW, json=hook("scale-1")).json() for c in (a, b)]
                evaluations = [c.get("/patients/scale-1/evaluation").json() for c in (a, b)]
        finally:
            second.stop()
            first.stop()
    assert views[0]["cards"], "the CRS history gives at least one card"
    assert card_content(views[0]["cards"]) == card_content(views[1]["cards"])
    assert card_content(views[0]["cards"]) != card_content(answers[0]["cards"])
    assert evaluations[0]["findings"] == evaluations[1]["findings"]
    assert evaluations[0]["recommendations"] == evaluations[1]["recommendations"]
    assert evaluations[0]["findings"]["crs"]["grade"] >= 1
