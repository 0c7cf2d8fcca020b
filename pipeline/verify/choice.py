"""Which option a predicted answer names: by letter or by the option's text (VLMEvalKit-like rules).

Order: (1) the answer is a letter form ("B", "(B)", "B. 4", "B: 4", "Option B", "\\text{B}"); its text part,
if any, must not be another option's text; (2) the answer is exactly one option's text ("4", "58°",
"a banana"); (3) exactly one option letter stands as a token in a short answer ("Option C is correct"),
where "A" (and "I") count only in a letter context: "(A)", "A." / "A)" / "A:", after "option"/"choice",
or as the last word, so the article in "A cat is on the mat" is never option A; (4) exactly one option's
text occurs as whole words in a short answer. Two different letters from these rules: no reading.
Rules (3) and (4) do not guess from a phrase with a negation ("not B", "rather than a pear").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..records import Option
from .gold import option_by_text, split_letter
from .normalise import clean, norm_text

MAX_TOKEN_WORDS = 8  # rule (3) only on short answers: a long sentence names points and articles
MAX_CONTAIN_WORDS = 12
_NEGATION = re.compile(r"\b(?:not|isn't|aren't|never|neither|nor|no longer|rather than|instead of|except)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Reading:
    letter: str | None
    how: Literal["letter", "option_text", "none", "conflict"]


def _context_letters(text: str, letters: set[str]) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(r"(?<![A-Za-z0-9\\])([A-Z])(?![A-Za-z0-9])", text):
        letter = m.group(1)
        if letter not in letters:
            continue
        if letter in ("A", "I"):
            before, after = text[:m.start()], text[m.end():]
            in_context = (re.search(r"(?:option|choice|answer|is)\s*[:：]?\s*\(?$", before, re.IGNORECASE)
                          or (before.endswith("(") and after.startswith(")"))
                          or re.match(r"\s*[.:)：](?:\s|$)", after) or not after.strip(" .*)"))
            if not in_context:
                continue
        found.add(letter)
    return found


def _contained(text: str, options: list[Option]) -> set[str]:
    norm = " " + norm_text(text) + " "
    hits = set()
    for o in options:
        ot = norm_text(o.text)
        if ot and re.search(r"(?<![\w.])" + re.escape(ot) + r"(?![\w]|\.\d)", norm):
            hits.add(o.letter)
    # An option whose text contains another's ("red" in "dark red") is the longer one.
    if len(hits) > 1:
        texts = {l: norm_text(next(o.text for o in options if o.letter == l)) for l in hits}
        hits = {l for l in hits if not any(l != k and texts[l] in texts[k] for k in hits)}
    return hits


def read_option(pred: str, options: list[Option]) -> Reading:
    letters = {o.letter for o in options}
    c = clean(pred)
    if (lt := split_letter(c, letters)) is not None:
        letter, rest = lt
        if rest:
            other = option_by_text(rest, options)
            if other is not None and other.letter != letter:
                return Reading(None, "conflict")  # "B. 5" where B is "4" and C is "5"
        return Reading(letter, "letter")
    if (opt := option_by_text(c, options)) is not None:
        return Reading(opt.letter, "option_text")
    words = c.split()
    if _NEGATION.search(c):
        return Reading(None, "none")  # "not B", "it is not a banana; it is a pear": no guess from tokens
    by_letter = _context_letters(c, letters) if len(words) <= MAX_TOKEN_WORDS else set()
    by_text = _contained(c, options) if len(words) <= MAX_CONTAIN_WORDS else set()
    if len(by_letter) > 1 or len(by_text) > 1:
        return Reading(None, "conflict")
    if by_letter and by_text and by_letter != by_text:
        return Reading(None, "conflict")
    if by_letter:
        return Reading(next(iter(by_letter)), "letter")
    if by_text:
        return Reading(next(iter(by_text)), "option_text")
    return Reading(None, "none")
