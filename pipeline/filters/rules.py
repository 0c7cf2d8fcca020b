"""The rule filters: format, degenerate output, length, language, consistency, hint leak."""

from __future__ import annotations

import re
from collections import Counter

from typing import TYPE_CHECKING

from ..records import Option
from ..verify.compare import MathQuery, _default_math, plan_agree, resolve
from ..verify.extract import extract_final_answer
from . import KEEP, Drop, Filter, FilterResult, Trace
from .text import CaselessPattern, lower_words, within_latin1

if TYPE_CHECKING:
    from ..verify.pool import VerifierPool

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]{2,}")


class FormatFilter(Filter):
    """Exactly one well-formed reasoning block, and a final answer outside it."""

    name = "format"

    def filter(self, t: Trace) -> FilterResult:
        if not t.reasoning.strip():
            return Drop("bad_format", "no reasoning block")
        for tag in ("<think>", "</think>"):
            if tag in t.reasoning or tag in t.final_text:
                return Drop("bad_format", f"stray {tag} tag: more than one reasoning block or a broken one")
        if t.pred is None or not t.final_text.strip():
            return Drop("bad_format", "no final answer after the reasoning")
        return KEEP


class DegenerateFilter(Filter):
    """Near-empty reasoning, a line repeated over and over, or an n-gram loop."""

    name = "degenerate"

    def __init__(self, min_words: int = 20, max_line_repeats: int = 3, ngram: int = 8,
                 min_distinct_ngram_ratio: float = 0.6) -> None:
        super().__init__()
        self.min_words, self.max_line_repeats = min_words, max_line_repeats
        self.ngram, self.min_ratio = ngram, min_distinct_ngram_ratio

    def filter(self, t: Trace) -> FilterResult:
        words = lower_words(t.reasoning)
        if len(words) < self.min_words:
            return Drop("degenerate", f"near-empty reasoning: {len(words)} words < {self.min_words}")
        lines = Counter(l.strip() for l in t.reasoning.splitlines() if len(l.strip()) >= 20)
        if lines:
            line, n = lines.most_common(1)[0]
            if n > self.max_line_repeats:
                return Drop("degenerate", f"line repeated {n} times: {line[:80]!r}")
        total = len(words) - self.ngram + 1
        if total >= 4 * self.ngram:
            # Every run of `ngram` consecutive words (zip of shifted lists: no Python-level loop).
            ratio = len(set(zip(*(words[i:] for i in range(self.ngram))))) / total
            if ratio < self.min_ratio:
                return Drop("degenerate", f"{self.ngram}-gram loop: distinct ratio {ratio:.2f} < {self.min_ratio}")
        return KEEP


class LengthFilter(Filter):
    name = "length"

    def __init__(self, min_tokens: int = 0, max_tokens: int | None = None) -> None:
        super().__init__()
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def filter(self, t: Trace) -> FilterResult:
        if t.tokens < self.min_tokens:
            return Drop("too_short", f"{t.tokens} reasoning tokens < {self.min_tokens}")
        if self.max_tokens is not None and t.tokens > self.max_tokens:
            return Drop("too_long", f"{t.tokens} reasoning tokens > {self.max_tokens}")
        return KEEP


class LanguageFilter(Filter):
    """The reasoning stays in the configured language (R1 drifts into Chinese mid-trace)."""

    name = "language"

    def __init__(self, language: str = "en", min_cjk_ratio: float = 0.3) -> None:
        super().__init__()
        self.language, self.min_cjk_ratio = language, min_cjk_ratio

    def filter(self, t: Trace) -> FilterResult:
        if self.language == "en":
            if within_latin1(t.reasoning):
                return KEEP  # no CJK character in it (the scan below costs ~0.1 ms a trace)
            allowed = set(_CJK.findall(t.question + "\n" + t.description))  # quoted text from the image is fine
            foreign = [run for run in _CJK.findall(t.reasoning) if not any(run in a or a in run for a in allowed)]
            if foreign:
                return Drop("language_mix", f"CJK text in an English trace: {foreign[0][:20]!r} ({len(foreign)} runs)")
        elif self.language == "zh":
            letters = [c for c in t.reasoning if c.isalpha()]
            cjk = sum(1 for c in letters if "\u4e00" <= c <= "\u9fff")
            if letters and cjk / len(letters) < self.min_cjk_ratio:
                return Drop("language_mix", f"CJK share {cjk / len(letters):.2f} < {self.min_cjk_ratio}")
        return KEEP


# A conclusion the reasoning states; "not"/"cannot" forms are skipped ("the answer is not C, so it must be B").
# Written in lower case (a CaselessPattern: over lower-cased Latin-1 text ~2x faster).
_CONCLUDES = CaselessPattern(
    r"(?:the\s+(?:final\s+|correct\s+|right\s+)?(?:answer|option|choice)\s+(?:is|should\s+be|would\s+be|must\s+be)"
    r"|(?:so|thus|therefore|hence)?,?\s*(?:it|this)\s+(?:must|should|has\s+to)\s+be"
    r"|(?:so|thus|therefore|hence),?\s*(?:it's|it\s+is)"
    r"|i(?:\s+will|'ll)?\s+(?:choose|pick|go\s+with|select))"
    r"\s*[:：]?\s*(?P<neg>not\b|n't\b|never\b)?\s*(?:option\s+|choice\s+)?\**\(?(?P<x>[^\n]+?)(?=[.!?;,](?:\s|$)|\n|$)"
)


def conclusions(text: str) -> list[re.Match[str]]:
    """The stated conclusions (not negated) in `text`, in order; spans index `text` (the match
    may be over its lower-cased copy: take groups by span)."""
    return [m for m in _CONCLUDES.finditer(text) if m.start("neg") < 0]


_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
_ORDINAL = re.compile(r"\bthe\s+(first|second|third|fourth|fifth|sixth|seventh|eighth|last)\s+(?:option|choice)\b",
                      re.IGNORECASE)


def _ordinals_to_letters(text: str, letters: list[str]) -> str:
    """"the first option" -> "option A", "the last choice" -> the last letter (only with options)."""
    if not letters:
        return text

    def sub(m: re.Match) -> str:
        word = m.group(1).lower()
        i = len(letters) - 1 if word == "last" else _ORDINALS.index(word)
        return f"option {letters[i]}" if i < len(letters) else m.group(0)

    return _ORDINAL.sub(sub, text)


class ConsistencyFilter(Filter):
    """What the reasoning concludes at its end agrees with the answer it outputs.

    Uses the answer matcher (letters, option texts, numbers, units) with the output answer as the
    gold; a stated phrase that names nothing comparable is not held against the trace. A comparison
    that needs math-verify is never run here: `prepare` (async, before the chain runs) sends it to the
    VerifierPool; without a prepared result, `filter` asks the pool with a blocking call.
    """

    name = "consistency"

    def __init__(self, tail_chars: int = 1500, pool: "VerifierPool | None" = None) -> None:
        super().__init__()
        self.tail_chars = tail_chars
        self.pool = pool
        self.undecided = 0  # conclusions the matcher could not compare (kept)
        self._math: dict[tuple[str, str], str] = {}  # (gold, pred) -> math state, filled by prepare
        # id(trace) -> (trace, plan): `prepare` plans, `filter` takes it (the regexes over the
        # trace's tail cost ~0.4 ms; the trace is held so that its id cannot be reused meanwhile).
        self._planned: dict[int, tuple[Trace, object]] = {}

    def stated_conclusion(self, reasoning: str, options: list[Option] | None = None) -> str | None:
        tail = _ordinals_to_letters(reasoning[-self.tail_chars:], [o.letter for o in options or []])
        boxed_or_tagged = extract_final_answer(tail)
        matches = conclusions(tail)
        if matches:
            # Whichever comes last in the text is the conclusion the model settled on.
            last = matches[-1]
            phrase = re.split(r"\s+(?:because|since|as)\b", tail[last.start("x"):last.end("x")], maxsplit=1)[0]
            if boxed_or_tagged is not None and tail.rfind(boxed_or_tagged) > last.start():
                return boxed_or_tagged
            return phrase
        return boxed_or_tagged

    def _plan(self, t: Trace):
        held = self._planned.pop(id(t), None)
        if held is not None and held[0] is t:
            return held[1]
        if t.pred is None:
            return None
        stated = self.stated_conclusion(t.reasoning, t.options)
        if stated is None:
            return None
        stated = re.sub(r"[\)\*\.,;:]+$", "", stated.strip()).strip()
        return stated, plan_agree(stated, t.pred, t.options)

    async def prepare(self, t: Trace) -> None:
        """Resolve, in the worker pool, the math comparison `filter` will need (if any)."""
        planned = self._plan(t)
        if len(self._planned) > 10_000:  # plans of traces an earlier filter dropped
            self._planned.clear()
        self._planned[id(t)] = (t, planned)
        if planned is not None and isinstance(planned[1], MathQuery) and self.pool is not None:
            q = planned[1]
            if (q.gold, q.pred) not in self._math:
                if len(self._math) > 10_000:  # entries left by traces an earlier filter dropped
                    self._math.clear()
                self._math[(q.gold, q.pred)] = await self.pool.math(q.gold, q.pred)

    def filter(self, t: Trace) -> FilterResult:
        planned = self._plan(t)
        if planned is None:
            return KEEP  # nothing to compare; the format filter owns missing answers
        stated, plan = planned
        if isinstance(plan, MathQuery):
            state = self._math.pop((plan.gold, plan.pred), None)
            if state is None:
                state = (self.pool.math_sync if self.pool is not None else _default_math)(plan.gold, plan.pred)
            verdict = resolve(plan, state)  # type: ignore[arg-type]
        else:
            verdict = plan
        if verdict.correct:
            return KEEP
        if not verdict.decided:
            self.undecided += 1
            return KEEP
        return Drop("inconsistent", f"reasoning concludes {stated[:60]!r} but outputs {t.pred[:60]!r}")


# Written in lower case (a CaselessPattern: over lower-cased Latin-1 text ~3x faster, the engine
# skipping ahead to the letters an alternative starts with).
_HINT = CaselessPattern(
    r"\b(?:reference\s+answer|(?:given|provided|expected|supplied)\s+(?:correct\s+)?answer|"
    r"answer\s+(?:was|is)\s+(?:given|provided|supplied)|the\s+answer\s+provided|(?:the|a)\s+hint|i\s+was\s+told|"
    r"(?:we|i)\s+(?:are|am)\s+told\s+(?:that\s+)?the\s+answer|the\s+answer\s+key)\b"
)


def hint_mention(text: str) -> str | None:
    """The words by which `text` reveals it was handed the answer, as written, or None."""
    m = _HINT.search(text)
    return None if m is None else text[m.start():m.end()]


class HintLeakFilter(Filter):
    """Hinted mode: the reasoning must not reveal that it was handed the answer."""

    name = "hint_leak"

    def filter(self, t: Trace) -> FilterResult:
        said = hint_mention(t.reasoning) or hint_mention(t.final_text)
        if said:
            return Drop("hint_leak", f"mentions being given the answer: {said!r}")
        return KEEP
