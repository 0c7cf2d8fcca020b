"""Answer leak: the description handed to the reasoner must not give the ground truth away.

The pseudo-CoT saw the answer, so the description written from it can announce it; the reasoner
would then copy instead of reason. Facts the question needs (e.g. "five circles") are not leaks;
announcing the answer or the correct option is.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..records import Option
from . import KEEP, Drop, FilterResult
from .text import latin1_lower


@lru_cache(maxsize=1024)  # a compile per row costs ~0.1 ms; re's own cache is shared and churned
def _announce(answer_pattern: str) -> re.Pattern[str]:
    return re.compile(
        r"(?:\b(?:correct|right|final|expected)\s+(?:answer|option|choice)\b[^.\n]{0,40}?" + answer_pattern
        + r"|\bthe\s+answer\s+(?:to\s+the\s+question\s+)?(?:is|would\s+be|should\s+be|must\s+be|:)\s*\**\(?" + answer_pattern
        + r"|\b(?:option|choice)\s*\(?" + answer_pattern + r"\)?\s+is\s+(?:correct|right|the\s+answer))",
        re.IGNORECASE,
    )


_GENERIC = re.compile(r"\b(?:the\s+(?:correct|final)\s+answer\s+is|the\s+answer\s+to\s+the\s+question\s+is)\b",
                      re.IGNORECASE)


# Every announcement (_announce, _GENERIC) holds one of these words.
_ANNOUNCE_WORDS = ("answer", "option", "choice")


def answer_leak(description: str, answer: str, options: list[Option]) -> FilterResult:
    low = latin1_lower(description)
    if low is not None and not any(w in low for w in _ANNOUNCE_WORDS):
        return KEEP  # most descriptions name none (the patterns below cost ~0.4 ms a description)
    answers = {answer.strip()}
    for o in options:
        if o.letter == answer.strip().upper() or o.text.strip().lower() == answer.strip().lower():
            answers |= {o.letter, o.text.strip()}
    for a in sorted(a for a in answers if a):
        pattern = r"(?<![\w])" + re.escape(a) + r"(?![\w])"
        m = _announce(pattern).search(description)
        if m:
            return Drop("answer_leak", f"the description announces the answer: {m.group(0)[:80]!r}")
    m = _GENERIC.search(description)
    if m:
        return Drop("answer_leak", f"the description announces an answer: {m.group(0)!r}")
    return KEEP
