"""The progress display: per-stage done/in-flight, kept/rejected, tokens/s, ETA."""

import asyncio
import io
import re

from rich.console import Console

from pipeline.llm import ModelClient
from pipeline.config import EndpointConfig
from pipeline.counters import RunCounters
from pipeline.progress import Progress
from pipeline.records import Usage


def make_progress(console=None):
    c = RunCounters(total=100)
    c.read, c.kept, c.rejected = 40, 25, 5
    c.stage_done.update({"pseudo_cot": 38, "description": 33, "reasoning": 30})
    c.stage_active.update({"pseudo_cot": 2, "description": 5, "reasoning": 3})
    c.started -= 30.0  # 30 s elapsed
    clients = {role: ModelClient(EndpointConfig(url="http://127.0.0.1:1/v1", model="m"), role)
               for role in ("vlm", "reasoner")}
    clients["reasoner"].stats.usage.add(Usage(completion_tokens=30_000))
    clients["vlm"].stats.sent, clients["vlm"].stats.retries = 71, 4
    return Progress(c, clients, console=console), clients


def test_status_line_has_stage_counts_tokens_and_eta():
    progress, clients = make_progress()
    line = progress.line()
    assert "read=40/100 kept=25 rejected=5" in line
    assert "pseudo_cot=38(+2) description=33(+5) reasoning=30(+3)" in line
    # 30,000 completion tokens in ~30 s; 30 finished in ~30 s, 70 to go at ~1/s.
    rate = int(re.search(r"tok/s=([\d,]+)", line).group(1).replace(",", ""))
    assert 950 <= rate <= 1000
    assert re.search(r"eta=0:01:(0[5-9]|10)", line)
    asyncio.run(clients["vlm"].close()), asyncio.run(clients["reasoner"].close())


def test_terminal_table_renders_the_same_numbers():
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=False)
    progress, clients = make_progress(console)
    console.print(progress.table())
    text = " ".join(buf.getvalue().split())
    assert "description" in text and "33" in text and "71" in text
    assert "kept 25" in text and "rejected 5" in text and re.search(r"ETA 0:01:(0[5-9]|10)", text)
    asyncio.run(clients["vlm"].close()), asyncio.run(clients["reasoner"].close())
