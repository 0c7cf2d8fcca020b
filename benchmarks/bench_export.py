"""Peak memory of `coldstart export --to hf` (run by hand).

    .venv/bin/python benchmarks/bench_export.py --rows 1000 10000

Writes a synthetic coldstart output folder per size (Parquet shards by the pipeline's own writer,
one small distinct JPEG per row under images/, Vision-R1-cold shaped conversations), then runs the
export in a fresh child process per size and reads that child's peak RSS (ru_maxrss from wait4).
The same child with only the imports gives the floor that any export pays.

`--code DIR` imports `pipeline` from another checkout (e.g. an older commit unpacked with
`git archive COMMIT pipeline | tar -x -C DIR`) to compare implementations on the same data.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from pipeline.records import Kept, Usage  # noqa: E402
from pipeline.writers import write_parquet_shards  # noqa: E402

REASONING = ("Looking at the figure, the two marked angles sit on a straight line, so they add up to "
             "180 degrees. The labelled one is 67 degrees, hence the other is 113 degrees. ") * 6


def make_output(out: Path, rows: int, side: int, seed: int = 0) -> int:
    """A converted output folder with `rows` kept records; returns the bytes of images written."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(rows):
        # Noise over a flat colour: JPEG sizes near those of photos of this size (a flat fill would be
        # a few hundred bytes and hide the memory the image bytes take).
        base = Image.new("RGB", (side, side), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        noise = Image.merge("RGB", [Image.effect_noise((side, side), 40 + i % 7) for _ in range(3)])
        im = Image.blend(base, noise, 0.5)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        (out / "images" / f"{i:07d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())

    def kept():
        for i in range(rows):
            q = f"Find the measure of angle {i % 97}.\nChoices:\nA: 57\nB: 113\nC: 67\nD: 123"
            think = f"<think>\n{REASONING}\n</think>\n<answer> Final Answer:B </answer>"
            yield Kept(index=i, id=f"row-{i:07d}", source="bench", images=[f"images/{i:07d}.jpg"],
                       source_images=[f"{i:07d}.jpg"], image_sha256=["0" * 64], question=q, answer="B",
                       pred_answer="B", match="choice", pseudo_cot="", description="", reasoning=REASONING,
                       reasoning_original=REASONING, final_text="B",
                       conversations=[{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": think}],
                       usage={"reasoning": Usage()}, models={"vlm": "v", "reasoner": "r"}, prompts={})

    write_parquet_shards(out, kept(), rows, shard_rows=2000)
    return total


CHILD = """
import json, sys, time
sys.path.insert(0, {code!r})
from pipeline.sft.export import to_hf
t = time.perf_counter()
if {run!r}:
    result = to_hf([{out!r}], {dest!r})
    print(json.dumps({{"rows": result["rows"], "seconds": time.perf_counter() - t}}))
else:
    import datasets, pyarrow, PIL.Image  # what an export imports anyway
    print(json.dumps({{"rows": 0, "seconds": 0.0}}))
"""


def _sample_anon(pid: int, peak: dict[str, int], stop: threading.Event) -> None:
    """Peak RssAnon (the process's own heap, not pages of files it maps) sampled every 10 ms."""
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak["kib"] = max(peak["kib"], int(line.split()[1]))
        except (OSError, ValueError):
            return
        stop.wait(0.01)


def run_child(code: Path, out: Path, dest: Path, run: bool) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(code=str(code), out=str(out), dest=str(dest), run=run)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    peak, stop = {"kib": 0}, threading.Event()
    sampler = threading.Thread(target=_sample_anon, args=(proc.pid, peak, stop), daemon=True)
    sampler.start()
    stdout = proc.stdout.read()
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the max over all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"export child failed with {proc.returncode}")
    # ru_maxrss (KiB on Linux) counts the pages of memory-mapped Arrow files the export reads back,
    # which the kernel can drop at will; RssAnon is memory the process itself holds.
    return {**json.loads(stdout), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "peak_anon_mib": round(peak["kib"] / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--side", type=int, default=224, help="image width and height in pixels")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose `pipeline` is measured")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    floor = run_child(args.code, work, work / "unused", run=False)
    print(json.dumps({"imports_only_peak_rss_mib": floor["peak_rss_mib"], "imports_only_peak_anon_mib": floor["peak_anon_mib"],
                      "code": str(args.code)}))
    for rows in args.rows:
        out = work / f"out-{rows}"
        if not (out / "data").is_dir():
            t = time.perf_counter()
            image_bytes = make_output(out, rows, args.side)
            print(f"# wrote {rows} rows, {image_bytes / 2**20:.1f} MiB of images in {time.perf_counter() - t:.0f}s",
                  file=sys.stderr)
        image_mib = sum(p.stat().st_size for p in (out / "images").iterdir()) / 2**20
        result = run_child(args.code, out, work / f"hf-{rows}-{time.time_ns()}", run=True)
        print(json.dumps({"rows": rows, "image_mib": round(image_mib, 1), **result}))


if __name__ == "__main__":
    main()
