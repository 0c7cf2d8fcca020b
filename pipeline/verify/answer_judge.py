"""Optional LLM answer judge for the golds the rules leave undecided (sentences, free text).

Asked once per undecided trace through the same ModelClient API as the quality judge; its reply must
hold "VERDICT: SAME" or "VERDICT: DIFFERENT". Any other reply leaves the trace undecided.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..llm import ModelClient
from ..prompts import PromptTemplate
from ..question import QuestionRenderer
from ..records import Sample

_VERDICT = re.compile(r"VERDICT:\s*\**\s*(SAME|DIFFERENT)\b", re.IGNORECASE)
STAGE = "answer_judge"


@dataclass(frozen=True)
class JudgeDecision:
    same: bool | None  # None: the reply held no verdict
    response: str


class AnswerJudge:
    def __init__(self, client: ModelClient, template: PromptTemplate, question: QuestionRenderer):
        self.client, self.template, self.question = client, template, question

    def prompt(self, sample: Sample, pred: str) -> str:
        # The question with its options, rendered as every other prompt shows it.
        return self.template.render(question=self.question.prompt(sample), gold=sample.answer, pred=pred)

    async def decide(self, sample: Sample, pred: str) -> JudgeDecision:
        res = await self.client.chat([{"role": "user", "content": self.prompt(sample, pred)}], stage=STAGE,
                                     priority=0, order=sample.index)
        m = _VERDICT.search(res.content)
        if res.finish_reason == "length" or not m:
            return JudgeDecision(None, res.content)
        return JudgeDecision(m.group(1).upper() == "SAME", res.content)
