"""Typed records that flow through the pipeline: source -> stages -> verify -> writers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Option(BaseModel):
    letter: str
    text: str


class Turn(BaseModel):
    """An earlier question/answer turn of a multi-turn row: context for a follow-up question."""

    question: str
    answer: str
    # Images placed in this turn: its <image> tokens (a row without any token puts all its images in turn 0).
    turn_images: int = 0


class Sample(BaseModel):
    """One question about zero or more images, as every source reader emits it."""

    index: int  # position in the input stream; output order follows it
    id: str
    source: str
    images: list[str] = Field(default_factory=list)  # as written in the input, relative to image_root
    question: str = ""
    answer: str = ""
    options: list[Option] = Field(default_factory=list)
    # Earlier turns of the same conversation (multi-turn rows), oldest first; empty for a first turn.
    context: list[Turn] = Field(default_factory=list)
    # Images placed in this question's own turn (same rule as Turn.turn_images); the context turns' counts
    # plus this one add up to len(images), which hold the images of the context turns first.
    turn_images: int = 0
    system: str = ""  # a sharegpt row's system prompt, as LLaMA-Factory reads it ("" when none)


class Rejected(BaseModel):
    """A row that will not be kept, with a machine-readable reason and a human-readable detail."""

    index: int
    id: str
    source: str = ""
    stage: str  # read | validate | image | pseudo_cot | description | reasoning | verify | ...
    reason: str
    detail: str = ""

    @classmethod
    def of(cls, sample: "Sample", stage: str, reason: str, detail: str) -> "Rejected":
        return cls(index=sample.index, id=sample.id, source=sample.source, stage=stage, reason=reason, detail=detail)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # responses used, fresh or from the response store
    # Whether a response came from the store is operational, not data: it lives in the
    # endpoint stats, so a resumed run writes exactly the records an uninterrupted run writes.

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests


class ChatResult(BaseModel):
    """What a stage gets back from a model endpoint."""

    content: str
    reasoning: str | None = None
    finish_reason: str | None = None
    model: str
    usage: Usage
    cached: bool = False
    request_key: str


class Kept(BaseModel):
    """A verified sample, ready for the writers."""

    index: int
    id: str
    source: str
    images: list[str]  # relative to the output folder (LLaMA-Factory dataset_dir)
    source_images: list[str]  # as in the input, relative to image_root
    image_sha256: list[str]
    question: str  # as the model is asked it: with its options listed
    options: list[Option] = Field(default_factory=list)
    context: list[Turn] = Field(default_factory=list)  # earlier turns of a multi-turn row
    system: str = ""  # the row's system prompt (sharegpt), also the first turn of `conversations`
    answer: str
    pred_answer: str
    match: str  # which comparison accepted the answer
    # letter / option_text / numeric / math / string / yes_no / judge (pipeline.verify.compare.MATCH_METHODS)
    match_method: str = ""
    answer_judge_response: str = ""  # the answer judge's reply, when it decided the match
    pseudo_cot: str
    description: str
    reasoning: str  # after the modality rewrite; what the conversations hold
    reasoning_original: str  # as the reasoner wrote it, for audit
    final_text: str  # the reasoner's visible answer text (after </think>)
    k: int = 1  # traces asked for (best-of-k)
    k_correct: int = 1  # of which had the right answer
    pass_rate: float = 1.0  # k_correct / k: a difficulty signal for RL data selection
    filter: str = ""  # LLM judge verdict, "valid" / "invalid" ("" when no judge ran)
    judge_response: str = ""
    description_attempts: int = 1  # >1 when a description leaked the answer and was regenerated
    ocr: list[dict[str, Any]] = Field(default_factory=list)  # what the VLM was told: {text, box, score}
    objects: list[dict[str, Any]] = Field(default_factory=list)  # {label, box (0-1000), score}
    conversations: list[dict[str, str]]
    usage: dict[str, Usage]
    models: dict[str, str]
    prompts: dict[str, str]  # prompt name -> "name@sha256[:12]"
