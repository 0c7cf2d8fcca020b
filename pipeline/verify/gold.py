"""The ground truth read into a typed form, from the shapes real datasets use.

Kinds, tried in this order:
- ``letter``: "C", "(C)", "**B**" (LLaVA-CoT), "B: 45" (Mulberry), "B: 5 MPa" (LLaVA-CoT), "B. 4".
  With options the letter must be one of them; the option's text is kept for matching a prediction
  that gives the text instead of the letter.
- ``option_text``: the text of exactly one option, e.g. Mulberry's "58°." for option "58°".
- ``yes_no``: yes / no / true / false.
- ``number``: a value with an optional unit: "21", "5 MPa", "76%", "$12.50", "58°".
- ``expression``: LaTeX or symbolic math: "\\frac{3}{4}", "2\\sqrt{3}", "x^2+1", "(1, 2)".
- ``sentence``: five words or more ("The enrollment rate ... was approximately 76%."): the rules cannot
  decide these; only an exact normalised match, else the answer judge, else "undecided".
- ``text``: a short free-text answer ("Paris", "red umbrella"): equal after normalising, else undecided.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..records import Option
from .normalise import Quantity, clean, is_yes_no_gold, looks_like_math, norm_text, parse_quantity, quantities_equal

GoldKind = Literal["letter", "option_text", "yes_no", "number", "expression", "sentence", "text"]

_PREFIX = re.compile(r"^(?:final\s+answer|the\s+(?:correct\s+)?answer\s+is|answer)\s*[:：]?\s*", re.IGNORECASE)
_LETTER = re.compile(r"^(?:option\s+|choice\s+)?\(?([A-Z])\)?(?:\s*[.:：)]\s*(.*))?$", re.DOTALL | re.IGNORECASE)
NO_OPTION_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Gold:
    kind: GoldKind
    raw: str
    text: str  # cleaned
    letter: str | None = None  # letter and option_text kinds
    option_text: str | None = None  # that option's text, where known
    quantity: Quantity | None = None  # number kind (and an option text that is a number)
    yes: bool | None = None  # yes_no kind

    @property
    def decidable(self) -> bool:
        return self.kind not in ("sentence", "text")


def split_letter(text: str, letters: set[str] | None) -> tuple[str, str] | None:
    """("B", "45") for "B: 45" / "(B) 45" / "B. 45"; ("B", "") for "B", "(B)", "**B**". Letters must be
    capitals (a lone lowercase "a" is an article) and, with options, one of them."""
    c = _PREFIX.sub("", clean(text))
    m = _LETTER.match(c)
    if not m or not m.group(1).isupper():
        return None
    letter, rest = m.group(1), (m.group(2) or "").strip()
    allowed = letters if letters else set(NO_OPTION_LETTERS)
    if letter not in allowed:
        return None
    if m.group(2) is None and len(c) > 3 and not c.lower().startswith(("option", "choice")):
        return None
    return letter, clean(rest)


def option_by_text(text: str, options: list[Option]) -> Option | None:
    """The one option whose text equals `text` (normalised, or the same quantity), else None."""
    norm = norm_text(text)
    if not norm:
        return None
    exact = [o for o in options if norm_text(o.text) == norm]
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None
    q = parse_quantity(text)
    if q is not None:
        same = [o for o in options if (oq := parse_quantity(o.text)) is not None and quantities_equal(oq, q) is True]
        if len(same) == 1:
            return same[0]
    return None


# A row's gold is read for the answer check, the consistency check and the kept record (~80 us each).
_PARSED: dict[tuple[str, tuple[tuple[str, str], ...]], Gold] = {}


def parse_gold(gold: str, options: list[Option]) -> Gold:
    key = (gold, tuple((o.letter, o.text) for o in options))
    if (hit := _PARSED.get(key)) is None:
        if len(_PARSED) > 8192:
            _PARSED.clear()
        hit = _PARSED[key] = _parse_gold(gold, options)
    return hit


def _parse_gold(gold: str, options: list[Option]) -> Gold:
    text = clean(gold)
    letters = {o.letter for o in options}
    if (lt := split_letter(text, letters)) is not None:
        letter, rest = lt
        known = next((o.text for o in options if o.letter == letter), None)
        return Gold("letter", gold, text, letter=letter, option_text=known if known is not None else (rest or None),
                    quantity=parse_quantity(known if known is not None else rest) if (known or rest) else None)
    if options and (opt := option_by_text(text, options)) is not None:
        return Gold("option_text", gold, text, letter=opt.letter, option_text=opt.text, quantity=parse_quantity(opt.text))
    if is_yes_no_gold(text):
        return Gold("yes_no", gold, text, yes=norm_text(text) in ("yes", "true", "correct", "right"))
    if (q := parse_quantity(text)) is not None:
        return Gold("number", gold, text, quantity=q)
    if looks_like_math(text):
        return Gold("expression", gold, text)
    if len(norm_text(text).split()) >= 5:
        return Gold("sentence", gold, text)
    return Gold("text", gold, text)


def final_answer(gold: str, options: list[Option]) -> str:
    """The answer the kept trace ends with (`<answer> Final Answer:X </answer>`): the option letter for a
    multiple-choice question (whatever form the dataset wrote: "**B**", "B: 45", "58°."), else the gold
    without its dress (bold, quotes, a final period)."""
    g = parse_gold(gold, options)
    if options and g.letter is not None:
        return g.letter
    return g.text or gold.strip()
