"""Pull the final answer out of a reasoner's output, in the shapes R1 actually writes."""

from __future__ import annotations

import re

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_FINAL_ANSWER = re.compile(r"final\s+answer\s*(?:is)?\s*\**\s*[:：]?\s*\**\s*(.+)", re.IGNORECASE)
_THE_ANSWER_IS = re.compile(r"the\s+(?:correct\s+|final\s+)?answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced (math-verify does not pick the last for us)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip()
    if (inner := last_boxed(answer)) is not None:
        answer = inner
    answer = answer.strip().strip("*").strip()
    answer = re.sub(r"^\$+|\$+$", "", answer).strip()
    answer = re.sub(r"^\\\(|\\\)$", "", answer).strip()
    return answer.rstrip(".。").strip()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def extract_final_answer(text: str) -> str | None:
    if not text or not text.strip():
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1].strip()
        m = _FINAL_ANSWER.search(inner)
        return _clean(m.group(1) if m else inner) or None
    boxed = last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    for pattern in (_FINAL_ANSWER, _THE_ANSWER_IS):
        matches = list(pattern.finditer(text))
        if matches:
            line = _first_line(matches[-1].group(1))
            # "The answer is B because ..." -> "B"; keep whole short answers intact.
            line = re.split(r"\s+(?:because|since|as)\b", line, maxsplit=1)[0]
            return _clean(line) or None
    lines = [l for l in text.strip().splitlines() if l.strip()]
    if lines:
        bolds = _BOLD.findall(lines[-1])
        if bolds:
            return _clean(bolds[-1]) or None
    return None
