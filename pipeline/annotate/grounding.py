"""Grounding DINO through transformers (AutoModelForZeroShotObjectDetection): text queries in,
boxes out, normalised to 0..1000. Batched; on GPU when present."""

from __future__ import annotations

from PIL import Image

from . import DetectedObject, normalise_box


class GroundingDinoBackend:
    name = "grounding-dino"

    def __init__(self, model: str, box_threshold: float = 0.35, text_threshold: float = 0.25,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model).to(self.device).eval()
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    @staticmethod
    def prompt(queries: list[str]) -> str:
        # Grounding DINO's text format: lower-case phrases, each ending with a period.
        return " ".join(q.lower().strip().rstrip(".") + "." for q in queries)

    def detect(self, images: list[Image.Image], queries: list[list[str]]) -> list[list[DetectedObject]]:
        import torch

        images = [im.convert("RGB") for im in images]
        inputs = self.processor(images=images, text=[self.prompt(q) for q in queries], padding=True,
                                return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(im.height, im.width) for im in images])
        out = []
        for im, res in zip(images, results):
            labels = res.get("text_labels") or res.get("labels") or []
            objects = []
            for score, box, label in zip(res["scores"].tolist(), res["boxes"].tolist(), labels):
                x1, y1, x2, y2 = box
                objects.append(DetectedObject(label=str(label).strip(), score=round(float(score), 4),
                                              box=normalise_box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2),
                                                                im.width, im.height)))
            out.append(sorted(objects, key=lambda o: -o.score))
        return out
