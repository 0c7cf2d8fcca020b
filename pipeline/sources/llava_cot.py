"""LLaVA-CoT-100k train.jsonl: the answer is the CONCLUSION section of the gpt turn."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..records import Rejected, Sample
from .common import as_image_list, iter_jsonl, make_sample, reject_row, turn_id

_CONCLUSION = re.compile(r"<CONCLUSION>(.*?)</CONCLUSION>", re.DOTALL | re.IGNORECASE)


def conclusion(text: str) -> str | None:
    found = _CONCLUSION.findall(text or "")
    return found[-1].strip() if found else None


def read_llava_cot(path: Path, source: str) -> Iterator[Sample | Rejected]:
    for lineno, row in iter_jsonl(path, source):
        if isinstance(row, Rejected):
            yield row
            continue
        base = str(row.get("id") or f"{source}:line{lineno}")
        convs = row.get("conversations")
        if not isinstance(convs, list) or not convs:
            yield reject_row(base, source, "malformed_row", "no conversations list")
            continue
        images = as_image_list(row.get("image", row.get("images")))
        turn, pending_q = 0, None
        for msg in convs:
            if not isinstance(msg, dict):
                continue
            role, value = msg.get("from"), msg.get("value") or ""
            if role == "human":
                pending_q = value
            elif role == "gpt" and pending_q is not None:
                # One sample per question turn: multi-turn rows are not silently cut to their first turn.
                yield make_sample(
                    row_id=turn_id(base, turn), source=source, images=images,
                    question=pending_q, answer=conclusion(value),
                )
                turn, pending_q = turn + 1, None
        if turn == 0:
            yield reject_row(base, source, "malformed_row", "no human/gpt turn pair")
