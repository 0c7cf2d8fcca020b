"""Build configuration: several datasets, one output folder, sharded and resumable.

The shared conversion settings are a `ConvertConfig` (the same schema the CLI validates), so a
build and a single `coldstart convert` cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from . import yamlfile
from pydantic import BaseModel, ConfigDict, Field

from .config import ColumnMapping, ConvertConfig, ShareGptMapping, SourceFormat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    source_format: SourceFormat
    input: Path | None = None  # may come from a LLaMA-Factory dataset_info entry instead
    image_root: Path | None = None  # needed only when images are paths (not for embedded images)
    image_roots: list[Path] = Field(default_factory=list)
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    # Reader settings, as for `coldstart convert` (see ConvertConfig).
    split: str = "train"
    sharegpt: ShareGptMapping = Field(default_factory=ShareGptMapping)
    dataset_info: Path | None = None
    dataset: str | None = None
    answer_regex: str | None = None
    multi_turn: Literal["all", "first"] = "all"
    max_rows: int | None = Field(None, ge=1)  # cap on items used from this dataset
    weight: float = Field(1.0, gt=0, le=1)  # share of items used (stable hash sampling)


class ServerSpec(_Strict):
    """How to start one `vllm serve` for a role (printed or run by `coldstart vllm`)."""

    model_path: str | None = None  # defaults to the endpoint's model name
    tensor_parallel_size: int = Field(8, ge=1)
    max_model_len: int = Field(32768, ge=1024)
    images_per_prompt: int = Field(4, ge=0)
    port: int = 8000
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # Tokens per streamed event (`--stream-interval`, vLLM >= 0.11.1): fewer events for the server
    # to send and the client to parse. 10 is the value vLLM's docs give as the example for reducing
    # host overhead. Set 1 for an older vLLM, which refuses the flag (it is then left out).
    stream_interval: int = Field(10, ge=1)
    extra_args: list[str] = Field(default_factory=list)


class ServersConfig(_Strict):
    vlm: ServerSpec = Field(default_factory=ServerSpec)
    reasoner: ServerSpec = Field(default_factory=lambda: ServerSpec(images_per_prompt=0, port=8001))
    wait_for_health_s: float = Field(0.0, ge=0)  # >0: wait for every endpoint's /health before a build


class BuildConfig(_Strict):
    name: str = Field("cold-start", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    output_root: Path = Path("outputs/builds")
    datasets: list[DatasetSpec] = Field(min_length=1)
    convert: ConvertConfig = Field(default_factory=ConvertConfig)  # endpoints, stages, quality, ...
    shard_rows: int = Field(2000, ge=1)  # input items per shard
    parallel_shards: int = Field(4, ge=1)  # shards in flight (local and Ray); they share endpoint capacity
    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # e.g. "ray://head:10001"; None starts a local Ray
    ray_num_cpus: int | None = Field(None, ge=1)
    servers: ServersConfig = Field(default_factory=ServersConfig)

    @property
    def build_dir(self) -> Path:
        return self.output_root / self.name


def load_build_config(path: Path | str) -> BuildConfig:
    data = yamlfile.safe_load(Path(path).read_text()) or {}
    return BuildConfig.model_validate(data)
