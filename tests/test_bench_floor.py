"""The benchmark's ideal streaming floor and its request-to-sample mapping (the figures every client is judged by)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_convert import ideal_streaming_makespan, per_sample_times  # noqa: E402


def test_floor_gives_a_free_slot_to_the_latest_stage():
    # One slot per endpoint, two samples: pseudo-CoT 1 s, description 1 s, reasoning 3 s.
    # Later stages first: s0 pc 0-1, s0 desc 1-2, s0 reason 2-5, s1 pc 2-3, s1 desc 3-4, s1 reason 5-8.
    # (First come first served would run both pseudo-CoTs first and end at 9.)
    times = {0: {"pseudo_cot": 1, "description": 1, "reasoning": 3},
             1: {"pseudo_cot": 1, "description": 1, "reasoning": 3}}
    assert ideal_streaming_makespan(times, {"vlm": 1, "reasoner": 1}) == 8
    assert ideal_streaming_makespan(times, {"vlm": 2, "reasoner": 2}) == 5


def test_requests_map_to_samples_from_the_prompt_text_whoever_sent_them():
    prompts = {
        "vlm": [
            {"key": "a", "text": "Question: How many? [item 00007]\nCorrect answer: 3"},
            {"key": "b", "text": "Given a image, a question:How many? [item 00007] and a thinking process:..."},
            {"key": "c", "text": "Question: Is it red? [item 00008]\nCorrect answer: Yes"},
            {"key": "probe", "text": ""},  # curator's first request carries no sample
        ],
        "reasoner": [{"key": "d", "text": "...\nQuestion: How many? [item 00007]\nPut your final answer"}],
    }
    service = {
        "vlm": [{"key": "a", "start": 0.0, "end": 1.0}, {"key": "b", "start": 1.0, "end": 1.5},
                {"key": "b", "start": 2.0, "end": 2.5},  # a retry costs its slot time too
                {"key": "c", "start": 0.0, "end": 1.0}, {"key": "probe", "start": 0.0, "end": 0.1}],
        "reasoner": [{"key": "d", "start": 3.0, "end": 7.0}],
    }
    # Sample 8 never reached the reasoner: not a complete sample, left out of the floor.
    assert per_sample_times(service, prompts) == {7: {"pseudo_cot": 1.0, "description": 1.0, "reasoning": 4.0}}
