"""Quality gate over the reasoner's k traces: verify -> rule filters -> modality rewrite -> choose
-> optional judge. Selection rule: among traces that pass everything, keep the one with the
shortest reasoning (against overthinking; ties go to the earlier trace). The pass rate
k_correct / k (answer correctness alone) is stored as a difficulty signal for RL data selection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .llm import ModelClient
from .config import ConvertConfig
from .filters import Drop, FilterChain, FilterStats, Trace
from .filters.rules import (ConsistencyFilter, DegenerateFilter, FormatFilter, HintLeakFilter, LanguageFilter,
                            LengthFilter)
from .prompts import PromptLibrary
from .question import QuestionRenderer
from .records import ChatResult, Sample
from .rewrite import ModalityRewriter
from .special_tokens import strip_special_tokens

if TYPE_CHECKING:
    from .verify.pool import VerifierPool

_LLM_REWRITE = re.compile(r"<reasoning>\s*(.*?)\s*</reasoning>", re.DOTALL)
_VERDICT = re.compile(r"VERDICT:\s*(VALID|INVALID)", re.IGNORECASE)


def estimate_tokens(result: ChatResult, reasoning: str, k: int) -> int:
    """Reasoning tokens: the server's count for a single choice, else ~4 characters a token."""
    if k == 1 and result.usage.completion_tokens:
        return result.usage.completion_tokens
    return max(1, len(reasoning) // 4)


@dataclass
class Choice:
    index: int
    result: ChatResult
    reasoning_original: str
    reasoning: str  # after the modality rewrite
    pred: str
    match: str
    judge_response: str = ""  # the answer judge's reply when it decided the match


class QualityGate:
    def __init__(self, cfg: ConvertConfig, prompts: PromptLibrary, vlm: ModelClient, judge: ModelClient | None,
                 pool: "VerifierPool | None" = None):
        q = cfg.quality
        self.cfg = cfg
        filters = [
            FormatFilter(),
            DegenerateFilter(q.min_reasoning_words, q.max_line_repeats, 8, q.min_distinct_ngram_ratio),
            LengthFilter(q.min_reasoning_tokens, q.max_reasoning_tokens),
        ]
        if q.language:
            filters.append(LanguageFilter(q.language))
        self.consistency = ConsistencyFilter(pool=pool) if q.consistency else None
        if self.consistency is not None:
            filters.append(self.consistency)
        self.hint_leak = HintLeakFilter()
        filters.append(self.hint_leak)
        self.chain = FilterChain(filters)
        self.rewriter = ModalityRewriter(q.rewrite_rules, cfg.prompts.directory) if q.rewrite != "off" else None
        self.vlm, self.judge_client = vlm, judge
        self.question = QuestionRenderer(prompts, cfg.prompts.question)
        self.rewrite_tpl = prompts.get(cfg.prompts.rewrite_llm) if q.rewrite == "llm" else None
        self.judge_tpl = prompts.get(cfg.prompts.judge) if judge is not None else None
        self.rewrite_stats = FilterStats()
        self.judge_stats = FilterStats()

    def stats(self) -> dict[str, dict[str, int]]:
        out = self.chain.stats()
        out["rewrite"] = self.rewrite_stats.as_dict()
        if self.judge_client is not None:
            out["judge"] = self.judge_stats.as_dict()
        return out

    @property
    def tags(self) -> dict[str, str]:
        tags = {}
        if self.rewriter:
            tags["rewrite_rules"] = self.rewriter.tag
        if self.rewrite_tpl:
            tags["rewrite_llm"] = self.rewrite_tpl.tag
        if self.judge_tpl:
            tags["judge"] = self.judge_tpl.tag
        return tags

    async def prepare(self, trace: Trace) -> None:
        """Async work the sync filter chain needs first (the consistency check's math, in the pool)."""
        if self.consistency is not None:
            await self.consistency.prepare(trace)

    def trace(self, sample: Sample, description: str, result: ChatResult, pred: str | None) -> Trace:
        reasoning = result.reasoning if result.reasoning else result.content
        k = self.cfg.samples_per_question
        return Trace(question=self.question.prompt(sample), answer=sample.answer, options=sample.options,
                     description=description, reasoning=reasoning,
                     final_text=result.content if result.reasoning else "", pred=pred,
                     tokens=estimate_tokens(result, reasoning, k), hinted=self.cfg.hint_answer)

    async def rewrite(self, sample: Sample, trace: Trace) -> str | Drop:
        """Rule (or LLM, then rule) rewrite; the result must hold no reference and no new artifact."""
        return self.rewrite_stats.record(await self._rewrite(sample, trace))

    async def _rewrite(self, sample: Sample, trace: Trace) -> str | Drop:
        # Special tokens never reach the LLM-rewrite prompt nor the kept reasoning.
        text = strip_special_tokens(trace.reasoning)
        if self.rewrite_tpl is not None:
            res = await self.vlm.chat([{"role": "user", "content": self.rewrite_tpl.render(reasoning=text)}],
                                      stage="rewrite", priority=0, order=sample.index)
            m = _LLM_REWRITE.search(res.content)
            if res.finish_reason == "length" or not m:
                return Drop("rewrite_failed", f"LLM rewrite unusable (finish_reason={res.finish_reason})")
            text = strip_special_tokens(m.group(1))
            leak = self.hint_leak.filter(Trace(**{**trace.__dict__, "reasoning": text}))
            if isinstance(leak, Drop):
                return leak
        if self.rewriter is not None:
            # Words the question and options use ("Which best describes...") are not references.
            options = [o.text for o in sample.options]
            rewritten = self.rewriter.rewrite(text, trace.question, options)
            if (residue := self.rewriter.residue_in(rewritten, trace.question, options)) is not None:
                return Drop("rewrite_residue", f"still refers to the description: {residue!r}")
            if (artifact := self.rewriter.new_artifact(trace.reasoning, rewritten)) is not None:
                return Drop("rewrite_artifact", f"rewrite produced {artifact!r}")
            text = rewritten
        return text

    async def judge(self, sample: Sample, description: str, reasoning: str) -> tuple[str, str]:
        assert self.judge_client is not None and self.judge_tpl is not None
        prompt = self.judge_tpl.render(question=self.question.prompt(sample), answer=sample.answer,
                                       description=strip_special_tokens(description),
                                       reasoning=strip_special_tokens(reasoning))
        res = await self.judge_client.chat([{"role": "user", "content": prompt}], stage="judge", priority=0,
                                           order=sample.index)
        m = _VERDICT.search(res.content)
        verdict = "valid" if m and m.group(1).upper() == "VALID" else "invalid"
        self.judge_stats.record(verdict == "valid")
        return verdict, res.content
