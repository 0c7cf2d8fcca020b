"""SFT configuration, trl-style: one validated object, defaults = the Vision-R1 cold-start recipe
(Qwen2.5-VL-7B-Instruct, full fine-tune, cutoff 16384, lr 5e-6, 2 epochs, cosine, warmup 0.05,
bf16, global batch 32, vision tower frozen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import yamlfile
from pydantic import BaseModel, ConfigDict, Field


class SFTRunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # a local folder or a hub id (hub needs network)
    data: list[Path] = Field(default_factory=list)  # coldstart output folders (Parquet under data/)
    output_dir: Path = Path("outputs/sft/vision-r1-cold")
    max_length: int | None = 16384  # samples longer than this are dropped by the pre-flight, never cut
    max_pixels: int | None = 1003520
    min_pixels: int | None = None
    # Optimisation (global batch = per_device * accumulation * GPUs = 1 * 4 * 8 = 32 on one node).
    learning_rate: float = 5e-6
    num_train_epochs: float = 2.0
    max_steps: int = -1
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    weight_decay: float = 0.0
    bf16: bool | None = None  # None: on when a CUDA GPU is present
    gradient_checkpointing: bool = True
    freeze_vision_tower: bool = True
    deepspeed: Path | None = None  # e.g. the shipped pipeline/sft/ds_zero3.json under `accelerate launch`
    # LoRA instead of a full fine-tune.
    use_lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    # Bookkeeping.
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    seed: int = 42
    report_to: str = "none"


def load_sft_config(path: Path | None, overrides: dict[str, Any]) -> SFTRunConfig:
    data: dict[str, Any] = yamlfile.safe_load(Path(path).read_text()) or {} if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return SFTRunConfig.model_validate(data)
