"""The ground-truth answer inside a dataset's assistant turn (sharegpt and other conversation data).

Tried in order, the last occurrence winning where a form can repeat: a configured regex (group 1,
or the whole match), then the published shapes of the source datasets: LLaVA-CoT's
`<CONCLUSION>...</CONCLUSION>`, Mulberry's `### The final answer is:\nC`, Vision-R1's
`<answer> Final Answer:X </answer>`, and an `Answer: X` line (Mulberry's CoMCTS rows: `Answer:D`).
Conversation data without any of these (LLaMA-Factory's mllm_demo) keeps the whole reply.
"""

from __future__ import annotations

import re

from .llava_cot import conclusion
from .mulberry import final_answer

_ANSWER_TAG = re.compile(r"<answer>\s*(?:Final Answer\s*:)?(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# At a line start only: "answer:" inside a sentence is prose, not a label.
_ANSWER_LINE = re.compile(r"^[ \t]*(?:\*\*)?(?:final[ \t]+)?answer(?:\*\*)?[ \t]*[:：](?:\*\*)?[ \t]*(.+?)[ \t]*$",
                          re.IGNORECASE | re.MULTILINE)


def by_regex(text: str, pattern: re.Pattern[str]) -> str | None:
    found = list(pattern.finditer(text or ""))
    if not found:
        return None
    m = found[-1]
    value = m.group(1) if pattern.groups else m.group(0)
    return (value or "").strip() or None


def gold_answer(text: str, regex: re.Pattern[str] | None = None) -> str | None:
    """The answer of one assistant turn; None when a configured regex does not match (a missing answer)."""
    if regex is not None:
        return by_regex(text, regex)
    for extract in (conclusion, final_answer, lambda t: by_regex(t, _ANSWER_TAG), lambda t: by_regex(t, _ANSWER_LINE)):
        value = extract(text)
        if value:
            return value
    return (text or "").strip() or None
