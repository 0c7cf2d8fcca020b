"""`coldstart` console script: convert, demo, simulate."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from . import procenv

procenv.apply()  # before numpy / pyarrow load (see procenv.py)

import typer  # noqa: E402
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from . import eventloop
from .config import ConvertConfig, SourceFormat, load_config
from .llm import EndpointCheckFailed

app = typer.Typer(add_completion=False, help="Build cold-start reasoning datasets for VLMs by modality bridging.")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    # Text, not markup: messages carry URLs and model names that may contain brackets.
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(code)


def run_convert(cfg: ConvertConfig) -> dict[str, Any]:
    from .runner import Converter

    try:
        return eventloop.run(Converter(cfg).run(), cfg.event_loop)
    except EndpointCheckFailed as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _summary(manifest: dict[str, Any], out: Path) -> None:
    c = manifest["counts"]
    err.print(f"[bold]read {c['read']}  kept {c['kept']}  rejected {c['rejected']}[/]  -> {out}")
    for reason, n in c["rejected_by_reason"].items():
        err.print(f"  rejected {reason}: {n}")


@app.command()
def convert(
    source_format: Optional[str] = typer.Option(
        None, "--source-format", help="llava-cot | mulberry | jsonl | parquet | hf | sharegpt"),
    input: Optional[Path] = typer.Option(
        None, "--input", help="The dataset file (hf: a datasets folder, Parquet/Arrow files or a glob, or a hub id)."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Images resolve inside this folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder."),
    vlm_url: Optional[str] = typer.Option(None, "--vlm-url"),
    vlm_model: Optional[str] = typer.Option(None, "--vlm-model"),
    reasoner_url: Optional[str] = typer.Option(None, "--reasoner-url"),
    reasoner_model: Optional[str] = typer.Option(None, "--reasoner-model"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config; flags override it."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Convert only the first N rows."),
    source_name: Optional[str] = typer.Option(None, "--source-name"),
    hint_answer: Optional[bool] = typer.Option(None, "--hint-answer/--blind", help="Pass the GT answer to the reasoner."),
    vlm_concurrency: Optional[int] = typer.Option(None, "--vlm-concurrency"),
    reasoner_concurrency: Optional[int] = typer.Option(None, "--reasoner-concurrency"),
    max_in_flight: Optional[int] = typer.Option(None, "--max-in-flight"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Response store (default <out>/.state/responses.sqlite)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
    split: Optional[str] = typer.Option(None, "--split", help="hf: the split to read (default train)."),
    dataset_info: Optional[Path] = typer.Option(
        None, "--dataset-info", help="sharegpt: a LLaMA-Factory dataset_info.json; its folder is the dataset_dir."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="sharegpt: the entry to read from --dataset-info."),
    answer_regex: Optional[str] = typer.Option(
        None, "--answer-regex", help="sharegpt: the answer is group 1 of the last match in the assistant turn."),
    multi_turn: Optional[str] = typer.Option(
        None, "--multi-turn", help="all (follow-ups with their earlier turns as context) | first"),
    force: bool = typer.Option(False, "--force", help="Run again even when <out> holds this run's finished outputs."),
) -> None:
    """Convert one VQA dataset into a verified Vision-R1-cold style cold-start set."""
    overrides = {
        "source_format": source_format, "input": input, "image_root": image_root, "out": out,
        "vlm.url": vlm_url, "vlm.model": vlm_model, "reasoner.url": reasoner_url, "reasoner.model": reasoner_model,
        "limit": limit, "source_name": source_name, "hint_answer": hint_answer,
        "vlm.max_concurrency": vlm_concurrency, "reasoner.max_concurrency": reasoner_concurrency,
        "max_in_flight": max_in_flight, "cache_path": cache, "progress": progress,
        "split": split, "dataset_info": dataset_info, "dataset": dataset, "answer_regex": answer_regex,
        "multi_turn": multi_turn, "reuse_finished": False if force else None,
    }
    try:
        cfg = load_config(config, {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
        cfg.require_run_fields()
    except (ValidationError, ValueError, OSError) as exc:
        _fail(f"invalid configuration: {exc}")
    manifest = run_convert(cfg)
    _summary(manifest, cfg.out)


@app.command()
def demo(
    out: Path = typer.Option(Path("outputs/demo"), "--out"),
    n: int = typer.Option(24, "--n", help="Number of generated samples."),
) -> None:
    """DRY RUN: convert a small generated set against the bundled SIMULATED model endpoints."""
    from .demo_data import make_demo_dataset
    from .simulator import SimConfig, SimServer

    banner = ("[bold yellow]DRY RUN — model outputs are SIMULATED by the bundled test server; "
              "no real VLM or reasoner is called and the traces are not real data.[/]")
    err.print(banner)
    input_path, image_root = make_demo_dataset(out / "input", n=n)
    vlm = SimServer(SimConfig(role="vlm", models=["simulated-qwen2.5-vl"], slots=8, per_token_s=0.0005,
                              p429=0.05, p500=0.03)).start()
    reasoner = SimServer(SimConfig(role="reasoner", models=["simulated-deepseek-r1"], slots=8, per_token_s=0.0002,
                                   wrong_rate=0.15, reasoning_mode="inline", pdrop=0.03)).start()
    try:
        cfg = ConvertConfig(
            source_format="llava-cot", input=input_path, image_root=image_root, out=out / "converted",
            source_name="demo",
            vlm={"url": vlm.url, "model": "simulated-qwen2.5-vl", "max_concurrency": 8},
            reasoner={"url": reasoner.url, "model": "simulated-deepseek-r1", "max_concurrency": 8},
        )
        manifest = run_convert(cfg)
    finally:
        vlm.stop()
        reasoner.stop()
    _summary(manifest, cfg.out)
    err.print(banner)


@app.command()
def report(
    out_dir: Path = typer.Argument(..., help="An output folder of `coldstart convert`."),
    samples: int = typer.Option(50, "--samples", help="Records shown on the HTML page."),
) -> None:
    """Dataset report: funnel, lengths, pass@k, per source, reflection words; PNG plots and HTML."""
    from .report import build_report
    from .report.render import print_terminal, write_report

    if not (out_dir / "manifest.json").is_file():
        _fail(f"{out_dir} has no manifest.json: not a coldstart output folder")
    rep = build_report(out_dir, max_samples=samples)
    print_terminal(rep)
    page = write_report(rep)
    err.print(f"report written to {page.parent} (open {page})")


@app.command()
def sft(
    data: list[Path] = typer.Option(None, "--data", help="coldstart output folder(s) to train on."),
    config: Optional[Path] = typer.Option(None, "--config", help="SFT YAML (pipeline/sft/config.py fields)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder or hub id."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="LoRA or a full fine-tune."),
) -> None:
    """Supervised fine-tuning on kept records with TRL (defaults: the Vision-R1 cold-start recipe)."""
    from .sft.config import load_sft_config
    from .sft.train import train

    try:
        cfg = load_sft_config(config, {"data": data or None, "model": model, "output_dir": output_dir,
                                       "max_steps": max_steps, "use_lora": lora})
    except (ValidationError, OSError) as exc:
        _fail(f"invalid SFT configuration: {exc}")
    try:
        summary = train(cfg)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    losses = summary["losses"]
    err.print(f"trained {summary['steps']} steps on {summary['records']} records; "
              f"loss {losses[0] if losses else float('nan'):.4f} -> {losses[-1] if losses else float('nan'):.4f}; "
              f"model in {summary['final_model']}")


@app.command()
def export(
    out_dirs: list[Path] = typer.Argument(..., help="coldstart output folder(s)."),
    to: str = typer.Option(..., "--to", help="llamafactory | trl | hf"),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Where to write (default: <first folder>/export-<to>)."),
    name: str = typer.Option("vision_r1_cold", "--name", help="Dataset name (llamafactory)."),
    model: str = typer.Option("Qwen/Qwen2.5-VL-7B-Instruct", "--model", help="Model in the training YAML."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="trl/hf: push to this Hub repo."),
) -> None:
    """Export kept records for LLaMA-Factory, or as a datasets folder (images embedded) for TRL/HF."""
    from .sft.export import to_hf, to_llamafactory

    target = dest or out_dirs[0] / f"export-{to}"
    try:
        if to == "llamafactory":
            result = to_llamafactory(out_dirs, target, name=name, model=model)
        elif to in ("trl", "hf"):
            result = to_hf(out_dirs, target, push_to_hub=push_to_hub)
        else:
            _fail(f"--to must be llamafactory, trl or hf, not {to!r}")
    except FileNotFoundError as exc:
        _fail(str(exc))
    err.print(f"exported {result['rows']} rows -> {target}")
    if result.get("dropped"):  # records whose image files could not be read (trl/hf)
        err.print(f"left out {sum(result['dropped'].values())} of {result['read']} records: "
                  f"{result['dropped']}; first: {result['examples'][:3]}", style="yellow", markup=False)


@app.command()
def preflight(
    out_dirs: list[Path] = typer.Argument(..., help="coldstart output folder(s)."),
    model: Optional[str] = typer.Option(None, "--model", help="Processor to count tokens with (optional)."),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
) -> None:
    """Check records before training: <image> tokens vs images, images open, token lengths."""
    import json as _json

    from .sft.data import preflight as run_preflight, read_records

    processor = None
    if model:
        from .sft.loading import load_processor

        processor = load_processor(model)
    _, report = run_preflight(list(read_records(out_dirs)), processor, max_length)
    print(_json.dumps(report.as_dict(), indent=2))
    if report.kept < report.checked:
        raise typer.Exit(1)


@app.command()
def vllm(
    config: Path = typer.Option(..., "--config", help="Build YAML (servers: and convert: sections)."),
    run: bool = typer.Option(False, "--run", help="Start the servers here (needs vllm installed)."),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for every endpoint's /health."),
) -> None:
    """Print (or run) the `vllm serve` command lines for a build, and wait for /health."""
    import shlex
    import subprocess

    from .build_config import load_build_config
    from .vllm_helper import serve_commands, wait_for_health

    try:
        build = load_build_config(config)
        commands = serve_commands(build)
    except (ValidationError, ValueError, OSError) as exc:
        _fail(f"invalid build config: {exc}")
    for role, line in commands.items():
        print(f"# {role}\n{line}")
    if run:
        for line in commands.values():
            subprocess.Popen(shlex.split(line))
    if wait:
        urls = build.convert.vlm.endpoints + build.convert.reasoner.endpoints
        try:
            wait_for_health(urls, wait)
        except TimeoutError as exc:
            _fail(str(exc))
        err.print("all endpoints healthy")


@app.command()
def simulate(
    role: str = typer.Option("reasoner", "--role", help="vlm | reasoner"),
    model: list[str] = typer.Option(["sim-model"], "--model"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SimConfig fields."),
) -> None:
    """Serve a SIMULATED OpenAI-compatible endpoint (for tests and dry runs only)."""
    from . import yamlfile

    from .simulator import SimConfig, SimServer

    data = yamlfile.safe_load(config.read_text()) if config else {}
    data.setdefault("role", role)
    data.setdefault("models", model)
    sim = SimServer(SimConfig.model_validate(data), host=host, port=port)
    err.print(f"[yellow]SIMULATED {data['role']} endpoint on http://{host}:{port}/v1 (models: {data['models']})[/]")
    sim.serve_forever()


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
