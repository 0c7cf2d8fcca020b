"""Exports of kept records for other trainers, no fix-up script needed.

- llamafactory: <dest>/<name>.jsonl (Vision-R1-cold shape, image paths relative to <dest>, which is
  LLaMA-Factory's dataset_dir), a dataset_info.json entry, and train_<name>.yaml mirroring the
  authors' recipe.
- trl / hf: a `datasets` folder (save_to_disk) with an `images` column holding the image bytes and
  typed-content `messages`; optionally pushed to the Hub. Streamed: built from a generator through
  Arrow files, so memory stays bounded whatever the number of rows.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..writers import atomic_open, dataset_info, write_json
from .data import completion_messages, output_shards, prompt_messages, read_records

RECIPE = {
    "stage": "sft", "do_train": True, "finetuning_type": "full", "freeze_vision_tower": True,
    "template": "qwen2_vl", "cutoff_len": 16384, "overwrite_cache": True, "preprocessing_num_workers": 16,
    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4,  # x 8 GPUs = global batch 32
    "learning_rate": 5.0e-6, "num_train_epochs": 2.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
    "bf16": True, "logging_steps": 10, "save_steps": 500, "plot_loss": True, "overwrite_output_dir": True,
}


def to_llamafactory(out_dirs: list[Path], dest: Path, name: str = "vision_r1_cold",
                    model: str = "Qwen/Qwen2.5-VL-7B-Instruct") -> dict[str, Any]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_open(dest / f"{name}.jsonl") as fh:
        for r in read_records(out_dirs):
            images = [os.path.relpath(p, dest.resolve()) for p in r.images]
            fh.write(json.dumps({"id": r.id, "image": images[0] if len(images) == 1 else images,
                                 "conversations": r.conversation}, ensure_ascii=False) + "\n")
            n += 1
    info_path = dest / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    entry = dataset_info(name)
    entry[name]["file_name"] = f"{name}.jsonl"
    info.update(entry)
    write_json(info_path, info)
    recipe = {"model_name_or_path": model, **RECIPE, "dataset": name, "dataset_dir": str(dest.resolve()),
              "deepspeed": str((Path(__file__).parent / "ds_zero3.json").resolve()),
              "output_dir": f"saves/{name}/full/sft"}
    with atomic_open(dest / f"train_{name}.yaml") as fh:
        yaml.safe_dump(recipe, fh, sort_keys=False)
    return {"rows": n, "jsonl": str(dest / f"{name}.jsonl"), "dataset_info": str(info_path),
            "train_yaml": str(dest / f"train_{name}.yaml")}


# Rows buffered per Arrow record batch while writing: bounds the export's memory to about this many
# rows' images (datasets' own default for Image features, stated here so it cannot drift up).
WRITER_BATCH_SIZE = 100


def hf_features():
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features({"id": Value("string"), "images": List(Image()),
                     "messages": List({"role": Value("string"), "content": List(part)})})


@dataclass
class ExportReport:
    """kept + sum(dropped) == read: a record whose image file cannot be read is left out, named, and
    counted here, never silently."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)


def hf_rows(out_dirs: list[str], report: ExportReport) -> Iterator[dict[str, Any]]:
    """One row per kept record, images as their bytes (the folder must not depend on the original
    files). A generator, so only the rows of the batch being written are ever held in memory."""
    for r in read_records([Path(d) for d in out_dirs]):
        report.read += 1
        try:
            images = [{"bytes": p.read_bytes(), "path": None} for p in r.images]
        except OSError as exc:
            report.dropped["image_unreadable"] += 1
            if len(report.examples) < 50:
                report.examples.append({"id": r.id, "reason": "image_unreadable", "detail": f"{type(exc).__name__}: {exc}"})
            continue
        messages = prompt_messages(r) + completion_messages(r)
        for msg in messages:  # one struct shape for every part: image parts carry text=None
            msg["content"] = [{"type": p["type"], "text": p.get("text")} for p in msg["content"]]
        report.kept += 1
        yield {"id": r.id, "images": images, "messages": messages}


def to_hf(out_dirs: list[Path], dest: Path, push_to_hub: str | None = None) -> dict[str, Any]:
    """A `datasets` folder (save_to_disk) built from a generator: the rows go to Arrow files in a
    private cache beside dest, then to dest's shards; nothing holds the whole set in memory."""
    from datasets import Dataset, load_from_disk

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for d in out_dirs:  # fail before any work when a folder is not a coldstart output
        output_shards(Path(d))
    report = ExportReport()
    # A fresh cache per export, and a fingerprint of our own: datasets would otherwise hash the
    # generator's arguments and could reuse an earlier export of the same folders.
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.cache-", dir=dest.parent) as cache:
        try:
            ds = Dataset.from_generator(hf_rows, features=hf_features(), cache_dir=cache,
                                        gen_kwargs={"out_dirs": [str(Path(d).resolve()) for d in out_dirs],
                                                    "report": report},
                                        fingerprint=uuid.uuid4().hex, writer_batch_size=WRITER_BATCH_SIZE)
        except ValueError:
            if report.kept:
                raise
            # datasets cannot make a split of zero generated rows ("corresponds to no data").
            ds = Dataset.from_dict({"id": [], "images": [], "messages": []}, features=hf_features())
        # An empty set still needs one shard: datasets writes none by default, and cannot load that.
        ds.save_to_disk(str(dest), num_shards=None if len(ds) else 1)
        del ds  # its memory-mapped files are in the cache about to be removed
    if push_to_hub:  # token from HF_TOKEN / huggingface-cli login
        load_from_disk(str(dest)).push_to_hub(push_to_hub, private=True)
    return {"rows": report.kept, "read": report.read, "dropped": dict(report.dropped),
            "examples": report.examples, "path": str(dest), "pushed_to": push_to_hub}
