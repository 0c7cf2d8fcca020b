"""LLaVA-CoT-100k train.jsonl: the answer is the CONCLUSION section of the gpt turn."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..records import Rejected, Sample
from .common import as_image_list, iter_jsonl, reject_row, row_samples, turn_pairs
from .image_fields import RowError

_CONCLUSION = re.compile(r"<CONCLUSION>(.*?)</CONCLUSION>", re.DOTALL | re.IGNORECASE)


def conclusion(text: str) -> str | None:
    found = _CONCLUSION.findall(text or "")
    return found[-1].strip() if found else None


def read_llava_cot(path: Path, source: str, multi_turn: str = "all") -> Iterator[Sample | Rejected]:
    for lineno, row in iter_jsonl(path, source):
        if isinstance(row, Rejected):
            yield row
            continue
        base = str(row.get("id") or f"{source}:line{lineno}")
        convs = row.get("conversations")
        if not isinstance(convs, list) or not convs:
            yield reject_row(base, source, "malformed_row", "no conversations list")
            continue
        try:
            images = as_image_list(row.get("image", row.get("images")))
        except RowError as exc:
            yield reject_row(base, source, exc.reason, exc.detail)
            continue
        pairs = turn_pairs(convs, "from", "value", "human", "gpt")
        yield from row_samples(base, source, images, pairs, conclusion, no_pair_detail="no human/gpt turn pair",
                               multi_turn=multi_turn)
