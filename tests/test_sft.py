"""The SFT stage on CPU: a tiny random Qwen2.5-VL built here, trained on a converted demo output;
exports for LLaMA-Factory and TRL/HF."""

import asyncio
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.config import ConvertConfig
from pipeline.demo_data import make_demo_dataset
from pipeline.runner import Converter

from .conftest import R1_MODEL, VLM_MODEL, read_jsonl, run_cli, start_sims
from .tiny_models import build_tiny_qwen2_5_vl

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    input_path, image_root = make_demo_dataset(tmp / "input", n=12)
    vlm, reasoner = start_sims(reasoner={"length_mu": 3.5, "length_sigma": 0.2})  # short traces: fast CPU steps
    try:
        cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=image_root, out=tmp / "out",
                            vlm={"url": vlm.url, "model": VLM_MODEL}, reasoner={"url": reasoner.url, "model": R1_MODEL},
                            quality={"min_reasoning_words": 5}, progress=False)
        manifest = asyncio.run(Converter(cfg).run())
    finally:
        vlm.stop(), reasoner.stop()
    assert manifest["counts"]["kept"] >= 8
    return tmp / "out"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, converted):
    corpus = [json.dumps(r) for r in read_jsonl(converted / "vision_r1_cold.jsonl")] * 3
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", corpus)


def test_processor_falls_back_to_image_only_without_torchvision(tiny_model, caplog):
    from transformers import ProcessorMixin

    from pipeline.sft.loading import load_processor

    processor = load_processor(tiny_model)
    assert isinstance(processor, ProcessorMixin)
    assert processor.image_processor is not None and processor.tokenizer is not None
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         tokenize=False)
    out = processor(text=[text], images=[[Image.new("RGB", (100, 80))]], return_tensors="pt")
    assert int((out["input_ids"] == processor.image_token_id).sum()) == int(out["image_grid_thw"].prod() // 4)


def test_processor_fallback_when_autoprocessor_returns_only_a_tokenizer(tiny_model, monkeypatch):
    import transformers

    from pipeline.sft import loading

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained",
                        classmethod(lambda cls, *a, **k: transformers.AutoTokenizer.from_pretrained(a[0])))
    processor = loading.load_processor(tiny_model)
    assert type(processor).__name__ == "ImageOnlyQwen2_5_VLProcessor"


def test_preflight_reports_and_drops_offenders(converted, tiny_model, tmp_path):
    from pipeline.sft.data import preflight, read_records
    from pipeline.sft.loading import load_processor

    records = list(read_records([converted]))
    records[0].conversation[0]["value"] = "<image>\n" + records[0].conversation[0]["value"]  # 2 tokens, 1 image
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    records[1].images = [broken]
    good, report = preflight(records, load_processor(tiny_model), max_length=None)
    assert report.dropped == {"image_token_mismatch": 1, "image_unreadable": 1}
    assert report.kept == len(records) - 2 and len(good) == report.kept
    limit = report.max_tokens_seen - 1  # the longest sample no longer fits
    _, report2 = preflight(good, load_processor(tiny_model), max_length=limit)
    assert report2.dropped["too_long"] >= 1 and report2.kept == len(good) - report2.dropped["too_long"]
    proc = run_cli(["preflight", str(converted)])
    assert proc.returncode == 0 and json.loads(proc.stdout)["kept"] == len(records)


def _sft_config(tmp_path, tiny_model, converted, **over):
    cfg = {"model": str(tiny_model), "data": [str(converted)], "output_dir": str(tmp_path / "run"),
           "max_steps": 24, "learning_rate": 5e-3, "warmup_ratio": 0.0, "lr_scheduler_type": "constant",
           "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "logging_steps": 1,
           "save_steps": 1000, "gradient_checkpointing": False, "max_length": 4096, "max_pixels": 112 * 112,
           "min_pixels": 56 * 56, **over}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _loss_went_down(losses):
    """The last four steps average at least 10% below the first four (not noise on 24 steps)."""
    k = 4
    return len(losses) >= 2 * k and sum(losses[-k:]) / k < 0.9 * sum(losses[:k]) / k


def test_full_finetune_lowers_loss_and_writes_a_reloadable_model(tmp_path, tiny_model, converted):
    from transformers import AutoModelForImageTextToText

    from pipeline.sft.loading import load_processor, vision_tower

    proc = run_cli(["sft", "--config", str(_sft_config(tmp_path, tiny_model, converted))], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 24 and _loss_went_down(summary["losses"]), summary["losses"]
    final = tmp_path / "run" / "final"
    model = AutoModelForImageTextToText.from_pretrained(final)
    before = AutoModelForImageTextToText.from_pretrained(tiny_model)
    # The language model moved; the frozen vision tower did not.
    lm_changed = any(not torch.equal(a, b) for (n, a), (_, b) in
                     zip(model.named_parameters(), before.named_parameters()) if "visual" not in n)
    assert lm_changed
    for a, b in zip(vision_tower(model).parameters(), vision_tower(before).parameters()):
        assert torch.equal(a, b)
    processor = load_processor(final)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
                                         tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[Image.new("RGB", (100, 100), "blue")]], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5 or out.shape[1] > inputs["input_ids"].shape[1]


def test_lora_run_lowers_loss_and_saves_an_adapter(tmp_path, tiny_model, converted):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    cfg = _sft_config(tmp_path, tiny_model, converted, use_lora=True, lora_r=16, lora_alpha=32, learning_rate=2e-2, max_steps=40)
    proc = run_cli(["sft", "--config", str(cfg)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["lora"] and _loss_went_down(summary["losses"]), summary["losses"]
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").is_file()
    merged = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_model), final)
    assert any("lora_" in n for n, _ in merged.named_parameters())
    assert not any("visual" in n and "lora_" in n for n, _ in merged.named_parameters())


def test_export_trl_hf_loads_with_datasets(converted, tmp_path):
    from datasets import load_from_disk

    dest = tmp_path / "hf"
    proc = run_cli(["export", str(converted), "--to", "hf", "--dest", str(dest)])
    assert proc.returncode == 0, proc.stderr
    ds = load_from_disk(str(dest))
    kept = read_jsonl(converted / "vision_r1_cold.jsonl")
    assert len(ds) == len(kept) and ds["id"] == [r["id"] for r in kept]
    row = ds[0]
    assert isinstance(row["images"][0], Image.Image) and row["images"][0].size == (224, 224)
    user, assistant = row["messages"]
    assert user["role"] == "user" and [p["type"] for p in user["content"]] == ["image", "text"]
    assert assistant["content"][0]["text"] == kept[0]["conversations"][1]["value"]
    # The folder does not depend on the original image files any more.
    shutil.copytree(dest, tmp_path / "moved")
    assert isinstance(load_from_disk(str(tmp_path / "moved"))[1]["images"][0], Image.Image)


def test_export_llamafactory(converted, tmp_path):
    dest = tmp_path / "lf"
    proc = run_cli(["export", str(converted), "--to", "llamafactory", "--dest", str(dest), "--name", "cold"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads((dest / "dataset_info.json").read_text())
    assert info["cold"]["file_name"] == "cold.jsonl" and info["cold"]["columns"] == {"messages": "conversations",
                                                                                    "images": "image"}
    rows = read_jsonl(dest / "cold.jsonl")
    assert len(rows) == len(read_jsonl(converted / "vision_r1_cold.jsonl"))
    for row in rows:
        images = [row["image"]] if isinstance(row["image"], str) else row["image"]
        assert row["conversations"][0]["value"].count("<image>") == len(images)
        for p in images:
            assert (dest / p).resolve().is_file()  # resolvable from LLaMA-Factory's dataset_dir
    recipe = yaml.safe_load((dest / "train_cold.yaml").read_text())
    assert recipe["dataset"] == "cold" and recipe["dataset_dir"] == str(dest.resolve())
    assert (recipe["template"], recipe["cutoff_len"], recipe["learning_rate"], recipe["num_train_epochs"]) == \
        ("qwen2_vl", 16384, 5e-6, 2.0)
    assert json.loads(open(recipe["deepspeed"]).read())["zero_optimization"]["stage"] == 3


def test_short_run_logs_its_first_and_last_step(tmp_path, tiny_model, converted):
    # max_steps below logging_steps used to log nothing: "loss nan -> nan" and an empty losses list.
    cfg = _sft_config(tmp_path, tiny_model, converted, max_steps=2, logging_steps=10)
    proc = run_cli(["sft", "--config", str(cfg)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["loss_steps"] == [1, 2]
    assert len(summary["losses"]) == 2 and all(math.isfinite(x) and x > 0 for x in summary["losses"])
    first, last = re.search(r"loss\s+(\S+)\s+->\s+(\S+);", proc.stderr).groups()
    assert (float(first), float(last)) == pytest.approx(tuple(summary["losses"]), abs=1e-4)


def test_export_hf_streams_each_run_afresh_and_reports_unreadable_images(converted, tmp_path):
    from datasets import load_from_disk

    shutil.copytree(converted.parent, tmp_path / "copy")  # images sit beside out/, under input/
    out, dest = tmp_path / "copy" / "out", tmp_path / "exports" / "hf"
    kept = read_jsonl(out / "vision_r1_cold.jsonl")
    assert run_cli(["export", str(out), "--to", "hf", "--dest", str(dest)]).returncode == 0
    assert load_from_disk(str(dest))["id"] == [r["id"] for r in kept]
    # The same folder again, now with one image gone: a new export, not the earlier one from a cache.
    first_image = out / kept[0]["image"]
    first_image.unlink()
    proc = run_cli(["export", str(out), "--to", "hf", "--dest", str(dest)])
    assert proc.returncode == 0, proc.stderr
    assert f"left out 1 of {len(kept)} records" in proc.stderr and "image_unreadable" in proc.stderr
    ds = load_from_disk(str(dest))
    assert ds["id"] == [r["id"] for r in kept[1:]]  # kept + left out == read, order kept
    assert isinstance(ds[0]["images"][0], Image.Image)
    assert [p.name for p in dest.parent.iterdir()] == ["hf"]  # the private Arrow cache is gone

    from pipeline.sft.export import to_hf

    for r in kept:  # every image gone: an empty dataset with the same features, every row accounted for
        (out / r["image"]).unlink(missing_ok=True)
    result = to_hf([out], tmp_path / "empty")
    assert (result["rows"], result["read"], result["dropped"]) == (0, len(kept), {"image_unreadable": len(kept)})
    empty = load_from_disk(str(tmp_path / "empty"))
    assert len(empty) == 0 and empty.features == ds.features


def test_multi_turn_records_keep_their_turns_and_image_places():
    from pipeline.sft.data import Record, completion_messages, prompt_messages

    r = Record(id="d#turn1", images=[Path("/x/1.jpg"), Path("/x/1.jpg")], conversation=[
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWho are they?"}, {"from": "gpt", "value": "Kane and Gretzka."},
        {"from": "human", "value": "<image>\nWhat are they doing?"},
        {"from": "gpt", "value": "<think>\nx\n</think>\n<answer> Final Answer:Celebrating </answer>"}])
    assert r.n_image_tokens == 2 and r.question == "What are they doing?"
    assert prompt_messages(r) == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who are they?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Kane and Gretzka."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What are they doing?"}]}]
    assert completion_messages(r)[0]["content"][0]["text"].startswith("<think>")
