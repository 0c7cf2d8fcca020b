"""Modality rewrite: phrase-level, grammar-aware replacement of references to a description or
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

Scanning: few sentences of a trace hold a word any pattern needs. With a `trigger` in the rules
file, only the pieces of a text holding a trigger match are scanned: sentences (cut at line breaks,
and at . ! ? ; where no pattern can hold one) for the keep patterns, the rules and the residue
pattern, lines for the drops, each pattern only where one of the trigger words its matches need is;
the artifact patterns only in the pieces of the rewritten text the source does not hold. The results
are those of whole-text scanning (pipeline/linescan.py tells why): the rules file is checked when
loaded (every match of a keep pattern, a drop, a rule or the residue pattern holds a trigger match
and stays within its piece, every trigger match holds a trigger word), and
tests/test_rewrite_equivalence.py compares with the whole-text implementation. Without a trigger
(v1 rules) every pattern scans the whole text.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import diskcache, linescan, yamlfile

from .linescan import (FOLDS_TO_ASCII, WATCH, Shape, breaks_pattern, check_trigger, pieces, shape, split,
                       template_literals, window_end)
from .prompts import DEFAULT_PROMPT_DIR

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
    # Display math starts with `$$`, `\\(` or `\\[`: a text with none of them holds none.
    spans = [m.span() for m in _DISPLAY_MATH.finditer(text)] if "$$" in text or "\\" in text else []
    pos = text.find("$")
    # Every inline match starts at a `$` (the lookbehind still sees the text before `pos`).
    while pos >= 0 and (m := _INLINE.search(text, pos)) is not None:
        inside = any(s <= m.start() < e for s, e in spans)
        body = m.group(1) if m.group(1) is not None else m.group(2)
        if not inside and _looks_like_math(body):
            spans.append(m.span())
            pos = text.find("$", m.end())
        else:
            pos = text.find("$", m.start() + 1)  # the opening `$` was prose (a price): look for math after it
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


_LONGER_LOWER = "\u0130"  # the one character whose lower case is two characters
# Where str.find on the lower-cased text could miss a trigger word: a tab or two spaces (a space in a
# word stands for a run of them), a character IGNORECASE takes for an ASCII letter.
_HIDING_ASCII = ("\t", "  ")
_HIDING = (*_HIDING_ASCII, *FOLDS_TO_ASCII)
_PLAIN_BREAKS = ".!?;"  # candidate sentence breaks, besides the line break


def _phrase(words: str) -> str:
    """A trigger word as a pattern: a space matches a run of spaces or tabs."""
    return r"[ \t]+".join(map(re.escape, words.split(" ")))


def _any_of(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(_phrase(w) for w in words), re.IGNORECASE)


def _windowed(pattern: re.Pattern[str], text: str, piece: tuple[int, int], end: int) -> Iterable[re.Match[str]]:
    """The matches a whole-text scan finds in one piece, for a pattern local to the pieces."""
    piece_end = piece[1]
    for m in pattern.finditer(text, piece[0], window_end(end, piece_end)):
        if m.start() > piece_end:
            return
        yield m


def _artifact_breaks(s: Shape) -> str | None:
    """The breaks to cut texts at for an artifact pattern: a piece of `after` equal to a piece of
    `before` holds only matches `before` has (None: scan the whole text)."""
    breaks = "".join(c for c in WATCH if s.context_free(c))
    return breaks or None


@dataclass(frozen=True)
class _Plan:
    """How a rules file's patterns are scanned piece by piece; see _plan()."""
    trigger: re.Pattern[str]
    words: tuple[str, ...]
    sure: frozenset[int]  # words that are a trigger match by themselves
    breaks: str  # where texts are cut for the keep patterns, the rules and the residue pattern
    keep: tuple[frozenset[int], ...]  # per keep pattern, the words one of which each of its matches holds
    drops: tuple[frozenset[int], ...]
    rules: frozenset[int]
    residue: frozenset[int]


_PLAN_CACHE = "rewrite-plans"


def _analysis_code() -> bytes:
    """What a plan depends on besides the rules file: the analysis (this module, linescan.py) and
    the re module's parser it reads (the Python version)."""
    return Path(__file__).read_bytes() + Path(linescan.__file__).read_bytes() + sys.version.encode()


def _plan_to_json(plan: _Plan) -> dict:
    return {"words": list(plan.words), "sure": sorted(plan.sure), "breaks": plan.breaks,
            "keep": [sorted(k) for k in plan.keep], "drops": [sorted(d) for d in plan.drops],
            "rules": sorted(plan.rules), "residue": sorted(plan.residue)}


def _plan_from_json(data: object, trigger: re.Pattern[str], words: tuple[str, ...]) -> _Plan | None:
    """The stored plan, or None when it is not one for these trigger words (or malformed)."""
    def ids(value: object) -> frozenset[int]:
        if not isinstance(value, list) or not all(type(i) is int and 0 <= i < len(words) for i in value):
            raise ValueError
        return frozenset(value)

    try:
        if not isinstance(data, dict) or tuple(data["words"]) != words or not isinstance(data["breaks"], str):
            return None
        return _Plan(trigger=trigger, words=words, sure=ids(data["sure"]), breaks=data["breaks"],
                     keep=tuple(ids(k) for k in data["keep"]), drops=tuple(ids(d) for d in data["drops"]),
                     rules=ids(data["rules"]), residue=ids(data["residue"]))
    except (KeyError, TypeError, ValueError):
        return None


def _words_for(patterns: Sequence[re.Pattern[str]], words: Sequence[str], sure: frozenset[int]) -> frozenset[int]:
    """Words one of which every match of each pattern holds. All of them do (every match holds a
    trigger match, which holds one); fewer are tried: those whose parts appear in the patterns, less
    those (not trigger matches by themselves) the patterns do without."""
    every = frozenset(range(len(words)))
    fewer: set[int] = set()
    for pattern in patterns:
        source = pattern.pattern.lower()
        fewer.update(k for k, w in enumerate(words) if all(part in source for part in w.split(" ")))

    def enough(ids: Iterable[int]) -> bool:
        ids = list(ids)
        return bool(ids) and all(shape(p, _any_of(words[k] for k in ids)).covered for p in patterns)

    if len(fewer) == len(words) or not enough(fewer):
        return every
    for k in sorted(fewer - sure):  # a word that is not a trigger match costs a second look at its piece
        if enough(fewer - {k}):
            fewer.discard(k)
    return frozenset(fewer)


_PLANS: dict[str, _Plan] = {}  # by rules file sha256
# Per question: the phrases of the question/options to keep, whether describe-verbs are allowed, and
# per phrase the trigger words one of which its matches hold (None: looked for in the whole text).
_QuestionPatterns = tuple[list[re.Pattern[str]], bool, list[frozenset[int] | None]]


class ModalityRewriter:
    def __init__(self, name: str = "rewrite_rules.v2", directory: Path | None = None):
        path = Path(directory or DEFAULT_PROMPT_DIR) / f"{name}.yaml"
        text = path.read_text(encoding="utf-8")
        self.name = name
        self._pattern_cache: dict[tuple[str, tuple[str, ...]], _QuestionPatterns] = {}
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        data = yamlfile.safe_load(text)
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
        self._artifact_breaks = [_artifact_breaks(shape(p)) for p in self.artifacts]
        # One cut for all of them where they allow it (the texts are cut once).
        common = "".join(c for c in WATCH if all(b is None or c in b for b in self._artifact_breaks))
        if common:
            self._artifact_breaks = [None if b is None else common for b in self._artifact_breaks]
        # Without a trigger (v1 files), every pattern scans the whole text.
        self.plan: _Plan | None = None
        if data.get("trigger"):
            if (plan := _PLANS.get(self.sha256)) is None:
                plan = _PLANS[self.sha256] = self._stored_plan(path, data["trigger"], macros)
            self.plan = plan

    def _stored_plan(self, path: Path, spec: dict, macros: dict[str, str]) -> _Plan:
        """_plan's result, from the disk cache when this rules file was analysed before by this code
        (the analysis costs ~0.1 s at every start; only a file that passed it is stored)."""
        trigger = _compile(spec["pattern"], macros)
        words = tuple(str(w).lower() for w in spec.get("words") or [])
        key = diskcache.key_of(self.sha256, _analysis_code())
        if (plan := _plan_from_json(diskcache.load(_PLAN_CACHE, key), trigger, words)) is not None:
            return plan
        plan = self._plan(path, trigger, words)
        diskcache.save(_PLAN_CACHE, key, _plan_to_json(plan))
        return plan

    def _plan(self, path: Path, trigger: re.Pattern[str], words: tuple[str, ...]) -> _Plan:
        """Only pieces of a text holding a trigger match are scanned: fail here if that could change a result."""
        problems = [f"trigger: {p}" for p in check_trigger(trigger)]
        if not words or any(not w.isascii() or w != " ".join(w.split()) or not w or set(w) & set(WATCH)
                            for w in words):
            problems.append("trigger words: one or more, each ASCII words with single spaces and no . ! ? ;")
        elif not shape(trigger, _any_of(words)).covered:
            problems.append("trigger: a match need not hold one of the trigger words")
        pieced = [("keep", p) for p in self.keep] + [("residue", self.residue), ("trigger", trigger)]
        pieced += [("rule", r.pattern) for r in self.rules]
        shapes = [(kind, p, shape(p, trigger)) for kind, p in pieced + [("drop", p) for p in self.drops]]
        for kind, pattern, s in shapes:
            why = list(s.problems) + (["a match can hold a line break"] if "\n" in s.takes else [])
            why += ["a lookaround can look past a line break"] if "\n" in s.looks_past else []
            why += ["a match need not hold a trigger match"] if not s.covered and kind != "trigger" else []
            # The rules run over the pieces holding a trigger match only: `$` and `\Z` would see the end sooner.
            if kind in ("drop", "rule"):
                why += [f"uses {a}" for a in sorted(s.anchors & {"AT_END", "AT_END_STRING"})]
            if why:
                problems.append(f"{kind} {pattern.pattern[:60]!r}: " + "; ".join(why))
        for rule in self.rules:  # a replacement must keep the breaks where they are
            if any(set(lit) & set(WATCH) for lit in template_literals(rule.replace, rule.pattern)):
                problems.append(f"rule {rule.pattern.pattern[:60]!r}: the replacement adds a break (. ! ? ; \\n)")
        if problems:
            raise ValueError(f"{path}: the trigger cannot be used: " + " | ".join(problems))
        sure = frozenset(k for k, w in enumerate(words) if trigger.fullmatch(w))
        return _Plan(
            trigger=trigger, words=words, sure=sure,
            # Sentence breaks too where no keep pattern, rule, residue or trigger match holds one or looks past it.
            breaks="\n" + "".join(c for c in _PLAIN_BREAKS if all(s.local(c) for k, _, s in shapes if k != "drop")),
            keep=tuple(_words_for([p], words, sure) for p in self.keep),
            drops=tuple(_words_for([p], words, sure) for p in self.drops),
            rules=_words_for([r.pattern for r in self.rules], words, sure),
            residue=_words_for([self.residue], words, sure))

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    # ---- protected spans ---------------------------------------------------------------------
    def _question_patterns(self, question: str, options: Sequence[str]) -> _QuestionPatterns:
        """Phrases of the question/options that hold a residue word, whether describe-verbs are allowed,
        and per phrase the trigger words one of which its matches hold (None: look in the whole text).
        Cached per question: best-of-k traces and the residue check ask again for the same one."""
        key = (question or "", tuple(options))
        if (hit := self._pattern_cache.get(key)) is None:
            if len(self._pattern_cache) > 4096:
                self._pattern_cache.clear()
            patterns, verbs_ok = self._build_question_patterns(question, options)
            hit = self._pattern_cache[key] = (patterns, verbs_ok, [self._piece_words(p) for p in patterns])
        return hit

    def _piece_words(self, pattern: re.Pattern[str]) -> frozenset[int] | None:
        if self.plan is None:
            return None
        key = (pattern.pattern, pattern.flags, self.sha256)
        if key not in _PIECE_WORDS:
            if len(_PIECE_WORDS) > 4096:
                _PIECE_WORDS.clear()
            s = shape(pattern, self.plan.trigger)
            fits = s.covered and s.local(self.plan.breaks)  # the phrases with \W+ can hold a line break
            _PIECE_WORDS[key] = _words_for([pattern], self.plan.words, self.plan.sure) if fits else None
        return _PIECE_WORDS[key]

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

    # ---- pieces holding a trigger match --------------------------------------------------------
    def _find(self, text: str, ids: Iterable[int]) -> list[tuple[int, int]]:
        """Where the words `ids` are, and where a word could hide (_HIDING), in order: (position, word id,
        -1 where a word could hide). The words are looked for in the lower-cased text (str.find)."""
        assert self.plan is not None
        if _LONGER_LOWER in text:  # lower-casing would not line up with the text: the trigger itself
            return [(m.start(), -1) for m in self.plan.trigger.finditer(text)]
        found: list[tuple[int, int]] = []
        low = text.lower()
        needles = [(low, self.plan.words[k], k) for k in ids]
        needles += [(text, h, -1) for h in (_HIDING_ASCII if text.isascii() else _HIDING)]
        for source, needle, k in needles:
            i = source.find(needle)
            while i >= 0:
                found.append((i, k))
                i = source.find(needle, i + 1)
        found.sort()
        return found

    def _scan(self, text: str, breaks: str, ids: Iterable[int],
              found: list[tuple[int, int]] | None = None) -> list[list]:
        """The pieces of a text (cut at `breaks`) where one of the words `ids` is, or a word could hide,
        in order: [start, end, ids found, could hide, holds a trigger match (None: not looked)]."""
        if found is None:
            found = self._find(text, ids)
        after = breaks_pattern(breaks)
        out: list[list] = []
        for i, k in found:
            if not out or i >= out[-1][1]:  # a new piece (no word holds a break)
                lo = out[-1][1] if out else 0  # the last piece's break, or the start
                start = max(text.rfind(c, lo, i) for c in breaks) + 1
                m = after.search(text, i)
                out.append([start, m.start() if m else len(text), set(), False, None])
            if k < 0:
                out[-1][3] = True
            else:
                out[-1][2].add(k)
        return out

    def _select(self, text: str, scanned: list[list], ids: frozenset[int], join: bool = False) -> list[tuple[int, int]]:
        """The scanned pieces where a pattern whose matches hold one of the words `ids` can match; with
        `join`, pieces next to each other (only their break between them) as one (fewer scans)."""
        assert self.plan is not None
        out: list[tuple[int, int]] = []
        for piece in scanned:
            start, end, found, hidden, has_trigger = piece
            hit = found & ids
            if not (hit & self.plan.sure):
                if not (hit or hidden):
                    continue
                if has_trigger is None:  # the words found are not trigger matches by themselves: look
                    look = _windowed(self.plan.trigger, text, (start, end), len(text))
                    has_trigger = piece[4] = next(iter(look), None) is not None
                if not has_trigger:
                    continue
            if join and out and out[-1][1] + 1 == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out

    def _mask(self, text: str, extra: Iterable[re.Pattern[str]] = (),
              extra_words: Sequence[frozenset[int] | None] = ()) -> _Masked:
        # The placeholder characters are private-use code points no real text needs: a stray one
        # in model output must not be taken for a placeholder.
        text = text.replace(_OPEN, "").replace(_CLOSE, "")
        spans = math_spans(text)
        extra = list(extra)
        plan = self.plan
        words: list[frozenset[int] | None] = [*(plan.keep if plan else [None] * len(self.keep)),
                                              *(list(extra_words) or [None] * len(extra))]
        scanned: list[list] | None = None
        end = len(text)
        for pattern, ids in zip([*self.keep, *extra], words):
            if ids is None:
                spans += [m.span() for m in pattern.finditer(text) if m.end() > m.start()]
                continue
            if scanned is None:
                assert plan is not None
                scanned = self._scan(text, plan.breaks, frozenset().union(*(w for w in words if w is not None)))
            for start, stop in self._select(text, scanned, ids, join=True):
                for m in pattern.finditer(text, start, window_end(end, stop)):  # as _windowed does
                    if m.start() > stop:
                        break
                    if m.end() > m.start():
                        spans.append(m.span())
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
    def _apply_rules(self, text: str) -> str:
        for rule in self.rules:
            text = rule.pattern.sub(lambda m, r=rule: _match_case(m.group(0), m.expand(r.replace)), text)
        return text

    def _rewrite_prose(self, text: str) -> str:
        for pattern in self.drops:
            text = pattern.sub("", text)
        return self._apply_rules(text)

    def _by_pieces(self, text: str, breaks: str, ids: frozenset[int], step: Callable[[str], str],
                   found: list[tuple[int, int]] | None = None) -> str:
        """`step` over the pieces (cut at `breaks`) where its patterns, whose matches hold one of the
        words `ids`, can match (`found`: _find's result for the text, for `ids` or more). The pieces run
        each between the breaks around it (all its patterns can look at), then they are put back: no
        pattern of `step` holds a break or looks past one, and no replacement adds one."""
        hits = self._select(text, self._scan(text, breaks, ids, found), ids)
        if not hits:
            return text
        end = len(text)
        parts: list[str] = []
        slots: list[int] = []  # where each piece's text is among the result's pieces
        count = 0
        for s, e in hits:
            if s > 0:
                parts.append(text[s - 1])
                count += 1
            slots.append(count)
            parts.append(text[s:e])
            if e < end:
                parts.append(text[e])
                count += 1
        done = split(step("".join(parts)), breaks)
        if len(done) != count + 1:  # cannot happen with a rules file that loaded; never guess
            return step(text)
        out, pos = [], 0
        for (s, e), slot in zip(hits, slots):
            out += (text[pos:s], done[slot])
            pos = e
        out.append(text[pos:])
        return "".join(out)

    def rewrite(self, text: str, question: str = "", options: Sequence[str] = ()) -> str:
        """The trace as if its author saw the image; question/options words are left as they are."""
        extra, _, extra_words = self._question_patterns(question, options)
        masked = self._mask(text, extra, extra_words)
        if (plan := self.plan) is None:
            prose = self._rewrite_prose(masked.text)
        else:  # a dropped sentence ends at its period: the drops go by line, the rules by sentence
            prose = masked.text
            found = self._find(prose, plan.rules.union(*plan.drops))  # once, unless something is dropped
            for pattern, ids in zip(self.drops, plan.drops):
                dropped = self._by_pieces(prose, "\n", ids, partial(pattern.sub, ""), found)
                if dropped != prose:
                    prose, found = dropped, self._find(dropped, plan.rules.union(*plan.drops))
            prose = self._by_pieces(prose, plan.breaks, plan.rules, self._apply_rules, found)
        return masked.restore(prose).strip()

    def residue_in(self, text: str, question: str = "", options: Sequence[str] = ()) -> str | None:
        """The first reference to the description left outside protected spans, or None."""
        extra, verbs_ok, extra_words = self._question_patterns(question, options)
        prose = _PLACEHOLDER.sub(" ", self._mask(text, extra, extra_words).text)
        if (plan := self.plan) is not None:
            where = self._select(prose, self._scan(prose, plan.breaks, plan.residue), plan.residue, join=True)
            found: Iterable[re.Match[str]] = (m for piece in where
                                              for m in _windowed(self.residue, prose, piece, len(prose)))
        else:
            found = self.residue.finditer(prose)
        for m in found:
            if verbs_ok and self.verb_words is not None and self.verb_words.fullmatch(m.group(0)):
                continue
            return m.group(0)
        return None

    def new_artifact(self, before: str, after: str) -> str | None:
        """An artifact in `after` that `before` did not already contain, or None."""
        changed: dict[str, list[tuple[int, int]]] = {}
        for pattern, breaks in zip(self.artifacts, self._artifact_breaks):
            if breaks is not None:  # the pieces the rewrite left as they were hold only matches `before` has
                if breaks not in changed:
                    old = set(split(before, breaks))
                    changed[breaks] = [(s, e) for s, e in pieces(after, breaks) if after[s:e] not in old]
                found: Iterable[re.Match[str]] = (m for s, e in changed[breaks] for m in pattern.finditer(after, s, e))
            else:
                found = pattern.finditer(after)
            seen: set[str] | None = None
            for m in found:
                if seen is None:
                    seen = {x.group(0).lower() for x in pattern.finditer(before)}
                if m.group(0).lower() not in seen:
                    return m.group(0)
        return None


_PIECE_WORDS: dict[tuple[str, int, str], frozenset[int] | None] = {}
