"""math-verify, called only inside a verifier worker process (worker.py sets IN_WORKER).

math-verify can run for minutes on a pathological pair (9^{9^{9^{9}}} against 1) and its own
timeouts use signal.alarm; so its timeouts are off here and the pool's hard timeout kills the worker.
Called anywhere else this raises: no code path may run math-verify inline on the event loop.
"""

from __future__ import annotations

IN_WORKER = False


def _wrap(text: str) -> str:
    text = text.strip()
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def math_state(gold: str, pred: str) -> str:
    """'equal', 'different' or 'unparsed' (math-verify found no expression on one side)."""
    if not IN_WORKER:
        raise RuntimeError("math-verify runs only in verifier worker processes (pipeline.verify.pool)")
    from math_verify import parse, verify

    g = parse(_wrap(gold), parsing_timeout=None)  # type: ignore[arg-type]
    p = parse(_wrap(pred), parsing_timeout=None)  # type: ignore[arg-type]
    if not g or not p:
        return "unparsed"
    return "equal" if verify(g, p, timeout_seconds=None) else "different"
