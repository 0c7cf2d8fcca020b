"""Grounding queries: short noun phrases from the question and the pseudo-CoT (no NLP model needed)."""

from __future__ import annotations

import re
from collections import Counter

_STOP = set("""a an the this that these those is are was were be been being of in on at to for from by with and or
not no yes it its their there here what which who whom whose how many much why when where do does did can could
would should will shall may might must image picture photo figure drawing diagram shown show shows answer question
correct option options choice choices following given each every some any other than then so such very one two
three four five six seven eight nine ten number value total left right top bottom middle center centre side i we
you he she they them me my our your his her also just only first second third step steps look looking see seen
let think reason reasoning summary caption conclusion visible relevant detail details part parts area next near
under above below behind beside between inside outside into onto over across along around against among""".split())
_WORD = re.compile(r"[a-z][a-z\-]+")


def noun_phrases(text: str, max_phrases: int = 6) -> list[str]:
    """Runs of 1-3 content words (an adjective + noun approximation), most frequent first."""
    words = _WORD.findall(text.lower())
    phrases: Counter = Counter()
    run: list[str] = []
    for w in words + ["."]:
        if w in _STOP or w == "." or len(w) < 3:
            if run:
                phrases[" ".join(run[-3:])] += 1
            run = []
        else:
            run.append(w)
    ranked = sorted(phrases.items(), key=lambda kv: (-kv[1], -len(kv[0]), kv[0]))
    out: list[str] = []
    for phrase, _ in ranked:
        if not any(phrase in kept or kept in phrase for kept in out):
            out.append(phrase)
        if len(out) == max_phrases:
            break
    return out


def grounding_queries(question: str, pseudo_cot: str, max_queries: int = 6) -> list[str]:
    # Question phrases first: they name what must be found.
    q = noun_phrases(question, max_queries)
    rest = [p for p in noun_phrases(pseudo_cot, max_queries) if not any(p in k or k in p for k in q)]
    return (q + rest)[:max_queries]
