"""A small generated VQA set with known answers (images drawn with PIL), for the demo and tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (224, 224), "white")
    return img, ImageDraw.Draw(img)


def _item(i: int, rng: random.Random) -> tuple[Image.Image, str, str, str]:
    """(image, question, answer, kind) for item i."""
    kind = ("arithmetic", "count", "color", "shape")[i % 4]
    img, draw = _canvas()
    if kind == "arithmetic":
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        draw.text((30, 90), f"{a} + {b} = ?", fill="black", font=ImageFont.load_default(size=36))
        return img, f"What is the value of the expression written in image {i}?", str(a + b), kind
    if kind == "count":
        k = rng.randint(1, 7)
        for j in range(k):
            x = 20 + (j % 4) * 50
            y = 40 + (j // 4) * 80
            draw.ellipse((x, y, x + 36, y + 36), fill=COLORS["blue"])
        return img, f"How many circles are in picture {i}?", str(k), kind
    if kind == "color":
        names = list(COLORS)
        name = rng.choice(names)
        draw.rectangle((50, 50, 174, 174), fill=COLORS[name])
        options = "\n".join(f"{chr(65 + j)}. {n}" for j, n in enumerate(names))
        return img, f"What color is the square in figure {i}?\n{options}", chr(65 + names.index(name)), kind
    has = rng.random() < 0.5
    if has:
        draw.polygon([(112, 40), (40, 180), (184, 180)], fill=COLORS["green"])
    else:
        draw.rectangle((60, 60, 164, 164), fill=COLORS["green"])
    return img, f"Is there a triangle in drawing {i}?", "Yes" if has else "No", kind


def make_demo_dataset(root: Path, n: int = 24, fmt: str = "llava-cot", seed: int = 0) -> tuple[Path, Path]:
    """Write images + a LLaVA-CoT jsonl or Mulberry json array; returns (input_file, image_root)."""
    rng = random.Random(seed)
    image_root = root / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, question, answer, kind = _item(i, rng)
        rel = f"{kind}/{i:05d}.png"
        (image_root / kind).mkdir(exist_ok=True)
        img.save(image_root / rel)
        if fmt == "llava-cot":
            rows.append({"id": f"demo-{i:05d}", "image": rel, "conversations": [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": f"<SUMMARY>Answer the question.</SUMMARY> <CAPTION>A synthetic {kind} image.</CAPTION> "
                                         f"<REASONING>Look at the image.</REASONING> <CONCLUSION>{answer}</CONCLUSION>"},
            ]})
        else:
            rows.append({"images": [rel], "messages": [
                {"role": "user", "content": f"<image>\nQuestion: {question}"},
                {"role": "assistant", "content": f"### Image Description: A synthetic {kind} image. ### Rationales: Look. "
                                                 f"### Let's think step by step. ### Step 1: Look. ### The final answer is: {answer}"},
            ]})
    if fmt == "llava-cot":
        path = root / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = root / "mulberry_sft.json"
        path.write_text(json.dumps(rows, indent=1))
    return path, image_root
