"""Pull the final answer out of a reasoner's output, in the shapes R1 actually writes.

Priority (the first rule that finds something wins; rules 1-6 search the visible answer after
</think> first, then the last 2,000 characters of the reasoning):

1. ``<answer>...</answer>`` tags (the last pair); a leading "Final Answer:" and a \\boxed{} inside are unwrapped.
2. The last ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced: ``\\boxed{\\text{B}}``, ``\\boxed{B. 4}``,
   ``\\boxed{\\frac{3}{4}}``. This also covers "**Final Answer**" followed by a boxed on the next line.
3. "Final Answer: X", "**Final Answer:** X", "The final answer is X", and a line that says only
   "Final Answer" ("**Final Answer**", "### Final Answer") with X on the next line.
4. "The correct option is X", "The correct answer is X", "The answer is X", "**Answer:** X", "Answer: X"
   (the last one in the text; "X because ..." is cut at "because"/"since").
5. An option letter in parentheses at the very end: "... so it is (B)."
6. The last line when it is bold: "**B. 4**".
7. Last resort, after rules 1-6 found nothing in the visible answer nor in the reasoning: the visible
   answer itself when it is one short line ("B", "58°", "5 km", "The fruit is a banana.").

What was found is returned as written (cleaned of bold, $..$, \\text{}, a final period); deciding what
it means (letter, option text, number) is compare.py's job. math-verify's own LaTeX extraction runs in
the worker on expressions (pool.py), never here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .normalise import clean

REASONING_TAIL = 2000
SHORT_ANSWER_CHARS = 120

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_ANSWER = re.compile(
    r"final\s+answer(?:\s+is)?\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(?P<x>[^\n]+)"
    r"|final\s+answer\s+is\s+(?P<y>[^\n]+)"
    r"|^[ \t]*(?:\*\*|\#+)?[ \t]*final\s+answer[ \t]*[:：]?[ \t]*(?:\*\*)?[ \t]*\n+\s*(?P<z>[^\n]+)",
    re.IGNORECASE | re.MULTILINE,
)
_THE_ANSWER = re.compile(
    r"(?:the\s+(?:correct\s+|right\s+|best\s+)?(?:answer|option|choice)\s+(?:is|would\s+be|should\s+be|must\s+be)"
    r"|(?<![\w])answer\s*(?:\*\*)?\s*[:：](?:\s*\*\*)?)[ \t]*[:：]?[ \t]*(?P<x>[^\n]+)",
    re.IGNORECASE,
)
_PAREN_LETTER_END = re.compile(r"\(([A-Z])\)\s*\**[.!]?\s*\**\s*$")
_NEGATED = re.compile(r"\s*(?:not|n't|never|neither)\b", re.IGNORECASE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CUT = re.compile(r"\s+(?:because|since|as\s+(?:it|the|this)|which\s+(?:is|means))\b|[;,]\s+(?:so|since|because|not)\b",
                  re.IGNORECASE)


@dataclass(frozen=True)
class Extracted:
    text: str  # the answer as written, cleaned
    rule: str  # answer_tag | boxed | final_answer | the_answer_is | paren_letter | bold_line | short_answer
    where: str  # "answer" (visible text) or "reasoning"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced (math-verify does not pick the last for us)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1].strip()
    return None


def _tidy(answer: str) -> str:
    answer = answer.strip()
    if (inner := last_boxed(answer)) is not None:
        answer = inner
    answer = _CUT.split(answer, maxsplit=1)[0]
    return clean(answer.replace("**", ""))


def _find(text: str, allow_short: bool) -> tuple[str, str] | None:
    if not text or not text.strip():
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = re.sub(r"^\s*final\s+answer\s*[:：]\s*", "", tags[-1].strip(), flags=re.IGNORECASE)
        if (t := _tidy(inner)):
            return t, "answer_tag"
    boxed = last_boxed(text)
    if boxed is not None and (t := clean(boxed)):
        return t, "boxed"
    for rule, pattern in (("final_answer", _FINAL_ANSWER), ("the_answer_is", _THE_ANSWER)):
        for m in reversed(list(pattern.finditer(text))):
            found = next((g for g in m.groups() if g is not None), "")
            if _NEGATED.match(found):
                continue  # "the answer is not C" names what the answer is not
            if (t := _tidy(found)):
                return t, rule
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if m := _PAREN_LETTER_END.search(lines[-1]):
        return m.group(1), "paren_letter"
    bolds = _BOLD.findall(lines[-1])
    if bolds and (t := _tidy(bolds[-1])):
        return t, "bold_line"
    if allow_short and len(lines) == 1 and len(lines[0]) <= SHORT_ANSWER_CHARS and (t := _tidy(lines[0])):
        return t, "short_answer"
    return None


def extract(final_text: str, reasoning: str | None = None) -> Extracted | None:
    """The final answer by the priority above: visible answer first, then the end of the reasoning,
    then (last resort) a visible answer that is one short line."""
    if (hit := _find(final_text or "", allow_short=False)) is not None:
        return Extracted(hit[0], hit[1], "answer")
    if reasoning and (hit := _find(reasoning[-REASONING_TAIL:], allow_short=False)) is not None:
        return Extracted(hit[0], hit[1], "reasoning")
    if (hit := _find(final_text or "", allow_short=True)) is not None:
        return Extracted(hit[0], hit[1], "answer")
    return None


def extract_final_answer(text: str) -> str | None:
    """The answer text alone (kept for callers of the old API)."""
    hit = _find(text or "", allow_short=False)
    return hit[0] if hit else None
