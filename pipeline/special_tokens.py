"""Strip the served models' special tokens from text that is carried into a next prompt.

A model's output may contain its own control tokens as text (random-weight models write
`<|video_pad|>`, a server run without skip_special_tokens leaves `<|im_end|>`). Pasted into a
later prompt they are tokenised as control tokens, and a real server (transformers serve)
answers HTTP 500. The token list lives in prompts/special_tokens.yaml with its sources; any
`<|name|>` / `<｜name｜>` shaped token is stripped as well.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from . import yamlfile

from .prompts import DEFAULT_PROMPT_DIR

TOKENS_FILE = "special_tokens.yaml"


# Every token the shipped list and patterns match opens with one of these (checked at load): text
# without them is returned as it is, without running the pattern (~0.4 ms on a 10K-character trace).
_OPENERS = ("<|", "<｜")
_GENERIC_OPENERS = (re.escape("<|"), "<｜")


@lru_cache(maxsize=4)
def _load(directory: str) -> tuple[re.Pattern[str], tuple[str, ...] | None]:
    data = yamlfile.safe_load((Path(directory) / TOKENS_FILE).read_text(encoding="utf-8"))
    listed = [t for key in ("qwen2_5_vl", "deepseek_r1") for t in data.get(key) or []]
    generic = list(data.get("generic") or [])
    # Longest first, so a token is never cut by a shorter one that is its prefix.
    alternatives = [re.escape(t) for t in sorted(set(listed), key=len, reverse=True)] + generic
    # Spaces or tabs around a run of tokens are taken with it, so "a <|x|> b" becomes "a b", not "a  b".
    pattern = re.compile(r"([ \t]*)(?:" + "|".join(alternatives) + r")+([ \t]*)")
    # The shortcut holds only if nothing the file lists can start otherwise (an edited list may).
    safe = all(t.startswith(_OPENERS) for t in listed) and all(g.startswith(_GENERIC_OPENERS) for g in generic)
    return pattern, _OPENERS if safe else None


def special_token_pattern(directory: Path | None = None) -> re.Pattern[str]:
    return _load(str(directory or DEFAULT_PROMPT_DIR))[0]


def find_special_tokens(text: str, directory: Path | None = None) -> list[str]:
    return [m.group(0).strip() for m in special_token_pattern(directory).finditer(text or "")]


def strip_special_tokens(text: str, directory: Path | None = None) -> str:
    """The text without any special token; a space is kept where one stood beside the tokens."""
    if not text:
        return text
    pattern, openers = _load(str(directory or DEFAULT_PROMPT_DIR))
    if openers is not None and not any(o in text for o in openers):
        return text

    def repl(m: re.Match[str]) -> str:
        before, after = m.group(1), m.group(2)
        at_edge = m.start() == 0 or m.end() == len(text) or text[m.start() - 1] == "\n" or text[m.end():m.end() + 1] == "\n"
        return "" if at_edge or not (before or after) else " "

    return pattern.sub(repl, text)
