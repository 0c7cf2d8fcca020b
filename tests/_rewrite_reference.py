"""The modality rewrite as it was before the line-at-a-time scanning (pipeline/rewrite.py at commit
3bedab8), kept unchanged to check the fast implementation against: tests/test_rewrite_equivalence.py
asserts that both give byte-identical `rewrite`, `residue_in` and `new_artifact` results. Not used
by the pipeline. Only the import of DEFAULT_PROMPT_DIR differs (absolute, as this is not in pipeline/).

Original module docstring:

Modality rewrite: phrase-level, grammar-aware replacement of references to a description or
caption, driven by a rules file in prompts/ (never word lists in code).

Protected spans are never rewritten and never count as residue:
- math: `$$...$$`, `\\(...\\)`, `\\[...\\]`, and `$...$` only when it looks like math (no space
  just inside either `$`, not a money amount such as `$12.50 and ... $`, no digit right after the
  closing `$`), so text between two dollar amounts stays prose;
- the rules file's `keep` patterns (a caption printed in the image, "the question describes");
- phrases taken from the question and the options: a question "Which best describes the mood?"
  or an option "a caption contest" makes the same words in the trace legitimate. Verb forms of
  "describe" are allowed anywhere when the question or an option uses one, and "caption" nouns
  when the question or an option is about a caption.

Rules never cross a line break. The result is checked: no residual reference may remain
outside protected spans and no artifact (doubled word, "the image in the image", a verb that no
longer agrees with its subject) may be introduced.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.prompts import DEFAULT_PROMPT_DIR

_DISPLAY_MATH = re.compile(r"\$\$.+?\$\$|\\\(.+?\\\)|\\\[.+?\\\]", re.DOTALL)
# Inline `$...$` candidates on one line; accepted only when _looks_like_math says so.
_INLINE = re.compile(r"(?<![\\$])\$(?=[^\s$])([^$\n]*?[^\s\\$])\$(?!\d)|(?<![\\$])\$([^\s$\\])\$(?!\d)")
_MONEY_START = re.compile(r"\d[\d,]*(?:\.\d+)?(?:\s|[,;:!?]|\.(?!\d))")
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
# Private-use characters stand in for protected spans while the rules run: they are not word
# characters, so no rule can match into or across a protected span.
_OPEN, _CLOSE, _BASE = "\ue000", "\ue001", 0xE100
_PLACEHOLDER = re.compile(f"{_OPEN}(.){_CLOSE}", re.DOTALL)


_MATH_SIGNS = re.compile(r"[\\^_=+{}<>]")


def _looks_like_math(body: str) -> bool:
    # "$5 and the description says the hat costs $" is two prices, not a formula; "$3 \times 4$" is math.
    return not _MONEY_START.match(body) or _MATH_SIGNS.search(body) is not None


def math_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every math span in the text, display and inline."""
    spans = [m.span() for m in _DISPLAY_MATH.finditer(text)]
    pos = 0
    while (m := _INLINE.search(text, pos)) is not None:
        inside = any(s <= m.start() < e for s, e in spans)
        body = m.group(1) if m.group(1) is not None else m.group(2)
        if not inside and _looks_like_math(body):
            spans.append(m.span())
            pos = m.end()
        else:
            pos = m.start() + 1  # the opening `$` was prose (a price): look for math after it
    return sorted(spans)


def _expand(raw: str, macros: dict[str, str]) -> str:
    for _ in range(8):  # macros may use other macros
        before = raw
        for name, value in macros.items():
            raw = raw.replace("{" + name + "}", value)
        if raw == before:
            break
    return raw


def _compile(raw: str, macros: dict[str, str], suffix: str = "") -> re.Pattern[str]:
    # A literal space matches spaces or tabs, never a newline, so line breaks are preserved;
    # " ?" and " *" make that whitespace optional.
    raw = re.sub(r" ([?*])?", lambda m: r"[ \t]*" if m.group(1) else r"[ \t]+", _expand(raw, macros))
    return re.compile(raw + suffix, re.IGNORECASE)


def _match_case(matched: str, replacement: str) -> str:
    if matched[:1].isupper() and replacement[:1].islower():
        return replacement[0].upper() + replacement[1:]
    return replacement


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    replace: str


@dataclass
class _Masked:
    text: str
    spans: list[str] = field(default_factory=list)

    def restore(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self.spans[ord(m.group(1)) - _BASE], text)


class ModalityRewriter:
    def __init__(self, name: str = "rewrite_rules.v2", directory: Path | None = None):
        path = Path(directory or DEFAULT_PROMPT_DIR) / f"{name}.yaml"
        text = path.read_text(encoding="utf-8")
        self.name = name
        self._pattern_cache: dict[tuple[str, tuple[str, ...]], tuple[list[re.Pattern[str]], bool]] = {}
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        data = yaml.safe_load(text)
        macros = dict(data.get("macros") or {})
        # A dropped sentence takes its trailing spaces with it, so no double space is left behind.
        self.drops = [_compile(p, macros, r"[ \t]*") for p in data.get("drop_sentences") or []]
        self.rules = [Rule(_compile(r["pattern"], macros), r["replace"]) for r in data["rules"]]
        for rule in self.rules:  # a broken rules file fails here, before the first request
            refs = [int(g) for g in re.findall(r"\\(\d)", rule.replace)]
            if refs and max(refs) > rule.pattern.groups:
                raise ValueError(f"{path}: rule {rule.pattern.pattern[:60]!r} refers to group {max(refs)}")
        self.keep = [_compile(p, macros) for p in data.get("keep") or []]
        self.residue = re.compile(data["residue"], re.IGNORECASE)
        words = data.get("question_words") or {}
        self.verb_words = re.compile(words["verbs"], re.IGNORECASE) if words.get("verbs") else None
        self.caption_words = re.compile(words["caption"], re.IGNORECASE) if words.get("caption") else None
        self.stopwords = {w.lower() for w in words.get("stopwords") or []}
        # v1 files hold one `artifact` pattern, v2 files a list of `artifacts`.
        raw_artifacts = data.get("artifacts") or [data["artifact"]]
        self.artifacts = [re.compile(p, re.IGNORECASE) for p in raw_artifacts]

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    # ---- protected spans ---------------------------------------------------------------------
    def _question_patterns(self, question: str, options: Sequence[str]) -> tuple[list[re.Pattern[str]], bool]:
        """Phrases of the question/options that hold a residue word, and whether describe-verbs are allowed.
        Cached per question: best-of-k traces and the residue check ask again for the same one."""
        key = (question or "", tuple(options))
        if (hit := self._pattern_cache.get(key)) is None:
            if len(self._pattern_cache) > 4096:
                self._pattern_cache.clear()
            hit = self._pattern_cache[key] = self._build_question_patterns(question, options)
        return hit

    def _build_question_patterns(self, question: str, options: Sequence[str]) -> tuple[list[re.Pattern[str]], bool]:
        patterns: list[re.Pattern[str]] = []
        verbs_ok = False
        sources = [question or "", *[o for o in options if o]]
        for n, src in enumerate(sources):
            if self.verb_words is not None and self.verb_words.search(src):
                verbs_ok = True
            if self.caption_words is not None and self.caption_words.search(src):
                patterns.append(re.compile(r"\b(?:(?:the|a|this|that) )?captions?\b", re.IGNORECASE))
            words = _WORD.findall(src)
            for i, w in enumerate(words):
                if not self.residue.fullmatch(w):
                    continue
                phrases = []
                for step in (-1, 1):  # to the nearest content word on each side, at most 3 words away
                    j = i + step
                    while 0 <= j < len(words) and abs(j - i) <= 3 and words[j].lower() in self.stopwords:
                        j += step
                    if 0 <= j < len(words) and abs(j - i) <= 3:
                        phrases.append(words[min(i, j):max(i, j) + 1])
                if n > 0 and len(words) <= 6:  # a short option is protected whole
                    phrases.append(words)
                for phrase in phrases:
                    patterns.append(re.compile(r"\b" + r"\W+".join(map(re.escape, phrase)) + r"\b", re.IGNORECASE))
        return patterns, verbs_ok

    def _mask(self, text: str, extra: Iterable[re.Pattern[str]] = ()) -> _Masked:
        # The placeholder characters are private-use code points no real text needs: a stray one
        # in model output must not be taken for a placeholder.
        text = text.replace(_OPEN, "").replace(_CLOSE, "")
        spans = math_spans(text)
        for pattern in [*self.keep, *extra]:
            spans += [m.span() for m in pattern.finditer(text) if m.end() > m.start()]
        merged: list[list[int]] = []
        for s, e in sorted(spans):
            if merged and s < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        masked = _Masked("")
        out, pos = [], 0
        for s, e in merged:
            out.append(text[pos:s])
            out.append(f"{_OPEN}{chr(_BASE + len(masked.spans))}{_CLOSE}")
            masked.spans.append(text[s:e])
            pos = e
        out.append(text[pos:])
        masked.text = "".join(out)
        return masked

    # ---- rewrite and checks ------------------------------------------------------------------
    def _rewrite_prose(self, text: str) -> str:
        for pattern in self.drops:
            text = pattern.sub("", text)
        for rule in self.rules:
            text = rule.pattern.sub(lambda m, r=rule: _match_case(m.group(0), m.expand(r.replace)), text)
        return text

    def rewrite(self, text: str, question: str = "", options: Sequence[str] = ()) -> str:
        """The trace as if its author saw the image; question/options words are left as they are."""
        extra, _ = self._question_patterns(question, options)
        masked = self._mask(text, extra)
        return masked.restore(self._rewrite_prose(masked.text)).strip()

    def residue_in(self, text: str, question: str = "", options: Sequence[str] = ()) -> str | None:
        """The first reference to the description left outside protected spans, or None."""
        extra, verbs_ok = self._question_patterns(question, options)
        prose = _PLACEHOLDER.sub(" ", self._mask(text, extra).text)
        for m in self.residue.finditer(prose):
            if verbs_ok and self.verb_words is not None and self.verb_words.fullmatch(m.group(0)):
                continue
            return m.group(0)
        return None

    def new_artifact(self, before: str, after: str) -> str | None:
        """An artifact in `after` that `before` did not already contain, or None."""
        for pattern in self.artifacts:
            seen = {m.group(0).lower() for m in pattern.finditer(before)}
            for m in pattern.finditer(after):
                if m.group(0).lower() not in seen:
                    return m.group(0)
        return None
