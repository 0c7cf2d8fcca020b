"""Throughput benchmark: `coldstart convert` against two simulated endpoints (run by hand).

    .venv/bin/python benchmarks/bench_convert.py --n 500

The simulated servers run as separate processes (`coldstart simulate`) so their CPU does not
share the client's interpreter. Output lengths are lognormal (long-tailed); service time =
ttft + tokens * per_token_s, with a fixed number of slots per server (vLLM's max_num_seqs).

Reported against two floors computed from the service times the servers recorded:
  * busiest-endpoint bound: max over endpoints of (total service time / slots);
  * ideal streaming schedule: the same per-sample stage times replayed through a zero-overhead
    event simulation with the same slots, later stages first (what a perfect client would get).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import ConvertConfig  # noqa: E402
from pipeline.demo_data import make_demo_dataset  # noqa: E402
from pipeline.runner import Converter  # noqa: E402

STAGE_ENDPOINT = {"pseudo_cot": "vlm", "description": "vlm", "reasoning": "reasoner"}
ORDER = ["pseudo_cot", "description", "reasoning"]
PRIORITY = {"reasoning": 0, "description": 1, "pseudo_cot": 2}


def start_sim(cfg: dict, port: int, workdir: Path) -> subprocess.Popen:
    path = workdir / f"sim_{cfg['role']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "simulate", "--config", str(path),
                             "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("simulator did not start")


def fetch(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def ideal_streaming_makespan(times: dict[int, dict[str, float]], slots: dict[str, int]) -> float:
    """Event simulation: each sample runs its stages in order; a free slot goes to the latest stage."""
    ready: dict[str, list] = {"vlm": [], "reasoner": []}
    for sample in times:
        heapq.heappush(ready["vlm"], (PRIORITY["pseudo_cot"], sample, "pseudo_cot"))
    free = dict(slots)
    events: list = []  # (time, sample, stage)
    now = 0.0

    def dispatch() -> None:
        for ep in ready:
            while free[ep] and ready[ep]:
                _, sample, stage = heapq.heappop(ready[ep])
                free[ep] -= 1
                heapq.heappush(events, (now + times[sample][stage], sample, stage))

    dispatch()
    while events:
        now, sample, stage = heapq.heappop(events)
        free[STAGE_ENDPOINT[stage]] += 1
        nxt = ORDER.index(stage) + 1
        if nxt < len(ORDER):
            ns = ORDER[nxt]
            heapq.heappush(ready[STAGE_ENDPOINT[ns]], (PRIORITY[ns], sample, ns))
        dispatch()
    return now


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--vlm-slots", type=int, default=8)
    ap.add_argument("--reasoner-slots", type=int, default=16)
    ap.add_argument("--per-token-s", type=float, default=0.001)
    ap.add_argument("--ttft-s", type=float, default=0.05)
    ap.add_argument("--max-in-flight", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="coldstart-bench-"))
    input_path, image_root = make_demo_dataset(work / "input", n=args.n)
    common = {"per_token_s": args.per_token_s, "ttft_s": args.ttft_s, "keep_prompts": 10}
    sims = [
        start_sim({"role": "vlm", "models": ["bench-vlm"], "slots": args.vlm_slots, **common}, 18601, work),
        start_sim({"role": "reasoner", "models": ["bench-r1"], "slots": args.reasoner_slots,
                   "wrong_rate": 0.1, **common}, 18602, work),
    ]
    try:
        cfg = ConvertConfig(
            source_format="llava-cot", input=input_path, image_root=image_root, out=work / "out",
            vlm={"url": "http://127.0.0.1:18601/v1", "model": "bench-vlm", "max_concurrency": args.vlm_slots},
            reasoner={"url": "http://127.0.0.1:18602/v1", "model": "bench-r1",
                      "max_concurrency": args.reasoner_slots},
            max_in_flight=args.max_in_flight, progress=False,
        )
        t0 = time.monotonic()
        manifest = asyncio.run(Converter(cfg).run())
        wall = time.monotonic() - t0
        stats = {"vlm": fetch(18601, "/sim/stats"), "reasoner": fetch(18602, "/sim/stats")}
    finally:
        for p in sims:
            p.terminate()
            p.wait()

    slots = {"vlm": args.vlm_slots, "reasoner": args.reasoner_slots}
    busy = {ep: sum(s["end"] - s["start"] for s in st["service"]) for ep, st in stats.items()}
    bound = max(busy[ep] / slots[ep] for ep in busy)
    longest = max(s["end"] - s["start"] for st in stats.values() for s in st["service"])
    per_sample: dict[int, dict[str, float]] = defaultdict(dict)
    for st in stats.values():
        for s in st["service"]:
            per_sample[int(s["sample"])][s["stage"]] = s["end"] - s["start"]
    complete = {k: v for k, v in per_sample.items() if len(v) == 3}
    ideal = ideal_streaming_makespan(complete, slots)
    figures = {
        "n": args.n, "kept": manifest["counts"]["kept"], "rejected": manifest["counts"]["rejected"],
        "slots": slots, "per_token_s": args.per_token_s, "ttft_s": args.ttft_s,
        "max_in_flight": cfg.max_in_flight,
        "wall_s": round(wall, 2),
        "busiest_endpoint_bound_s": round(bound, 2),
        "ideal_streaming_schedule_s": round(ideal, 2),
        "longest_single_call_s": round(longest, 2),
        "wall_over_bound": round(wall / bound, 3),
        "wall_over_ideal_schedule": round(wall / ideal, 3),
        "utilisation": {ep: round(busy[ep] / (slots[ep] * wall), 3) for ep in busy},
        "requests": {ep: len(st["service"]) for ep, st in stats.items()},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
