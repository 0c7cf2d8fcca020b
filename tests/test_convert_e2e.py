"""End-to-end conversion over real HTTP against the simulated endpoints, with real files."""

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.config import ConvertConfig
from pipeline.demo_data import make_demo_dataset
from pipeline.runner import Converter

from .conftest import R1_MODEL, ROOT, VLM_MODEL, convert_args, read_jsonl, reset_sim, run_cli, sim_stats, start_sims

ANSWER_RE = re.compile(r"<answer> Final Answer:(.*?) </answer>")


def convert_in_process(input_path, image_root, out, vlm, reasoner, fmt="llava-cot", **kw):
    cfg = ConvertConfig(source_format=fmt, input=input_path, image_root=image_root, out=out,
                        vlm={"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 8},
                        reasoner={"url": reasoner.url, "model": R1_MODEL, "max_concurrency": 8,
                                  "max_backoff_s": 0.2},
                        progress=False, **kw)
    return asyncio.run(Converter(cfg).run())


def output_files(out: Path) -> dict[str, bytes]:
    """Everything a trainer or a user reads, except the manifest's run-time fields."""
    files = {p.relative_to(out).as_posix(): p.read_bytes()
             for p in sorted(out.rglob("*")) if p.is_file() and ".state" not in p.parts and p.name != "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    files["manifest.counts"] = json.dumps(manifest["counts"], sort_keys=True).encode()
    files["manifest.usage"] = json.dumps(manifest["usage_kept_by_stage"], sort_keys=True).encode()
    return files


def check_output_folder(out: Path, n_read: int) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == n_read
    assert counts["kept"] + counts["rejected"] == counts["read"]
    assert sum(counts["rejected_by_reason"].values()) == counts["rejected"]
    records = read_jsonl(out / "vision_r1_cold.jsonl")
    rejects = read_jsonl(out / "rejects.jsonl")
    assert len(records) == counts["kept"] and len(rejects) == counts["rejected"]
    assert {r["id"] for r in records}.isdisjoint({r["id"] for r in rejects})
    for rej in rejects:
        assert set(rej) >= {"id", "stage", "reason", "detail"} and rej["reason"] and rej["detail"]
    table = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert table.num_rows == counts["kept"]
    assert [r["id"] for r in records] == table["id"]
    for rec, row in zip(records, table):
        human, gpt = rec["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].count("<image>") == (1 if isinstance(rec["image"], str) else len(rec["image"]))
        assert gpt["value"].startswith("<think>\n") and "\n</think>\n<answer> Final Answer:" in gpt["value"]
        assert ANSWER_RE.search(gpt["value"]).group(1) == row["answer"]
        assert (out / rec["image"]).resolve().is_file()  # resolvable from the dataset dir
        assert row["conversations"] == rec["conversations"]
        assert row["reasoning"] and row["description"] and row["pseudo_cot"] and row["pred_answer"]
        assert row["usage"]["reasoning"]["completion_tokens"] > 0
    info = json.loads((out / "dataset_info.json").read_text())
    (name, entry), = info.items()
    assert entry["file_name"] == "vision_r1_cold.jsonl" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "conversations", "images": "image"}
    for stage, prompt in manifest["prompts"].items():
        text = (ROOT / "prompts" / f"{prompt['name']}.j2").read_bytes()
        assert prompt["sha256"] == hashlib.sha256(text).hexdigest()
    return manifest


@pytest.mark.parametrize("fmt", ["llava-cot", "mulberry"])
def test_cli_converts_both_formats_end_to_end(tmp_path, sims, fmt):
    vlm, reasoner = sims
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=16, fmt=fmt)
    out = tmp_path / "out"
    # Fewer VLM slots than samples, so the VLM work spans several rounds (see the last check).
    proc = run_cli(convert_args(input_path, image_root, out, vlm, reasoner, fmt, "--vlm-concurrency", "4"))
    assert proc.returncode == 0, proc.stderr
    manifest = check_output_folder(out, 16)
    counts = manifest["counts"]
    # The simulated reasoner answers ~20% of questions wrongly; exactly those are rejected.
    assert 0 < counts["rejected"] < 8
    assert set(counts["rejected_by_reason"]) == {"wrong_answer"}
    for rej in read_jsonl(out / "rejects.jsonl"):
        assert rej["stage"] == "verify"
    assert manifest["usage_by_stage"]["reasoning"]["requests"] == 16
    assert manifest["endpoints"]["vlm"]["sent"] == 32 and manifest["endpoints"]["reasoner"]["sent"] == 16
    assert f"read 16  kept {counts['kept']}" in proc.stderr
    # The two endpoints worked at the same time: the first samples reason while later ones still
    # wait for the VLM (no stage barrier across the dataset).
    # (Each server's times count from its own start: compared on the shared monotonic clock.)
    vlm_stats, r_stats = sim_stats(vlm), sim_stats(reasoner)
    first_reasoning_start = r_stats["t0_monotonic"] + min(s["start"] for s in r_stats["service"])
    last_vlm_end = vlm_stats["t0_monotonic"] + max(s["end"] for s in vlm_stats["service"])
    assert first_reasoning_start < last_vlm_end


def test_faults_lose_no_rows_and_keep_the_same_set(tmp_path):
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=24)
    clean_v, clean_r = start_sims(reasoner={"wrong_rate": 0.2})
    faulty_v, faulty_r = start_sims(
        vlm={"p429": 0.2, "p500": 0.15, "pdrop": 0.1, "retry_after_s": 0.01},
        reasoner={"wrong_rate": 0.2, "p429": 0.2, "p500": 0.15, "pdrop": 0.1, "retry_after_s": 0.01},
    )
    try:
        convert_in_process(input_path, image_root, tmp_path / "clean", clean_v, clean_r)
        m = convert_in_process(input_path, image_root, tmp_path / "faulty", faulty_v, faulty_r)
        status = {**sim_stats(faulty_v)["status_counts"]}
        for k, v in sim_stats(faulty_r)["status_counts"].items():
            status[k] = status.get(k, 0) + v
    finally:
        for s in (clean_v, clean_r, faulty_v, faulty_r):
            s.stop()
    assert status.get("429", 0) > 0 and status.get("500", 0) > 0 and status.get("drop", 0) > 0
    assert m["endpoints"]["vlm"]["retries"] + m["endpoints"]["reasoner"]["retries"] >= sum(
        status.get(k, 0) for k in ("429", "500", "drop"))
    assert "request_failed" not in m["counts"]["rejected_by_reason"]
    assert output_files(tmp_path / "faulty") == output_files(tmp_path / "clean")


def _stored_keys(db: Path) -> set[str]:
    try:
        with sqlite3.connect(db) as conn:
            return {r[0] for r in conn.execute("SELECT key FROM responses")}
    except sqlite3.OperationalError:  # the run has not created its table yet
        return set()


def test_killed_run_resumes_without_duplicate_requests(tmp_path):
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=40)
    # Slow enough (~tens of ms per call) that the kill lands mid-run.
    vlm, reasoner = start_sims(vlm={"per_token_s": 0.0004, "slots": 4},
                               reasoner={"per_token_s": 0.0002, "slots": 4, "wrong_rate": 0.2})
    try:
        convert_in_process(input_path, image_root, tmp_path / "clean", vlm, reasoner)
        clean_keys = set(sim_stats(vlm)["completed_by_key"]) | set(sim_stats(reasoner)["completed_by_key"])
        reset_sim(vlm), reset_sim(reasoner)

        out = tmp_path / "resumed"
        db = out / ".state" / "responses.sqlite"
        args = convert_args(input_path, image_root, out, vlm, reasoner)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if db.exists() and len(_stored_keys(db)) >= 40:
                break
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # let the servers see the dropped connections before counting anew
        stored = _stored_keys(db)
        assert 40 <= len(stored) < len(clean_keys)
        assert not (out / "vision_r1_cold.jsonl").exists()

        reset_sim(vlm), reset_sim(reasoner)
        second = run_cli(args)
        assert second.returncode == 0, second.stderr
        resent = set(sim_stats(vlm)["completed_by_key"]) | set(sim_stats(reasoner)["completed_by_key"])
        assert resent.isdisjoint(stored)  # nothing already stored was requested again
        assert resent | stored == clean_keys
        assert sim_stats(vlm)["duplicates"] == 0 and sim_stats(reasoner)["duplicates"] == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["endpoints"]["vlm"]["cached"] + manifest["endpoints"]["reasoner"]["cached"] == len(stored)
    finally:
        vlm.stop(), reasoner.stop()
    assert output_files(out) == output_files(tmp_path / "clean")


def test_bad_rows_are_rejected_with_reasons_and_the_run_completes(tmp_path, sims):
    vlm, reasoner = sims
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "empty.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")

    def row(rid, image, q="<image>\nWhat is the decisive value?", a="<CONCLUSION>7</CONCLUSION>"):
        r = {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if image is not None:
            r["image"] = image
        return json.dumps(r)

    lines = [
        row("good", "ok.png"),
        row("missing", "nope.png"),
        row("corrupt", "corrupt.png"),
        row("empty", "empty.png"),
        row("escape", "../outside.png"),
        row("absolute", str(tmp_path / "outside.png")),
        row("noq", "ok.png", q="<image>\n   "),
        row("noanswer", "ok.png", a="I think it is 7."),
        row("noimage", None),
        "{this is not json",
        row("good2", "ok.png", q="<image>\nAnd the decisive value here?"),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli(convert_args(path, root, tmp_path / "out", vlm, reasoner))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = {r["id"]: (r["stage"], r["reason"]) for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")}
    assert reasons == {
        "missing": ("image", "image_missing"),
        "corrupt": ("image", "image_corrupt"),
        "empty": ("image", "image_empty"),
        "escape": ("image", "image_path_escape"),
        "absolute": ("image", "image_path_escape"),
        "noq": ("validate", "empty_question"),
        "noanswer": ("validate", "missing_answer"),
        "noimage": ("validate", "no_image"),
        "train:line10": ("read", "malformed_row"),
    }
    kept_ids = {r["id"] for r in read_jsonl(tmp_path / "out" / "vision_r1_cold.jsonl")}
    assert kept_ids <= {"good", "good2"}
    assert manifest["counts"]["read"] == 11
    assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 11


def test_endpoint_checks_fail_fast_with_exit_code(tmp_path, sims, demo_set):
    vlm, reasoner = sims
    input_path, image_root = demo_set
    out = tmp_path / "out"
    wrong = convert_args(input_path, image_root, out, vlm, reasoner)
    wrong[wrong.index("--reasoner-model") + 1] = "deepseek-r1-typo"
    proc = run_cli(wrong)
    assert proc.returncode == 2
    assert "does not serve model 'deepseek-r1-typo'" in proc.stderr and R1_MODEL in proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    args = convert_args(input_path, image_root, out, vlm, reasoner)
    args[args.index("--vlm-url") + 1] = dead
    proc = run_cli(args)
    assert proc.returncode == 2 and "unreachable" in proc.stderr
    assert not out.exists()  # nothing written before the endpoints were checked
    missing = [a for a in convert_args(input_path, image_root, out, vlm, reasoner)]
    del missing[missing.index("--vlm-model"):missing.index("--vlm-model") + 2]
    proc = run_cli(missing)
    assert proc.returncode == 2 and "--vlm-model" in proc.stderr


def test_api_keys_come_from_env_and_never_reach_outputs(tmp_path, demo_set):
    input_path, image_root = demo_set
    secret_v, secret_r = "sk-vlm-SECRET-1234567890", "sk-r1-SECRET-0987654321"
    vlm, reasoner = start_sims(vlm={"api_key": secret_v}, reasoner={"api_key": secret_r})
    try:
        args = convert_args(input_path, image_root, tmp_path / "out", vlm, reasoner)
        denied = run_cli(args, env={"COLDSTART_VLM_API_KEY": secret_v, "COLDSTART_REASONER_API_KEY": "wrong"})
        assert denied.returncode == 2 and "401" in denied.stderr and "COLDSTART_REASONER_API_KEY" in denied.stderr
        ok = run_cli(args, env={"COLDSTART_VLM_API_KEY": secret_v, "COLDSTART_REASONER_API_KEY": secret_r})
        assert ok.returncode == 0, ok.stderr
    finally:
        vlm.stop(), reasoner.stop()
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert secret_v.encode() not in blob and secret_r.encode() not in blob, path
    for stream in (ok.stdout, ok.stderr, denied.stdout, denied.stderr):
        assert secret_v not in stream and secret_r not in stream


def test_yaml_config_with_flag_overrides(tmp_path, sims, demo_set):
    vlm, reasoner = sims
    input_path, image_root = demo_set
    cfg_path = tmp_path / "convert.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "source_format": "llava-cot", "input": str(input_path), "image_root": str(image_root),
        "out": str(tmp_path / "from_file"), "limit": 3,
        "vlm": {"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 2},
        "reasoner": {"url": reasoner.url, "model": R1_MODEL, "sampling": {"max_tokens": 100000}},
        "hint_answer": True, "progress": False,
    }))
    proc = run_cli(["convert", "--config", str(cfg_path), "--limit", "5", "--out", str(tmp_path / "flagged")])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "flagged" / "manifest.json").read_text())
    assert manifest["counts"]["read"] == 5  # the flag beat the file's limit: 3
    assert manifest["config"]["vlm"]["max_concurrency"] == 2
    # A partial section keeps its role's defaults.
    assert manifest["config"]["reasoner"]["api_key_env"] == "COLDSTART_REASONER_API_KEY"
    assert manifest["config"]["reasoner"]["sampling"]["temperature"] == 0.6
    assert manifest["config"]["vlm"]["sampling"]["max_tokens"] == 2048
    assert manifest["config"]["hint_answer"] is True
    assert manifest["prompts"]["reasoning"]["name"] == "reasoning_hinted.v1"
    assert not (tmp_path / "from_file").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("vlm: {max_concurrency: 0}\n")
    proc = run_cli(["convert", "--config", str(bad)])
    assert proc.returncode == 2 and "max_concurrency" in proc.stderr


def test_only_samples_near_the_vlm_hold_their_images(tmp_path, monkeypatch):
    """The in-flight window is twice both roles' capacity (here 2 x (2 + 32) = 68 samples), but only
    the VLM's slots plus a margin (2 + 8) may hold loaded images; the rest wait to load theirs."""
    from pipeline import runner as runner_mod
    from pipeline.simulator import SimConfig, SimServer
    from pipeline.stages import Stages

    input_path, root = make_demo_dataset(tmp_path / "input", n=40)
    holding, peak = set(), [0]
    real_load, real_reason = runner_mod.load_images, Stages._reason

    def load(*a):
        out = real_load(*a)
        holding.add(a[0][0])  # the sample's image path names it
        peak[0] = max(peak[0], len(holding))
        return out

    async def reason(self, sample, prompt):
        holding.discard(sample.images[0])
        return await real_reason(self, sample, prompt)

    monkeypatch.setattr(runner_mod, "load_images", load)
    monkeypatch.setattr(Stages, "_reason", reason)
    with SimServer(SimConfig(role="vlm", models=[VLM_MODEL], slots=2, per_token_s=0.0005)) as vlm, \
            SimServer(SimConfig(role="reasoner", models=[R1_MODEL], slots=32, per_token_s=0.002)) as r1:
        cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=root, out=tmp_path / "out",
                            vlm={"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 2},
                            reasoner={"url": r1.url, "model": R1_MODEL, "max_concurrency": 32}, progress=False)
        assert cfg.max_in_flight == 68
        manifest = asyncio.run(Converter(cfg).run())
    assert manifest["counts"]["read"] == 40 and manifest["counts"]["kept"] > 0
    assert 2 <= peak[0] <= 10


def test_each_trace_takes_a_turn_on_the_loop_before_its_quality_rules(tmp_path, sims, monkeypatch):
    """The rules (~5 ms a trace) run one per loop iteration (eventloop.Turns): a burst of finished
    traces must not hold up the requests waiting to be sent."""
    from pipeline import runner as runner_mod
    from pipeline.eventloop import Turns
    from pipeline.filters import FilterChain

    made, gated = [], []

    class Counted(Turns):
        def __init__(self):
            super().__init__()
            made.append(self)

    real_chain = FilterChain.__call__

    def chain(self, trace):
        gated.append(made[0].taken)  # turns given out by the time this trace's rules run
        return real_chain(self, trace)

    monkeypatch.setattr(runner_mod, "Turns", Counted)
    monkeypatch.setattr(FilterChain, "__call__", chain)
    vlm, reasoner = sims
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=12)
    manifest = convert_in_process(input_path, image_root, tmp_path / "out", vlm, reasoner)
    assert manifest["counts"]["kept"] > 0 and len(gated) >= manifest["counts"]["kept"]
    assert made[0].taken == len(gated)
    assert all(a < b for a, b in zip(gated, gated[1:]))  # a fresh turn before each
