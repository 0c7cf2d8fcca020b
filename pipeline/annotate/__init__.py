"""Structured image annotation before the description: OCR lines and grounded object boxes.

The description prompt (and so the reasoner) then sees exact text and object locations
(R1-Onevision's approach). Backends are small classes behind two methods; models load once per
process, run in batches on a worker thread, on GPU when one is present.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class OcrLine(BaseModel):
    text: str
    box: list[int]  # [x1, y1, x2, y2], normalised to 0..1000
    score: float


class DetectedObject(BaseModel):
    label: str
    box: list[int]  # [x1, y1, x2, y2], normalised to 0..1000 (Qwen-VL grounding style)
    score: float


class Annotations(BaseModel):
    ocr: list[OcrLine] = Field(default_factory=list)
    objects: list[DetectedObject] = Field(default_factory=list)
    route: list[str] = Field(default_factory=list)  # which annotators ran, and why others did not

    @property
    def empty(self) -> bool:
        return not self.ocr and not self.objects


def normalise_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> list[int]:
    clamp = lambda v: max(0, min(1000, int(round(v))))  # noqa: E731
    return [clamp(x1 * 1000 / width), clamp(y1 * 1000 / height), clamp(x2 * 1000 / width), clamp(y2 * 1000 / height)]
