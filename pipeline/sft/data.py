"""Kept records -> training rows, and the pre-flight check that runs before any training.

Rows are read from the Parquet shards of one or more output folders; image paths are resolved
against each folder. TRL rows are prompt/completion conversations with typed content, so the
loss falls on the assistant turn only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

IMAGE_TOKEN = "<image>"


_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


@dataclass
class Record:
    id: str
    images: list[Path]  # absolute
    # The kept conversation as written ({"from", "value"}): an optional system turn, earlier turns of a
    # multi-turn row, the question, and last the gpt turn "<think>...</think>\n<answer> Final Answer:X </answer>".
    conversation: list[dict[str, str]]

    @property
    def answer_text(self) -> str:
        return self.conversation[-1]["value"]

    @property
    def question(self) -> str:  # the last human turn without <image> tokens
        return _strip_tokens(self.conversation[-2]["value"])

    @property
    def n_image_tokens(self) -> int:
        return sum(t["value"].count(IMAGE_TOKEN) for t in self.conversation if t["from"] == "human")


def _strip_tokens(text: str) -> str:
    return text.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()


def output_shards(out: Path) -> list[Path]:
    shards = sorted((Path(out) / "data").rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{out}: no Parquet shards under data/ (is this a coldstart output folder?)")
    return shards


def read_records(out_dirs: list[Path]) -> Iterator[Record]:
    for out in out_dirs:
        out = Path(out)
        for shard in output_shards(out):
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=256, columns=["id", "images", "conversations"]):
                for row in batch.to_pylist():
                    yield Record(id=row["id"], images=[(out / p).resolve() for p in row["images"]],
                                 conversation=[{"from": t["from"], "value": t["value"]} for t in row["conversations"]])


def prompt_messages(r: Record) -> list[dict[str, Any]]:
    """Every turn before the trace, with typed content: each human turn's images where its <image> tokens were."""
    messages = []
    for turn in r.conversation[:-1]:
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(turn["value"].count(IMAGE_TOKEN))]
        parts.append({"type": "text", "text": _strip_tokens(turn["value"])})
        messages.append({"role": _ROLES[turn["from"]], "content": parts})
    return messages


def completion_messages(r: Record) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": r.answer_text}]}]


@dataclass
class PreflightReport:
    checked: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    max_tokens_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "kept": self.kept, "dropped": dict(self.dropped),
                "examples": self.examples[:50], "max_tokens_seen": self.max_tokens_seen}


def preflight(records: list[Record], processor=None, max_length: int | None = None) -> tuple[list[Record], PreflightReport]:
    """<image> tokens == images, every image opens, and (with a processor) the full tokenised
    sample, image tokens included, fits max_length. Offenders are reported and dropped, never
    truncated (truncation could cut image tokens)."""
    report = PreflightReport()
    good: list[Record] = []

    def drop(r: Record, reason: str, detail: str) -> None:
        report.dropped[reason] += 1
        report.examples.append({"id": r.id, "reason": reason, "detail": detail})

    for r in records:
        report.checked += 1
        if r.n_image_tokens != len(r.images):
            drop(r, "image_token_mismatch", f"{r.n_image_tokens} <image> tokens for {len(r.images)} images")
            continue
        opened = []
        try:
            for path in r.images:
                with Image.open(path) as im:
                    im.load()
                    opened.append(im.convert("RGB"))
        except Exception as exc:
            drop(r, "image_unreadable", f"{type(exc).__name__}: {exc}")
            continue
        if processor is not None:
            text = processor.apply_chat_template(prompt_messages(r) + completion_messages(r), tokenize=False)
            n = int(processor(text=[text], images=[opened] if opened else None, return_tensors="pt")["input_ids"].shape[1])
            report.max_tokens_seen = max(report.max_tokens_seen, n)
            if max_length is not None and n > max_length:
                drop(r, "too_long", f"{n} tokens > max_length {max_length}")
                continue
        good.append(r)
        report.kept += 1
    return good, report


def trl_dataset(records: list[Record]):
    """A datasets.Dataset TRL's vision collator reads: images (decoded lazily) + prompt/completion."""
    from datasets import Dataset, Image as ImageFeature, Sequence

    ds = Dataset.from_dict({
        "images": [[str(p) for p in r.images] for r in records],
        "prompt": [prompt_messages(r) for r in records],
        "completion": [completion_messages(r) for r in records],
    })
    return ds.cast_column("images", Sequence(ImageFeature()))
