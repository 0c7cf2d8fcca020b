"""The executor: streams samples through the stages with bounded in-flight work, then writes.

Source -> (validate, images, pseudo-CoT, description, reasoning, verify) per sample, each sample
moving on as soon as its previous step finishes -> outcome table -> writers. A row never stops
the run: every failure becomes a Rejected outcome with its stage and reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable

import orjson

from . import __version__
from .llm import EndpointCheckFailed, ModelClient
from .config import ConvertConfig
from .counters import RunCounters
from .dedup import Decontaminator, Deduplicator, file_hashes, load_benchmark
from .eventloop import Turns
from .filters import Drop
from .images import ImageError, ImageRoots, kept_image_paths, load_images
from .quality import Choice, QualityGate
from .progress import Progress
from .prompts import PromptLibrary
from .records import Kept, Rejected, Sample, Usage
from .results import ResultTable
from .sources import check_input, estimate_rows, open_source
from .stages import STAGES, StageOutputs, StageRejected, Stages
from .verify.answer_judge import AnswerJudge
from .finished import clear_finished, finished_manifest, mark_finished
from .kept import kept_record
from .memory import limit_malloc_arenas
from .question import QuestionRenderer
from .verify.compare import Verdict
from .verify.pool import VerifierPool
from .writers import (JSONL_NAME, atomic_open, dataset_info, reject_row, vision_r1_record, write_json, write_jsonl,
                      write_parquet_shards)

SCREEN_AHEAD = 64  # rows whose image hashes are read ahead of admission (see Converter._stream)
log = logging.getLogger("coldstart")


def validate_sample(s: Sample) -> Rejected | None:
    if not s.question.strip():
        return Rejected.of(s, "validate", "empty_question", "the question is empty")
    if not s.answer.strip():
        return Rejected.of(s, "validate", "missing_answer", "no ground-truth answer")
    if not s.images:
        return Rejected.of(s, "validate", "no_image", "the row names no image")
    return None


class Converter:
    def __init__(self, cfg: ConvertConfig, progress: bool | None = None, schedulers: dict[str, Any] | None = None):
        """`schedulers`: role -> a Scheduler shared with other shards of a build (pipeline.llm.scheduling)."""
        cfg.require_run_fields()
        check_input(cfg)  # a wrong column name or an unreadable input fails here, before any request
        self.schedulers = schedulers or {}
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.counters = RunCounters()
        self.roots = ImageRoots.from_config(cfg)  # image_root, image_roots and <out>/images/
        self.turns = Turns()  # the quality rules take turns on the loop (eventloop.Turns)
        self.show_progress = cfg.progress if progress is None else progress

    async def run(self) -> dict[str, Any]:
        from .llm import ResponseStore

        cfg = self.cfg
        limit_malloc_arenas()  # freed image buffers are reused, not kept per thread (pipeline/memory.py)
        if cfg.reuse_finished and (done := finished_manifest(cfg)) is not None:
            log.info("%s already holds this run's finished outputs (same input, config and prompts): nothing to do",
                     cfg.out)
            return done
        clear_finished(cfg)  # from here on the outputs may change: they count as finished only at the end
        vlm = ModelClient(cfg.vlm, "vlm", scheduler=self.schedulers.get("vlm"))
        reasoner = ModelClient(cfg.reasoner, "reasoner", scheduler=self.schedulers.get("reasoner"))
        self.clients = {"vlm": vlm, "reasoner": reasoner}
        judge = None
        if cfg.judge.enabled:
            judge = self.clients["judge"] = ModelClient(cfg.judge, "judge", scheduler=self.schedulers.get("judge"))
        self.answer_judge: AnswerJudge | None = None
        if cfg.verify.judge.enabled:
            # The template is loaded here so a missing prompt fails before the first request.
            library = PromptLibrary(cfg.prompts.directory)
            self.answer_judge = AnswerJudge(ModelClient(cfg.verify.judge, "answer_judge",
                                                        scheduler=self.schedulers.get("answer_judge")),
                                            library.get(cfg.prompts.answer_judge),
                                            QuestionRenderer(library, cfg.prompts.question))
            self.clients["answer_judge"] = self.answer_judge.client
        store = None
        pool: VerifierPool | None = None
        try:
            # Fail fast, before anything is read or written.
            await asyncio.gather(*(cl.check() for cl in self.clients.values()))
            self.out.mkdir(parents=True, exist_ok=True)
            store = ResponseStore(cfg.resolved_cache_path, cfg.store.mode, cfg.store.local_dir, cfg.store.checkpoint_s)
            for cl in self.clients.values():
                cl.store = store
            prompts = PromptLibrary(cfg.prompts.directory)
            stages = Stages(cfg, vlm, reasoner, prompts)
            # math-verify only ever runs in these worker processes, with a hard timeout (also for the
            # consistency filter); each converter process (a Ray shard too) owns its pool.
            pool = self.pool = VerifierPool(cfg.verify_workers, cfg.verify.timeout_s, lazy=True)
            self.gate = QualityGate(cfg, prompts, vlm, judge, pool=pool)
            self.dedup = Deduplicator() if cfg.dedup.enabled else None
            self.decontam = (Decontaminator(load_benchmark(cfg.dedup.benchmark_questions),
                                            cfg.dedup.ngram, cfg.dedup.threshold, cfg.dedup.min_specific_words)
                             if cfg.dedup.benchmark_questions else None)
            # Scratch, rebuilt every run; on node-local disk when the store is published (network filesystems).
            results = ResultTable(store.scratch_path("outcomes.sqlite", self.out / ".state" / "outcomes.sqlite"))
            progress = Progress(self.counters, self.clients, enabled=self.show_progress)
            self.counters.total = estimate_rows(cfg)
            progress.start()
            try:
                await self._stream(stages, results, pool)
            finally:
                await progress.stop()
                if stages.annotator is not None:
                    stages.annotator.close()
            pool.close()  # every answer is checked: its workers need not outlive the conversion into the writing
            manifest = self._finalize(results, stages)
            results.close(remove=True)  # scratch: the outputs now hold everything it had
            mark_finished(cfg)
            return manifest
        finally:
            if pool is not None:
                pool.close()
            for cl in self.clients.values():
                await cl.close()
            if store is not None:
                store.close()

    async def _stream(self, stages: Stages, results: ResultTable, pool: VerifierPool) -> None:
        assert self.cfg.max_in_flight is not None
        admission = asyncio.Semaphore(self.cfg.max_in_flight)
        # Images are loaded only by samples that will soon talk to the VLM: the VLM's slots plus a
        # quarter more, so a freed slot always finds a request ready. The in-flight window (twice
        # both roles' capacity) would otherwise hold ~0.5 MB of base64 per sample waiting its turn.
        vlm_slots = self.cfg.vlm.max_concurrency * max(1, len(self.cfg.vlm.endpoints))
        self.image_budget = asyncio.Semaphore(vlm_slots + max(8, vlm_slots // 4))
        tasks: set[asyncio.Task] = set()
        counters = self.counters

        def record(outcome: Kept | Rejected) -> None:
            results.put(outcome)
            if isinstance(outcome, Kept):
                counters.kept += 1
            else:
                counters.rejected += 1
                counters.by_reason[outcome.reason] += 1
                counters.by_stage[outcome.stage] += 1

        async def one(sample: Sample) -> None:
            try:
                record(await self._process(sample, stages, pool))
            finally:
                admission.release()

        async def take(item: Sample | Rejected, early: Rejected | None,
                       hashing: asyncio.Future[list[str] | None] | None) -> None:
            if early is None and isinstance(item, Sample):
                early = self._screen(item, await hashing if hashing is not None else None)
            if early is not None:
                record(early)  # unreadable, invalid, duplicate and contaminated rows cost no model call
                await asyncio.sleep(0)  # let the workers and the progress display run between such rows
                return
            await admission.acquire()
            task = asyncio.create_task(one(item))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        # The image hashes the screening needs are read SCREEN_AHEAD rows ahead, in worker threads,
        # and taken in input order: one thread round trip per row through a busy event loop
        # (~20 ms) held admission to ~50 rows a second, below what 4+4 replicas consume.
        ahead: deque[tuple[Sample | Rejected, Rejected | None, asyncio.Future[list[str] | None] | None]] = deque()
        for item in open_source(self.cfg):
            counters.read += 1
            early = item if isinstance(item, Rejected) else validate_sample(item)
            ahead.append((item, early, None if early is not None else self._hashing(item)))
            if len(ahead) >= SCREEN_AHEAD:
                await take(*ahead.popleft())
        while ahead:
            await take(*ahead.popleft())
        while tasks:
            await asyncio.gather(*list(tasks))

    def _hashing(self, sample: Sample) -> asyncio.Future[list[str] | None] | None:
        """A valid row's image hashes, being read in a thread, where the screening will need them."""
        if (self.dedup is None and self.decontam is None) or not sample.images or not sample.question:
            return None
        return asyncio.get_running_loop().run_in_executor(
            None, file_hashes, self.roots, sample.images, self.cfg.images.max_file_bytes)

    def _screen(self, sample: Sample, hashes: list[str] | None) -> Rejected | None:
        """Duplicates and benchmark contamination, decided in input order (stable under resume)."""
        # A benchmark's short generic question only counts together with its image (see dedup.py).
        if self.decontam is not None and sample.question and (hit := self.decontam.check(sample.question, hashes or [])):
            return Rejected.of(sample, "dedup", "contaminated", hit)
        if self.dedup is not None and sample.images and sample.question:
            if hashes is not None and (first := self.dedup.check(sample.id, hashes, sample.question)):
                return Rejected.of(sample, "dedup", "duplicate", f"same image and question as {first}")
        return None

    async def _process(self, sample: Sample, stages: Stages, pool: VerifierPool) -> Kept | Rejected:
        stage = "validate"

        held = False

        def release_images() -> None:
            nonlocal held
            if held:
                held = False
                self.image_budget.release()

        try:
            stage = "image"
            await self.image_budget.acquire()
            held = True
            images = await asyncio.to_thread(load_images, sample.images, self.roots, self.cfg.images, self.out)
            stage = "model"
            outputs = await self._run_stages(sample, images, stages, release_images)
            stage = "verify"
            chosen, k_correct, failure = await self._choose(sample, outputs, pool)
            if chosen is None:
                assert failure is not None
                return failure
            stage = "judge"
            verdict, judge_response = "", ""
            if self.gate.judge_client is not None:
                verdict, judge_response = await self.gate.judge(sample, outputs.description.content, chosen.reasoning)
                if verdict == "invalid" and self.cfg.judge.drop_invalid:
                    return Rejected.of(sample, stage, "judge_invalid", judge_response.strip()[:500])
            # Transformed images are written (once, content-addressed) only for kept records.
            # Only transformed images have a file to write (in a thread); paths alone cost less than the hop.
            rel = (await asyncio.to_thread(kept_image_paths, images, self.out) if any(im.transforms for im in images)
                   else kept_image_paths(images, self.out))
            return kept_record(
                sample, stages.question.turn(sample), images, rel, outputs, chosen, k_correct, verdict, judge_response,
                models={"vlm": self.cfg.vlm.model or "", "reasoner": self.cfg.reasoner.model or ""},
                prompts={**stages.prompt_tags, **self.gate.tags,
                         **({"answer_judge": self.answer_judge.template.tag} if self.answer_judge else {})})
        except ImageError as exc:
            return Rejected.of(sample, "image", exc.reason, exc.detail)
        except StageRejected as exc:
            return Rejected.of(sample, exc.stage, exc.reason, exc.detail)
        except Exception as exc:  # a bug or an unforeseen input must cost one row, not the run
            log.error("sample %s failed at %s:\n%s", sample.id, stage, traceback.format_exc())
            return Rejected.of(sample, stage, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            release_images()

    async def _choose(self, sample: Sample, outputs: StageOutputs, pool: VerifierPool
                      ) -> tuple[Choice | None, int, Rejected | None]:
        """Verify every trace (rules, math in the pool, the answer judge for undecided ones), filter and
        rewrite the correct ones, keep the shortest survivor."""
        traces = [r for r in outputs.reasoning if r.finish_reason != "length"]
        verdicts = list(await asyncio.gather(*(
            pool.check(r.content, r.reasoning, sample.answer, sample.options) for r in traces)))
        judged: dict[int, str] = {}
        if self.answer_judge is not None:
            open_ = [i for i, v in enumerate(verdicts) if not v.decided and v.pred]
            decisions = await asyncio.gather(*(self.answer_judge.decide(sample, verdicts[i].pred or "")
                                               for i in open_))
            for i, d in zip(open_, decisions):
                if d.same is not None:
                    verdicts[i] = Verdict(d.same, "judge", verdicts[i].pred)
                    judged[i] = d.response
        k_correct = sum(v.correct for v in verdicts)
        survivors: list[Choice] = []
        first_drop: tuple[str, Drop] | None = None
        description = outputs.description.content
        for i, (r, v) in enumerate(zip(traces, verdicts)):
            if not v.correct:
                continue
            await self.turns.take()  # the rules below are the heaviest CPU step of a sample
            trace = self.gate.trace(sample, description, r, v.pred)
            await self.gate.prepare(trace)
            kept = self.gate.chain(trace)
            if isinstance(kept, Drop):
                first_drop = first_drop or ("filter", kept)
                continue
            rewritten = await self.gate.rewrite(sample, trace)
            if isinstance(rewritten, Drop):
                first_drop = first_drop or ("rewrite", rewritten)
                continue
            survivors.append(Choice(i, r, trace.reasoning, rewritten, v.pred or "", v.method, judged.get(i, "")))
        if survivors:
            return min(survivors, key=lambda c: (len(c.reasoning), c.index)), k_correct, None

        if first_drop is not None:
            stage, drop = first_drop
            return None, k_correct, Rejected.of(sample, stage, drop.reason, drop.detail)
        if not verdicts:
            return None, 0, Rejected.of(sample, "reasoning", "truncated", "every trace hit max_tokens")
        open_verdicts = [v for v in verdicts if not v.decided]
        if open_verdicts:
            # Neither right nor wrong by the rules, and no judge decided: counted, never kept or dropped silently.
            v = open_verdicts[0]
            reason = "verify_timeout" if v.method == "math_timeout" else "undecided"
            detail = f"pred={v.pred!r} gold={sample.answer!r}: {v.detail}"
            if len(verdicts) > 1:
                detail += f"; {len(open_verdicts)} of {len(verdicts)} traces undecided, none correct"
            return None, k_correct, Rejected.of(sample, "verify", reason, detail)
        v = verdicts[0]
        detail = f"pred={v.pred!r} gold={sample.answer!r} ({v.method})"
        if len(verdicts) > 1:
            detail += f"; 0 of {len(verdicts)} traces correct"
        return None, k_correct, Rejected.of(sample, "verify", "wrong_answer" if v.pred else "no_answer", detail)

    async def _run_stages(self, sample: Sample, images, stages: Stages,
                          vlm_done: Callable[[], None] = lambda: None) -> StageOutputs:
        c = self.counters
        current: list[str] = []

        def enter(stage: str | None) -> None:
            if stage == "reasoning":
                vlm_done()  # the VLM is done with this sample's images (the stages dropped them)
            # Per-stage in-flight/done counts for the progress display.
            if current:
                c.stage_active[current[0]] -= 1
                c.stage_done[current.pop()] += 1
            if stage:
                c.stage_active[stage] += 1
                current.append(stage)

        try:
            outputs = await stages.run(sample, images, on_stage=enter)
            enter(None)
            return outputs
        finally:
            if current:
                c.stage_active[current.pop()] -= 1

    def _finalize(self, results: ResultTable, stages: Stages) -> dict[str, Any]:
        c, cfg = self.counters, self.cfg
        kept_n, rejected_n = results.count(True), results.count(False)
        if kept_n + rejected_n != c.read:
            raise RuntimeError(f"bookkeeping error: kept {kept_n} + rejected {rejected_n} != read {c.read}")
        usage: dict[str, Usage] = {s: Usage() for s in STAGES}
        # One pass over the kept outcomes feeds the Parquet shards, the JSONL and the usage totals.
        with atomic_open(self.out / JSONL_NAME) as jsonl:
            def kept_rows():
                for k in results.iter_kept():
                    jsonl.write(orjson.dumps(vision_r1_record(k)).decode() + "\n")  # ~10x json.dumps
                    for s in STAGES:
                        usage[s].add(k.usage[s])
                    yield k

            shards = write_parquet_shards(self.out, kept_rows(), kept_n, cfg.shard_rows)
        write_jsonl(self.out / "rejects.jsonl", (reject_row(r) for r in results.iter_rejected()))
        name = f"coldstart_{cfg.source_name or Path(cfg.input or 'data').stem}".replace("-", "_")
        write_json(self.out / "dataset_info.json", dataset_info(name))
        usage_all: dict[str, Usage] = {s: Usage() for s in STAGES}  # plus rewrite/judge when used
        for cl in self.clients.values():
            for s, u in cl.stats.usage_by_stage.items():
                usage_all.setdefault(s, Usage()).add(u)
        manifest = {
            "coldstart_version": __version__,
            "created_unix": int(time.time()),
            "counts": {
                "read": c.read,
                "kept": kept_n,
                "rejected": rejected_n,
                "rejected_by_reason": dict(sorted(c.by_reason.items())),
                "rejected_by_stage": dict(sorted(c.by_stage.items())),
                # Rows the matching rules could not decide and no answer judge decided (rejected, reason undecided).
                "undecided": c.by_reason.get("undecided", 0),
            },
            "verify": {**self.pool.stats,
                       "consistency_undecided": self.gate.consistency.undecided if self.gate.consistency else 0},
            # Every response this run used (kept and rejected samples), and the kept samples' share.
            "usage_by_stage": {s: u.model_dump() for s, u in usage_all.items()},
            "usage_kept_by_stage": {s: u.model_dump() for s, u in usage.items()},
            "endpoints": {
                role: {"model": cl.model, "urls": cl.cfg.endpoints, "sent": cl.stats.sent, "cached": cl.stats.cached,
                       "retries": cl.stats.retries, "failed": cl.stats.failed, "usage": cl.stats.usage.model_dump(),
                       "replicas": cl.replica_stats()}
                for role, cl in self.clients.items()
            },
            "filters": self.gate.stats(),
            "answer_leak": {**stages.leak_stats.as_dict(), "regenerated": stages.leak_regenerated},
            "models": {"vlm": cfg.vlm.model, "reasoner": cfg.reasoner.model,
                       **({"judge": cfg.judge.model} if cfg.judge.enabled else {})},
            "prompts": {s: {"name": t.name, "sha256": t.sha256} for s, t in stages.templates.items()},
            "quality_rules": self.gate.tags,
            "files": {"parquet": shards, "jsonl": JSONL_NAME, "rejects": "rejects.jsonl",
                      "dataset_info": "dataset_info.json"},
            "dataset_name": name,
            "wall_s": round(c.elapsed(), 3),
            "config": cfg.public_dict(),
        }
        # Timing and live endpoint counters differ between a fresh run and a resumed one;
        # everything else in the output is a pure function of input, config and stored responses.
        write_json(self.out / "manifest.json", manifest)
        return manifest


__all__ = ["Converter", "EndpointCheckFailed"]
