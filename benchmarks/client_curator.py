"""The same 3-stage pipeline with bespokelabs-curator 0.1.31 (run by bench_convert in curator's own venv).

Curator's way: one `curator.LLM` subclass per stage, each run over the whole dataset (stage 1 for all
rows, then stage 2, then stage 3), backend "openai" with `base_url` in backend_params, images as
`curator.types.Image(url=<local file>)` (sent as the file's own bytes). With several replicas of
each role, the rows are split into one shard per replica pair, each shard in its own process
(curator takes one base_url per LLM). The prompts are the project's own templates (prompts/*.j2),
rendered with jinja2 exactly as `pipeline.prompts` renders them.

    curator-venv/bin/python benchmarks/client_curator.py --input train.jsonl --image-root images \
        --out results.jsonl --vlm-url http://127.0.0.1:18601/v1 --vlm-model bench-vlm ... --slots 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from workload import read_rows  # noqa: E402


def run_shard(args: argparse.Namespace, rows: list[dict], vlm_url: str, reasoner_url: str) -> list[dict]:
    import jinja2
    from bespokelabs import curator

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    template = {name: env.from_string((ROOT / "prompts" / f"{name}.j2").read_text())
                for name in ("pseudo_cot.v1", "description.v1", "reasoning_blind.v1")}

    def render(name: str, **fields: str) -> str:
        return template[name].render(**fields).strip()

    def image(row: dict):
        return curator.types.Image(url=str(args.image_root / row["image"]))

    class PseudoCot(curator.LLM):
        def prompt(self, row):
            return render("pseudo_cot.v1", question=row["question"], answer=row["answer"]), image(row)

        def parse(self, row, response):
            return {**row, "pseudo_cot": response}

    class Description(curator.LLM):
        def prompt(self, row):
            return render("description.v1", question=row["question"], pseudo_cot=row["pseudo_cot"]), image(row)

        def parse(self, row, response):
            return {**row, "description": response}

    class Reasoning(curator.LLM):
        def prompt(self, row):
            return render("reasoning_blind.v1", description=row["description"], question=row["question"])

        def parse(self, row, response):
            return {**row, "reasoning": response}

    def backend(url: str) -> dict:
        return {"base_url": url, "api_key": "unused", "max_concurrent_requests": args.slots,
                "max_requests_per_minute": 10_000_000, "max_tokens_per_minute": 10_000_000_000,
                "request_timeout": 3600, "max_retries": 3}

    vlm = {"model_name": args.vlm_model, "backend": "openai", "backend_params": backend(vlm_url)}
    r1 = {"model_name": args.reasoner_model, "backend": "openai", "backend_params": backend(reasoner_url)}
    data = PseudoCot(**vlm, generation_params={"max_tokens": 2048, "temperature": 0.2})(rows)
    data = Description(**vlm, generation_params={"max_tokens": 2048, "temperature": 0.2})(data.dataset)
    data = Reasoning(**r1, generation_params={"max_tokens": 16384, "temperature": 0.6, "top_p": 0.95})(data.dataset)
    return data.dataset.to_list()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--image-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vlm-url", action="append", required=True)
    ap.add_argument("--vlm-model", required=True)
    ap.add_argument("--reasoner-url", action="append", required=True)
    ap.add_argument("--reasoner-model", required=True)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--shard", type=int, default=None, help="internal: run shard i of len(--vlm-url)")
    args = ap.parse_args()
    rows = read_rows(args.input)
    shards = len(args.vlm_url)
    if args.shard is not None:
        out = run_shard(args, rows[args.shard::shards], args.vlm_url[args.shard], args.reasoner_url[args.shard])
        args.out.write_text("".join(json.dumps({k: r[k] for k in ("id", "reasoning")}) + "\n" for r in out))
        return
    if shards == 1:
        out = run_shard(args, rows, args.vlm_url[0], args.reasoner_url[0])
        args.out.write_text("".join(json.dumps({k: r[k] for k in ("id", "reasoning")}) + "\n" for r in out))
        return
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--shard", str(i),
                               "--out", f"{args.out}.{i}"], env={**os.environ}) for i in range(shards)]
    if any(p.wait() for p in procs):
        sys.exit(1)
    args.out.write_text("".join(Path(f"{args.out}.{i}").read_text() for i in range(shards)))


if __name__ == "__main__":
    main()
