"""Mulberry-SFT json array: streamed with ijson; the answer follows "The final answer is:"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..records import Rejected, Sample
from .common import as_image_list, iter_json_array, reject_row, row_samples, turn_pairs
from .image_fields import RowError

_QPREFIX = re.compile(r"^\s*Question\s*[:：]\s*", re.IGNORECASE)


def final_answer(text: str) -> str | None:
    parts = re.split(r"The final answer is\s*[:：]", text or "", flags=re.IGNORECASE)
    if len(parts) < 2:
        return None
    answer = parts[-1].strip().splitlines()[0].strip() if parts[-1].strip() else ""
    return answer.rstrip(".").strip() or None


def _clean_question(text: str) -> str:
    return _QPREFIX.sub("", text.replace("<image>", "").strip())


def read_mulberry(path: Path, source: str, multi_turn: str = "all") -> Iterator[Sample | Rejected]:
    for position, row in iter_json_array(path, source):
        if isinstance(row, Rejected):
            yield row
            continue
        base = str(row.get("id") or f"{source}:{position}")
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            yield reject_row(base, source, "malformed_row", "no messages list")
            continue
        try:
            images = as_image_list(row.get("images", row.get("image")))
        except RowError as exc:
            yield reject_row(base, source, exc.reason, exc.detail)
            continue
        pairs = turn_pairs(msgs, "role", "content", "user", "assistant")
        yield from row_samples(base, source, images, pairs, final_answer, question_of=_clean_question,
                               no_pair_detail="no user/assistant turn pair", multi_turn=multi_turn)
