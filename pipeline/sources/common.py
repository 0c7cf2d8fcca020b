"""Helpers shared by the readers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..records import Option, Rejected, Sample
from ..verify.options import parse_options

_IMAGE_TOKEN = re.compile(r"<image>\s*")


def clean_question(text: str) -> str:
    """Drop <image> placeholders: the output re-adds exactly one per image."""
    return _IMAGE_TOKEN.sub("", text or "").strip()


def as_image_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v).strip()]
    if hasattr(value, "tolist"):
        return as_image_list(value.tolist())
    return [str(value)]


def make_sample(
    *, row_id: str, source: str, images: list[str], question: str, answer: str | None,
    options: list[Option] | None = None,
) -> Sample:
    q = clean_question(question)
    return Sample(
        index=0,
        id=row_id,
        source=source,
        images=images,
        question=q,
        answer=(answer or "").strip(),
        options=options if options else parse_options(q),
    )


def reject_row(row_id: str, source: str, reason: str, detail: str) -> Rejected:
    return Rejected(index=0, id=row_id, source=source, stage="read", reason=reason, detail=detail)


def iter_jsonl(path: Path, source: str) -> Iterator[tuple[int, dict[str, Any] | Rejected]]:
    """Stream a JSON Lines file; a malformed line becomes a Rejected row, not a crash."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, reject_row(f"{source}:line{lineno}", source, "malformed_row", f"line {lineno}: {exc}")
                continue
            if not isinstance(row, dict):
                yield lineno, reject_row(f"{source}:line{lineno}", source, "malformed_row", f"line {lineno}: not an object")
                continue
            yield lineno, row


def turn_id(base: str, turn: int) -> str:
    return base if turn == 0 else f"{base}#turn{turn}"


def turn_pairs(messages: list[Any], role_key: str, text_key: str, asker: str, answerer: str) -> list[tuple[str, str]]:
    """(question, answer) text pairs of a conversation, in order; stray or non-dict turns are skipped."""
    pairs, pending = [], None
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role, text = msg.get(role_key), msg.get(text_key) or ""
        if role == asker:
            pending = text
        elif role == answerer and pending is not None:
            pairs.append((pending, text))
            pending = None
    return pairs


def row_samples(base: str, source: str, images: list[str], pairs: list[tuple[str, str]],
                answer_of: Callable[[str], str | None], question_of: Callable[[str], str] = lambda q: q,
                no_pair_detail: str = "no question/answer turn pair") -> Iterator[Sample | Rejected]:
    """One sample per question turn: multi-turn rows are not silently cut to their first turn."""
    if not pairs:
        yield reject_row(base, source, "malformed_row", no_pair_detail)
    for turn, (question, answer) in enumerate(pairs):
        yield make_sample(row_id=turn_id(base, turn), source=source, images=images,
                          question=question_of(question), answer=answer_of(answer))
