"""cart-cds: clinical decision support for CAR-T cell therapy, rules as data on durable-rules.

import engine
cds = engine.load_rules()                      # the bundled rules, validated and compiled
result = cds.evaluate(facts, as_of="2025-05-06T10:00:00Z")
with cds.session() as s:                       # incremental: one fact at a time
    s.add(fact)
    result = cds.evaluation(s)
"""

from engine.errors import CartCdsError, EvaluationError, FactError, Problem, RuleSetError
from engine.runtime.api import Engine, check_evaluation, load_rules
from engine.runtime.facts import Fact, Rejection
from engine.runtime.reading import load_facts_text
from engine.runtime.session import Session

__all__ = [
    "CartCdsError",
    "Engine",
    "EvaluationError",
    "Fact",
    "FactError",
    "Problem",
    "Rejection",
    "RuleSetError",
    "Session",
    "check_evaluation",
    "load_facts_text",
    "load_rules",
]
