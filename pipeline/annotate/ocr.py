"""OCR backends: RapidOCR (default: its wheel ships the ONNX models, runs offline on CPU) and
EasyOCR (needs torchvision, so only where that imports)."""

from __future__ import annotations

from PIL import Image

from . import OcrLine, normalise_box


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Top to bottom, then left to right within a row (rows: boxes whose vertical centres are close)."""
    if not lines:
        return lines
    by_y = sorted(lines, key=lambda l: (l.box[1] + l.box[3]) / 2)
    rows: list[list[OcrLine]] = []
    for line in by_y:
        centre = (line.box[1] + line.box[3]) / 2
        height = max(1, line.box[3] - line.box[1])
        if rows:
            last = rows[-1][-1]
            if abs(centre - (last.box[1] + last.box[3]) / 2) < 0.5 * height:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [l for row in rows for l in sorted(row, key=lambda l: l.box[0])]


def _quad_to_line(quad, text: str, score: float, width: int, height: int) -> OcrLine:
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    return OcrLine(text=text, box=normalise_box(min(xs), min(ys), max(xs), max(ys), width, height), score=float(score))


class RapidOcrBackend:
    name = "rapidocr"

    def __init__(self, min_score: float = 0.5):
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR()
        self.min_score = min_score

    def read(self, images: list[Image.Image]) -> list[list[OcrLine]]:
        import numpy as np

        out = []
        for im in images:  # RapidOCR takes one image per call
            result, _ = self.engine(np.array(im.convert("RGB")))
            lines = [_quad_to_line(quad, text, score, im.width, im.height) for quad, text, score in (result or [])
                     if float(score) >= self.min_score and text.strip()]
            out.append(reading_order(lines))
        return out


class EasyOcrBackend:
    name = "easyocr"

    def __init__(self, min_score: float = 0.5, languages: list[str] | None = None, gpu: bool | None = None):
        import easyocr
        import torch

        self.reader = easyocr.Reader(languages or ["en"], gpu=torch.cuda.is_available() if gpu is None else gpu)
        self.min_score = min_score

    def read(self, images: list[Image.Image]) -> list[list[OcrLine]]:
        import numpy as np

        out = []
        for im in images:
            result = self.reader.readtext(np.array(im.convert("RGB")))
            lines = [_quad_to_line(quad, text, score, im.width, im.height) for quad, text, score in result
                     if float(score) >= self.min_score and text.strip()]
            out.append(reading_order(lines))
        return out
