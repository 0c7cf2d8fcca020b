"""`coldstart vllm`: the exact `vllm serve` lines for the VLM and the text-only reasoner, a wrong
server spec refused before anything starts, and the /health wait against real loopback servers."""

import json
import shlex

import pytest
import yaml

from pipeline.build_config import BuildConfig
from pipeline.vllm_helper import health_url, serve_commands, wait_for_health

from .conftest import run_cli


def _build(**servers) -> BuildConfig:
    return BuildConfig.model_validate({
        "datasets": [{"name": "d", "source_format": "llava-cot", "input": "x.jsonl", "image_root": "."}],
        "convert": {"vlm": {"url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen2.5-VL-72B-Instruct", "max_concurrency": 48},
                    "reasoner": {"url": "http://127.0.0.1:8001/v1", "model": "deepseek-ai/DeepSeek-R1", "max_concurrency": 32}},
        "servers": {"vlm": {"tensor_parallel_size": 4, "max_model_len": 16384, "images_per_prompt": 2}, **servers},
    })


def test_exact_lines_for_a_vlm_and_a_text_only_reasoner():
    cmds = serve_commands(_build())
    assert cmds["vlm"] == (
        "vllm serve Qwen/Qwen2.5-VL-72B-Instruct --served-model-name Qwen/Qwen2.5-VL-72B-Instruct --port 8000 "
        "--tensor-parallel-size 4 --max-model-len 16384 --gpu-memory-utilization 0.9 --max-num-seqs 48 "
        "--enable-prefix-caching --stream-interval 10 --limit-mm-per-prompt '{\"image\": 2}'")
    assert cmds["reasoner"] == (
        "vllm serve deepseek-ai/DeepSeek-R1 --served-model-name deepseek-ai/DeepSeek-R1 --port 8001 "
        "--tensor-parallel-size 8 --max-model-len 32768 --gpu-memory-utilization 0.9 --max-num-seqs 32 "
        "--enable-prefix-caching --stream-interval 10 --reasoning-parser deepseek_r1")
    # What the shell hands vLLM: the limit is one argument holding valid JSON.
    argv = shlex.split(cmds["vlm"])
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 2}


def test_stream_interval_is_sent_only_above_one():
    # vLLM < 0.11.1 refuses --stream-interval: stream_interval 1 (vLLM's own default) leaves it out.
    cmds = serve_commands(_build(reasoner={"stream_interval": 1}, vlm={"images_per_prompt": 2, "stream_interval": 32}))
    assert "--stream-interval" not in cmds["reasoner"]
    argv = shlex.split(cmds["vlm"])
    assert argv.count("--stream-interval") == 1 and argv[argv.index("--stream-interval") + 1] == "32"
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _build(vlm={"stream_interval": 0})


def test_reasoner_never_gets_multimodal_limits_whatever_its_spec_says():
    # vLLM refuses --limit-mm-per-prompt for a model that is not multimodal; we only send it text.
    cmds = serve_commands(_build(reasoner={"images_per_prompt": 3, "port": 9001}))
    assert "--limit-mm-per-prompt" not in cmds["reasoner"] and "image" not in cmds["reasoner"]
    assert "--reasoning-parser" not in cmds["vlm"]


def test_model_path_and_extra_args():
    cmds = serve_commands(_build(vlm={"model_path": "/models/qwen2_5_vl_72b", "images_per_prompt": 1,
                                      "extra_args": ["--limit-mm-per-prompt", '{"image": 1, "video": 0}']}))
    argv = shlex.split(cmds["vlm"])
    # The weights come from the folder; clients still ask for the configured model name.
    assert argv[:3] == ["vllm", "serve", "/models/qwen2_5_vl_72b"]
    assert argv[argv.index("--served-model-name") + 1] == "Qwen/Qwen2.5-VL-72B-Instruct"
    # extra_args come last, so they override (argparse keeps the last value).
    assert argv[-2:] == ["--limit-mm-per-prompt", '{"image": 1, "video": 0}']


def test_a_vlm_without_images_is_refused_before_anything_starts(tmp_path):
    build = _build(vlm={"images_per_prompt": 0})
    with pytest.raises(ValueError, match="images_per_prompt is 0"):
        serve_commands(build)
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(build.model_dump(mode="json")))
    proc = run_cli(["vllm", "--config", str(cfg)])
    assert proc.returncode != 0 and "images_per_prompt is 0" in proc.stderr and "vllm serve" not in proc.stdout


def test_health_wait_and_cli(tmp_path, sims):
    vlm, reasoner = sims
    assert health_url("http://h:8000/v1") == "http://h:8000/health" and health_url("http://h:8000/") == "http://h:8000/health"
    wait_for_health([vlm.url, reasoner.url], timeout_s=10)
    with pytest.raises(TimeoutError):
        wait_for_health(["http://127.0.0.1:9/v1"], timeout_s=1, interval_s=0.2)
    build = _build().model_dump(mode="json")
    build["convert"]["vlm"]["url"], build["convert"]["reasoner"]["url"] = vlm.url, reasoner.url
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(build))
    proc = run_cli(["vllm", "--config", str(cfg), "--wait", "10"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["# vlm", serve_commands(_build())["vlm"],
                                        "# reasoner", serve_commands(_build())["reasoner"]]
