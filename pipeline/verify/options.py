"""Parse multiple-choice options embedded in a question ("A. cat", "(B) dog", "C: 3")."""

from __future__ import annotations

import re

from ..records import Option

_LINE = re.compile(r"^\s*\(?([A-H])\s*[\.\)\]:：]\s*(.+?)\s*$")
_INLINE = re.compile(r"\(([A-H])\)\s*")
# LLaVA-CoT's one-line lists after a marker: "Options: A: 15 MPa, B: 5 MPa, C: 20 MPa" / "Choices: A. 4, B. 8".
_MARKED_LIST = re.compile(r"(?:options|choices)\s*[:：]\s*(\S.*)$", re.IGNORECASE | re.MULTILINE)
_LIST_ITEM = re.compile(r"(?:^|[,;]\s*)\(?([A-H])\s*[\.\):：]\s*")


def _consecutive(letters: list[str]) -> bool:
    return len(letters) >= 2 and letters == [chr(ord("A") + i) for i in range(len(letters))]


def parse_options(question: str) -> list[Option]:
    # One option per line is the common layout (LLaVA-CoT, Mulberry, MathVista).
    found: list[Option] = []
    for line in question.splitlines():
        m = _LINE.match(line)
        if m:
            if found and m.group(1) != chr(ord(found[-1].letter) + 1):
                found = []  # a new list restarts (e.g. a numbered sub-list before the options)
            if not found and m.group(1) != "A":
                continue
            found.append(Option(letter=m.group(1), text=m.group(2)))
    if _consecutive([o.letter for o in found]):
        return found
    for m in _MARKED_LIST.finditer(question):
        items = list(_LIST_ITEM.finditer(m.group(1)))
        texts = [m.group(1)[a.end():b.start() if b else None].strip().rstrip(",;.") for a, b in
                 zip(items, items[1:] + [None])]
        if _consecutive([i.group(1) for i in items]) and all(texts):
            return [Option(letter=i.group(1), text=t) for i, t in zip(items, texts)]
    # Inline layout: "Options: (A) 3 (B) 4 (C) 5".
    parts = _INLINE.split(question)
    if len(parts) >= 5:
        pairs = [(parts[i], parts[i + 1].strip().rstrip(",;")) for i in range(1, len(parts) - 1, 2)]
        if _consecutive([p[0] for p in pairs]) and all(p[1] for p in pairs):
            return [Option(letter=l, text=t) for l, t in pairs]
    return []


def options_from_column(value: object) -> list[Option]:
    if isinstance(value, dict):
        return [Option(letter=str(k).strip().upper(), text=str(v)) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [Option(letter=chr(ord("A") + i), text=str(v)) for i, v in enumerate(value)]
    return []
