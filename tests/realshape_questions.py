"""The questions of the real-shaped and published fixture rows as the model is asked them (options
listed), with their option texts: question contexts for the rewrite's tests and benchmark."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConvertConfig
from pipeline.prompts import PromptLibrary
from pipeline.question import QuestionRenderer
from pipeline.records import Sample
from pipeline.sources import iter_items

FIX = Path(__file__).resolve().parent / "fixtures"
SOURCES = (("mulberry", "realshape/mulberry_sft.json"), ("llava-cot", "realshape/llava_cot_train.jsonl"),
           ("llava-cot", "published/llava_cot_readme.jsonl"))


def fixture_questions() -> list[tuple[str, list[str]]]:
    renderer = QuestionRenderer(PromptLibrary())
    out = []
    for fmt, rel in SOURCES:
        # write_images=False: nothing is written, so `out` is never created.
        cfg = ConvertConfig(source_format=fmt, input=FIX / rel, image_root=FIX, out=FIX / "unused")
        out += [(renderer.prompt(s), [o.text for o in s.options]) for s in iter_items(cfg, write_images=False)
                if isinstance(s, Sample)]
    return out
