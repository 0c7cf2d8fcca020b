"""What the model is asked: the question with its options (and earlier turns), rendered once.

Options may come from a column or be parsed from the question text. Either way every prompt and
the kept human turn show them the same way (`prompts/question.v1.j2`); when the question text
already lists them, they are not listed twice.
"""

from __future__ import annotations

from .prompts import PromptLibrary, PromptTemplate
from .records import Option, Sample
from .verify.options import parse_options


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def options_listed(question: str, options: list[Option]) -> bool:
    """True when the question text already lists exactly these options (same letters and texts)."""
    parsed = parse_options(question)
    return [(o.letter, _norm(o.text)) for o in parsed] == [(o.letter, _norm(o.text)) for o in options]


class QuestionRenderer:
    def __init__(self, prompts: PromptLibrary, name: str = "question.v1"):
        self.template: PromptTemplate = prompts.get(name)
        # A row's question is rendered for each stage's prompt, the trace and the kept record (~40 us
        # each): kept per (sample, with_context), the sample held so that its id is not reused.
        self._rendered: dict[tuple[int, bool], tuple[Sample, str]] = {}

    @property
    def tag(self) -> str:
        return self.template.tag

    def _render(self, sample: Sample, with_context: bool) -> str:
        with_context = with_context and bool(sample.context)  # the same text without earlier turns
        key = (id(sample), with_context)
        if (hit := self._rendered.get(key)) is not None and hit[0] is sample:
            return hit[1]
        if len(self._rendered) > 4096:
            self._rendered.clear()
        text = self._render_now(sample, with_context)
        self._rendered[key] = (sample, text)
        return text

    def _render_now(self, sample: Sample, with_context: bool) -> str:
        options = [] if not sample.options or options_listed(sample.question, sample.options) else sample.options
        context = [t.model_dump() for t in sample.context] if with_context else []
        return self.template.template.render(question=sample.question.strip(), options=[o.model_dump() for o in options],
                                             context=context).strip()

    def turn(self, sample: Sample) -> str:
        """The current question with its options: the kept human turn (earlier turns are their own turns)."""
        return self._render(sample, with_context=False)

    def prompt(self, sample: Sample) -> str:
        """What goes into a model prompt: earlier turns of the conversation, then the current question."""
        return self._render(sample, with_context=True)
