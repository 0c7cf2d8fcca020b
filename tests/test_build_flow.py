"""Builds over several datasets: the Prefect flow (ephemeral API, a real server + deployment, Ray),
shard reuse, cross-shard dedup, several replicas with one failing, and the vLLM helper."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# Prefect reads its settings at import: a private home, no analytics, the ephemeral API.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-home-")
os.environ.update(PREFECT_HOME=_PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                  PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
os.environ.pop("PREFECT_API_URL", None)

import datasets  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from pipeline.build_config import BuildConfig  # noqa: E402
from pipeline.config import ConvertConfig  # noqa: E402
from pipeline.demo_data import make_demo_dataset  # noqa: E402
from pipeline.runner import Converter  # noqa: E402
from pipeline.simulator import SimConfig, SimServer  # noqa: E402
from pipeline.vllm_helper import serve_commands, wait_for_health  # noqa: E402

from .conftest import R1_MODEL, ROOT, VLM_MODEL, read_jsonl, reset_sim, run_cli, sim_stats, start_sims  # noqa: E402


@pytest.fixture(scope="module")
def sims():
    v, r = start_sims(reasoner={"wrong_rate": 0.2})
    yield v, r
    v.stop(), r.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    llava = make_demo_dataset(tmp / "llava", n=12, fmt="llava-cot", seed=1)
    mulberry = make_demo_dataset(tmp / "mulberry", n=10, fmt="mulberry", seed=2)
    # One Mulberry row repeats a LLaVA row (same image content, same question): a cross-shard duplicate.
    rows = json.loads(mulberry[0].read_text())
    first = json.loads(llava[0].read_text().splitlines()[0])
    shutil.copy(llava[1] / first["image"], mulberry[1] / "dup.png")
    rows.append({"images": ["dup.png"], "messages": [
        {"role": "user", "content": first["conversations"][0]["value"]},
        {"role": "assistant", "content": "The final answer is: " + first["conversations"][1]["value"].split("<CONCLUSION>")[1].split("<")[0]}]})
    mulberry[0].write_text(json.dumps(rows))
    return llava, mulberry


def build_config(tmp: Path, sims, inputs, name: str, **over) -> dict:
    (llava_in, llava_root), (mb_in, mb_root) = inputs
    vlm, reasoner = sims
    cfg = {
        "name": name, "output_root": str(tmp), "shard_rows": 5, "parallel_shards": 2,
        "datasets": [
            {"name": "llava_cot", "source_format": "llava-cot", "input": str(llava_in), "image_root": str(llava_root)},
            {"name": "mulberry", "source_format": "mulberry", "input": str(mb_in), "image_root": str(mb_root),
             "max_rows": 9},
        ],
        "convert": {"vlm": {"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 8},
                    "reasoner": {"url": reasoner.url, "model": R1_MODEL, "max_concurrency": 8}},
    }
    cfg.update(over)
    return cfg


def check_build(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["kept"] + c["rejected"] == c["read"]
    assert manifest["datasets"]["llava_cot"]["read"] == 12 and manifest["datasets"]["mulberry"]["read"] == 9
    info = json.loads((root / "dataset_info.json").read_text())
    assert set(info) == {"llava_cot", "mulberry"}
    rejects = read_jsonl(root / "rejects.jsonl")
    assert len(rejects) == c["rejected"] and all(r["dataset"] in info for r in rejects)
    for name, entry in info.items():
        records = read_jsonl(root / entry["file_name"])
        assert len(records) == manifest["datasets"][name]["kept"]
        for rec in records:
            assert (root / rec["image"]).resolve().is_file()  # resolvable from the build folder
        table = datasets.load_dataset("parquet", data_dir=str(root / "data" / name), split="train")
        assert table["id"] == [r["id"] for r in records]
    return manifest


def test_flow_builds_several_datasets_and_reuses_finished_shards(tmp_path, sims, inputs):
    from flows.build_flow import build_cold_start

    vlm, reasoner = sims
    cfg_path = tmp_path / "build.yaml"
    cfg_path.write_text(yaml.safe_dump(build_config(tmp_path, sims, inputs, "b1")))
    reset_sim(vlm), reset_sim(reasoner)
    out = build_cold_start(config=str(cfg_path))
    root = Path(out["build_dir"])
    manifest = check_build(root)
    assert [s["label"] for s in manifest["shards"]] == [
        "llava_cot/shard-00000", "llava_cot/shard-00001", "llava_cot/shard-00002",
        "mulberry/shard-00000", "mulberry/shard-00001"]
    assert all(s["status"] == "ran" for s in manifest["shards"])
    # The repeated row was kept once, in the earlier dataset.
    assert manifest["datasets"]["mulberry"]["rejected_by_reason"].get("duplicate", 0) + \
        manifest["datasets"]["mulberry"]["rejected_by_reason"].get("wrong_answer", 0) >= 1
    first_requests = sim_stats(vlm)["completed"] + sim_stats(reasoner)["completed"]
    assert first_requests > 0
    before = {p.name: p.read_bytes() for p in root.glob("*.jsonl")}

    reset_sim(vlm), reset_sim(reasoner)
    build_cold_start(config=str(cfg_path))
    again = json.loads((root / "manifest.json").read_text())
    assert all(s["status"] == "reused" for s in again["shards"])
    assert sim_stats(vlm)["completed"] + sim_stats(reasoner)["completed"] == 0
    assert {p.name: p.read_bytes() for p in root.glob("*.jsonl")} == before
    assert again["counts"] == manifest["counts"]


def test_cross_shard_duplicate_is_removed_at_merge(tmp_path, sims, inputs):
    from flows.build_flow import build_cold_start

    cfg = build_config(tmp_path, sims, inputs, "dups")
    cfg["datasets"][1]["max_rows"] = None
    cfg["convert"]["reasoner"]["model"] = R1_MODEL
    sims[1].config.wrong_rate = 0.0  # every trace correct, so the duplicate reaches the merge
    try:
        build_cold_start(config=cfg)
    finally:
        sims[1].config.wrong_rate = 0.2
    rejects = read_jsonl(tmp_path / "dups" / "rejects.jsonl")
    dup = {r["id"]: r for r in rejects if r["reason"] == "duplicate"}
    planted = dup["mulberry:10"]
    assert planted["stage"] == "merge" and "llava_cot:demo-00000" in planted["detail"]
    # Any other duplicate must really be one: same image bytes and the same question as the row it names.
    (llava_in, llava_root), (mb_in, mb_root) = inputs
    llava_rows = {json.loads(l)["id"]: json.loads(l) for l in llava_in.read_text().splitlines()}
    mb_rows = json.loads(mb_in.read_text())
    for rid, rej in dup.items():
        assert rej["dataset"] == "mulberry" and rej["stage"] == "merge"
        mine = mb_rows[int(rid.split(":")[1])]
        other = llava_rows[rej["detail"].split("llava_cot:")[1].split(" ")[0]]
        assert (mb_root / mine["images"][0]).read_bytes() == (llava_root / other["image"]).read_bytes()
        assert mine["messages"][0]["content"].replace("Question: ", "") == other["conversations"][0]["value"]


def _max_overlap(manifest: dict) -> int:
    """The most shards that were running at the same moment (from their [start, end] times)."""
    events = sorted([(s["ran_unix"][0], 1) for s in manifest["shards"]] + [(s["ran_unix"][1], -1) for s in manifest["shards"]],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_ray_runner_gives_the_same_output_as_local_threads_and_is_bounded(tmp_path, inputs):
    from flows.build_flow import build_cold_start

    # Servers with more slots than the client may use, so the client's own bound is what shows.
    vlm, reasoner = start_sims(vlm={"slots": 64, "per_token_s": 0.001},
                               reasoner={"slots": 64, "per_token_s": 0.0005, "wrong_rate": 0.2})
    try:
        def config(name, **over):
            cfg = build_config(tmp_path, (vlm, reasoner), inputs, name, **over)
            cfg["convert"]["vlm"]["max_concurrency"] = cfg["convert"]["reasoner"]["max_concurrency"] = 3
            return cfg

        build_cold_start(config=config("local"))
        reset_sim(vlm), reset_sim(reasoner)
        # 4 CPUs: Ray alone would start 4 of the 5 shards at once; parallel_shards=2 allows 2.
        build_cold_start(config=config("ray", runner="ray", ray_num_cpus=4))
        # Shards in different processes share one broker per role: never more than the replica's slots.
        assert sim_stats(vlm)["max_active"] <= 3 and sim_stats(reasoner)["max_active"] <= 3
    finally:
        vlm.stop(), reasoner.stop()
    for name in ("llava_cot.jsonl", "mulberry.jsonl", "rejects.jsonl", "dataset_info.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    ray_m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert ray_m["counts"] == local["counts"] and ray_m["datasets"] == local["datasets"]
    assert _max_overlap(ray_m) <= 2 and _max_overlap(local) <= 2


def test_ray_shard_workers_get_the_converters_process_environment(tmp_path, sims, inputs, monkeypatch):
    """Ray starts the shard workers itself (on a cluster, from raylets started elsewhere): Arrow's
    allocator and OpenBLAS settings (procenv.py) reach them through the task runner's runtime_env."""
    from prefect import flow, task

    from flows.build_flow import task_runner

    # Not inherited from here: the local cluster's processes start without them.
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)

    @task
    def worker_env() -> tuple[str, str | None, int]:
        import pyarrow as pa

        return pa.default_memory_pool().backend_name, os.environ.get("OPENBLAS_NUM_THREADS"), os.getpid()

    @flow
    def probe() -> tuple[str, str | None, int]:
        return worker_env.submit().result()

    build = BuildConfig.model_validate(build_config(tmp_path, sims, inputs, "env", runner="ray", ray_num_cpus=1))
    backend, blas, pid = probe.with_options(task_runner=task_runner(build))()
    assert pid != os.getpid()  # it ran in a Ray worker
    assert (backend, blas) == ("system", "1")


def test_running_shards_share_endpoint_capacity_instead_of_fixed_slices(tmp_path, inputs):
    """A shard running alone gets every slot (no fixed 1/parallel_shards slice), and shards running
    together never exceed the replica's max_concurrency between them."""
    from flows.build_flow import build_cold_start

    vlm, reasoner = start_sims(vlm={"slots": 64, "per_token_s": 0.002},
                               reasoner={"slots": 64, "per_token_s": 0.0005})
    try:
        def config(name, shard_rows):
            cfg = build_config(tmp_path, (vlm, reasoner), inputs, name, shard_rows=shard_rows, parallel_shards=3)
            cfg["datasets"] = cfg["datasets"][:1]  # llava_cot: 12 rows
            cfg["convert"]["vlm"]["max_concurrency"] = cfg["convert"]["reasoner"]["max_concurrency"] = 6
            return cfg

        build_cold_start(config=config("alone", shard_rows=100))  # one shard, parallel_shards=3
        alone = sim_stats(vlm)["max_active"]
        reset_sim(vlm), reset_sim(reasoner)
        build_cold_start(config=config("together", shard_rows=4))  # three shards at once
        together = sim_stats(vlm)["max_active"], sim_stats(reasoner)["max_active"]
    finally:
        vlm.stop(), reasoner.stop()
    assert alone == 6  # a fixed slice would have been 6 / 3 = 2
    assert together[0] <= 6 and together[1] <= 6


def test_several_replicas_one_failing_loses_no_rows(tmp_path):
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=16)
    vlm = SimServer(SimConfig(role="vlm", models=[VLM_MODEL])).start()
    good = SimServer(SimConfig(role="reasoner", models=[R1_MODEL], per_token_s=0.0001)).start()
    bad = SimServer(SimConfig(role="reasoner", models=[R1_MODEL], p500=1.0, max_faults_per_key=10**6)).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    try:
        cfg = ConvertConfig(
            source_format="llava-cot", input=input_path, image_root=image_root, out=tmp_path / "out",
            vlm={"url": vlm.url, "model": VLM_MODEL},
            reasoner={"urls": [bad.url, good.url, dead], "model": R1_MODEL, "max_concurrency": 2,
                      "failures_before_cooldown": 2, "cooldown_s": 60, "max_backoff_s": 0.05},
            progress=False)
        manifest = asyncio.run(Converter(cfg).run())
        bad_stats, good_stats = sim_stats(bad), sim_stats(good)
    finally:
        vlm.stop(), good.stop(), bad.stop()
    assert manifest["counts"]["kept"] + manifest["counts"]["rejected"] == 16
    assert "request_failed" not in manifest["counts"]["rejected_by_reason"]
    assert good_stats["completed"] == 16 and bad_stats["completed"] == 0
    # The failing replica was benched after a few failures instead of taking a third of the traffic.
    # Benched after 2 failures in a row; at most its max_concurrency (2) more were already on the wire.
    assert bad_stats["requests"] <= 2 + 2
    assert bad_stats["max_active"] <= 2 and good_stats["max_active"] <= 2  # per-replica limit held
    replicas = {r["url"]: r for r in manifest["endpoints"]["reasoner"]["replicas"]}
    assert replicas[bad.url]["cooldowns"] == 1 and replicas[dead]["sent"] == 0


def test_vllm_commands_and_health_wait(tmp_path, sims):
    vlm, reasoner = sims
    build = BuildConfig.model_validate({
        "datasets": [{"name": "d", "source_format": "llava-cot", "input": "x.jsonl", "image_root": "."}],
        "convert": {"vlm": {"url": vlm.url, "model": "Qwen/Qwen2.5-VL-72B-Instruct", "max_concurrency": 48},
                    "reasoner": {"url": reasoner.url, "model": "deepseek-ai/DeepSeek-R1"}},
        "servers": {"vlm": {"tensor_parallel_size": 4, "max_model_len": 16384, "images_per_prompt": 2}},
    })
    cmds = serve_commands(build)
    assert cmds["vlm"].startswith("vllm serve Qwen/Qwen2.5-VL-72B-Instruct ")
    for flag in ("--tensor-parallel-size 4", "--max-model-len 16384", "--enable-prefix-caching",
                 "--max-num-seqs 48", "--limit-mm-per-prompt '{\"image\": 2}'"):
        assert flag in cmds["vlm"]
    assert "--reasoning-parser deepseek_r1" in cmds["reasoner"] and "--reasoning-parser" not in cmds["vlm"]
    wait_for_health([vlm.url, reasoner.url], timeout_s=10)
    with pytest.raises(TimeoutError):
        wait_for_health(["http://127.0.0.1:9/v1"], timeout_s=1, interval_s=0.2)
    cfg_path = tmp_path / "b.yaml"
    cfg_path.write_text(yaml.safe_dump(build.model_dump(mode="json")))
    proc = run_cli(["vllm", "--config", str(cfg_path), "--wait", "10"])
    assert proc.returncode == 0 and "vllm serve deepseek-ai/DeepSeek-R1" in proc.stdout, proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def test_prefect_server_deployment_run_as_the_readme_says(tmp_path, sims, inputs):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT)
    served = None
    try:
        _wait_http(api + "/health", 120)
        serve_log = open(tmp_path / "serve.log", "w")
        served = subprocess.Popen([sys.executable, "-m", "flows.serve", "--name", "local"], env=env,
                                  stdout=serve_log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ls = subprocess.run([prefect, "deployment", "ls"], env=env, capture_output=True, text=True, cwd=ROOT)
            if "build-cold-start/local" in ls.stdout:
                break
            time.sleep(1)
        else:
            pytest.fail("the served deployment never appeared")
        cfg_path = tmp_path / "build.yaml"
        cfg_path.write_text(yaml.safe_dump(build_config(tmp_path, sims, inputs, "deployed")))
        run = subprocess.run([prefect, "deployment", "run", "build-cold-start/local", "--param",
                              f"config={cfg_path}", "--watch", "--watch-timeout", "240"],
                             env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-6000:]
        assert "Completed" in run.stdout + run.stderr
        check_build(tmp_path / "deployed")
        # The markdown artifact with the funnel is visible in Prefect.
        req = urllib.request.Request(api + "/artifacts/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        artifacts = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert any(a.get("key") == "build-deployed" and "| llava_cot |" in (a.get("data") or "") for a in artifacts)
    finally:
        for proc in (served, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
