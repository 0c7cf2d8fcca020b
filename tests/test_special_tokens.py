"""Special tokens of the served models never travel from one model's output into the next prompt,
nor into the kept reasoning.

The end-to-end test runs the converter against the simulator on loopback (real HTTP), with the
VLM writing `<|video_pad|>` / `<|im_end|>` into its pseudo-CoT and the reasoner writing
`<|im_end|>` / `<｜end▁of▁sentence｜>` into its reasoning, and the simulator answering HTTP 500
to any prompt that contains a special token, as `transformers serve` does.
"""

import asyncio
import json
import re
import urllib.request

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from pipeline.config import ConvertConfig
from pipeline.demo_data import make_demo_dataset
from pipeline.runner import Converter
from pipeline.simulator import SimConfig, SimServer
from pipeline.special_tokens import find_special_tokens, special_token_pattern, strip_special_tokens

from .conftest import R1_MODEL, VLM_MODEL, sim_stats

ANY_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>|<｜[^｜]+｜>")


@pytest.mark.parametrize("text,expected", [
    ("The answer is B<|im_end|>", "The answer is B"),
    ("two cubes <|video_pad|> and a sphere", "two cubes and a sphere"),
    ("<|vision_start|><|image_pad|><|vision_end|>A red car.", "A red car."),
    ("<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>",
     "the dog(10,20),(30,40)"),
    ("<｜begin▁of▁sentence｜><｜User｜>Question<｜Assistant｜>", "Question"),
    ("Done.<｜end▁of▁sentence｜>", "Done."),
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>x<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "x"),
    ("first line<|im_end|>\n<|im_start|>assistant\nsecond", "first line\nassistant\nsecond"),
    ("a <|quad_start|> b <|quad_end|> c", "a b c"),
    ("<|endoftext|>", ""),
    # Generic shapes: tokens of another release of the same families.
    ("x <|some_future_token|> y", "x y"),
    ("<｜place▁holder▁no_17｜>text", "text"),
    ("end<|EOT|>", "end"),
])
def test_special_tokens_are_stripped(text, expected):
    assert strip_special_tokens(text) == expected
    assert ANY_TOKEN.search(strip_special_tokens(text)) is None


@pytest.mark.parametrize("text", [
    "If 0<|x|>5 then x is between the bounds.",  # an absolute value, not a token
    "Compare a<b and c>d, with |x| < |y|.",
    "<think>\nreasoning\n</think>",  # R1's think tags are handled by the client, not here
    "<tool_call>{\"name\": \"f\"}</tool_call>",  # added but not special in Qwen2.5-VL: plain text
    "Use the || operator and <| carefully |>.",
    "",
])
def test_ordinary_text_is_left_alone(text):
    assert strip_special_tokens(text) == text
    assert find_special_tokens(text) == []


def test_a_token_list_with_other_openers_is_still_stripped(tmp_path):
    # The no-token shortcut looks for "<|" / "<｜"; a list holding a token that opens otherwise
    # must turn it off, not let that token through.
    (tmp_path / "special_tokens.yaml").write_text(
        'qwen2_5_vl: ["[IMG_END]", "<|im_end|>"]\ngeneric: ["<\\\\|[a-z]{3,}\\\\|>"]\n', encoding="utf-8")
    assert strip_special_tokens("seen [IMG_END] here", tmp_path) == "seen here"
    assert strip_special_tokens("b<|im_end|>", tmp_path) == "b"
    assert strip_special_tokens("a <|zzz|> b", tmp_path) == "a b"
    assert strip_special_tokens("seen [IMG_END] here") == "seen [IMG_END] here"  # not in the shipped list


def test_token_list_covers_both_families():
    pattern = special_token_pattern()
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|box_start|>", "<|box_end|>",
                  "<|quad_start|>", "<|quad_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                  "<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁end｜>"):
        assert pattern.fullmatch(token), token


class TokenWritingSim(SimServer):
    """The simulator, writing special tokens into its output and refusing prompts that hold one."""

    def _complete(self, body, text, n_images, key):
        if ANY_TOKEN.search(text):
            # What transformers serve does with a control token in a user message.
            raise web.HTTPInternalServerError(text="special token in prompt")
        payload, n_tokens = super()._complete(body, text, n_images, key)
        for choice in payload["choices"]:
            msg = choice["message"]
            if self.config.role == "vlm" and "Correct answer:" in text:  # the pseudo-CoT
                msg["content"] = ("<|vision_start|><|video_pad|><|vision_end|>"
                                  + msg["content"].replace("\nREASONING:", " <|video_pad|>\nREASONING:")
                                  + "<|im_end|>")
            elif self.config.role == "vlm":  # the description
                msg["content"] = msg["content"] + "<|im_end|><|endoftext|>"
            elif msg.get("reasoning_content"):
                msg["reasoning_content"] = ("<｜begin▁of▁sentence｜>" + msg["reasoning_content"].replace(". ", ". <|im_end|>", 1)
                                            + "<｜end▁of▁sentence｜>")
        return payload, n_tokens


def test_special_tokens_never_reach_a_prompt_nor_the_kept_reasoning(tmp_path):
    input_path, image_root = make_demo_dataset(tmp_path / "input", n=8)
    vlm = TokenWritingSim(SimConfig(role="vlm", models=[VLM_MODEL], slots=8)).start()
    reasoner = TokenWritingSim(SimConfig(role="reasoner", models=[R1_MODEL], slots=8)).start()
    try:
        cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=image_root, out=tmp_path / "out",
                            vlm={"url": vlm.url, "model": VLM_MODEL, "max_attempts": 2, "max_backoff_s": 0.1},
                            reasoner={"url": reasoner.url, "model": R1_MODEL, "max_attempts": 2, "max_backoff_s": 0.1},
                            progress=False)
        manifest = asyncio.run(Converter(cfg).run())
        v_prompts = json.loads(urllib.request.urlopen(vlm.url.removesuffix("/v1") + "/sim/prompts").read())
        r_prompts = json.loads(urllib.request.urlopen(reasoner.url.removesuffix("/v1") + "/sim/prompts").read())
        v_stats, r_stats = sim_stats(vlm), sim_stats(reasoner)
    finally:
        vlm.stop(), reasoner.stop()
    description_prompts = [p["text"] for p in v_prompts if "Correct answer:" not in p["text"]]
    assert len(description_prompts) >= 8 and len(r_prompts) >= 8
    for text in description_prompts + [p["text"] for p in r_prompts]:
        assert ANY_TOKEN.search(text) is None
    # The pseudo-CoT text did arrive in the description prompt, only without its tokens.
    assert all("CONCLUSION:" in t and "REASONING:" in t for t in description_prompts)
    assert "500" not in v_stats["status_counts"] and "500" not in r_stats["status_counts"]
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert manifest["counts"]["kept"] == len(rows) > 0
    for row in rows:
        assert ANY_TOKEN.search(row["reasoning"]) is None
        assert ANY_TOKEN.search(row["conversations"][1]["value"]) is None
        assert ANY_TOKEN.search(row["pseudo_cot"]) is None and ANY_TOKEN.search(row["description"]) is None
        assert "<｜begin▁of▁sentence｜>" in row["reasoning_original"]  # the audit copy is as written
