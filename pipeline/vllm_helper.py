"""`vllm serve` command lines for a build's servers, and waiting for their /health."""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request

from .build_config import BuildConfig, ServerSpec
from .config import EndpointConfig


# Every flag below is one `vllm serve` accepts today, checked against vLLM's documentation:
#  - engine arguments (--served-model-name, --tensor-parallel-size, --max-model-len,
#    --gpu-memory-utilization, --max-num-seqs, --enable-prefix-caching, --limit-mm-per-prompt):
#    https://docs.vllm.ai/en/latest/configuration/engine_args/ ; --port: .../cli/serve/
#  - --limit-mm-per-prompt takes JSON, e.g. '{"image": 2}' (docs/features/multimodal_inputs.md).
#    To reserve no memory for video as well (docs/configuration/conserving_memory.md), put
#    `--limit-mm-per-prompt '{"image": N, "video": 0}'` in servers.vlm.extra_args: the last one wins.
#  - --reasoning-parser deepseek_r1 (docs/features/reasoning_outputs.md); the older
#    --enable-reasoning switch is gone.
#  - --stream-interval N (servers.<role>.stream_interval, sent only when N > 1): each request's
#    tokens go out N to a streamed event, the first token and the final output at once. vLLM added
#    it in 0.11.1 (PR #27869; release commit 439368496; v0.11.0 has no such argument and refuses it): SchedulerConfig
#    .stream_interval in vllm/config/scheduler.py ("a larger value (e.g., 10) reduces host overhead
#    and may increase throughput"), the flag in vllm/engine/arg_utils.py, the buffering in
#    RequestState.make_request_output, vllm/v1/engine/output_processor.py. The client parses one
#    event per N tokens instead of one per token (issue #10: busy GPUs, a quiet client CPU).
# Multimodal options are refused for a text-only model ("`limit_mm_per_prompt` is only supported
# for multimodal models", ModelConfig in vllm/config.py of the 0.6-0.10 releases), so the reasoner,
# to which we only ever send text, gets none.
TEXT_ONLY_ROLES = ("reasoner",)


def serve_command(spec: ServerSpec, endpoint: EndpointConfig, role: str) -> list[str]:
    model = spec.model_path or endpoint.model
    if not model:
        raise ValueError(f"{role}: no model (set convert.{role}.model or servers.{role}.model_path)")
    cmd = ["vllm", "serve", model,
           "--served-model-name", endpoint.model or model,
           "--port", str(spec.port),
           "--tensor-parallel-size", str(spec.tensor_parallel_size),
           "--max-model-len", str(spec.max_model_len),
           "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
           # Match the client's per-replica concurrency so requests queue in our priority order.
           "--max-num-seqs", str(endpoint.max_concurrency),
           "--enable-prefix-caching"]
    if spec.stream_interval > 1:
        cmd += ["--stream-interval", str(spec.stream_interval)]
    if role in TEXT_ONLY_ROLES:
        cmd += ["--reasoning-parser", "deepseek_r1"]  # reasoning arrives apart from the answer
    else:
        if spec.images_per_prompt < 1:
            raise ValueError(f"servers.{role}.images_per_prompt is {spec.images_per_prompt}: "
                             "the VLM would refuse every request with an image")
        cmd += ["--limit-mm-per-prompt", json.dumps({"image": spec.images_per_prompt})]
    return cmd + list(spec.extra_args)


def serve_commands(build: BuildConfig) -> dict[str, str]:
    c = build.convert
    return {role: shlex.join(serve_command(getattr(build.servers, role), getattr(c, role), role))
            for role in ("vlm", "reasoner")}


def health_url(base_url: str) -> str:
    # vLLM serves /health at the root, beside /v1.
    root = base_url.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    return root + "/health"


def wait_for_health(urls: list[str], timeout_s: float, interval_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(dict.fromkeys(urls))
    while pending:
        still = []
        for url in pending:
            try:
                with urllib.request.urlopen(health_url(url), timeout=5) as resp:
                    if resp.status != 200:
                        still.append(url)
            except (urllib.error.URLError, OSError):
                still.append(url)
        pending = still
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no /health after {timeout_s:.0f}s: {', '.join(pending)}")
        time.sleep(interval_s)
