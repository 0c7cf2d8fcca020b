"""Model and processor loading that also works on machines without torchvision.

`AutoProcessor.from_pretrained` on a Qwen-VL folder needs the video processor, which needs
torchvision; depending on the transformers version it then raises or silently returns only the
tokenizer. Either way we build an image-only processor (Qwen2VLImageProcessorPil + tokenizer)
instead of training with a tokenizer that cannot see images.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("coldstart.sft")


def image_only_processor_class():
    from transformers import ProcessorMixin, Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL processor without the video processor (no torchvision needed)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2_5_VLProcessor


def load_processor(model_dir: str | Path, max_pixels: int | None = None, min_pixels: int | None = None):
    from transformers import AutoProcessor, AutoTokenizer, ProcessorMixin, Qwen2VLImageProcessorPil

    kwargs = {k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v}
    try:
        processor = AutoProcessor.from_pretrained(model_dir, **kwargs)
        if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
            return processor
        log.warning("AutoProcessor returned %s for %s (no image processor): using the image-only processor",
                    type(processor).__name__, model_dir)
    except (ImportError, ValueError, OSError, AttributeError) as exc:
        log.warning("AutoProcessor failed for %s (%s): using the image-only processor", model_dir, exc)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir, **kwargs)
    return image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=getattr(tokenizer, "chat_template", None))


def load_model(model_dir: str | Path, dtype=None):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)


def vision_tower(model):
    """The vision encoder module of a Qwen-VL style model (its location moved across versions)."""
    for path in ("visual", "model.visual", "base_model.model.visual", "base_model.model.model.visual"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise AttributeError(f"{type(model).__name__} has no vision tower named 'visual'")
