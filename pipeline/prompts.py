"""Prompt templates live in prompts/ as versioned Jinja2 files; records store name and content hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

DEFAULT_PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    sha256: str
    template: jinja2.Template

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def render(self, **fields: str) -> str:
        return self.template.render(**fields).strip()


class PromptLibrary:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory or DEFAULT_PROMPT_DIR)
        # StrictUndefined: a missing field is a bug in the stage, not an empty string in the prompt.
        self._env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        self._cache: dict[str, PromptTemplate] = {}

    def get(self, name: str) -> PromptTemplate:
        if name not in self._cache:
            path = self.directory / f"{name}.j2"
            if not path.is_file():
                raise FileNotFoundError(f"prompt template {name!r} not found at {path}")
            text = path.read_text(encoding="utf-8")
            self._cache[name] = PromptTemplate(
                name=name,
                sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                template=self._env.from_string(text),
            )
        return self._cache[name]
