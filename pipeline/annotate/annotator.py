"""The annotation stage: route, batch, run the backends on a worker thread, return Annotations."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..config import AnnotationConfig
from ..images import EncodedImage, open_as_seen
from ..records import Sample
from . import Annotations
from .queries import grounding_queries

_BACKENDS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def backend(kind: str, **kwargs: Any):
    """One backend (and so one model load) per process and settings, shared by every sample."""
    key = (kind, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    with _LOCK:
        if key not in _BACKENDS:
            if kind == "rapidocr":
                from .ocr import RapidOcrBackend
                _BACKENDS[key] = RapidOcrBackend(**kwargs)
            elif kind == "easyocr":
                from .ocr import EasyOcrBackend
                _BACKENDS[key] = EasyOcrBackend(**kwargs)
            elif kind == "grounding-dino":
                from .grounding import GroundingDinoBackend
                _BACKENDS[key] = GroundingDinoBackend(**kwargs)
            else:
                raise ValueError(f"unknown annotation backend {kind!r}")
        return _BACKENDS[key]


class Batcher:
    """Collects single requests into batches (size or wait, whichever first) for a batch function
    that runs on one worker thread: the model sees batches and is never used concurrently."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], size: int, wait_s: float, executor: ThreadPoolExecutor):
        self.fn, self.size, self.wait_s, self.executor = fn, size, wait_s, executor
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches: list[int] = []  # batch sizes seen, for tests and stats

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.batches.append(len(batch))
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, [i for i, _ in batch])
            for (_, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
        except Exception as exc:  # the whole batch failed: each of its samples is rejected, the run goes on
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)


class Annotator:
    def __init__(self, cfg: AnnotationConfig):
        self.cfg = cfg
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="annotate")
        self.ocr_backend = None
        self.grounding_backend = None
        if cfg.ocr.backend != "none":
            kwargs: dict[str, Any] = {"min_score": cfg.ocr.min_score}
            if cfg.ocr.backend == "easyocr":
                kwargs["languages"] = cfg.ocr.languages
            self.ocr_backend = backend(cfg.ocr.backend, **kwargs)
            self._ocr = Batcher(self.ocr_backend.read, cfg.batch_size, cfg.batch_wait_s, self._executor)
        if cfg.grounding.enabled:
            if not cfg.grounding.model:
                raise ValueError("annotation.grounding.model is required when grounding is enabled")
            self.grounding_backend = backend("grounding-dino", model=cfg.grounding.model,
                                             box_threshold=cfg.grounding.box_threshold,
                                             text_threshold=cfg.grounding.text_threshold)
            self._ground = Batcher(lambda items: self.grounding_backend.detect([i for i, _ in items], [q for _, q in items]),
                                   cfg.batch_size, cfg.batch_wait_s, self._executor)

    def routes(self, sample: Sample) -> tuple[bool, bool]:
        r = self.cfg.routing
        ocr = self.ocr_backend is not None and (r.ocr_sources is None or sample.source in r.ocr_sources)
        ground = self.grounding_backend is not None and (r.grounding_sources is None or sample.source in r.grounding_sources)
        return ocr, ground

    async def annotate(self, sample: Sample, images: list[EncodedImage], pseudo_cot: str) -> Annotations:
        do_ocr, do_ground = self.routes(sample)
        ann = Annotations()
        if not (do_ocr or do_ground) or not images:
            ann.route.append("skipped: source not routed")
            return ann
        # The original file, not the downscaled copy: small text matters here. Multi-image rows
        # are annotated on their first image, upright and with transparency on white, as the VLM sees it.
        image = await asyncio.to_thread(open_as_seen, images[0].resolved)
        if do_ocr:
            ann.ocr = await self._ocr(image)
            ann.route.append(f"ocr:{self.ocr_backend.name}")
        if do_ground:
            chars = sum(len(l.text) for l in ann.ocr)
            if do_ocr and chars > self.cfg.routing.grounding_max_ocr_chars:
                # Text-rich (document, chart, screenshot): boxes of "objects" add little.
                ann.route.append(f"grounding skipped: {chars} OCR chars > {self.cfg.routing.grounding_max_ocr_chars}")
            else:
                queries = grounding_queries(sample.question, pseudo_cot, self.cfg.grounding.max_queries)
                if queries:
                    ann.objects = await self._ground((image, queries))
                    ann.route.append(f"grounding:{'|'.join(queries)}")
        return ann

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
