"""A deterministic synthetic CAR-T cohort: one fact file per patient, screening to day 90.

    .venv/bin/python bench/cohort_gen.py --patients 100 --days 30 --seed 7 --out /tmp/cohort
    .venv/bin/python bench/cohort_gen.py --patients 100 --ndjson /tmp/cohort.ndjson

Per patient (`C00001`, ...), facts as a host sends them (schemas/fact.schema.json):

- screening at D-35: patient, diagnosis, two lines of therapy, a relapse, HSCT
  ineligibility, ECOG, organ function, blood counts, serologies, no infection, the product;
- apheresis at D-28, LDH at D-25 and D-14, renal function and blood counts, CRP and
  ferritin at D-6, lymphodepletion at D-5, the infusion at D0 10:00 with travel time and
  caregiver;
- inpatient from D0 to discharge (D+10 to D+13): temperature, SBP and SpO2 every 4 h,
  ICE and level of consciousness every 12 h, daily ANC, platelets, hemoglobin, CRP and
  ferritin (on D0 after the infusion);
- about 40 % have a CRS episode (fever, acetaminophen, and for some hypotension with
  fluid boluses and a vasopressor, oxygen, tocilizumab, then `crs` resolved) and about 15 %
  an ICANS episode (ICE falling, drowsiness, dexamethasone);
- after discharge: daily visits to D+14, a late ANC series (weekly to D+42, then D+60 and
  D+90), PET at D+28 and D+90, IgG at D+60.

`--days D` keeps the facts up to D days after the infusion (screening is always kept).
Each patient has its own random stream seeded from (`--seed`, its number), so patient
`C00042` is the same whatever `--patients` is; no fact reads the wall clock.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

Fact = dict[str, Any]
BASE_DAY = datetime(2025, 1, 6, tzinfo=UTC)
CRS_SHARE = 0.40
ICANS_SHARE = 0.15


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Patient:
    """Collects one patient's facts; ids are given in time order at the end."""

    def __init__(self, pid: str, d0: datetime, days: int) -> None:
        self.pid = pid
        self.d0 = d0
        self.end = d0 + timedelta(days=days, hours=23, minutes=59)
        self._items: list[tuple[datetime, int, Fact]] = []

    def at(self, day: float, hour: float = 0.0) -> datetime:
        return self.d0 + timedelta(days=day, hours=hour)

    def add(self, moment: datetime, fact_type: str, **fields: Any) -> None:
        if moment > self.end:
            return
        body: Fact = {"type": fact_type, "time": _stamp(moment), "patient": self.pid, **fields}
        self._items.append((moment, len(self._items), body))

    def obs(self, moment: datetime, name: str, value: float, unit: str, **extra: Any) -> None:
        self.add(moment, "observation", name=name, value=value, unit=unit, **extra)

    def facts(self) -> list[Fact]:
        ordered = sorted(self._items, key=lambda item: (item[0], item[1]))
        return [{"id": f"{self.pid}-{n:04d}", **body} for n, (_m, _s, body) in enumerate(ordered)]


def _screening(rng: random.Random, p: _Patient, weight: float, product: str) -> None:
    s = p.at(-35, 9)
    p.add(s, "patient", age_y=rng.randrange(24, 80), sex=rng.choice(["M", "F"]),
          weight_kg=weight, bsa_m2=round(0.0235 * weight**0.515 * 170**0.422, 2))  # fmt: skip
    p.add(s, "diagnosis", histology=rng.choice(["DLBCL_NOS", "DLBCL_NOS", "HGBCL", "PMBCL"]),
          cns="none")  # fmt: skip
    p.add(s, "line_of_therapy", line=1, regimen="R-CHOP x6", start="2023-09-04",
          end="2024-01-15", best_response="CR")  # fmt: skip
    p.add(s, "disease_event", kind="relapse", biopsy_proven=True, date="2024-06-03")
    p.add(s, "line_of_therapy", line=2, regimen="R-GDP x3", start="2024-06-17",
          end="2024-09-02", best_response=rng.choice(["PD", "SD"]))  # fmt: skip
    p.add(s, "hsct_eligibility", eligible=False, reason="refractory to salvage")
    p.obs(s, "ecog", rng.choice([0, 1, 1]), "{score}")
    p.obs(s, "creatinine_clearance_cockcroft_gault", rng.randrange(62, 118), "mL/min")
    p.obs(s, "alt", rng.randrange(12, 38), "U/L", ref_high=40)
    p.obs(s, "ast", rng.randrange(12, 38), "U/L", ref_high=40)
    p.obs(s, "bilirubin_total", round(rng.uniform(0.3, 1.1), 1), "mg/dL")
    p.obs(s - timedelta(days=1), "lvef", rng.randrange(52, 66), "%")
    p.add(s, "observation", code="59408-5", name="SpO2_room_air", value=rng.randrange(94, 100),
          unit="%")  # fmt: skip
    p.obs(s, "anc", round(rng.uniform(1.6, 4.5), 1), "10*9/L")
    p.obs(s, "alc", round(rng.uniform(0.4, 1.6), 1), "10*9/L")
    p.obs(s, "platelets", rng.randrange(120, 320), "10*9/L")
    p.add(s, "serology", results={"HBsAg": "negative", "anti_HBc": "negative",
                                  "HCV_Ab": "negative", "HIV_Ag_Ab": "negative"})  # fmt: skip
    p.add(s, "condition", name="infection", status="none")
    p.add(s, "product_request", product=product)
    p.add(p.at(-28, 8), "procedure", name="apheresis", status="done")
    p.obs(p.at(-25, 7), "ldh", rng.randrange(180, 320), "U/L", ref_high=250)
    p.obs(p.at(-14, 7), "ldh", rng.randrange(180, 420), "U/L", ref_high=250)
    ld = p.at(-6, 7)  # before lymphodepletion: renal function and the CAR-HEMATOTOX labs
    p.obs(ld, "creatinine_clearance_cockcroft_gault", rng.randrange(60, 115), "mL/min")
    p.obs(ld, "anc", round(rng.uniform(1.2, 4.0), 1), "10*9/L", code="751-8")
    p.obs(ld, "platelets", rng.randrange(90, 300), "10*9/L")
    p.obs(ld, "hemoglobin", round(rng.uniform(8.5, 13.5), 1), "g/dL")
    p.obs(ld, "crp", round(rng.uniform(1, 30), 1), "mg/L")
    p.obs(ld, "ferritin", rng.randrange(80, 900), "ng/mL")
    p.add(p.at(-5, 9), "procedure", name="lymphodepletion", status="done")
    p.add(p.at(0, 10), "procedure", name="car_t_infusion", status="done", product=product)
    p.add(p.at(0), "location", travel_time_h_to_center=round(rng.uniform(0.2, 1.8), 1))
    p.add(p.at(0), "caregiver", available=True)


def _episode_slots(rng: random.Random, start: int, length: int, share: float) -> set[int]:
    """Some slots inside an episode (never its first or last)."""
    if length <= 3 or rng.random() >= share:
        return set()
    first = start + rng.randrange(1, min(4, length - 2))
    return set(range(first, min(first + rng.randrange(2, 7), start + length - 1)))


def _inpatient(rng: random.Random, p: _Patient, weight: float) -> int:
    """Vitals, ICE, daily labs and the episodes; returns the discharge day."""
    slot_hours = 4
    crs = rng.random() < CRS_SHARE
    icans = rng.random() < ICANS_SHARE
    start = rng.randrange(1, 5) * 6 + rng.randrange(0, 6) if crs else -1
    length = rng.randrange(1, 5) * 6 if crs else 0
    fever = {start} | {start + k for k in range(1, length - 1) if rng.random() < 0.6}
    low_sbp = _episode_slots(rng, start, length, 0.4) if crs else set()
    hypoxia = _episode_slots(rng, start, length, 0.4) if crs else set()
    icans_day = rng.randrange(3, 8) if icans else -1
    icans_days = rng.randrange(1, 4) if icans else 0
    severe = bool(low_sbp or hypoxia) or icans_days > 1
    discharge = rng.randrange(10, 12) + (rng.randrange(2, 4) if severe else 0)
    slot_time: dict[int, datetime] = {}
    for slot in range(discharge * 24 // slot_hours):
        moment = p.at(0, 2 + slot_hours * slot) + timedelta(minutes=rng.randrange(0, 10))
        slot_time[slot] = moment
        cel = rng.uniform(38.2, 39.9) if crs and slot in fever else rng.uniform(36.4, 37.4)
        p.obs(moment, "body_temperature", round(cel, 1), "Cel", code="8310-5")
        sbp = rng.randrange(74, 89) if slot in low_sbp else rng.randrange(102, 142)
        p.obs(moment, "sbp", sbp, "mm[Hg]")
        low = slot in hypoxia
        p.obs(moment, "spo2", rng.randrange(86, 92) if low else rng.randrange(94, 100), "%",
              on_room_air=not low)  # fmt: skip
    for day in range(discharge):
        lab = p.at(day, 16 if day == 0 else 6) + timedelta(minutes=rng.randrange(0, 30))
        depth = 0.15 if 3 <= day <= 9 else 1.1
        p.obs(lab, "anc", round(max(0.02, rng.gauss(depth, depth * 0.4) + 0.04 * day), 2),
              "10*9/L", code="751-8")  # fmt: skip
        p.obs(lab, "platelets", rng.randrange(25, 160), "10*9/L")
        p.obs(lab, "hemoglobin", round(rng.uniform(7.8, 11.5), 1), "g/dL")
        inflamed = crs and start // 6 <= day <= (start + length) // 6
        p.obs(lab, "crp", round(rng.uniform(40, 180) if inflamed else rng.uniform(2, 20), 1),
              "mg/L")  # fmt: skip
        p.obs(lab, "ferritin", rng.randrange(900, 4000) if inflamed else rng.randrange(200, 800),
              "ng/mL")  # fmt: skip
        for hour in (9, 21):
            moment = p.at(day, hour)
            low_ice = icans_day <= day < icans_day + icans_days
            if low_ice:
                p.add(moment, "ice", orientation=rng.randrange(1, 4), naming=rng.randrange(1, 3),
                      commands=rng.randrange(0, 2), writing=0,
                      attention=rng.randrange(0, 2))  # fmt: skip
            else:
                p.add(moment, "ice", orientation=4, naming=3, commands=1, writing=1, attention=1)
            level = "awakens_to_voice" if low_ice and icans_days == 3 else "alert"
            p.add(moment, "consciousness", level=level, sedated=False)
    if icans:
        p.add(p.at(icans_day, 10), "medication_admin", drug="dexamethasone", dose=10, unit="mg",
              route="IV", indication="ICANS")  # fmt: skip
    if crs:
        _crs_treatment(rng, p, slot_time, start, length, fever, low_sbp, hypoxia, weight)
    p.add(p.at(discharge, 12), "procedure", name="discharge", status="done")
    return discharge


def _crs_treatment(
    rng: random.Random,
    p: _Patient,
    slot_time: dict[int, datetime],
    start: int,
    length: int,
    fever: set[int],
    low_sbp: set[int],
    hypoxia: set[int],
    weight: float,
) -> None:
    onset, end = slot_time[start], slot_time[start + length - 1]
    para = {"drug": "acetaminophen", "dose": 1000, "unit": "mg", "route": "PO",
            "indication": "fever"}  # fmt: skip
    p.add(onset + timedelta(minutes=30), "medication_admin", **para)
    for s in sorted(fever - {start}):
        if rng.random() < 0.5:
            p.add(slot_time[s] + timedelta(minutes=20), "medication_admin", **para)
    toci: datetime | None = None
    if low_sbp:
        first = slot_time[min(low_sbp)]
        for n in range(rng.randrange(1, 4)):
            p.add(first + timedelta(minutes=15 + 90 * n), "fluid_bolus",
                  volume_mL=rng.choice([500, 1000]))  # fmt: skip
        toci = first + timedelta(minutes=45)
        if len(low_sbp) >= 2 and rng.random() < 0.5:
            on = first + timedelta(hours=3)
            drug = rng.choice(["norepinephrine", "phenylephrine"])
            p.add(on, "vasopressor", drug=drug, status="started", dose=0.05, unit="ug/kg/min")
            p.add(min(on + timedelta(hours=rng.randrange(12, 37)), end), "vasopressor",
                  drug=drug, status="stopped")  # fmt: skip
    if hypoxia:
        on = slot_time[min(hypoxia)] + timedelta(minutes=10)
        p.add(on, "oxygen_support", device="low_flow_nc", flow_L_min=rng.randrange(2, 7),
              indication="hypoxia")  # fmt: skip
        p.add(slot_time[max(hypoxia)] + timedelta(hours=3), "oxygen_support", device="none")
        toci = min(toci, on + timedelta(minutes=50)) if toci else on + timedelta(minutes=50)
    if toci is None and rng.random() < 0.3:
        toci = onset + timedelta(hours=6)
    if toci is not None:
        p.add(toci, "medication_admin", drug="tocilizumab", dose=min(round(8 * weight), 800),
              unit="mg", route="IV", indication="CRS")  # fmt: skip
    p.add(end + timedelta(hours=1), "condition", name="crs", status="resolved")


def _after_discharge(rng: random.Random, p: _Patient, discharge: int) -> None:
    for day in range(discharge + 1, 15):
        p.add(p.at(day), "daily_visit", temp_max_cel=round(rng.uniform(36.5, 37.3), 1),
              sbp_min=rng.randrange(105, 135), spo2_room_air_min=rng.randrange(94, 100),
              ice_total=10)  # fmt: skip
    for day in (21, 28, 35, 42, 60, 90):
        anc = round(max(0.1, rng.gauss(1.4, 0.5)), 2)
        p.obs(p.at(day, 8), "anc", anc, "10*9/L", code="751-8")
    responders = rng.random() < 0.6
    p.add(p.at(28, 9), "pet", deauville=rng.choice([2, 3]) if responders else 4,
          lugano="CMR" if responders else "PMR",
          suv_max=round(rng.uniform(1.5, 6.0), 1))  # fmt: skip
    p.obs(p.at(60, 8), "igg", rng.randrange(300, 900), "mg/dL")
    p.add(p.at(90, 9), "pet", deauville=2 if responders else rng.choice([4, 5]),
          lugano="CMR" if responders else rng.choice(["PMR", "PMD"]),
          suv_max=round(rng.uniform(1.2, 8.0), 1))  # fmt: skip


def generate_patient(seed: int, number: int, days: int = 90) -> list[Fact]:
    """Patient `number`'s facts, screening to `days` after the infusion, in time order."""
    rng = random.Random(seed * 1_000_003 + number)
    pid = f"C{number:05d}"
    p = _Patient(pid, BASE_DAY + timedelta(days=rng.randrange(0, 365)), days)
    weight = round(rng.uniform(48.0, 118.0), 1)
    _screening(rng, p, weight, rng.choice(["axi-cel", "tisa-cel", "liso-cel"]))
    _after_discharge(rng, p, _inpatient(rng, p, weight))
    return p.facts()


def generate_cohort(seed: int, patients: int, days: int = 90) -> Iterator[list[Fact]]:
    for number in range(1, patients + 1):
        yield generate_patient(seed, number, days)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=100, help="patients (default 100)")
    parser.add_argument("--days", type=int, default=90, help="days after D0 (default 90)")
    parser.add_argument("--seed", type=int, default=20250106, help="random seed")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="write DIR/<patient>.json, one per patient")
    where.add_argument("--ndjson", metavar="FILE", help="write one NDJSON file, all patients")
    args = parser.parse_args(argv)
    if args.patients < 1 or not 0 <= args.days <= 90:
        parser.error("need --patients >= 1 and 0 <= --days <= 90")
    total = 0
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for facts in generate_cohort(args.seed, args.patients, args.days):
            text = json.dumps(facts, indent=None, separators=(",", ":"))
            (out / f"{facts[0]['patient']}.json").write_text(text + "\n", encoding="utf-8")
            total += len(facts)
    else:
        with open(args.ndjson, "w", encoding="utf-8") as stream:
            for facts in generate_cohort(args.seed, args.patients, args.days):
                stream.writelines(json.dumps(f, separators=(",", ":")) + "\n" for f in facts)
                total += len(facts)
    print(f"{args.patients} patients, {total} facts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
