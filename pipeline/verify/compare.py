"""Decide whether an extracted answer matches the ground truth.

The gold is read into a typed form first (gold.py), then compared by the rule for its kind:
- letter / option_text: the prediction names an option by letter or by text (choice.py), both ways:
  "\\boxed{4}" where B is "4" matches gold "B"; "C" matches gold "58°." when C is "58°". An answer
  that names no option, or two, is wrong; a number or expression equal to the gold option's text counts.
- yes_no: the first word of the answer (yes/true/correct vs no/false/incorrect); an answer that starts
  with neither is undecided.
- number: equal values, never by prefix ("0.54" != "0.5", "0.5" != "0.54"); a gold given to 2+ decimals
  is a rounded value, so a longer answer that rounds to it matches ("3.1416" for "3.14"); units compared
  when both sides carry one ("5 km" != "5 m"); 76% == 0.76 == 76; an expression answer ("\\frac{1}{2}")
  goes to math-verify; a short sentence with exactly one number and no negation or hedge
  ("There are 12 circles.") is judged by that number.
- expression: equal after removing spaces, else math-verify.
- sentence / text: equal after normalising (case, punctuation, articles), else **undecided**: neither
  right nor wrong; the optional LLM answer judge may decide, otherwise the row is rejected as undecided.

math-verify is never called here: a comparison that needs it comes back as a MathQuery, which the
caller sends to a worker process (pool.py) and turns into a Verdict with `resolve`. `check_output` and
`judge` do both steps, sending the query to the process-wide default pool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Literal

from ..records import Option
from .choice import read_option
from .extract import extract
from .gold import Gold, parse_gold, split_letter
from .normalise import (clean, looks_like_math, norm_text, parse_quantity, quantities_equal, single_quantity_in_prose,
                        yes_no)

# How a decided verdict was reached (stored on kept records as match_method).
MATCH_METHODS = ("letter", "option_text", "numeric", "math", "string", "yes_no", "judge")
MathState = Literal["equal", "different", "unparsed", "timeout", "error"]


@dataclass(frozen=True)
class Verdict:
    correct: bool
    method: str  # one of MATCH_METHODS, or no_answer / undecided / math_timeout / math_error
    pred: str | None
    decided: bool = True  # False: the rules could not say right or wrong (the judge may)
    detail: str = ""

    @property
    def state(self) -> str:
        return "correct" if self.correct else ("wrong" if self.decided else "undecided")


@dataclass(frozen=True)
class MathQuery:
    """A comparison only math-verify can make; run it in a worker and `resolve` the answer."""

    gold: str
    pred: str  # the expression sent to math-verify
    answer: str  # the extracted answer, reported as Verdict.pred
    on_equal: str = "math"


MathFn = Callable[[str, str], MathState]


def _undecided(pred: str | None, why: str) -> Verdict:
    return Verdict(False, "undecided", pred, decided=False, detail=why)


def _math_key(text: str) -> str:
    return re.sub(r"\s+|\\[,;!: ]|\\left|\\right", "", clean(text)).lower()


def _decide_value(p: str, gold: Gold, pred: str) -> Verdict | MathQuery:
    """Non-choice golds."""
    if gold.kind == "yes_no":
        yn = yes_no(p)
        if yn is None:
            # "There is a triangle in the drawing." may well mean yes: not for the rules to say.
            return _undecided(pred, "the gold is yes/no, the answer starts with neither")
        return Verdict(yn == gold.yes, "yes_no", pred)
    if gold.kind == "number":
        assert gold.quantity is not None
        q = parse_quantity(p)
        if q is not None:
            eq = quantities_equal(gold.quantity, q)
            if eq is None:
                return _undecided(pred, f"same value, different units {gold.quantity.unit!r} / {q.unit!r}")
            return Verdict(eq, "numeric", pred)
        if looks_like_math(p):
            return MathQuery(gold.text, p, pred)
        if (q := single_quantity_in_prose(p)) is not None:
            eq = quantities_equal(gold.quantity, q)
            if eq is not None:
                return Verdict(eq, "numeric", pred)
        return _undecided(pred, "the gold is a number, the answer is not")
    if gold.kind == "expression":
        if _math_key(p) == _math_key(gold.text):
            return Verdict(True, "string", pred)
        if parse_quantity(p) is not None or looks_like_math(p):
            return MathQuery(gold.text, p, pred)
        return _undecided(pred, "the gold is an expression, the answer is not")
    if norm_text(p) == norm_text(gold.text):
        return Verdict(True, "string", pred)
    return _undecided(pred, f"free-text gold ({gold.kind})")


def decide(pred: str | None, gold: Gold, options: list[Option], lenient: bool = False) -> Verdict | MathQuery:
    """The rule verdict for an extracted answer. `lenient`: an answer that names nothing comparable
    is undecided instead of wrong (for the consistency check, where the 'answer' is a phrase)."""
    if pred is None or not clean(pred):
        return Verdict(False, "no_answer", pred)
    p = clean(pred)
    if gold.kind in ("letter", "option_text"):
        if options:
            reading = read_option(p, options)
            if reading.letter is not None:
                return Verdict(reading.letter == gold.letter, reading.how, pred)
            if reading.how == "conflict":
                return Verdict(False, "letter", pred, detail="names more than one option")
        elif (lt := split_letter(p, None)) is not None:
            return Verdict(lt[0] == gold.letter, "letter", pred)
        if gold.option_text:
            # "0.5" or "\frac{1}{2}" for an option whose text is "0.5".
            sub = _decide_value(p, parse_gold(gold.option_text, []), pred)
            if isinstance(sub, MathQuery):
                return sub
            if sub.correct:
                return replace(sub, method="option_text" if sub.method != "math" else "math")
            if not options:
                return sub
        if options and not lenient:
            return Verdict(False, "letter", pred, detail="names no option")
        return _undecided(pred, "names no option")
    return _decide_value(p, gold, pred)


def resolve(query: MathQuery, state: MathState) -> Verdict:
    if state == "equal":
        return Verdict(True, query.on_equal, query.answer)
    if state == "different":
        return Verdict(False, "math", query.answer)
    if state == "timeout":
        return Verdict(False, "math_timeout", query.answer, decided=False, detail="math-verify timed out")
    if state == "unparsed":
        return _undecided(query.answer, "math-verify could not parse one side")
    return Verdict(False, "math_error", query.answer, decided=False, detail="the math worker failed")


def plan_check(final_text: str, reasoning: str | None, gold: str, options: list[Option]) -> Verdict | MathQuery:
    """Extraction + rules; a MathQuery when math-verify must decide."""
    found = extract(final_text, reasoning)
    return decide(found.text if found else None, parse_gold(gold, options), options)


def plan_agree(stated: str, pred: str, options: list[Option]) -> Verdict | MathQuery:
    """Does a conclusion stated in the reasoning agree with the output answer? (the output plays gold)"""
    return decide(stated, parse_gold(pred, options), options, lenient=True)


def _default_math(gold: str, pred: str) -> MathState:
    from .pool import default_pool

    return default_pool().math_sync(gold, pred)


def _finish(plan: Verdict | MathQuery, math: MathFn | None) -> Verdict:
    if isinstance(plan, Verdict):
        return plan
    return resolve(plan, (math or _default_math)(plan.gold, plan.pred))


def check_output(final_text: str, reasoning: str | None, gold: str, options: list[Option],
                 math: MathFn | None = None) -> Verdict:
    """Extract the answer (visible text first, then the end of the reasoning) and judge it.

    Blocking when math-verify is needed (a worker of the default pool): not for the event loop;
    async code uses VerifierPool.check.
    """
    return _finish(plan_check(final_text, reasoning, gold, options), math)


def judge(pred: str | None, gold: str, options: list[Option], math: MathFn | None = None) -> Verdict:
    """Judge an already extracted answer (blocking like check_output)."""
    return _finish(decide(pred, parse_gold(gold, options), options), math)


def agree(stated: str, pred: str, options: list[Option], math: MathFn | None = None) -> Verdict:
    return _finish(plan_agree(stated, pred, options), math)
