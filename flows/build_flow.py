"""The `build-cold-start` Prefect flow: plan shards, run them as retried tasks (threads or Ray),
merge into one build folder, publish a markdown artifact with the funnel and usage.

No `from __future__ import annotations` here: Prefect validates flow parameters with models built
from these signatures, which need the real types (ShardSpec), not strings."""


from pathlib import Path
from typing import Any

from pipeline import procenv

procenv.apply()  # before pipeline.build loads numpy / pyarrow (see procenv.py)

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from pipeline.build import ShardSpec, markdown_summary, merge, plan, run_shard, shard_roles  # noqa: E402
from pipeline.build_config import BuildConfig, load_build_config  # noqa: E402
from pipeline.vllm_helper import wait_for_health  # noqa: E402


@task(name="convert-shard", retries=2, retry_delay_seconds=10, task_run_name="{spec.label}")
def convert_shard(spec: ShardSpec) -> dict[str, Any]:
    result = run_shard(spec)
    c = result["counts"]
    get_run_logger().info("%s %s: read %d kept %d rejected %d %s", spec.label, result["status"], c["read"],
                          c["kept"], c["rejected"], c.get("rejected_by_reason", {}))
    return result


def open_ray_brokers(specs: list[ShardSpec]) -> list[Any]:
    """Create the build's capacity brokers from this (driver) process, so they live as long as the
    flow, not as long as whichever shard's worker happened to create them first."""
    if not specs or specs[0].broker != "ray":
        return []
    from pipeline.config import ConvertConfig
    from pipeline.llm.broker import broker_actor

    spec = specs[0]
    return [broker_actor(spec.scope, role, ep.endpoints, ep.max_concurrency, ep.failures_before_cooldown,
                         ep.cooldown_s)
            for role, ep in shard_roles(ConvertConfig.model_validate(spec.config)).items()]


@flow(name="run-shards")
def run_shards(specs: list[ShardSpec], max_parallel: int | None = None) -> list[dict[str, Any]]:
    """Run the shards, at most `max_parallel` at a time whatever the task runner (Ray would start
    them all at once): a new shard starts when one finishes."""
    brokers = open_ray_brokers(specs)  # noqa: F841 (held for the flow's lifetime)
    limit = max_parallel or len(specs) or 1
    futures: list[Any] = []
    running: list[Any] = []
    for spec in specs:
        if len(running) >= limit:
            running.remove(next(as_completed(running)))
        fut = convert_shard.submit(spec)
        futures.append(fut)
        running.append(fut)
    results, failed = [], []
    for spec, fut in zip(specs, futures):
        try:
            results.append(fut.result())
        except Exception as exc:  # a shard is infrastructure (endpoints), never a row: report and stop
            failed.append(f"{spec.label}: {type(exc).__name__}: {exc}")
    if failed:
        raise RuntimeError("shards failed (re-run the build; finished shards are reused):\n" + "\n".join(failed))
    return results


def task_runner(build: BuildConfig):
    if build.runner == "ray":
        from prefect_ray import RayTaskRunner

        init: dict[str, Any] = {"num_cpus": build.ray_num_cpus} if build.ray_num_cpus and not build.ray_address else {}
        # Shard workers are processes Ray starts: they get the converter's environment this way.
        init["runtime_env"] = {"env_vars": procenv.settings()}
        return RayTaskRunner(address=build.ray_address, init_kwargs=init)
    return ThreadPoolTaskRunner(max_workers=build.parallel_shards)


@flow(name="build-cold-start")
def build_cold_start(config: str | dict[str, Any]) -> dict[str, Any]:
    """Build a cold-start set from several datasets. `config`: a build YAML path or its content."""
    build = load_build_config(config) if isinstance(config, (str, Path)) else BuildConfig.model_validate(config)
    logger = get_run_logger()
    if build.servers.wait_for_health_s:
        urls = build.convert.vlm.endpoints + build.convert.reasoner.endpoints
        logger.info("waiting up to %.0fs for /health of %s", build.servers.wait_for_health_s, urls)
        wait_for_health(urls, build.servers.wait_for_health_s)
    specs = plan(build)
    logger.info("build %s: %d shards over %d datasets -> %s", build.name, len(specs), len(build.datasets),
                build.build_dir)
    results = run_shards.with_options(task_runner=task_runner(build))(specs, max_parallel=build.parallel_shards)
    manifest = merge(build, results)
    create_markdown_artifact(key=f"build-{build.name}".lower().replace("_", "-").replace(".", "-"),
                             markdown=markdown_summary(manifest), description="Funnel and usage of the build")
    c = manifest["counts"]
    logger.info("build %s done: read %d kept %d rejected %d", build.name, c["read"], c["kept"], c["rejected"])
    return {"build_dir": str(build.build_dir), "counts": c}
