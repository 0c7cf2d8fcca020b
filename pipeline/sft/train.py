"""Fine-tune with TRL's SFTTrainer on kept records.

Single process: `coldstart sft --data OUT_DIR [--config sft.yaml]`.
Several GPUs (DeepSpeed ZeRO-3, config shipped beside this file):
    accelerate launch --config_file pipeline/sft/accelerate_zero3.yaml -m pipeline.sft.train --config sft.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .config import SFTRunConfig, load_sft_config
from .data import preflight, read_records, trl_dataset
from .loading import load_model, load_processor, vision_tower

log = logging.getLogger("coldstart.sft")


def log_last_step_callback():
    """A TrainerCallback that logs the final step whatever logging_steps is, so a short run (max_steps
    below logging_steps, or a step count that is no multiple of it) still records its last loss."""
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


def train(cfg: SFTRunConfig) -> dict[str, Any]:
    import torch
    from trl import SFTConfig, SFTTrainer

    if not cfg.data:
        raise ValueError("no data: pass --data OUT_DIR (one or more coldstart output folders)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    bf16 = cuda if cfg.bf16 is None else cfg.bf16

    processor = load_processor(cfg.model, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)
    records, report = preflight(list(read_records(cfg.data)), processor, cfg.max_length)
    (out / "preflight.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    log.warning("pre-flight: %d checked, %d kept, dropped %s", report.checked, report.kept, dict(report.dropped))
    if not records:
        raise ValueError(f"no trainable records after the pre-flight: {dict(report.dropped)}")

    model = load_model(cfg.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    if cfg.freeze_vision_tower:
        for p in vision_tower(model).parameters():
            p.requires_grad_(False)
    peft_config = None
    if cfg.use_lora:
        from peft import LoraConfig

        # LoRA on the language model only: the vision tower stays as it is.
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM",
                                 exclude_modules=r".*visual.*")

    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_length=None,  # never truncate (image tokens); the pre-flight dropped over-long samples
        completion_only_loss=True,  # prompt/completion: loss on the assistant turn only
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        # transformers 5: a float in [0, 1) is the warmup ratio.
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=bf16, gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        deepspeed=str(cfg.deepspeed) if cfg.deepspeed else None,
        # The first and the last step are always logged (the callback below): the summary has both.
        logging_steps=cfg.logging_steps, logging_first_step=True,
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        seed=cfg.seed, report_to=cfg.report_to, remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=trl_dataset(records), processing_class=processor,
                         peft_config=peft_config, callbacks=[log_last_step_callback()])
    result = trainer.train()
    final = out / "final"
    trainer.save_model(str(final))
    processor.save_pretrained(str(final))
    logged = [e for e in trainer.state.log_history if "loss" in e]
    losses = [e["loss"] for e in logged]
    summary = {"final_model": str(final), "train_loss": result.training_loss, "losses": losses,
               "loss_steps": [e["step"] for e in logged],
               "steps": trainer.state.global_step, "records": len(records), "preflight": report.as_dict(),
               "lora": cfg.use_lora, "config": cfg.model_dump(mode="json")}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:  # the `accelerate launch -m pipeline.sft.train` entry point
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, action="append")
    args = ap.parse_args()
    train(load_sft_config(args.config, {"data": args.data}))


if __name__ == "__main__":
    main()
