"""Benchmark workloads: realistic image files and a LLaVA-CoT style jsonl, cached on disk.

* png512: 512x512 PNG of noise-like content (a gradient plus +-4 noise: ~378 KB per file, close to
  the ~370 KB the issue measured), which no encoder can shrink much;
* jpeg1024: 1024x1024 JPEG "photos" (smooth colour fields plus Gaussian noise, quality 90, ~230 KB);
* tiny: 32x32 PNG, for the long run against fast endpoints (the images are not what it measures).

Every question carries "[item NNNNN]" so the benchmark can map any request a server saw -- from any
client, with or without coldstart's headers -- back to its sample; the stage is read from the prompt.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

ITEM = re.compile(r"\[item (\d+)\]")
QUESTIONS = [
    ("How many circles are in the picture? [item {i:05d}]", lambda r: str(int(r.integers(1, 12)))),
    ("Is there a triangle in the drawing? [item {i:05d}]", lambda r: ("Yes", "No")[int(r.integers(0, 2))]),
    ("What colour is the largest region? [item {i:05d}]\nChoices:\nA. red\nB. green\nC. blue\nD. yellow",
     lambda r: "ABCD"[int(r.integers(0, 4))]),
    ("What is the measure of the marked angle? [item {i:05d}]", lambda r: f"{int(r.integers(20, 160))}°"),
]


def _png512(rng: np.random.Generator) -> bytes:
    y, x = np.mgrid[0:512, 0:512]
    phase = rng.uniform(0, 255)
    base = np.stack([(x * 255 / 511 + phase) % 256, y * 255 / 511, (x + y) * 255 / 1022], -1)
    pixels = np.clip(base + rng.integers(-4, 5, size=(512, 512, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _jpeg1024(rng: np.random.Generator) -> bytes:
    y, x = np.mgrid[0:1024, 0:1024].astype(np.float32)
    f = rng.uniform(60, 200, size=3)
    base = np.stack([128 + 100 * np.sin(x / f[0]), 128 + 90 * np.cos(y / f[1]), 128 + 80 * np.sin((x + y) / f[2])], -1)
    pixels = np.clip(base + rng.normal(0, 6, size=(1024, 1024, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tiny(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


KINDS = {"png512": (_png512, "png"), "jpeg1024": (_jpeg1024, "jpg"), "tiny": (_tiny, "png")}


def make_workload(root: Path, kind: str, n: int, seed: int = 0) -> tuple[Path, Path]:
    """(train.jsonl, image_root) under root/<kind>-<n>; reused when already complete."""
    make, ext = KINDS[kind]
    folder = root / f"{kind}-{n}"
    input_path, image_root = folder / "train.jsonl", folder / "images"
    if input_path.is_file():
        return input_path, image_root
    image_root.mkdir(parents=True, exist_ok=True)
    tmp = input_path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            rel = f"{i // 1000:03d}/{i:06d}.{ext}"
            (image_root / rel).parent.mkdir(exist_ok=True)
            (image_root / rel).write_bytes(make(rng))
            template, answer = QUESTIONS[i % len(QUESTIONS)]
            row = {"id": f"bench-{i:06d}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\n" + template.format(i=i)},
                {"from": "gpt", "value": "<SUMMARY> Answer the question. </SUMMARY>\n\n<CAPTION> A generated image. "
                                         "</CAPTION>\n\n<REASONING> Look at the image. </REASONING>\n\n"
                                         f"<CONCLUSION> {answer(rng)} </CONCLUSION>"},
            ]}
            out.write(json.dumps(row) + "\n")
    tmp.rename(input_path)  # complete or absent: an interrupted build is redone
    return input_path, image_root


def read_rows(input_path: Path) -> list[dict]:
    """(id, image path, question, answer) per row, as the non-coldstart clients read them."""
    rows = []
    for line in input_path.read_text().splitlines():
        r = json.loads(line)
        question = r["conversations"][0]["value"].removeprefix("<image>\n")
        answer = re.search(r"<CONCLUSION>\s*(.*?)\s*</CONCLUSION>", r["conversations"][1]["value"], re.DOTALL).group(1)
        rows.append({"id": r["id"], "image": r["image"], "question": question, "answer": answer})
    return rows
