"""Exports of kept records for other trainers, no fix-up script needed.

- llamafactory: <dest>/<name>.jsonl (Vision-R1-cold shape, image paths relative to <dest>, which is
  LLaMA-Factory's dataset_dir), a dataset_info.json entry, and train_<name>.yaml mirroring the
  authors' recipe.
- trl / hf: a `datasets` folder (save_to_disk) with an `images` column holding the image bytes and
  typed-content `messages`; optionally pushed to the Hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..writers import atomic_open, dataset_info, write_json
from .data import completion_messages, prompt_messages, read_records

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
            human = "<image>\n" * len(images) + r.question
            fh.write(json.dumps({"id": r.id, "image": images[0] if len(images) == 1 else images,
                                 "conversations": [{"from": "human", "value": human},
                                                   {"from": "gpt", "value": r.answer_text}]},
                                ensure_ascii=False) + "\n")
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


def to_hf(out_dirs: list[Path], dest: Path, push_to_hub: str | None = None) -> dict[str, Any]:
    from datasets import Dataset, Features, Image, List, Value

    ids, images, messages = [], [], []
    for r in read_records(out_dirs):
        ids.append(r.id)
        images.append([{"bytes": p.read_bytes(), "path": None} for p in r.images])  # the images, not paths
        messages.append(prompt_messages(r) + completion_messages(r))
    part = {"type": Value("string"), "text": Value("string")}
    features = Features({"id": Value("string"), "images": List(Image()),
                         "messages": List({"role": Value("string"), "content": List(part)})})
    for conv in messages:  # one struct shape for every part: image parts carry text=None
        for msg in conv:
            msg["content"] = [{"type": p["type"], "text": p.get("text")} for p in msg["content"]]
    ds = Dataset.from_dict({"id": ids, "images": images, "messages": messages}, features=features)
    ds.save_to_disk(str(dest))
    if push_to_hub:
        ds.push_to_hub(push_to_hub, private=True)  # token from HF_TOKEN / huggingface-cli login
    return {"rows": len(ds), "path": str(dest), "pushed_to": push_to_hub}
