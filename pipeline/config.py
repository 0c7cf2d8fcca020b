"""One validated configuration object: YAML file + CLI overrides, defaults that work.

Secrets never live here: API keys are read from the environment variables named by
``api_key_env`` at client construction time, so a dumped config cannot leak them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from . import yamlfile
from pydantic import BaseModel, ConfigDict, Field, model_validator

SourceFormat = Literal["llava-cot", "mulberry", "jsonl", "parquet", "hf", "sharegpt"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(_Strict):
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 4096
    seed: int | None = None


class EndpointConfig(_Strict):
    url: str | None = None  # OpenAI-compatible base URL, e.g. http://host:8000/v1
    urls: list[str] = Field(default_factory=list)  # several replicas of the same model (overrides url)
    model: str | None = None
    api_key_env: str = "COLDSTART_VLM_API_KEY"
    max_concurrency: int = Field(64, ge=1)  # requests in flight to each replica (its --max-num-seqs)
    failures_before_cooldown: int = Field(3, ge=1)  # consecutive failures that bench a replica
    cooldown_s: float = Field(30.0, ge=0)
    # Responses stream: the longest silence allowed (also the connect / first-byte limit). No total
    # limit: a 16K-token R1 trace that keeps producing tokens is never cut.
    idle_timeout_s: float = Field(300.0, gt=0)
    # Bytes a streamed response gathers in the socket before the client wakes to read it
    # (SO_RCVLOWAT; plain http on Linux/BSD/macOS): ~60 events of a stream per read instead of one.
    # Each request then goes on its own connection (`Connection: close`), so that the server's close
    # shows a response's end at once. 0: wake for every event, keep-alive connections.
    read_batch_bytes: int = Field(16384, ge=0, le=1 << 20)
    # With batched reads: connections opened ahead, so a request need not wait for a connect once
    # it has its slot (each is used for one request). 0: connect per request.
    spare_connections: int = Field(8, ge=0, le=256)
    max_attempts: int = Field(8, ge=1)  # tries per request before the row is rejected
    max_backoff_s: float = Field(60.0, gt=0)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @property
    def endpoints(self) -> list[str]:
        return list(self.urls) if self.urls else ([self.url] if self.url else [])

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout_s" in data:
            raise ValueError("timeout_s was removed: responses stream and are cut only after idle_timeout_s "
                             "of silence (default 300); replace timeout_s with idle_timeout_s")
        return data


# Role-specific classes, so a partial section in YAML or flags keeps its role's defaults.
class VlmSamplingConfig(SamplingConfig):
    temperature: float = 0.2
    max_tokens: int = 2048


class ReasonerSamplingConfig(SamplingConfig):
    # DeepSeek's guidance for R1: temperature 0.6, top_p 0.95, no system prompt.
    temperature: float = 0.6
    max_tokens: int = 16384


class VlmEndpointConfig(EndpointConfig):
    api_key_env: str = "COLDSTART_VLM_API_KEY"
    sampling: VlmSamplingConfig = Field(default_factory=VlmSamplingConfig)


class ReasonerEndpointConfig(EndpointConfig):
    api_key_env: str = "COLDSTART_REASONER_API_KEY"
    max_concurrency: int = Field(128, ge=1)
    sampling: ReasonerSamplingConfig = Field(default_factory=ReasonerSamplingConfig)
    # Best-of-k through the `n` parameter (vLLM); the DeepSeek API has no `n`: set false to send k requests.
    use_n: bool = True


class JudgeSamplingConfig(SamplingConfig):
    temperature: float = 0.0
    max_tokens: int = 1024


class JudgeConfig(EndpointConfig):
    """Optional LLM judge (R1-Onevision style) on the chosen trace."""

    enabled: bool = False
    api_key_env: str = "COLDSTART_JUDGE_API_KEY"
    max_concurrency: int = Field(32, ge=1)
    sampling: JudgeSamplingConfig = Field(default_factory=JudgeSamplingConfig)
    drop_invalid: bool = True  # false: keep the trace and record filter="invalid"


class AnswerJudgeSamplingConfig(SamplingConfig):
    temperature: float = 0.0
    max_tokens: int = 512


class AnswerJudgeConfig(EndpointConfig):
    """Optional LLM judge for golds the matching rules cannot decide (sentences, free text)."""

    enabled: bool = False
    api_key_env: str = "COLDSTART_ANSWER_JUDGE_API_KEY"
    max_concurrency: int = Field(32, ge=1)
    sampling: AnswerJudgeSamplingConfig = Field(default_factory=AnswerJudgeSamplingConfig)


class VerifyConfig(_Strict):
    """Answer checking: math-verify's hard time limit, and the optional answer judge."""

    timeout_s: float = Field(10.0, gt=0)  # one math-verify check; past it the worker is killed and replaced
    judge: AnswerJudgeConfig = Field(default_factory=AnswerJudgeConfig)


class QualityConfig(_Strict):
    """Rule filters and the modality rewrite applied to every reasoner trace."""

    language: Literal["en", "zh"] | None = "en"
    min_reasoning_tokens: int = Field(0, ge=0)
    max_reasoning_tokens: int | None = Field(None, ge=1)
    min_reasoning_words: int = Field(20, ge=0)  # below this the trace is near-empty
    max_line_repeats: int = Field(3, ge=1)
    min_distinct_ngram_ratio: float = Field(0.6, ge=0, le=1)
    consistency: bool = True
    answer_leak: Literal["reject", "regenerate", "off"] = "regenerate"
    max_leak_regenerations: int = Field(1, ge=0)
    rewrite: Literal["rules", "llm", "off"] = "rules"
    rewrite_rules: str = "rewrite_rules.v2"  # prompts/<name>.yaml


class OcrConfig(_Strict):
    backend: Literal["rapidocr", "easyocr", "none"] = "rapidocr"
    min_score: float = Field(0.5, ge=0, le=1)  # lines below this confidence are dropped
    languages: list[str] = Field(default_factory=lambda: ["en"])  # easyocr only


class GroundingConfig(_Strict):
    enabled: bool = False
    model: str | None = None  # a Grounding DINO folder or hub id (e.g. IDEA-Research/grounding-dino-base)
    box_threshold: float = Field(0.35, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)
    max_queries: int = Field(6, ge=1)


class RoutingConfig(_Strict):
    """Which images get which annotator: cheap rules, not every model on every image."""

    ocr_sources: list[str] | None = None  # None: every source
    grounding_sources: list[str] | None = None  # None: every source
    grounding_max_ocr_chars: int = Field(40, ge=0)  # more OCR text than this: a document, no grounding


class AnnotationConfig(_Strict):
    enabled: bool = False
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    batch_size: int = Field(8, ge=1)
    batch_wait_s: float = Field(0.05, ge=0)


class DedupConfig(_Strict):
    enabled: bool = True  # same image content + same normalised question: processed once
    # .txt (one per line), .jsonl/.json with "question" and optional "image" / "image_sha256"
    # (rule in pipeline/dedup.py: short overlaps need the same image, long ones suffice alone)
    benchmark_questions: Path | None = None
    ngram: int = Field(8, ge=1)
    threshold: float = Field(0.5, gt=0, le=1)
    min_specific_words: int = Field(12, ge=1)  # consecutive shared words that reject without the image


class ColumnMapping(_Strict):
    """Where the generic jsonl/parquet readers find each field."""

    id: str | None = "id"
    image: str = "image"  # a path or a list of paths
    question: str = "question"
    answer: str = "answer"
    options: str | None = None  # a list of option texts, or a {letter: text} mapping


class ShareGptMapping(_Strict):
    """LLaMA-Factory's sharegpt column and tag names, with its defaults (data/parser.py DatasetAttr)."""

    messages: str = "conversations"
    images: str | None = None
    system: str | None = None
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str | None = "observation"
    function_tag: str | None = "function_call"
    system_tag: str | None = "system"


class ImageConfig(_Strict):
    # Downscale before sending; None sends as is. 2048 visual tokens of 28x28 px: the usual dataset image (and a
    # 1024x1024 photo) goes out byte-for-byte, a 12 MP phone photo (~15K tokens a call) is brought down.
    max_pixels: int | None = 2048 * 28 * 28
    max_file_bytes: int = 50 * 1024 * 1024
    max_decoded_pixels: int = 64_000_000  # larger is treated as a decompression bomb
    # Used only when an image must be re-encoded (rotated, alpha, mode, downscaled); others are sent as on disk.
    # auto: JPEG (quality 95) for lossy sources (JPEG, lossy WebP), PNG (compress_level 1) for the rest.
    encode_format: Literal["auto", "PNG", "JPEG"] = "auto"


class PromptConfig(_Strict):
    question: str = "question.v1"  # the question with its options (and earlier turns), as every prompt shows it
    pseudo_cot: str = "pseudo_cot.v1"
    description: str = "description.v1"
    reasoning_blind: str = "reasoning_blind.v1"
    reasoning_hinted: str = "reasoning_hinted.v1"
    description_noleak: str = "description_noleak.v1"
    description_annotated: str = "description_annotated.v1"
    judge: str = "judge.v1"
    rewrite_llm: str = "rewrite_llm.v1"
    answer_judge: str = "answer_judge.v1"
    directory: Path | None = None  # defaults to the project's prompts/


class StoreConfig(_Strict):
    """Where the response store is written (see pipeline/llm/cache.py)."""

    # auto: a node-local working copy published atomically when the store path is on a network
    # filesystem (SQLite WAL does not work there), else one SQLite file written in place.
    mode: Literal["auto", "direct", "publish"] = "auto"
    local_dir: Path | None = None  # node-local folder for the working copy; None: $TMPDIR/coldstart-stores
    checkpoint_s: float = Field(60.0, gt=0)  # publish at least this often (publish mode)


class ConvertConfig(_Strict):
    source_format: SourceFormat = "llava-cot"
    input: Path | None = None
    image_root: Path | None = None
    # Extra trusted roots: an image path (or a symlink) that resolves into image_root or one of these is accepted.
    image_roots: list[Path] = Field(default_factory=list)
    out: Path = Path("outputs/convert")
    source_name: str | None = None  # defaults to the input file's stem
    limit: int | None = Field(None, ge=0)
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    # A slice of the input stream (a build shard): items with row_start <= index < row_stop.
    row_start: int = Field(0, ge=0)
    row_stop: int | None = Field(None, ge=0)
    # Deterministic subsample: an item is used when a hash of (source, id) falls below this.
    sample_fraction: float = Field(1.0, gt=0, le=1)
    # hf: the split of a hub id / hub-like folder (a save_to_disk folder of a DatasetDict picks it too).
    split: str = "train"
    # sharegpt: names as in the config, or read from a LLaMA-Factory dataset_info.json entry.
    sharegpt: ShareGptMapping = Field(default_factory=ShareGptMapping)
    dataset_info: Path | None = None  # LLaMA-Factory dataset_info.json; its folder is the dataset_dir
    dataset: str | None = None  # the entry's name in dataset_info
    # Ground truth from an assistant turn (sharegpt): group 1 (or the whole match) of the last match.
    answer_regex: str | None = None
    # Multi-turn rows: "all" = every question turn, follow-ups with the earlier turns as context.
    multi_turn: Literal["all", "first"] = "all"

    vlm: VlmEndpointConfig = Field(default_factory=VlmEndpointConfig)
    reasoner: ReasonerEndpointConfig = Field(default_factory=ReasonerEndpointConfig)
    hint_answer: bool = False  # pass the ground truth to the reasoner ("hinted" mode)
    samples_per_question: int = Field(1, ge=1)  # best-of-k: k reasoner traces, the shortest good one kept
    quality: QualityConfig = Field(default_factory=QualityConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    annotation: AnnotationConfig = Field(default_factory=AnnotationConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    images: ImageConfig = Field(default_factory=ImageConfig)

    max_in_flight: int | None = Field(None, ge=1)  # samples in flight; None = derived from concurrency
    verify_workers: int = Field(1, ge=1)  # processes for answer checking (math-verify is CPU-bound)
    # The converter's event loop: "auto" = uvloop when installed (a dependency on Linux and macOS), else asyncio.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    shard_rows: int = Field(5000, ge=1)
    cache_path: Path | None = None  # response store; defaults to <out>/.state/responses.sqlite
    store: StoreConfig = Field(default_factory=StoreConfig)
    progress: bool = True
    # Re-running a finished run (same input, config, prompts, version) returns its manifest at once.
    reuse_finished: bool = True

    @model_validator(mode="after")
    def _check(self) -> "ConvertConfig":
        if self.event_loop == "uvloop":
            from .eventloop import uvloop_available

            if not uvloop_available():
                raise ValueError("event_loop is 'uvloop' but uvloop is not installed (pip install uvloop, "
                                 "or use 'auto' or 'asyncio')")
        if self.max_in_flight is None:
            # Enough samples that every slot of every replica of both roles stays busy while others
            # wait between stages (before the URLs are known a role counts as one replica).
            self.max_in_flight = 2 * sum(r.max_concurrency * max(1, len(r.endpoints)) for r in (self.vlm, self.reasoner))
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                raise ValueError(f"answer_regex {self.answer_regex!r} does not compile: {exc}") from None
        if self.dataset_info is not None:
            from .sources.dataset_info import apply_dataset_info

            apply_dataset_info(self)
        if self.source_format == "sharegpt" and self.image_root is None and self.input is not None:
            # LLaMA-Factory resolves media paths from its dataset_dir, the data file's folder.
            self.image_root = Path(self.input).parent
        return self

    @property
    def resolved_cache_path(self) -> Path:
        return self.cache_path or self.out / ".state" / "responses.sqlite"

    def require_run_fields(self) -> None:
        missing = [
            name
            for name, value in [
                ("--input", self.input),
                # hf/parquet images may be embedded: the input check asks for it where they are paths.
                ("--image-root", self.image_root if self.source_format not in ("hf", "parquet") else "-"),
                ("--vlm-url", self.vlm.endpoints),
                ("--vlm-model", self.vlm.model),
                ("--reasoner-url", self.reasoner.endpoints),
                ("--reasoner-model", self.reasoner.model),
            ]
            if value in (None, "", [])
        ]
        if self.judge.enabled:
            missing += [f for f, v in (("judge.url", self.judge.endpoints), ("judge.model", self.judge.model)) if not v]
        if self.verify.judge.enabled:
            missing += [f for f, v in (("verify.judge.url", self.verify.judge.endpoints),
                                       ("verify.judge.model", self.verify.judge.model)) if not v]
        if missing:
            raise ValueError("missing required settings (flag or config file): " + ", ".join(missing))

    def public_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-able data; holds env var names, never key values."""
        return self.model_dump(mode="json")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    node = target
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> ConvertConfig:
    """Read an optional YAML file, apply dotted-key overrides (None values ignored), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yamlfile.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the config file must hold a mapping")
        data = loaded
    patch: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(patch, key, value)
    return ConvertConfig.model_validate(_deep_merge(data, patch))
