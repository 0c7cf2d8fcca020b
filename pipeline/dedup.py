"""Exact/near-duplicate removal and benchmark decontamination, before any model is paid.

Duplicates: the same image content (file hash) with the same normalised question is processed
once; later rows are rejected as `duplicate`.

Decontamination (`dedup.benchmark_questions`): a training row is rejected as `contaminated`
when it reproduces a benchmark item. A short generic question ("What is the value of x?") is
asked about thousands of different images, so its text alone proves nothing: the image must be
the same too. The rule, with W the training question's words and B a benchmark question's
words (lower-cased, punctuation removed) and L the longest run of consecutive words they share:

- text alone suffices when the overlap is specific: L >= `dedup.min_specific_words` (default
  12), or W has at least that many words and at least `dedup.threshold` (default 0.5) of W's
  `dedup.ngram`-word n-grams (default 8) occur in B (a long question lightly edited);
- a shorter overlap counts only with the same image: some image of the row has the content hash
  (SHA-256 of the file bytes) of the benchmark item's image, and L >= min(ngram, |W|, |B|),
  i.e. they share an n-gram, or the shorter question lies whole inside the other;
- otherwise the row is kept, whatever the question text.

Benchmark files: `.txt` (one question per line, no image: only specific overlaps can match),
`.jsonl` or `.json` (an array) of objects with `question` and optionally `image` (a path or a
list, relative to the benchmark file's folder) and/or `image_sha256` (a hex digest or a list).
A benchmark image that cannot be read fails the run at start, before any sample is sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

from .images import ImageError, ImageRoots, image_file_sha256

_PUNCT = re.compile(r"[^\w\s]")


def normalise_question(q: str) -> str:
    return " ".join(_PUNCT.sub(" ", q.lower()).split())


def file_hashes(roots: ImageRoots | Path, raws: list[str], max_file_bytes: int = 50 * 1024 * 1024) -> list[str] | None:
    """Content hashes of a row's images, through the image stage's own resolver and limits;
    None when a path is bad (the image stage then rejects the row with its reason)."""
    out = []
    for raw in raws:
        try:
            out.append(image_file_sha256(roots, raw, max_file_bytes))
        except ImageError:
            return None
    return out


class Deduplicator:
    def __init__(self) -> None:
        # Every row's key is kept for the whole run: as a 128-bit int (44 bytes; the hex string was
        # 113), the index grows ~150 bytes a row with its id instead of ~220 (100K rows: ~15 MB).
        self._seen: dict[int, str] = {}

    @staticmethod
    def key(image_hashes: list[str], question: str) -> int:
        digest = hashlib.sha256(json.dumps([sorted(image_hashes), normalise_question(question)]).encode()).digest()
        return int.from_bytes(digest[:16], "big")  # 128 bits: no accidental collision at any dataset size

    def check(self, sample_id: str, image_hashes: list[str], question: str) -> str | None:
        """Returns the id of the earlier row this one duplicates, or None (and remembers it)."""
        key = self.key(image_hashes, question)
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = sample_id
        return first


@dataclass(frozen=True)
class BenchmarkEntry:
    question: str
    image_sha256: tuple[str, ...] = ()
    where: str = ""  # "file:line", for the reject's detail


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _entry(row: object, where: str, base: Path) -> BenchmarkEntry:
    if not isinstance(row, dict):
        return BenchmarkEntry(str(row), where=where)
    if not str(row.get("question") or "").strip():
        raise ValueError(f"{where}: a benchmark entry needs a non-empty \"question\"")
    hashes = [h.lower() for h in _as_list(row.get("image_sha256"))]
    if any(not re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes):
        raise ValueError(f"{where}: image_sha256 must be a 64-character hex SHA-256")
    for raw in _as_list(row.get("image")):
        path = Path(raw) if Path(raw).is_absolute() else base / raw
        try:
            hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError as exc:
            raise ValueError(f"{where}: benchmark image {raw!r} cannot be read ({exc.strerror or exc})") from None
    return BenchmarkEntry(str(row["question"]), tuple(dict.fromkeys(hashes)), where)


def load_benchmark(path: Path) -> list[BenchmarkEntry]:
    """Benchmark questions with their image hashes; see the module docstring for the formats."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    base = path.parent
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
                out.append(_entry(row, f"{path.name}:{n}", base))
        return out
    if path.suffix == ".json":
        return [_entry(r, f"{path.name}[{i}]", base) for i, r in enumerate(json.loads(text))]
    return [BenchmarkEntry(l.strip(), where=f"{path.name}:{n}") for n, l in enumerate(text.splitlines(), 1) if l.strip()]


class Decontaminator:
    """Rejects training rows that reproduce a benchmark item; the rule is in the module docstring."""

    def __init__(self, entries: Sequence[BenchmarkEntry | str], n: int = 8, threshold: float = 0.5,
                 min_specific_words: int = 12):
        self.n, self.threshold, self.min_specific = n, threshold, min_specific_words
        self.entries = [e if isinstance(e, BenchmarkEntry) else BenchmarkEntry(e) for e in entries]
        self._words = [normalise_question(e.question).split() for e in self.entries]
        # A specific overlap (>= min_specific words, or >= threshold of the n-grams) always shares
        # a g-gram, so the text index needs only g-grams.
        self.g = max(1, min(n, min_specific_words))
        self._grams: dict[tuple[str, ...], list[int]] = {}
        self._by_image: dict[str, list[int]] = {}
        for i, (entry, words) in enumerate(zip(self.entries, self._words)):
            for gram in set(self._ngrams(words, self.g)):
                self._grams.setdefault(gram, []).append(i)
            for h in entry.image_sha256:
                self._by_image.setdefault(h, []).append(i)

    @property
    def questions(self) -> list[str]:
        return [e.question for e in self.entries]

    @staticmethod
    def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
        return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]

    @staticmethod
    def _longest_run(a: list[str], b: list[str]) -> int:
        return SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size

    def _label(self, i: int) -> str:
        e = self.entries[i]
        return f"benchmark question #{i}{f' ({e.where})' if e.where else ''}: {e.question[:80]!r}"

    def check(self, question: str, image_hashes: Sequence[str] = ()) -> str | None:
        """Why the row is contaminated, or None when it may be kept."""
        words = normalise_question(question).split()
        if not words:
            return None
        # 1. The same image: a shared n-gram, or one question inside the other, is enough.
        for i in dict.fromkeys(i for h in image_hashes for i in self._by_image.get(h, ())):
            other = self._words[i]
            run = self._longest_run(words, other)
            if run >= max(1, min(self.n, len(words), len(other))):
                return f"same image and {run} consecutive words shared with {self._label(i)}"
        # 2. Text alone: only a specific overlap.
        candidates = dict.fromkeys(i for g in self._ngrams(words, self.g) for i in self._grams.get(g, ()))
        grams = self._ngrams(words, self.n)
        for i in candidates:
            other = self._words[i]
            run = self._longest_run(words, other)
            if run >= self.min_specific:
                return f"{run} consecutive words shared with {self._label(i)}"
            if len(words) >= self.min_specific and grams:
                theirs = set(self._ngrams(other, self.n))
                ratio = sum(g in theirs for g in grams) / len(grams)
                if ratio >= self.threshold:
                    return f"{ratio:.0%} of its {self.n}-grams overlap {self._label(i)}"
        return None
