"""Hypothesis strategies for cart-cds facts, shared by the property tests.

- `crs_course()`: one realistic CRS patient (weight, a CAR-T infusion at `ANCHOR`, then
  1-25 CRS facts on a 30-minute grid within 10 days, so ties in time happen).
- `icans_course()`: a CAR-T infusion at `ANCHOR`, then 1-10 ICANS readings (ICE,
  consciousness, seizures, motor findings, neuroimaging, examination signs, daily-visit ICE
  totals, an ICANS episode recorded resolved) on the same grid, some before the infusion.
- `any_valid_fact()`: a fact of any type that `schemas/fact.schema.json` accepts, with
  random (often extreme) values; built from the schema's own types and enums.
- `any_json_fact()`: an arbitrary JSON object, or a valid fact with one thing broken.

Every fact these strategies build is plain JSON (dicts, lists, str, int, finite float,
bool, None) so it can be sent to the engine as a host would.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
FACT_SCHEMA: dict[str, Any] = json.loads(
    (REPO / "schemas" / "fact.schema.json").read_text(encoding="utf-8")
)
VOCABULARY: dict[str, Any] = json.loads(
    (REPO / "schemas" / "observations.json").read_text(encoding="utf-8")
)["observations"]
FACT_VALIDATOR = Draft202012Validator(
    FACT_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
)

# The definition of each fact type (the `$defs` entries that pin `type` with `const`).
TYPE_DEFS: dict[str, dict[str, Any]] = {
    d["properties"]["type"]["const"]: d
    for d in FACT_SCHEMA["$defs"].values()
    if "const" in d.get("properties", {}).get("type", {})
}

# ---------------------------------------------------------------------------- time grid

ANCHOR = datetime(2025, 5, 5, 12, 0, tzinfo=UTC)  # the CAR-T infusion (D0T12:00)
STEP = timedelta(minutes=30)
GRID_STEPS = 10 * 24 * 2  # ten days of 30-minute steps after the infusion


def at(step: int) -> str:
    """The ISO time `step` half-hours after the infusion."""
    return (ANCHOR + step * STEP).strftime("%Y-%m-%dT%H:%M:%SZ")


def step_of(time: str) -> int:
    """The inverse of `at` (for facts on the grid)."""
    moment = datetime.strptime(time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int((moment - ANCHOR) / STEP)


INFUSION: dict[str, Any] = {
    "id": "inf",
    "type": "procedure",
    "time": at(0),
    "name": "car_t_infusion",
    "status": "done",
    "product": "axi-cel",
}

# ---------------------------------------------------------------------------- CRS facts

OXYGEN_DEVICES = (
    "none",
    "low_flow_nc",
    "nasal_cannula_standard",
    "blow_by",
    "high_flow_nc",
    "face_mask",
    "non_rebreather",
    "venturi",
    "cpap",
    "bipap",
    "invasive_ventilation",
)
LOW_FLOW_CANNULAS = ("low_flow_nc", "nasal_cannula_standard")
HIGH_FLOW_DEVICES = ("high_flow_nc", "face_mask", "non_rebreather", "venturi")
POSITIVE_PRESSURE = ("cpap", "bipap", "invasive_ventilation")
VASOPRESSORS = ("norepinephrine", "epinephrine", "phenylephrine", "dopamine", "vasopressin")
CRS_DRUGS = ("acetaminophen", "tocilizumab", "dexamethasone")
LOW_FLOW_MAX_L_MIN = 6


def oxygen_intensity(fact: dict[str, Any]) -> int:
    """The ASTCT hypoxia grade an oxygen_support fact given for hypoxia implies:
    none < low-flow cannula at most 6 L/min (or flow not sent) == blow-by < high-flow
    device or cannula above 6 L/min < positive pressure."""
    device = fact["device"]
    if device == "none" or fact.get("indication") != "hypoxia":
        return 0
    if device in POSITIVE_PRESSURE:
        return 4
    if device in HIGH_FLOW_DEVICES:
        return 3
    if device in LOW_FLOW_CANNULAS and fact.get("flow_L_min", 0) > LOW_FLOW_MAX_L_MIN:
        return 3
    return 2


def tenths(low: int, high: int) -> st.SearchStrategy[float]:
    """Numbers with one decimal in [low/10, high/10] (the boundaries are on the grid)."""
    return st.integers(low, high).map(lambda n: n / 10)


@st.composite
def temperature(draw: st.DrawFn, *, febrile: bool | None = None) -> dict[str, Any]:
    """A body temperature in Cel or [degF], 36-41 Cel (38.0 Cel is the fever threshold)."""
    low, high = {None: (360, 410), True: (380, 410), False: (360, 379)}[febrile]
    cel = draw(st.integers(low, high))  # tenths of a degree Celsius
    fact: dict[str, Any] = {"type": "observation"}
    if draw(st.booleans()):
        fact["unit"], fact["value"] = "Cel", cel / 10
    else:  # 9/5 of a tenth: whole tenths of degF, some exactly on a Celsius tenth
        degf10 = 320 + (cel * 9 + 4) // 5
        if febrile is False and degf10 >= 1004:
            degf10 = 1003
        if febrile is True and degf10 < 1004:
            degf10 = 1004
        fact["unit"], fact["value"] = "[degF]", degf10 / 10
    fact.update(draw(_identity("body_temperature", "8310-5", ("temperature",))))
    return fact


def _identity(name: str, code: str, aliases: tuple[str, ...]) -> st.SearchStrategy[dict[str, str]]:
    """How a host names an observation: by LOINC code, by name or alias, or both."""
    names = st.sampled_from((name, *aliases))
    return st.one_of(
        st.just({"code": code}),
        names.map(lambda n: {"name": n}),
        names.map(lambda n: {"code": code, "name": n}),
    )


@st.composite
def sbp(draw: st.DrawFn, low: int = 60, high: int = 140) -> dict[str, Any]:
    """A systolic blood pressure in mm[Hg] (below 90 is hypotension)."""
    fact: dict[str, Any] = {
        "type": "observation",
        "value": draw(st.integers(low, high)),
        "unit": "mm[Hg]",
    }
    fact.update(draw(_identity("sbp", "8480-6", ("SBP", "systolic_bp"))))
    return fact


@st.composite
def oxygen_support(draw: st.DrawFn, devices: tuple[str, ...] = OXYGEN_DEVICES) -> dict[str, Any]:
    device = draw(st.sampled_from(devices))
    fact: dict[str, Any] = {"type": "oxygen_support", "device": device, "indication": "hypoxia"}
    if device != "none" and draw(st.integers(0, 3)) > 0:
        fact["flow_L_min"] = draw(st.integers(1, 15))
    return fact


def vasopressor(status: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    statuses = st.sampled_from(("started", "stopped")) if status is None else st.just(status)
    return st.fixed_dictionaries(
        {
            "type": st.just("vasopressor"),
            "drug": st.sampled_from(VASOPRESSORS),
            "status": statuses,
        },
        optional={"dose": tenths(1, 50), "unit": st.just("ug/kg/min")},
    )


def medication_admin(drugs: tuple[str, ...] = CRS_DRUGS) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just("medication_admin"), "drug": st.sampled_from(drugs)},
        optional={
            "dose": st.sampled_from((10, 500, 650, 1000)),
            "unit": st.just("mg"),
            "route": st.sampled_from(("IV", "PO")),
            "indication": st.sampled_from(("crs", "fever", "prophylaxis")),
        },
    )


FLUID_BOLUS = st.fixed_dictionaries(
    {"type": st.just("fluid_bolus"), "volume_mL": st.sampled_from((250, 500, 1000, 2000))}
)


@st.composite
def anc(draw: st.DrawFn) -> dict[str, Any]:
    """An absolute neutrophil count, in /uL or 10*9/L."""
    per_ul = draw(st.integers(0, 5000))
    fact: dict[str, Any] = {"type": "observation"}
    if draw(st.booleans()):
        fact["value"], fact["unit"] = per_ul, "/uL"
    else:
        fact["value"], fact["unit"] = per_ul / 1000, "10*9/L"
    fact.update(draw(_identity("anc", "751-8", ("ANC",))))
    return fact


CRS_RESOLVED = st.just({"type": "condition", "name": "crs", "status": "resolved"})
TOCILIZUMAB_ORDER = st.fixed_dictionaries(
    {"type": st.just("order_request"), "drug": st.just("tocilizumab")},
    optional={"dose": st.sampled_from((560, 640, 800)), "unit": st.just("mg")},
)


def crs_fact(*, masking_drugs: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """One CRS-course fact without time or id. `masking_drugs=False` leaves out every
    antipyretic, anti-cytokine drug and steroid: no medication_admin and no tocilizumab
    order (an approved order counts as a dose)."""
    kinds = [
        temperature(),
        temperature(),  # temperatures are the most frequent reading
        sbp(),
        oxygen_support(),
        vasopressor(),
        FLUID_BOLUS,
        anc(),
        CRS_RESOLVED,
    ]
    if masking_drugs:
        kinds += [medication_admin(), TOCILIZUMAB_ORDER]
    return st.one_of(kinds)


def patient_fact(weight_kg: float) -> dict[str, Any]:
    return {"id": "pt", "type": "patient", "time": "2025-05-05", "weight_kg": weight_kg}


@st.composite
def crs_course(
    draw: st.DrawFn, *, min_size: int = 1, max_size: int = 25, masking_drugs: bool = True
) -> list[dict[str, Any]]:
    """A CRS patient: weight, the infusion at ANCHOR, then `min_size`-`max_size` CRS facts
    at times on a 30-minute grid within 10 days of the infusion, each with a unique id."""
    weight = draw(st.one_of(st.integers(20, 150), tenths(200, 1500)))
    facts = [patient_fact(weight), dict(INFUSION)]
    events = draw(
        st.lists(crs_fact(masking_drugs=masking_drugs), min_size=min_size, max_size=max_size)
    )
    # Times cluster: a few distinct steps, reused, so that ties in time are common.
    steps = draw(st.lists(st.integers(0, GRID_STEPS), min_size=1, max_size=8))
    for i, event in enumerate(events):
        step = draw(st.sampled_from(steps) | st.integers(0, GRID_STEPS))
        facts.append({"id": f"c{i:02d}", "time": at(step), **event})
    return facts


@st.composite
def crs_course_made_worse(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(course, the same course made worse, how): one SBP replaced by a lower value or one
    oxygen support by an at least as intensive one (same id and time), or a started
    vasopressor added."""
    facts = draw(crs_course())
    sbps = [i for i, f in enumerate(facts) if f.get("unit") == "mm[Hg]"]
    oxygen = [i for i, f in enumerate(facts) if f["type"] == "oxygen_support"]
    how = draw(st.sampled_from(["vasopressor"] + ["sbp"] * bool(sbps) + ["oxygen"] * bool(oxygen)))
    worse = [dict(f) for f in facts]
    if how == "sbp":
        i = draw(st.sampled_from(sbps))
        worse[i]["value"] = draw(st.integers(60, worse[i]["value"]))
    elif how == "oxygen":
        i = draw(st.sampled_from(oxygen))
        floor = oxygen_intensity(worse[i])
        more = draw(oxygen_support().filter(lambda f: oxygen_intensity(f) >= floor))
        worse[i] = {"id": worse[i]["id"], "time": worse[i]["time"], **more}
    else:
        step = draw(st.integers(0, GRID_STEPS))
        worse.append({"id": "worse", "time": at(step), **draw(vasopressor("started"))})
    return facts, worse, how


@st.composite
def fever_then_afebrile(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A course without antipyretics, anti-cytokine drugs or steroids, then a fever later
    than every other fact, then an afebrile temperature 30 min to 30 h after the fever."""
    facts = draw(crs_course(masking_drugs=False))
    fever_step = step_of(max_time(facts)) + draw(st.integers(1, 4))
    afebrile_step = fever_step + draw(st.integers(1, 60))
    fever = {"id": "fever", "time": at(fever_step), **draw(temperature(febrile=True))}
    afebrile = {"id": "afebrile", "time": at(afebrile_step), **draw(temperature(febrile=False))}
    return [*facts, fever, afebrile]


def max_time(facts: list[dict[str, Any]]) -> str:
    """The latest time among grid facts (ISO strings in one format sort by time)."""
    return max(f["time"] for f in facts if re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", f["time"]))


# ---------------------------------------------------------------------------- ICANS facts

ICE_PARTS = {"orientation": 4, "naming": 3, "commands": 1, "writing": 1, "attention": 1}
# ASTCT depressed level of consciousness, from no impairment to the worst (reference 5.2)
CONSCIOUSNESS_LEVELS = (
    "alert",
    "awakens_spontaneously",
    "awakens_to_voice",
    "awakens_to_tactile",
    "unarousable",
)
SEIZURE_TYPES = ("focal", "generalized", "nonconvulsive_eeg")
# Neuroimaging findings ASTCT grades, from none to the worst; a haemorrhage is excluded
# from ICANS grading, so it is on no scale of "worse" (reference 5.2).
EDEMA_FINDINGS = ("none", "focal_edema", "diffuse_edema")
NEUROIMAGING_FINDINGS = (*EDEMA_FINDINGS, "hemorrhage")
# Examination signs of raised intracranial pressure (ASTCT grade 4) and the signs that do
# not grade by themselves (global aphasia only with an ICE of 0; tremor, myoclonus never).
RAISED_ICP_SIGNS = ("papilledema", "cn_vi_palsy", "posturing", "cushing_triad")
EXAM_FINDINGS = (*RAISED_ICP_SIGNS, "global_aphasia", "tremor", "myoclonus", "other")


@st.composite
def ice(draw: st.DrawFn) -> dict[str, Any]:
    """An ICE assessment: five parts (the total sent or not), or not performable (ICE 0)."""
    if draw(st.integers(0, 5)) == 0:
        return {"type": "ice", "performable": False}
    fact: dict[str, Any] = {"type": "ice"}
    for part, points in ICE_PARTS.items():
        fact[part] = draw(st.integers(0, points) | st.just(points))  # often full marks
    if draw(st.booleans()):
        fact["total"] = ice_total(fact)
    if draw(st.booleans()):
        fact["performable"] = True
    return fact


def ice_total(fact: dict[str, Any]) -> int:
    return sum(fact[part] for part in ICE_PARTS)


def consciousness() -> st.SearchStrategy[dict[str, Any]]:
    """A level of consciousness, alert about half the time."""
    levels = st.just("alert") | st.sampled_from(CONSCIOUSNESS_LEVELS)
    return st.fixed_dictionaries(
        {"type": st.just("consciousness"), "level": levels},
        optional={"sedated": st.booleans()},
    )


def seizure() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just("seizure"), "seizure_type": st.sampled_from(SEIZURE_TYPES)},
        optional={
            "duration_min": st.sampled_from((1, 2, 5, 6, 10)) | tenths(0, 150),
            "resolved_rapidly": st.booleans(),
            "return_to_baseline": st.booleans(),
            "repetitive": st.booleans(),
        },
    )


def motor() -> st.SearchStrategy[dict[str, Any]]:
    """A motor examination, with deep focal weakness (grade 4) a quarter of the time."""
    weakness = st.integers(0, 3).map(lambda n: n == 0)
    return st.fixed_dictionaries({"type": st.just("motor"), "deep_focal_weakness": weakness})


def neuroimaging(findings: tuple[str, ...] = NEUROIMAGING_FINDINGS) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"type": st.just("neuroimaging"), "finding": st.sampled_from(findings)}
    )


def neuro_exam(findings: tuple[str, ...] = EXAM_FINDINGS) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"type": st.just("neuro_exam"), "finding": st.sampled_from(findings)}
    )


DAILY_VISIT_ICE = st.fixed_dictionaries(
    {"type": st.just("daily_visit"), "ice_total": st.integers(0, 10)}
)
ICANS_RESOLVED = st.just({"type": "condition", "name": "icans", "status": "resolved"})


def icans_fact() -> st.SearchStrategy[dict[str, Any]]:
    """One ICANS-course fact without time or id."""
    return st.one_of(
        ice(),
        ice(),
        ice(),  # ICE and consciousness are charted most often
        consciousness(),
        consciousness(),
        seizure(),
        motor(),
        neuroimaging(),
        neuro_exam(EXAM_FINDINGS[len(RAISED_ICP_SIGNS) :]),  # signs that do not grade alone
        neuro_exam(),
        DAILY_VISIT_ICE,
        ICANS_RESOLVED,
    )


@st.composite
def icans_course(draw: st.DrawFn, *, max_size: int = 10) -> list[dict[str, Any]]:
    """The infusion at ANCHOR, then 1-`max_size` ICANS facts at times on the 30-minute grid
    from 2 h before the infusion to 10 days after it (the times cluster, so ties happen),
    each with a unique id."""
    facts = [dict(INFUSION)]
    events = draw(st.lists(icans_fact(), min_size=1, max_size=max_size))
    steps = draw(st.lists(st.integers(-4, GRID_STEPS), min_size=1, max_size=6))
    for i, event in enumerate(events):
        step = draw(st.sampled_from(steps) | st.integers(-4, GRID_STEPS))
        facts.append({"id": f"n{i:02d}", "time": at(step), **event})
    return facts


@st.composite
def icans_course_made_worse(
    draw: st.DrawFn, *, simultaneous_consciousness: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(course, the same course with one ICANS domain made worse, how). Each change keeps
    the fact's id and time, or adds one fact at a grid time:

    - `ice`: an ICE the patient performed scores at most as well in every part (the total,
      if sent, follows); or it becomes not performable (ICE 0), only when no level of
      consciousness in the course is recorded under sedation (ASTCT does not grade an ICE
      the patient cannot perform because of sedation: that is not a worse ICE, it is none);
    - `visit_ice`: a daily visit's ICE total is lower;
    - `consciousness`: a level of consciousness is at least as depressed (sedation as sent),
      one recorded alone at its time unless `simultaneous_consciousness`;
    - `seizure`: a seizure is added, or an existing one lasts longer;
    - `motor`: deep focal motor weakness is recorded (changed or added);
    - `edema`: a neuroimaging finding shows more oedema (none < focal < diffuse), or an
      examination sign of raised intracranial pressure is added.
    """
    facts = draw(icans_course())
    kinds: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        kinds.setdefault(f["type"], []).append(i)
    performed = [i for i in kinds.get("ice", []) if facts[i].get("performable") is not False]
    sedated = any(facts[i].get("sedated") is True for i in kinds.get("consciousness", []))
    oedema = [i for i in kinds.get("neuroimaging", []) if facts[i]["finding"] in EDEMA_FINDINGS]
    choices = ["seizure", "motor", "edema"]
    # the ICE and consciousness domains, when the course has them, are chosen more often
    choices += ["ice"] * 3 * bool(performed or (kinds.get("ice") and not sedated))
    choices += ["visit_ice"] * bool(kinds.get("daily_visit"))
    levels = kinds.get("consciousness", [])
    if not simultaneous_consciousness:
        times = [facts[i]["time"] for i in levels]
        levels = [i for i in levels if times.count(facts[i]["time"]) == 1]
    choices += ["consciousness"] * 2 * bool(levels)
    how = draw(st.sampled_from(choices))
    worse = [dict(f) for f in facts]
    added = st.builds(lambda step: {"id": "worse", "time": at(step)}, st.integers(-4, GRID_STEPS))
    if how == "ice":
        candidates = kinds["ice"] if not sedated else performed
        i = draw(st.sampled_from(candidates))
        if i in performed and (sedated or draw(st.booleans())):
            for part in ICE_PARTS:
                worse[i][part] = draw(st.integers(0, worse[i][part]))
            if "total" in worse[i]:
                worse[i]["total"] = ice_total(worse[i])
        else:  # not performable: ICE 0
            worse[i] = {"id": worse[i]["id"], "time": worse[i]["time"], "type": "ice",
                        "performable": False}  # fmt: skip
    elif how == "visit_ice":
        i = draw(st.sampled_from(kinds["daily_visit"]))
        worse[i]["ice_total"] = draw(st.integers(0, worse[i]["ice_total"]))
    elif how == "consciousness":
        i = draw(st.sampled_from(levels))
        rank = CONSCIOUSNESS_LEVELS.index(worse[i]["level"])
        worse[i]["level"] = draw(st.sampled_from(CONSCIOUSNESS_LEVELS[rank:]))
    elif how == "seizure":
        lasting = [i for i in kinds.get("seizure", []) if "duration_min" in facts[i]]
        if lasting and draw(st.booleans()):
            i = draw(st.sampled_from(lasting))
            worse[i]["duration_min"] = worse[i]["duration_min"] + draw(st.integers(0, 10))
        else:
            worse.append({**draw(added), **draw(seizure())})
    elif how == "motor":
        if kinds.get("motor") and draw(st.booleans()):
            worse[draw(st.sampled_from(kinds["motor"]))]["deep_focal_weakness"] = True
        else:
            worse.append({**draw(added), "type": "motor", "deep_focal_weakness": True})
    elif oedema and draw(st.booleans()):
        i = draw(st.sampled_from(oedema))
        rank = EDEMA_FINDINGS.index(worse[i]["finding"])
        worse[i]["finding"] = draw(st.sampled_from(EDEMA_FINDINGS[rank:]))
    else:
        worse.append({**draw(added), **draw(neuro_exam(RAISED_ICP_SIGNS))})
    return facts, worse, how


# ---------------------------------------------------------------------------- any valid fact

JSON_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

LOINC = re.compile(r"[0-9]{1,7}-[0-9]")
SOME_TEXT = st.one_of(
    st.sampled_from(("x", "crs", "tocilizumab", "hypotension", "R-CHOP", "note")),
    st.text(min_size=1, max_size=30),
)


@st.composite
def iso_time(draw: st.DrawFn) -> str:
    """A time the schema's pattern accepts: mostly near the infusion, sometimes any year
    (which the normaliser may still refuse, e.g. year 0000 or month 13)."""
    if draw(st.integers(0, 9)) > 0:
        moment = ANCHOR + timedelta(minutes=draw(st.integers(-60 * 24 * 60, 60 * 24 * 400)))
        form = draw(st.integers(0, 4))
        if form == 0:
            return moment.strftime("%Y-%m-%d")
        if form == 1:
            return moment.strftime("%Y-%m-%dT%H:%M")
        if form == 2:
            return moment.strftime("%Y-%m-%dT%H:%M:%S")
        if form == 3:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00"
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    year = draw(st.integers(0, 9999))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if draw(st.booleans()):
        hh, mm, ss = draw(st.integers(0, 99)), draw(st.integers(0, 99)), draw(st.integers(0, 99))
        zone = draw(st.sampled_from(("", "Z", "+14:00", "-12:00", "+0530", "-23:59", "+00")))
        text += f"T{hh:02d}:{mm:02d}:{ss:02d}{zone}"
    return text


def _number(spec: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum")
    if integer:
        return (
            st.integers(min_value=low, max_value=high)
            if low is not None
            else st.integers(max_value=high)
        )
    floats = st.floats(
        min_value=low,
        max_value=high,
        allow_nan=False,
        allow_infinity=False,
        exclude_min="exclusiveMinimum" in spec,
    )
    ints = st.integers(
        min_value=None if low is None else (int(low) + 1 if "exclusiveMinimum" in spec else low),
        max_value=high,
    )
    return st.one_of(floats, ints)


def from_schema(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value for one property schema of the fact schema (the kinds it uses)."""
    if "$ref" in spec:
        return from_schema(FACT_SCHEMA["$defs"][spec["$ref"].rsplit("/", 1)[-1]])
    if "const" in spec:
        return st.just(spec["const"])
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    kind = spec.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**spec, "type": k}) for k in kind])
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return _number(spec, integer=True)
    if kind == "number":
        return _number(spec, integer=False)
    if kind == "object":  # serology results: {test: result}
        values = from_schema(spec["additionalProperties"])
        return st.dictionaries(SOME_TEXT, values, min_size=spec.get("minProperties", 0), max_size=3)
    if kind == "string":
        if spec.get("format") == "date":
            return st.dates().map(lambda d: d.isoformat())
        if spec.get("pattern") == "^[0-9]+$":
            return st.from_regex(r"[0-9]{1,8}", fullmatch=True)
        if "pattern" in spec:
            return st.from_regex(spec["pattern"].strip("^$"), fullmatch=True)
        return SOME_TEXT if spec.get("minLength") else st.text(max_size=30)
    raise ValueError(f"no strategy for schema {spec!r}")


@st.composite
def _observation_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Name/code, value and unit: mostly from the vocabulary, sometimes anything the schema
    allows (an unknown name or code is schema-valid but refused by the normaliser)."""
    if draw(st.integers(0, 4)) == 0:
        fields: dict[str, Any] = draw(
            st.fixed_dictionaries(
                {"value": st.one_of(st.floats(allow_nan=False, allow_infinity=False), SOME_TEXT)},
                optional={
                    "unit": SOME_TEXT,
                    "code": from_schema({"pattern": LOINC.pattern, "type": "string"}),
                },
            )
        )
        fields["name"] = draw(SOME_TEXT)
        return fields
    name = draw(st.sampled_from(sorted(VOCABULARY)))
    entry = VOCABULARY[name]
    fields = {}
    codes = [c["code"] for c in entry["codes"]]
    how = draw(st.integers(0, 2)) if codes else 1
    if how in (0, 2):
        fields["code"] = draw(st.sampled_from(codes))
    if how in (1, 2):
        fields["name"] = draw(st.sampled_from((name, *entry["aliases"])))
    low, high = entry.get("range") or (None, None)
    if entry["value_type"] == "string":
        fields["value"] = draw(SOME_TEXT)
    elif entry["value_type"] == "integer":
        fields["value"] = draw(st.integers(low, high))
    else:
        fields["value"] = draw(
            st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(low, high)
        )
    if entry["units"]:
        fields["unit"] = draw(st.sampled_from(sorted(entry["units"])))
    return fields


@st.composite
def any_valid_fact(draw: st.DrawFn, types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A fact of any type (or one of `types`) that the fact schema accepts."""
    fact_type = draw(st.sampled_from(types or sorted(TYPE_DEFS)))
    definition = TYPE_DEFS[fact_type]
    props = definition["properties"]
    fact: dict[str, Any] = {
        "type": fact_type,
        draw(st.sampled_from(("time", "t"))): draw(iso_time()),
    }
    if draw(st.booleans()):
        fact["id"] = draw(st.sampled_from(("a", "b", "c")) | SOME_TEXT)
    if draw(st.integers(0, 3)) == 0:
        fact["patient"] = draw(st.sampled_from(("p1", "p2")) | SOME_TEXT)
    envelope = {"id", "type", "time", "t", "patient"}
    for name, spec in props.items():
        if name in envelope:
            continue
        if name in definition.get("required", ()) or draw(st.booleans()):
            fact[name] = draw(from_schema(spec))
    if fact_type == "observation":
        for key in ("code", "name", "value", "unit"):
            fact.pop(key, None)
        fact.update(draw(_observation_fields()))
    elif fact_type == "ice" and fact.get("performable") is not False:
        parts = ("orientation", "naming", "commands", "writing", "attention")
        for part in parts:
            fact.setdefault(part, draw(from_schema(props[part])))
        if "total" in fact and draw(st.booleans()):
            fact["total"] = sum(fact[p] for p in parts)
    elif fact_type == "serology":
        if draw(st.booleans()):
            fact.setdefault("test", draw(SOME_TEXT))
            fact.setdefault("result", draw(from_schema(props["result"])))
        else:
            fact.pop("test", None)
            fact.pop("result", None)
            fact.setdefault("results", draw(from_schema(props["results"])))
    elif fact_type == "oxygen_support" and fact["device"] != "none":
        fact.setdefault("indication", draw(from_schema(props["indication"])))
    elif fact_type == "encounter" and fact["event"] in ("admission", "transfer"):
        fact.setdefault("setting", draw(from_schema(props["setting"])))
    for alternatives in definition.get("anyOf", ()):  # pet, daily_visit: at least one field
        if fact_type != "serology" and all(k not in fact for k in alternatives["required"]):
            key = alternatives["required"][0]
            fact[key] = draw(from_schema(props[key]))
    return fact


def is_schema_valid(fact: object) -> bool:
    return FACT_VALIDATOR.is_valid(fact)


# ---------------------------------------------------------------------------- any JSON


@st.composite
def broken_fact(draw: st.DrawFn) -> dict[str, Any]:
    """A valid fact with one thing wrong: a field dropped, retyped or added, or a bad type."""
    fact = draw(any_valid_fact())
    how = draw(st.integers(0, 3))
    if how == 0:
        fact.pop(draw(st.sampled_from(sorted(fact))))
    elif how == 1:
        fact[draw(st.sampled_from(sorted(fact)))] = draw(JSON_VALUES)
    elif how == 2:
        fact[draw(st.text(min_size=1, max_size=10))] = draw(JSON_VALUES)
    else:
        fact["type"] = draw(st.sampled_from(("Patient", "observations", "vitals", "")) | st.text())
    return fact


def any_json_fact() -> st.SearchStrategy[dict[str, Any]]:
    """An arbitrary JSON object: random keys and values, or a valid fact with one thing broken."""
    random_object = st.dictionaries(
        st.sampled_from(("type", "time", "t", "id", "name", "value", "unit", "drug"))
        | st.text(max_size=10),
        JSON_VALUES,
        max_size=6,
    )
    return st.one_of(random_object, broken_fact())


def any_json_value() -> st.SearchStrategy[Any]:
    """Any JSON value at all (a host may send a list of anything)."""
    return st.one_of(JSON_VALUES, any_json_fact())
