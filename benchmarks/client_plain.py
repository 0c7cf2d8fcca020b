"""The reference client: a plain AsyncOpenAI loop doing the 3 stages per sample (run by bench_convert).

What a careful user writes in an afternoon: original file bytes as a data URL (no re-encode), one
semaphore per role sized to its total slots, replicas round-robin, every sample streamed through its
stages as soon as the previous one returns. No store, no verification, no retries beyond the SDK's.

    python benchmarks/client_plain.py --input train.jsonl --image-root images --out results.jsonl \
        --vlm-url http://127.0.0.1:18601/v1 --vlm-model bench-vlm --reasoner-url ... --slots 64
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import sys
from pathlib import Path

from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline.prompts import PromptLibrary  # noqa: E402
from workload import read_rows  # noqa: E402

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class Role:
    def __init__(self, urls: list[str], model: str, slots: int, max_tokens: int, temperature: float):
        self.clients = itertools.cycle([AsyncOpenAI(base_url=u, api_key="unused", timeout=3600, max_retries=3)
                                        for u in urls])
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.slots = asyncio.Semaphore(slots * len(urls))

    async def chat(self, content) -> str:
        async with self.slots:
            resp = await next(self.clients).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": content}],
                max_tokens=self.max_tokens, temperature=self.temperature, top_p=0.95)
        return resp.choices[0].message.content or ""


async def main(args: argparse.Namespace) -> None:
    prompts = PromptLibrary()
    vlm = Role(args.vlm_url, args.vlm_model, args.slots, 2048, 0.2)
    r1 = Role(args.reasoner_url, args.reasoner_model, args.slots, 16384, 0.6)
    rows = read_rows(args.input)

    async def one(row: dict) -> dict:
        path = args.image_root / row["image"]
        data = await asyncio.to_thread(path.read_bytes)
        image = {"type": "image_url", "image_url": {
            "url": f"data:{MIME[path.suffix.lower()]};base64,{base64.b64encode(data).decode()}"}}
        pseudo = await vlm.chat([image, {"type": "text", "text": prompts.get("pseudo_cot.v1").render(
            question=row["question"], answer=row["answer"])}])
        desc = await vlm.chat([image, {"type": "text", "text": prompts.get("description.v1").render(
            question=row["question"], pseudo_cot=pseudo)}])
        answer = await r1.chat(prompts.get("reasoning_blind.v1").render(description=desc, question=row["question"]))
        return {"id": row["id"], "pseudo_cot": pseudo, "description": desc, "reasoning": answer}

    with args.out.open("w") as out:
        for done in asyncio.as_completed([one(r) for r in rows]):
            out.write(json.dumps(await done) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--image-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vlm-url", action="append", required=True)
    ap.add_argument("--vlm-model", required=True)
    ap.add_argument("--reasoner-url", action="append", required=True)
    ap.add_argument("--reasoner-model", required=True)
    ap.add_argument("--slots", type=int, default=64)
    asyncio.run(main(ap.parse_args()))
