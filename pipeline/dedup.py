"""Exact/near-duplicate removal and benchmark decontamination, before any model is paid.

Duplicates: the same image content (file hash) with the same normalised question is processed
once; later rows are rejected as `duplicate`. Decontamination: a question whose word n-grams
overlap a user-supplied benchmark list beyond a threshold is rejected as `contaminated`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from .images import ImageError, ImageRoots, read_image_file

_PUNCT = re.compile(r"[^\w\s]")


def normalise_question(q: str) -> str:
    return " ".join(_PUNCT.sub(" ", q.lower()).split())


def file_hashes(roots: ImageRoots | Path, raws: list[str], max_file_bytes: int = 50 * 1024 * 1024) -> list[str] | None:
    """Content hashes of a row's images, through the image stage's own resolver and limits;
    None when a path is bad (the image stage then rejects the row with its reason)."""
    out = []
    for raw in raws:
        try:
            out.append(hashlib.sha256(read_image_file(roots, raw, max_file_bytes)[1]).hexdigest())
        except ImageError:
            return None
    return out


class Deduplicator:
    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def check(self, sample_id: str, image_hashes: list[str], question: str) -> str | None:
        """Returns the id of the earlier row this one duplicates, or None (and remembers it)."""
        key = hashlib.sha256(json.dumps([sorted(image_hashes), normalise_question(question)]).encode()).hexdigest()
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = sample_id
        return first


def load_benchmark_questions(path: Path) -> list[str]:
    """One question per line (.txt), or objects with a "question" field (.jsonl / .json array)."""
    text = Path(path).read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [str(json.loads(l)["question"]) for l in text.splitlines() if l.strip()]
    if path.suffix == ".json":
        return [str(r["question"]) if isinstance(r, dict) else str(r) for r in json.loads(text)]
    return [l.strip() for l in text.splitlines() if l.strip()]


class Decontaminator:
    def __init__(self, questions: list[str], n: int = 8, threshold: float = 0.5):
        self.n, self.threshold = n, threshold
        self.questions = questions
        self._grams: dict[tuple[str, ...], int] = {}
        self._short: dict[str, int] = {}
        for i, q in enumerate(questions):
            words = normalise_question(q).split()
            if len(words) < n:
                self._short.setdefault(" ".join(words), i)
            for g in self._ngrams(words):
                self._grams.setdefault(g, i)

    def _ngrams(self, words: list[str]) -> list[tuple[str, ...]]:
        return [tuple(words[i:i + self.n]) for i in range(len(words) - self.n + 1)]

    def check(self, question: str) -> str | None:
        words = normalise_question(question).split()
        if len(words) < self.n:
            hit = self._short.get(" ".join(words))
            return None if hit is None else f"equals benchmark question #{hit}: {self.questions[hit][:80]!r}"
        grams = self._ngrams(words)
        hits = [self._grams[g] for g in grams if g in self._grams]
        ratio = len(hits) / len(grams)
        if ratio >= self.threshold:
            top = max(set(hits), key=hits.count)
            return (f"{ratio:.0%} of its {self.n}-grams overlap benchmark question #{top}: "
                    f"{self.questions[top][:80]!r}")
        return None
