"""Client-side CPU per image: the image loader of a git ref (default: main) against this checkout's.

Run by hand from the repository root:  python benchmarks/bench_images.py [--n 40] [--ref main]

Workloads (generated, deterministic): 512x512 PNGs of noise-like content (~370 KB each, so PNG
stays large, as in issue #10's workload), 1024x1024 JPEG photos (gradient + noise + shapes,
quality 90), and 512x512 RGBA PNGs with a transparent background (a transform is needed).
CPU is the process's CPU time (time.process_time) per image, best of --repeats passes, one thread.

Then, beside a busy event loop (`--rate`, default 125 images a second, the 4+4 replicas workload's
admission rate): the main thread runs pure Python (holding the GIL, as a loaded event loop does)
while six threads (the converter's default pool) screen-hash and load png512 images submitted at that
rate. Every call that releases the GIL (a stat, an open, a read) must take it back from the main
thread, waiting up to the 5 ms switch interval: printed are each image's latency (p50, p90) and the
main thread's own progress (millions of loop iterations a second), before and after.
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import images as new_images  # noqa: E402
from pipeline.config import ImageConfig  # noqa: E402


def noise_png(path: Path, seed: int) -> None:
    Image.effect_noise((512, 512), 2.3)  # warm the generator
    rng = random.Random(seed)
    chans = [Image.effect_noise((512, 512), 2.3 + rng.random() * 0.1) for _ in range(3)]
    tint = Image.linear_gradient("L").resize((512, 512)).point(lambda v: v // 8)
    Image.merge("RGB", [ImageChops.add(c, tint, offset=-16) for c in chans]).save(path)


def photo_jpeg(path: Path, seed: int, size: tuple[int, int] = (1024, 1024)) -> None:
    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize(size).rotate(rng.randrange(360)).convert("RGB")
    noise = Image.merge("RGB", [Image.effect_noise(size, 30) for _ in range(3)])
    img = Image.blend(base, noise, 0.35)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randrange(20, 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    img.save(path, quality=90)


def transparent_png(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    img = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for _ in range(20):  # a diagram: lines and labels on a transparent background
        pts = [rng.randrange(512) for _ in range(4)]
        draw.line(pts, fill=(20, 20, 20, 255), width=3)
        draw.text((rng.randrange(480), rng.randrange(500)), f"x{rng.randrange(100)}", fill=(200, 0, 0, 255))
    img.save(path)


def loader_at(ref: str) -> types.ModuleType:
    """pipeline/images.py as it was at `ref`, importable beside this checkout's modules."""
    src = subprocess.run(["git", "show", f"{ref}:pipeline/images.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    mod = types.ModuleType("pipeline._bench_old_images")
    mod.__package__ = "pipeline"
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, f"{ref}:pipeline/images.py", "exec"), mod.__dict__)
    return mod


def cpu_ms(fn, names: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for name in names:
            fn(name)
        best = min(best, (time.process_time() - t0) / len(names) * 1000)
    return best


def beside_busy_loop(mod: types.ModuleType, roots: object, names: list[str], rate: float) -> tuple[float, float, float]:
    """(latency p50 ms, p90 ms, main-thread M iterations/s): screening hash + load of each image on
    six threads, submitted at `rate` per second, while the main thread holds the GIL in Python."""
    cfg = ImageConfig()

    def job(name: str) -> float:
        t = time.perf_counter()
        mod.image_file_sha256(roots, name, cfg.max_file_bytes)
        mod.load_image(roots, name, cfg)
        return time.perf_counter() - t

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(job, names[:12]))  # threads started, folders remembered
        done, latencies = threading.Event(), []

        def feed() -> None:
            futures = []
            for name in names:
                futures.append(pool.submit(job, name))
                time.sleep(1 / rate)
            latencies.extend(f.result() for f in futures)
            done.set()

        threading.Thread(target=feed).start()
        t0, n = time.perf_counter(), 0
        while not done.is_set():
            for _ in range(1000):
                n += 1
        wall = time.perf_counter() - t0
    latencies.sort()
    return latencies[len(latencies) // 2] * 1e3, latencies[9 * len(latencies) // 10] * 1e3, n / wall / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40, help="images per workload")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref", default="main", help="git ref of the 'before' loader")
    ap.add_argument("--rate", type=float, default=125, help="images a second beside the busy loop")
    ap.add_argument("--busy-n", type=int, default=300, help="png512 images beside the busy loop")
    args = ap.parse_args()
    old = loader_at(args.ref)
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "img", Path(tmp) / "out"
        root.mkdir()
        phone = lambda path, seed: photo_jpeg(path, seed, (4032, 3024))  # noqa: E731
        workloads = {"png 512x512 noise": ("png", noise_png, args.n),
                     "jpeg 1024x1024 photo": ("jpg", photo_jpeg, args.n),
                     "png 512x512 rgba diagram": ("png", transparent_png, args.n),
                     "jpeg 4032x3024 phone photo": ("jpg", phone, max(2, args.n // 8))}
        files: dict[str, list[str]] = {}
        for w, (label, (ext, make, n)) in enumerate(workloads.items()):
            files[label] = [f"w{w}_{i}.{ext}" for i in range(n)]
            for i, name in enumerate(files[label]):
                make(root / name, i)
        roots = new_images.ImageRoots.of(root, (), out)
        old_cfg = {"encode_format": "PNG"}  # main's default: every image decoded and re-encoded as PNG
        print(f"{'workload':28} {'KB/file':>8} {'before ms':>10} {'after ms':>9}  after: what is sent")
        for label, names in files.items():
            kb = sum((root / n).stat().st_size for n in names) / len(names) / 1024
            cfgs = [("default max_pixels", ImageConfig())]
            if label.startswith("jpeg 1024"):
                cfgs.append(("max_pixels=1048576", ImageConfig(max_pixels=1024 * 1024)))
            for note, cfg in cfgs:
                old_cfg_obj = ImageConfig(**{**cfg.model_dump(), **old_cfg})
                before = cpu_ms(lambda n: old.load_image(root, n, old_cfg_obj), names, args.repeats)
                after = cpu_ms(lambda n: new_images.load_image(roots, n, cfg, out), names, args.repeats)
                sample = new_images.load_image(roots, names[0], cfg, out)
                sent = ",".join(t.split(":")[0] for t in sample.transforms) or "original bytes"
                print(f"{label:28} {kb:8.0f} {before:10.1f} {after:9.1f}  {sent} ({note})")

        names = [f"busy_{i}.png" for i in range(args.busy_n)]
        for i, name in enumerate(names):
            noise_png(root / name, 1000 + i)
        print(f"\nbeside a busy loop: {args.busy_n} png512 images at {args.rate:g}/s on six threads (screen + load)")
        print(f"{'':8} {'p50 ms':>7} {'p90 ms':>7} {'loop M it/s':>11}")
        for _ in range(args.repeats):  # interleaved: the machine's own drift hits both alike
            for label, mod, where in (("before", old, old.ImageRoots.of(root)), ("after", new_images, roots)):
                p50, p90, speed = beside_busy_loop(mod, where, names, args.rate)
                print(f"{label:8} {p50:7.1f} {p90:7.1f} {speed:11.2f}")


if __name__ == "__main__":
    main()
