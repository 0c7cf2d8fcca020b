"""The three model stages of modality bridging, per sample.

pseudo-CoT (VLM: image + question + GT) -> description (VLM: image + question + pseudo-CoT)
-> reasoning (text-only reasoner: description + question, GT only in hinted mode).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .llm import ModelClient, RequestFailed
from .filters import Drop, FilterStats
from .annotate import Annotations
from .filters.leaks import answer_leak
from .config import ConvertConfig
from .images import EncodedImage
from .prompts import PromptLibrary, PromptTemplate
from .question import QuestionRenderer
from .records import ChatResult, Sample
from .special_tokens import strip_special_tokens

STAGES = ("pseudo_cot", "description", "reasoning")
# Later stages first: a free slot goes to the sample closest to done.
PRIORITY = {"reasoning": 0, "description": 1, "pseudo_cot": 2}


class StageRejected(Exception):
    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(f"{stage}: {reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail


def _vlm_messages(images: list[EncodedImage], text: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": im.data_url}} for im in images]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@dataclass
class StageOutputs:
    pseudo_cot: ChatResult
    description: ChatResult
    reasoning: list[ChatResult]  # k traces (best-of-k); usage of the request(s) on the first
    description_attempts: int = 1
    annotations: Annotations | None = None


class Stages:
    def __init__(self, cfg: ConvertConfig, vlm: ModelClient, reasoner: ModelClient, prompts: PromptLibrary):
        self.cfg = cfg
        self.vlm = vlm
        self.reasoner = reasoner
        p = cfg.prompts
        self.templates: dict[str, PromptTemplate] = {
            "pseudo_cot": prompts.get(p.pseudo_cot),
            "description": prompts.get(p.description),
            "reasoning": prompts.get(p.reasoning_hinted if cfg.hint_answer else p.reasoning_blind),
        }
        # The question as every prompt shows it: options listed once, earlier turns of a multi-turn row first.
        self.question = QuestionRenderer(prompts, p.question)
        self.templates["question"] = self.question.template
        if cfg.quality.answer_leak == "regenerate":
            self.templates["description_noleak"] = prompts.get(p.description_noleak)
        self.leak_stats = FilterStats()  # the answer-leak check on descriptions
        self.leak_regenerated = 0
        self.annotator = None
        if cfg.annotation.enabled:
            from .annotate.annotator import Annotator

            self.annotator = Annotator(cfg.annotation)
            self.templates["description_annotated"] = prompts.get(p.description_annotated)

    @property
    def prompt_tags(self) -> dict[str, str]:
        return {stage: t.tag for stage, t in self.templates.items()}

    @staticmethod
    def _accept(stage: str, result: ChatResult) -> ChatResult:
        if result.finish_reason == "length":
            # Never keep a half-finished generation; the limit is max_tokens of that endpoint.
            raise StageRejected(stage, "truncated", f"finish_reason=length after {result.usage.completion_tokens} tokens")
        if not result.content.strip() and not (result.reasoning or "").strip():
            raise StageRejected(stage, "empty_output", f"finish_reason={result.finish_reason}")
        return result

    async def _vlm(self, stage: str, sample: Sample, images: list[EncodedImage], text: str) -> ChatResult:
        result = await self.vlm.chat(
            # Each data URL (llm.DataUrl) carries its image's cache_key into the request key.
            _vlm_messages(images, text), stage=stage, priority=PRIORITY[stage], order=sample.index,
        )
        # The VLM's text is carried into the next prompt (pseudo-CoT -> description -> reasoning,
        # previous description -> no-leak retry): its special tokens would break a real server.
        result.content = strip_special_tokens(result.content)
        return self._accept(stage, result)

    async def run(self, sample: Sample, images: list[EncodedImage],
                  on_stage: Callable[[str], None] | None = None) -> StageOutputs:
        t = self.templates
        stage = "pseudo_cot"

        def enter(name: str) -> None:
            nonlocal stage
            stage = name
            if on_stage:
                on_stage(name)

        try:
            return await self._run(sample, images, t, enter)
        except RequestFailed as exc:
            raise StageRejected(stage, exc.reason, exc.detail) from None

    async def _describe(self, sample: Sample, images: list[EncodedImage], pseudo: ChatResult, t,
                        ann: Annotations | None = None) -> tuple[ChatResult, int]:
        """The description, checked for an announced answer; regenerated or rejected by config."""
        question = self.question.prompt(sample)
        if ann is not None and not ann.empty:
            prompt = t["description_annotated"].render(
                question=question, pseudo_cot=pseudo.content,
                ocr=[l.model_dump() for l in ann.ocr], objects=[o.model_dump() for o in ann.objects])
        else:
            prompt = t["description"].render(question=question, pseudo_cot=pseudo.content)
        description = await self._vlm("description", sample, images, prompt)
        mode = self.cfg.quality.answer_leak
        if mode == "off":
            return description, 1
        attempts = 1
        while True:
            leak = self.leak_stats.record(answer_leak(description.content, sample.answer, sample.options))
            if not isinstance(leak, Drop):
                return description, attempts
            if mode != "regenerate" or attempts > self.cfg.quality.max_leak_regenerations:
                raise StageRejected("description", leak.reason, leak.detail)
            self.leak_regenerated += 1
            attempts += 1
            previous = description
            description = await self._vlm(
                "description", sample, images,
                t["description_noleak"].render(question=question, pseudo_cot=pseudo.content,
                                               previous=previous.content),
            )
            description.usage.add(previous.usage)

    async def _reason(self, sample: Sample, prompt: str) -> list[ChatResult]:
        k = self.cfg.samples_per_question
        messages = [{"role": "user", "content": prompt}]  # no system prompt for R1
        common = {"stage": "reasoning", "priority": PRIORITY["reasoning"], "order": sample.index}
        if k == 1 or self.cfg.reasoner.use_n:
            return await self.reasoner.chat_choices(messages, n=k, **common)
        batches = await asyncio.gather(*(self.reasoner.chat_choices(messages, variant=i, **common) for i in range(k)))
        return [r for batch in batches for r in batch]

    async def _run(self, sample, images, t, enter) -> StageOutputs:
        enter("pseudo_cot")
        question = self.question.prompt(sample)
        pseudo = await self._vlm(
            "pseudo_cot", sample, images, t["pseudo_cot"].render(question=question, answer=sample.answer)
        )
        ann = None
        if self.annotator is not None:
            enter("annotate")
            try:
                ann = await self.annotator.annotate(sample, images, pseudo.content)
            except Exception as exc:  # a model error costs this row, not the run
                raise StageRejected("annotate", "annotation_failed", f"{type(exc).__name__}: {exc}") from None
        enter("description")
        description, attempts = await self._describe(sample, images, pseudo, t, ann)
        # The VLM is done with the images. A sample spends most of its life waiting for or reading
        # the reasoner: it holds no image bytes meanwhile (1024 samples in flight held ~0.5 GB of
        # base64). Only a transformed image keeps its bytes, to be written for the trainer if kept.
        images[:] = [im if im.transforms else replace(im, data_url=b"") for im in images]
        prompt = t["reasoning"].render(
            description=description.content, question=question, answer=sample.answer
        )
        enter("reasoning")
        traces = await self._reason(sample, prompt)
        usable = [r for r in traces if r.finish_reason != "length" and (r.content.strip() or (r.reasoning or "").strip())]
        if not usable:
            self._accept("reasoning", traces[0])  # raises truncated / empty_output with its detail
        return StageOutputs(pseudo, description, traces, attempts, ann)
