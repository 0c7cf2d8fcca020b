"""Compare an extracted answer with the ground truth.

Order: multiple choice (letters, then option text) -> yes/no -> numbers with tolerance and units
stripped -> math-verify -> normalised strings. math-verify is CPU-heavy and uses signal.alarm, so
the runner calls `judge` in worker processes, never on the event loop.
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import dataclass

from ..records import Option

_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?$")
_NUM_WITH_UNIT = re.compile(
    r"^\s*\$?\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(%|[a-zA-Z°²³/\^\s\.\\{}]*)\s*$"
)
_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "n"}


@dataclass(frozen=True)
class Verdict:
    correct: bool
    method: str
    pred: str | None


def normalise(text: str) -> str:
    text = text.strip().lower()
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("$", "")
    text = text.translate(str.maketrans("", "", string.punctuation.replace("-", "").replace(".", "")))
    text = re.sub(r"\s+", " ", text).strip().rstrip(".")
    return text


def _letter_of(text: str, options: list[Option]) -> str | None:
    """VLMEvalKit's rule: accept only when exactly one option letter appears as a token."""
    letters = {o.letter for o in options}
    stripped = text.strip()
    m = re.match(r"^\(?([A-H])\)?(?:[\.\):：]|\s|$)", stripped)
    if m and m.group(1) in letters and (len(stripped) <= 3 or stripped[1:2] in ").:：" or stripped[2:3] in ").:："):
        return m.group(1)
    tokens = re.sub(r"[^\w\s]", " ", stripped).split()
    found = {t for t in tokens if len(t) == 1 and t in letters}
    if len(found) == 1:
        letter = found.pop()
        # A lone "A" in a long sentence is more likely the article than option A.
        if letter == "A" and len(tokens) > 3:
            return None
        return letter
    return None


def _option_by_text(text: str, options: list[Option]) -> str | None:
    norm = normalise(text)
    exact = [o.letter for o in options if normalise(o.text) == norm]
    if len(exact) == 1:
        return exact[0]
    contained = [o.letter for o in options if normalise(o.text) and normalise(o.text) in norm]
    return contained[0] if len(contained) == 1 else None


def _gold_letter(gold: str, options: list[Option]) -> str | None:
    g = gold.strip()
    m = re.match(r"^\(?([A-H])\)?[\.\):：]?(?:\s+.*)?$", g)
    if m and m.group(1) in {o.letter for o in options}:
        return m.group(1)
    return _option_by_text(g, options)


def _number(text: str) -> tuple[float, int] | None:
    m = _NUM_WITH_UNIT.match(text.replace("\\%", "%").replace("\\,", ""))
    if not m:
        return None
    raw = m.group(1).replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    decimals = len(raw.split(".")[1]) if "." in raw and "e" not in raw.lower() else 0
    return value, decimals


def _numbers_match(pred: str, gold: str) -> bool | None:
    g, p = _number(gold), _number(pred)
    if g is None or p is None:
        return None
    (gv, gd), (pv, _) = g, p
    if gd == 0 and float(gv).is_integer():
        return abs(pv - gv) < 1e-9  # integers compare as integers
    # Floats at the gold's stated precision, with a small relative slack for rounding.
    return round(pv, gd) == round(gv, gd) or abs(pv - gv) <= max(1e-9, 1e-6 * abs(gv))


def _math_verify(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    in_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if in_main else None  # signal.alarm only works in the main thread
    try:
        g = parse(f"${gold}$", parsing_timeout=timeout)
        p = parse(f"${pred}$", parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:
        return False


def judge(pred: str | None, gold: str, options: list[Option]) -> Verdict:
    if pred is None or not pred.strip():
        return Verdict(False, "no_answer", pred)
    if options:
        gold_letter = _gold_letter(gold, options)
        if gold_letter is not None:
            pred_letter = _letter_of(pred, options) or _option_by_text(pred, options)
            return Verdict(pred_letter == gold_letter, "choice", pred)
    g_norm, p_norm = normalise(gold), normalise(pred)
    if g_norm in _YES | _NO:
        first = p_norm.split(" ")[0] if p_norm else ""
        ok = (g_norm in _YES and first in _YES) or (g_norm in _NO and first in _NO)
        return Verdict(ok, "yes_no", pred)
    numeric = _numbers_match(pred, gold)
    if numeric is not None:
        return Verdict(numeric, "numeric", pred)
    if g_norm == p_norm:
        return Verdict(True, "string", pred)
    if _math_verify(pred, gold):
        return Verdict(True, "math", pred)
    return Verdict(False, "mismatch", pred)


def check_output(final_text: str, reasoning: str | None, gold: str, options: list[Option]) -> Verdict:
    """Extract from the visible answer, falling back to the end of the reasoning; then judge."""
    from .extract import extract_final_answer

    pred = extract_final_answer(final_text)
    if pred is None and reasoning:
        pred = extract_final_answer(reasoning[-2000:])
    return judge(pred, gold, options)
