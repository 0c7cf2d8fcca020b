"""Modality rewrite: phrase-level, grammar-aware replacement of references to a description or
caption, driven by a rules file in prompts/ (never word lists in code).

Math spans are left untouched; rules never cross a line break. The result is checked: no
residual reference may remain and no doubled word may be introduced.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .prompts import DEFAULT_PROMPT_DIR

_MATH = re.compile(r"(\$\$.*?\$\$|(?<!\\)\$[^$\n]*(?<!\\)\$|\\\(.*?\\\)|\\\[.*?\\\])", re.DOTALL)


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    replace: str


def _compile(raw: str, macros: dict[str, str], suffix: str = "") -> re.Pattern[str]:
    for name, value in macros.items():
        raw = raw.replace("{" + name + "}", value)
    # A literal space in a rule matches spaces or tabs, never a newline: line breaks are preserved.
    return re.compile(raw.replace(" ", r"[ \t]+") + suffix, re.IGNORECASE)


def _match_case(matched: str, replacement: str) -> str:
    if matched[:1].isupper() and replacement[:1].islower():
        return replacement[0].upper() + replacement[1:]
    return replacement


class ModalityRewriter:
    def __init__(self, name: str = "rewrite_rules.v1", directory: Path | None = None):
        path = Path(directory or DEFAULT_PROMPT_DIR) / f"{name}.yaml"
        text = path.read_text(encoding="utf-8")
        self.name = name
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        data = yaml.safe_load(text)
        macros = dict(data.get("macros") or {})
        # A dropped sentence takes its trailing spaces with it, so no double space is left behind.
        self.drops = [_compile(p, macros, r"[ \t]*") for p in data.get("drop_sentences") or []]
        self.rules = [Rule(_compile(r["pattern"], macros), r["replace"]) for r in data["rules"]]
        self.residue = re.compile(data["residue"], re.IGNORECASE)
        self.artifact = re.compile(data["artifact"], re.IGNORECASE)

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def _rewrite_prose(self, text: str) -> str:
        for pattern in self.drops:
            text = pattern.sub("", text)
        for rule in self.rules:
            text = rule.pattern.sub(lambda m, r=rule: _match_case(m.group(0), m.expand(r.replace)), text)
        return text

    def rewrite(self, text: str) -> str:
        parts = _MATH.split(text)
        # Odd indices are math spans (the split keeps the captured delimiters): left as they are.
        out = [p if i % 2 else self._rewrite_prose(p) for i, p in enumerate(parts)]
        return "".join(out).strip()

    def residue_in(self, text: str) -> str | None:
        prose = _MATH.sub(" ", text)
        m = self.residue.search(prose)
        return m.group(0) if m else None

    def new_artifact(self, before: str, after: str) -> str | None:
        seen = {m.group(0).lower() for m in self.artifact.finditer(before)}
        for m in self.artifact.finditer(after):
            if m.group(0).lower() not in seen:
                return m.group(0)
        return None
