"""Shared fixtures: simulated endpoints on loopback, generated datasets, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.demo_data import make_demo_dataset
from pipeline.simulator import SimConfig, SimServer

ROOT = Path(__file__).resolve().parent.parent
VLM_MODEL = "sim-qwen2.5-vl"
R1_MODEL = "sim-r1"


def start_sims(vlm: dict[str, Any] | None = None, reasoner: dict[str, Any] | None = None) -> tuple[SimServer, SimServer]:
    v = SimServer(SimConfig(**{"role": "vlm", "models": [VLM_MODEL], "slots": 8, **(vlm or {})})).start()
    r = SimServer(SimConfig(**{"role": "reasoner", "models": [R1_MODEL], "slots": 8, **(reasoner or {})})).start()
    return v, r


@pytest.fixture(autouse=True, scope="session")
def _private_disk_cache(tmp_path_factory):
    """The disk cache (pipeline/diskcache.py) of the tests and the processes they start, not the user's."""
    os.environ["COLDSTART_CACHE_DIR"] = str(tmp_path_factory.mktemp("coldstart-cache"))
    yield


@pytest.fixture(params=["asyncio", "uvloop"])
def each_event_loop(request):
    """Runs the test once on asyncio's loop and once on uvloop's (pipeline/eventloop.py picks
    uvloop where installed): `asyncio.run` inside the test gets that loop."""
    import asyncio

    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.fixture
def sims():
    v, r = start_sims(reasoner={"wrong_rate": 0.2})
    yield v, r
    v.stop()
    r.stop()


def sim_stats(sim: SimServer) -> dict[str, Any]:
    """Read stats over HTTP, as any client of the simulator would."""
    with urllib.request.urlopen(sim.url.removesuffix("/v1") + "/sim/stats", timeout=10) as resp:
        return json.loads(resp.read())


def reset_sim(sim: SimServer) -> None:
    req = urllib.request.Request(sim.url.removesuffix("/v1") + "/sim/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def demo_set(tmp_path):
    return make_demo_dataset(tmp_path / "input", n=16)


def convert_args(input_path: Path, image_root: Path, out: Path, vlm: SimServer, reasoner: SimServer,
                 fmt: str = "llava-cot", *extra: str) -> list[str]:
    return [
        "convert", "--source-format", fmt, "--input", str(input_path), "--image-root", str(image_root),
        "--out", str(out), "--vlm-url", vlm.url, "--vlm-model", VLM_MODEL,
        "--reasoner-url", reasoner.url, "--reasoner-model", R1_MODEL, "--no-progress", *extra,
    ]


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The console script as a real process (what a user runs)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def serve_app(app: Any, **runner_kw: Any) -> tuple[Any, str]:
    """Start an aiohttp app on a free loopback port: (its runner, to `cleanup()`; its /v1 base URL)."""
    from aiohttp import web

    runner = web.AppRunner(app, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"


class ChatServer:
    """An aiohttp server on loopback whose `handler` answers POST /v1/chat/completions; `async with`
    starts and stops it (`url` is its /v1 base). `runner_kw` go to its AppRunner."""

    runner_kw: dict[str, Any] = {}

    async def handler(self, request: Any) -> Any:
        raise NotImplementedError

    async def __aenter__(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handler)
        self.runner, self.url = await serve_app(app, **self.runner_kw)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
