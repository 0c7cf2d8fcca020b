"""Long run against fast simulated endpoints: is memory flat, how big is the store, is a re-run free?

    .venv/bin/python benchmarks/bench_scale.py                      # 100K samples
    .venv/bin/python benchmarks/bench_scale.py --n 20000 --checkpoints 5000,10000,20000

Both endpoints answer at once (per_token_s 0, ttft 0) with tiny outputs (median 30 tokens), and the
images are 32x32 PNG: what is measured is the client itself. While `coldstart convert` runs (a
subprocess, like a user's), the RSS of its process tree is sampled every second; the reasoner's
recorded completion times say how many samples were done at each moment, so the RSS is reported at
each checkpoint (and the peak up to it). Then the finished command is run again, unchanged: its wall
time and the number of requests the servers received (the target is 0).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_convert import R1_MODEL, VLM_MODEL, dir_bytes, sim_get, sim_reset, start_sim, tree_rss  # noqa: E402
from workload import make_workload  # noqa: E402


def run(cmd: list[str], log: Path, interval: float = 1.0) -> tuple[float, int, list[tuple[float, int]]]:
    """(wall, rc, [(monotonic time, tree RSS)])."""
    series = []
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                                stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            series.append((time.monotonic(), tree_rss(ps)))
            time.sleep(interval)
    return time.monotonic() - t0, proc.returncode, series


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--checkpoints", default="10000,100000")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--base-port", type=int, default=18800)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench")
    args = ap.parse_args()
    checkpoints = [c for c in map(int, args.checkpoints.split(",")) if c <= args.n]
    input_path, image_root = make_workload(args.out / "data", "tiny", args.n)
    work = args.out / "runs" / f"scale-{args.n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fast = {"slots": args.slots, "per_token_s": 0.0, "ttft_s": 0.0, "length_mu": math.log(30),
            "length_sigma": 0.3, "keep_prompts": 10}
    ports = {"vlm": args.base_port, "reasoner": args.base_port + 1}
    sims = [start_sim({"role": "vlm", "models": [VLM_MODEL], **fast}, ports["vlm"], work),
            start_sim({"role": "reasoner", "models": [R1_MODEL], **fast}, ports["reasoner"], work)]
    cfg = {"source_format": "llava-cot", "input": str(input_path), "image_root": str(image_root),
           "out": str(work / "convert"), "progress": False,
           "vlm": {"url": f"http://127.0.0.1:{ports['vlm']}/v1", "model": VLM_MODEL, "max_concurrency": args.slots},
           "reasoner": {"url": f"http://127.0.0.1:{ports['reasoner']}/v1", "model": R1_MODEL,
                        "max_concurrency": args.slots}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "--config", str(work / "config.yaml")]
    try:
        for p in ports.values():
            sim_reset(p)
        t_reset = time.monotonic()
        wall, rc, series = run(cmd, work / "first.log")
        done = sorted(t_reset + s["end"] for s in sim_get(ports["reasoner"], "/sim/stats")["service"])
        first_requests = {role: sim_get(p, "/sim/stats")["requests"] for role, p in ports.items()}
        at = {}
        for c in checkpoints:
            if c <= len(done):
                t = done[c - 1]
                i = bisect.bisect_right([s[0] for s in series], t)
                upto = [r for _, r in series[:max(i, 1)]]
                at[c] = {"seconds": round(t - t_reset, 1), "rss_mb": round(upto[-1] / 2**20, 1),
                         "peak_rss_mb_so_far": round(max(upto) / 2**20, 1)}
        store = dir_bytes(work / "convert" / ".state")
        for p in ports.values():
            sim_reset(p)
        rerun_wall, rerun_rc, rerun_series = run(cmd, work / "rerun.log")
        rerun_requests = {role: sim_get(p, "/sim/stats")["requests"] for role, p in ports.items()}
    finally:
        for p in sims:
            p.terminate()
            p.wait()
    manifest = json.loads((work / "convert" / "manifest.json").read_text()) if (work / "convert" / "manifest.json").is_file() else {}
    figures = {
        "n": args.n, "rc": rc, "wall_s": round(wall, 1), "samples_per_s": round(args.n / wall, 1),
        "counts": manifest.get("counts", {}), "requests": first_requests,
        "rss_at_samples": at, "peak_rss_mb": round(max((r for _, r in series), default=0) / 2**20, 1),
        "rss_ratio_last_over_first_checkpoint": (round(at[checkpoints[-1]]["rss_mb"] / at[checkpoints[0]]["rss_mb"], 2)
                                                 if len(at) >= 2 else None),
        "store_bytes": store, "store_bytes_per_sample": round(store / args.n),
        "output_bytes": dir_bytes(work / "convert") - store,
        "rerun": {"rc": rerun_rc, "wall_s": round(rerun_wall, 1), "requests": rerun_requests,
                  "peak_rss_mb": round(max((r for _, r in rerun_series), default=0) / 2**20, 1)},
    }
    print(json.dumps(figures, indent=2))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"scale-{args.n}-{stamp}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
