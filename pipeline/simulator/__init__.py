"""A simulated OpenAI-compatible endpoint for tests and the clearly labelled dry-run/demo mode.

It speaks the protocol of vLLM and the DeepSeek API over real HTTP (``/v1/models``,
``/v1/chat/completions`` with ``reasoning_content``, ``usage``, ``finish_reason``; 429 with
Retry-After, 5xx, dropped connections) and never produces real model output.
"""

from .server import SimConfig, SimServer

__all__ = ["SimConfig", "SimServer"]
