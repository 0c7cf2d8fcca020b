"""Answer extraction, gold typing, the verifier worker pool (timeouts, dead parents), the consistency
filter, and the undecided/answer-judge path of the converter on real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from pipeline.filters import Trace
from pipeline.filters.rules import ConsistencyFilter
from pipeline.verify import mathcheck
from pipeline.verify.compare import MathQuery, check_output, judge, plan_check
from pipeline.verify.extract import extract, extract_final_answer, last_boxed
from pipeline.verify.gold import parse_gold
from pipeline.verify.options import parse_options
from pipeline.verify.pool import VerifierPool

ROOT = Path(__file__).resolve().parent.parent
MC = "Which animal is shown in the image?\nA. cat\nB. dog\nC. horse\nD. bird"
PATHOLOGICAL = "9^{9^{9^{9}}}"  # math-verify/sympy computes this power for minutes


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=1, timeout_s=20) as p:
        yield p


@pytest.mark.parametrize("final,reasoning,text,rule,where", [
    ("So the sum is 12. Therefore \\boxed{12}.", None, "12", "boxed", "answer"),
    ("First \\boxed{3} was wrong; recomputing gives \\boxed{\\frac{1}{2}}", None, "\\frac{1}{2}", "boxed", "answer"),
    ("<answer> Final Answer:\\boxed{B} </answer> and later \\boxed{C}", None, "B", "answer_tag", "answer"),
    ("**Final Answer**\n\\boxed{\\text{B}}", None, "B", "boxed", "answer"),
    ("**Final Answer**\nB. 4", None, "B. 4", "final_answer", "answer"),
    ("The correct option is B: 4", None, "B: 4", "the_answer_is", "answer"),
    ("**Answer:** B", None, "B", "the_answer_is", "answer"),
    # a negated statement is not taken as "the answer is C"; only the whole short line is left
    ("The answer is not C, it is B.", None, "The answer is not C, it is B", "short_answer", "answer"),
    ("so it has to be (B).", None, "B", "paren_letter", "answer"),
    ("Putting it all together:\n\n**3 apples**", None, "3 apples", "bold_line", "answer"),
    ("", "Long thinking... Final Answer: 5", "5", "final_answer", "reasoning"),
    # the visible rules come first, then the reasoning's, then a short visible line as it stands
    ("The man's age.", "Thinking... so the answer is 21.", "21", "the_answer_is", "reasoning"),
    ("58°.", "Thinking without a conclusion.", "58°", "short_answer", "answer"),
    ("I am not sure what to say here, honestly, it could be many things, and the picture does not help "
     "me decide between them at all.", None, None, None, None),
    ("", None, None, None, None),
])
def test_extraction_priority(final, reasoning, text, rule, where):
    found = extract(final, reasoning)
    if text is None:
        assert found is None
    else:
        assert (found.text, found.rule, found.where) == (text, rule, where)


def test_last_boxed_balances_nested_braces():
    assert last_boxed("x \\boxed{\\frac{a}{b}} y") == "\\frac{a}{b}"
    assert last_boxed("unclosed \\boxed{3") is None
    assert extract_final_answer("Thus \\boxed{B. 4}.") == "B. 4"


def test_options_parsed_from_lines_and_inline():
    assert [o.text for o in parse_options(MC)] == ["cat", "dog", "horse", "bird"]
    inline = parse_options("How many? Options: (A) 3 (B) 4 (C) 5")
    assert [(o.letter, o.text) for o in inline] == [("A", "3"), ("B", "4"), ("C", "5")]
    assert parse_options("What is 2+2?") == []
    assert parse_options("Steps:\nB. first\nC. second") == []


GEO = parse_options("Find angle 2.\nChoices:\nA: 32°\nB: 45°\nC: 58°\nD: 60°")


@pytest.mark.parametrize("gold,options,kind,letter", [
    ("C", GEO, "letter", "C"),
    ("58°.", GEO, "option_text", "C"),           # Mulberry: an option's text with a trailing period
    ("B: 45", [], "letter", "B"),                # Mulberry, choices not given
    ("**B**", GEO, "letter", "B"),               # LLaVA-CoT
    ("B: 5 MPa", [], "letter", "B"),             # LLaVA-CoT
    ("Yes", [], "yes_no", None),
    ("5 MPa", [], "number", None),
    ("$12.50", [], "number", None),
    ("\\frac{3}{4}", [], "expression", None),
    ("The enrollment rate in primary education in 1985 was approximately 76%.", [], "sentence", None),
    ("A cat is on the mat", [], "sentence", None),  # the article is not a letter
    ("A dog", [], "text", None),
    ("Paris", [], "text", None),
])
def test_gold_kinds(gold, options, kind, letter):
    g = parse_gold(gold, options)
    assert (g.kind, g.letter) == (kind, letter)
    if gold == "B: 45":
        assert g.option_text == "45"


def test_math_verify_never_runs_in_this_process():
    with pytest.raises(RuntimeError, match="worker"):
        mathcheck.math_state("0.5", "\\frac{1}{2}")
    plan = plan_check("\\boxed{\\frac{1}{2}}", None, "0.5", [])
    assert isinstance(plan, MathQuery) and plan.pred == "\\frac{1}{2}"
    # The rules decide without math where they can: no query for numbers, letters, units.
    assert not isinstance(plan_check("\\boxed{0.54}", None, "0.5", []), MathQuery)


def test_blocking_api_uses_the_pool_and_keeps_old_callers_working(pool):
    opts = parse_options(MC)
    assert judge("dog", "B", opts).method == "option_text"
    assert check_output("The answer is \\boxed{\\frac{1}{2}}.", None, "0.5", [], math=pool.math_sync).method == "math"
    v = check_output("", "Hmm, no conclusion at all here.", "5", [], math=pool.math_sync)
    assert (v.correct, v.method, v.decided) == (False, "no_answer", True)


def test_timeout_kills_the_worker_and_replaces_it():
    with VerifierPool(workers=1, timeout_s=1.0) as p:
        assert p.math_sync("1", "1") == "equal"  # started and warm
        old = p.pids()
        t0 = time.monotonic()
        assert p.math_sync("1", PATHOLOGICAL) == "timeout"
        assert time.monotonic() - t0 < 5
        assert p.pids() != old and p.stats["timeouts"] == 1
        assert _gone(old[0], within=5)
        assert p.math_sync("0.5", "\\frac{1}{2}") == "equal"  # the fresh worker answers


def test_a_lazy_pool_starts_its_workers_only_when_math_is_needed():
    async def main():
        with VerifierPool(workers=2, timeout_s=20, lazy=True) as p:
            letter = await p.check("The answer is B.", None, "B", parse_options(MC))
            none_yet = p.pids()
            states = await asyncio.gather(p.math("1/2", "0.5"), p.math("2", "3"), p.math("x", "x"))
            return letter, none_yet, states, p.pids()
    letter, none_yet, states, pids = asyncio.run(main())
    assert letter.correct and none_yet == []  # a letter answer needs no worker
    assert states == ["equal", "different", "equal"]
    assert 1 <= len(pids) <= 2  # started on demand, never more than the pool's size
    assert all(_gone(pid, within=5) for pid in pids)  # and closed with the pool


def test_a_worker_killed_from_outside_is_replaced():
    with VerifierPool(workers=1, timeout_s=10) as p:
        assert p.math_sync("2", "2") == "equal"
        os.kill(p.pids()[0], signal.SIGKILL)
        assert p.math_sync("0.5", "\\frac{1}{2}") == "equal"
        assert p.stats["restarts"] == 1


def test_async_check_times_out_without_blocking_the_event_loop():
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        with VerifierPool(workers=2, timeout_s=1.5) as p:
            await p.math("1", "1")
            t = asyncio.create_task(ticker())
            slow, fast = await asyncio.gather(
                p.check(f"\\boxed{{{PATHOLOGICAL}}}", None, "1", []),
                p.check("\\boxed{\\frac{3}{4}}", None, "0.75", []))
            t.cancel()
            return slow, fast, ticks

    slow, fast, ticks = asyncio.run(main())
    assert (slow.correct, slow.decided, slow.method) == (False, False, "math_timeout")
    assert fast.correct and fast.method == "math"
    assert ticks >= 20  # the loop kept running during the 1.5 s check


def _gone(pid: int, within: float) -> bool:
    """The process no longer exists (or is a zombie waiting for its new parent to reap it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_converter_is_killed(tmp_path):
    """A converter-like parent starts a pool, keeps one worker busy in a pathological check, and dies by
    kill -9: no worker outlives it (one was idle, one was computing a huge power holding its GIL)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.verify.pool import VerifierPool\n"
        "pool = VerifierPool(workers=2, timeout_s=600)\n"
        "assert pool.math_sync('1', '1') == 'equal'\n"
        "print(' '.join(map(str, pool.pids())), flush=True)\n"
        f"pool.math_sync('1', {PATHOLOGICAL!r})\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(not _gone(p, within=0) for p in pids)
        time.sleep(1.0)  # the busy worker is deep in the computation
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert all(_gone(p, within=5) for p in pids), "a verifier worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


OPTS = parse_options("Which fruit?\nA. apple\nB. banana\nC. orange\nD. pear")
BODY = ("Okay, let me look at the fruit on the plate. It is long, curved and yellow, with a green stem. "
        "Wait, could it be a pear lying on its side? No, a pear is not curved like that. ")


def _trace(tail: str, pred: str, options=OPTS) -> Trace:
    return Trace(question="Which fruit?", answer=pred, options=options, description="", reasoning=BODY + tail,
                 final_text=f"\\boxed{{{pred}}}", pred=pred, tokens=200)


@pytest.mark.parametrize("tail,pred,consistent", [
    ("The answer is not C, so it must be B.", "B", True),
    ("The answer is not C, so it must be B.", "C", False),
    ("So the correct choice is the second option.", "B", True),
    ("So the correct choice is the first option.", "B", False),
    ("The last option cannot be right; I'll go with banana.", "B", True),
    ("Hmm, it must be longer than the pear. I'll go with B.", "B", True),
    ("Therefore, the answer is (B) banana.", "banana", True),
    ("Therefore, the answer is D.", "B", False),
])
def test_consistency_understands_negation_and_ordinals(tail, pred, consistent, pool):
    f = ConsistencyFilter(pool=pool)
    assert (f(_trace(tail, pred)) is True) == consistent


def test_consistency_math_goes_through_the_pool():
    async def main():
        with VerifierPool(workers=1, timeout_s=20) as p:
            f = ConsistencyFilter(pool=p)
            good = _trace("So the answer should be \\frac{1}{2}.", "0.5", [])
            await f.prepare(good)  # the runner's path: math resolved in a worker before the chain
            checks = p.stats["checks"]
            result_good = f(good)
            assert p.stats["checks"] == checks  # filter() used the prepared result, no second call
            bad = _trace("So the answer should be 0.54.", "0.5", [])
            await f.prepare(bad)  # numbers: decided by the rules, no math
            return result_good, f(bad), p.stats["checks"]

    good, bad, checks = asyncio.run(main())
    assert good is True and bad.reason == "inconsistent" and checks == 1


# --- the converter: undecided rows are counted; the answer judge decides them --------------------

class JudgeServer:
    """A loopback OpenAI-compatible judge (plain and streamed replies) that records its prompts."""

    def __init__(self, reply: str):
        self.reply, self.prompts = reply, []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        assert self.ready.wait(10)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        self.ready.set()
        self.loop.run_forever()

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "judge-llm", "object": "model"}]})

    async def _chat(self, request):
        body = await request.json()
        self.prompts.append(body["messages"][-1]["content"])
        usage = {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for chunk in ({"delta": {"role": "assistant", "content": self.reply}, "finish_reason": None},
                          {"delta": {}, "finish_reason": "stop"}):
                data = {"id": "j", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, **chunk}], "usage": usage if chunk["finish_reason"] else None}
                await resp.write(f"data: {json.dumps(data)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response({"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": self.reply}}],
                                  "usage": usage})

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _sentence_dataset(root: Path, n: int = 8) -> tuple[Path, Path]:
    """Demo images with LLaVA-CoT rows whose conclusions are whole sentences (a form real rows have)."""
    from pipeline.demo_data import make_demo_dataset

    path, images = make_demo_dataset(root, n=n)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        gpt = row["conversations"][1]
        gpt["value"] = gpt["value"].rsplit("<CONCLUSION>", 1)[0] + (
            f"<CONCLUSION> The drawing number {i} shows one simple shape on a white background. </CONCLUSION>")
        row["conversations"][0]["value"] = f"<image>\nDescribe what drawing {i} shows."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, images


def test_undecided_rows_are_counted_and_the_answer_judge_decides_them(tmp_path):
    from pipeline.config import ConvertConfig
    from pipeline.runner import Converter

    from .conftest import R1_MODEL, VLM_MODEL, read_jsonl, start_sims

    data = _sentence_dataset(tmp_path / "input")
    # Every trace answers "unknown": against a sentence gold the rules can say neither right nor wrong.
    vlm, reasoner = start_sims(reasoner={"wrong_rate": 1.0})
    judge_server = JudgeServer("VERDICT: SAME\nBoth answers say the same thing.")

    def run(out, **kw):
        cfg = ConvertConfig(source_format="llava-cot", input=data[0], image_root=data[1], out=out,
                            vlm={"url": vlm.url, "model": VLM_MODEL, "max_concurrency": 8},
                            reasoner={"url": reasoner.url, "model": R1_MODEL, "max_concurrency": 8},
                            progress=False, **kw)
        return asyncio.run(Converter(cfg).run())

    try:
        m = run(tmp_path / "plain")
        rejects = read_jsonl(tmp_path / "plain" / "rejects.jsonl")
        assert m["counts"]["read"] == 8 and m["counts"]["kept"] == 0
        assert m["counts"]["undecided"] == 8 == m["counts"]["rejected_by_reason"]["undecided"]
        assert all(r["stage"] == "verify" and "free-text gold" in r["detail"] for r in rejects)

        m = run(tmp_path / "judged", verify={"judge": {"enabled": True, "url": judge_server.url,
                                                       "model": "judge-llm"}})
        rows = pq.read_table(tmp_path / "judged" / "data").to_pylist()
    finally:
        vlm.stop(), reasoner.stop(), judge_server.stop()
    assert m["counts"]["kept"] + m["counts"]["rejected"] == 8
    assert m["counts"]["kept"] == len(rows) > 0 and m["counts"]["undecided"] == 0
    assert len(judge_server.prompts) == 8 == m["endpoints"]["answer_judge"]["sent"]
    assert all("Reference answer: The drawing number" in p and "\nCandidate answer: " in p for p in judge_server.prompts)
    assert {f"Candidate answer: {row['pred_answer']}" for row in rows} <= {
        line for p in judge_server.prompts for line in p.splitlines()}
    for row in rows:
        assert row["match_method"] == "judge" == row["match"]
        assert row["answer_judge_response"].startswith("VERDICT: SAME")


def test_answer_judge_config_fails_before_any_request(tmp_path):
    from pipeline.config import ConvertConfig
    from pipeline.runner import Converter

    (tmp_path / "x.jsonl").write_text("")
    base = dict(input=tmp_path / "x.jsonl", image_root=tmp_path, out=tmp_path / "out",
                vlm={"url": "http://127.0.0.1:9/v1", "model": "v"}, reasoner={"url": "http://127.0.0.1:9/v1", "model": "r"})
    with pytest.raises(ValueError, match="verify.judge.url, verify.judge.model"):
        Converter(ConvertConfig(**base, verify={"judge": {"enabled": True}}))
    with pytest.raises(Exception, match="extra"):
        ConvertConfig(**base, verify={"judge": {"enabled": True, "modle": "typo"}})
    cfg = ConvertConfig(**base, verify={"judge": {"enabled": True, "url": "http://127.0.0.1:9/v1", "model": "j"}},
                        prompts={"answer_judge": "no_such_prompt.v9"})
    with pytest.raises(FileNotFoundError, match="no_such_prompt"):
        asyncio.run(Converter(cfg).run())
    assert not (tmp_path / "out").exists()


def test_llava_cot_one_line_option_lists_are_parsed():
    from pipeline.verify.options import parse_options

    def parsed(q):
        return [(o.letter, o.text) for o in parse_options(q)]

    # LLaVA-CoT's ScienceQA-style rows list the options on one line after a marker.
    assert parsed("Determine the shear modulus of the polymer.\nOptions: A: 15 MPa, B: 5 MPa, C: 20 MPa, D: 2 MPa") == \
        [("A", "15 MPa"), ("B", "5 MPa"), ("C", "20 MPa"), ("D", "2 MPa")]
    assert parsed("How many cubes? Choices: A. 4, B. 8, C. 2") == [("A", "4"), ("B", "8"), ("C", "2")]
    assert parsed("Which pair? Options: A: 3,4, B: 5") == [("A", "3,4"), ("B", "5")]
    # Not a list: one letter after the marker, or letters out of order.
    assert parsed("The options: are many, e.g. A: like this") == []
    assert parsed("Options: B: 5, A: 4") == []
