"""YAML reading through libyaml's C loader where PyYAML has it (the pure-Python loader took ~10 ms
for the rewrite rules alone, at every converter start); the same documents either way."""

from __future__ import annotations

from typing import Any

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
