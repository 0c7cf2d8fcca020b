"""Mulberry-SFT json array: streamed with ijson; the answer follows "The final answer is:"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import ijson

from ..records import Rejected, Sample
from .common import as_image_list, reject_row, row_samples, turn_pairs

_QPREFIX = re.compile(r"^\s*Question\s*[:：]\s*", re.IGNORECASE)


def final_answer(text: str) -> str | None:
    parts = re.split(r"The final answer is\s*[:：]", text or "", flags=re.IGNORECASE)
    if len(parts) < 2:
        return None
    answer = parts[-1].strip().splitlines()[0].strip() if parts[-1].strip() else ""
    return answer.rstrip(".").strip() or None


def _clean_question(text: str) -> str:
    return _QPREFIX.sub("", text.replace("<image>", "").strip())


def read_mulberry(path: Path, source: str) -> Iterator[Sample | Rejected]:
    with open(path, "rb") as fh:
        items = ijson.items(fh, "item", use_float=True)
        position = 0
        try:
            for position, row in enumerate(items):
                base = f"{source}:{position}"
                if not isinstance(row, dict):
                    yield reject_row(base, source, "malformed_row", f"item {position}: not an object")
                    continue
                base = str(row.get("id") or base)
                msgs = row.get("messages")
                if not isinstance(msgs, list) or not msgs:
                    yield reject_row(base, source, "malformed_row", "no messages list")
                    continue
                images = as_image_list(row.get("images", row.get("image")))
                pairs = turn_pairs(msgs, "role", "content", "user", "assistant")
                yield from row_samples(base, source, images, pairs, final_answer, question_of=_clean_question,
                                       no_pair_detail="no user/assistant turn pair")
        except ijson.JSONError as exc:
            # A broken array cannot be resynchronised; record where it broke so the count stays honest.
            yield reject_row(f"{source}:after{position}", source, "malformed_input",
                             f"JSON array unreadable after item {position}: {exc}")
