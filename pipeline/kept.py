"""The kept record: a sample, its images as the trainer reads them, and the chosen trace, with the
Vision-R1-cold conversation (LLaMA-Factory sharegpt) that training reads."""

from __future__ import annotations

from .images import EncodedImage
from .quality import Choice
from .records import Kept, Sample, Usage
from .stages import StageOutputs
from .verify.gold import final_answer


def conversation(sample: Sample, question_turn: str, n_images: int, gpt: str) -> list[dict[str, str]]:
    """The kept conversation: a sharegpt row's system prompt, earlier turns of a multi-turn row as they
    were, then the question and the trace. Each human turn opens with its own <image> tokens; their total
    must equal the number of images (LLaMA-Factory checks it), else they all open the first turn."""
    humans = [t.question for t in sample.context] + [question_turn]
    answers = [t.answer for t in sample.context] + [gpt]
    counts = [t.turn_images for t in sample.context] + [sample.turn_images]
    if sum(counts) != n_images:
        counts = [n_images] + [0] * (len(humans) - 1)
    turns: list[dict[str, str]] = [{"from": "system", "value": sample.system}] if sample.system else []
    for h, a, n in zip(humans, answers, counts):
        turns += [{"from": "human", "value": "<image>\n" * n + h}, {"from": "gpt", "value": a}]
    return turns


def gpt_turn(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning.strip()}\n</think>\n<answer> Final Answer:{answer} </answer>"


def kept_record(sample: Sample, question_turn: str, images: list[EncodedImage], image_paths: list[str],
                outputs: StageOutputs, chosen: Choice, k_correct: int, verdict: str, judge_response: str,
                models: dict[str, str], prompts: dict[str, str]) -> Kept:
    """`question_turn`: the question with its options as the model is asked it; `image_paths`: relative to
    the output folder (a transformed image's kept copy, else the original)."""
    reasoning_usage = Usage()
    for r in outputs.reasoning:
        reasoning_usage.add(r.usage)
    k = len(outputs.reasoning)
    ann = outputs.annotations
    return Kept(
        index=sample.index, id=sample.id, source=sample.source, images=image_paths,
        source_images=list(sample.images), image_sha256=[im.file_sha256 for im in images],
        question=question_turn, options=sample.options, context=sample.context, system=sample.system,
        answer=sample.answer, pred_answer=chosen.pred,
        match=chosen.match, match_method=chosen.match, answer_judge_response=chosen.judge_response,
        pseudo_cot=outputs.pseudo_cot.content,
        description=outputs.description.content, reasoning=chosen.reasoning,
        reasoning_original=chosen.reasoning_original, final_text=chosen.result.content,
        k=k, k_correct=k_correct, pass_rate=k_correct / k, filter=verdict, judge_response=judge_response,
        description_attempts=outputs.description_attempts,
        ocr=[line.model_dump() for line in ann.ocr] if ann else [],
        objects=[o.model_dump() for o in ann.objects] if ann else [],
        conversations=conversation(sample, question_turn, len(images),
                                   gpt_turn(chosen.reasoning, final_answer(sample.answer, sample.options))),
        usage={"pseudo_cot": outputs.pseudo_cot.usage, "description": outputs.description.usage,
               "reasoning": reasoning_usage},
        models=models, prompts=prompts,
    )
