"""A VLM family's own processor class without its video processor, for environments without torchvision.

The processor classes of Qwen2/2.5/3-VL, LLaVA-OneVision, InternVL and SmolVLM take an image processor, a
tokenizer and a video processor; transformers builds video processors only with torchvision, and its
processor constructor type-checks every sub-processor (``None`` included), so without torchvision
``AutoProcessor`` fails on these checkpoints although their image path needs none of it (the image
processors have a PIL backend). :func:`image_only_class` makes a subclass of the same name whose only
sub-processors are the image processor and the tokenizer: prompts, image-token expansion, ``pixel_values``,
``image_grid_thw`` / ``mm_token_type_ids`` and the chat template are the parent class's own code; asking it
for videos raises ``ValueError`` (the parent would drop them silently). Saved, it writes the parent's
``processor_class`` (a torchvision environment loads the full class again).

Mistral 3's ``PixtralProcessor`` cannot be built this way: its module imports a function from the
torchvision image processor at import time, so the class itself is unavailable without torchvision.
"""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_CONFIGS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
_CLASSES: dict[type, type] = {}


def image_only_class(cls: type) -> type:
    """``cls`` (a ``ProcessorMixin`` subclass taking ``video_processor``) without the video processor:
    same name, same behaviour on text and images, ``get_attributes()`` without ``video_processor``."""
    from transformers.processing_utils import ProcessorMixin

    if cls in _CLASSES:
        return _CLASSES[cls]
    attributes = [a for a in cls.get_attributes() if a != "video_processor"]
    if attributes == list(cls.get_attributes()):
        raise ValueError(f"{cls.__name__} has no video processor to leave out")
    code = cls.__init__.__code__
    # the parent's named __init__ arguments: what transformers' from_pretrained may pass from processor_config
    accepted = [a for a in code.co_varnames[1:code.co_argcount] if a != "video_processor"]

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        kwargs.pop("video_processor", None)
        cls.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)

    # to_dict saves the attributes named in __init__'s signature: the parent's, less the video processor
    signature = inspect.signature(cls.__init__)
    __init__.__signature__ = signature.replace(
        parameters=[p for name, p in signature.parameters.items() if name != "video_processor"])

    def __call__(self, *args, **kwargs):
        # the parent skips videos silently when it has no video processor: refuse them instead
        videos = kwargs.get("videos", args[2] if len(args) > 2 else None)
        if videos is not None:
            raise ValueError(f"videos: {cls.__name__} was loaded without its video processor (it needs torchvision); "
                             "only images and text can be processed here")
        return cls.__call__(self, *args, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        conversations, _ = self._normalize_conversations(conversation)
        if any(isinstance(c, dict) and c.get("type") == "video"
               for conv in conversations for message in conv for c in (message.get("content") or [])):
            raise ValueError(f"conversation: {cls.__name__} was loaded without its video processor (it needs "
                             "torchvision); a video turn cannot be rendered here")
        # SmolVLM's override only adds video defaults (template, frames, fps) read off the video processor
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    def get_attributes(sub) -> list[str]:
        return list(attributes)

    def from_args_and_dict(sub, args, processor_dict, **kwargs):
        # the parent's version reads the accepted keys off __init__'s code, which here is the wrapper above
        given = {**processor_dict, **kwargs}
        unused_wanted = given.pop("return_unused_kwargs", False)
        for key in (*cls.get_attributes(), "auto_map", "processor_class"):
            given.pop(key, None)
        unused, valid = cls.validate_init_kwargs(processor_config=given, valid_kwargs=accepted)
        processor = sub(*args, **valid)
        return (processor, unused) if unused_wanted else processor

    sub = type(cls.__name__, (cls,), {
        "__init__": __init__, "__call__": __call__, "apply_chat_template": apply_chat_template,
        "__module__": cls.__module__, "__qualname__": cls.__qualname__,
        "__doc__": f"{cls.__name__} without its video processor (images and text only).",
        "get_attributes": classmethod(get_attributes), "from_args_and_dict": classmethod(from_args_and_dict)})
    _CLASSES[cls] = sub
    return sub


def processor_class_name(checkpoint: str | Path) -> str | None:
    """The ``processor_class`` a checkpoint's configs name (processor, preprocessor, then tokenizer config)."""
    for name in _CONFIGS:
        path = Path(checkpoint) / name
        if path.is_file():
            try:
                found = json.loads(path.read_text()).get("processor_class")
            except (OSError, ValueError):
                continue
            if found:
                return str(found)
    return None


def load_image_only(checkpoint: str | Path):
    """The checkpoint's processor class without its video processor, loaded from ``checkpoint`` (no
    download), or None when that class has no video processor. For a checkpoint ``AutoProcessor`` could
    not load: without torchvision, or saved without a video processor config (the tiny test checkpoints)."""
    import transformers

    name = processor_class_name(checkpoint)
    if name is None:
        return None
    cls = getattr(transformers, name, None)
    try:  # a class transformers stubs out for a missing backend raises ImportError on any attribute
        attributes = cls.get_attributes() if isinstance(cls, type) else []
    except (ImportError, AttributeError):
        return None
    if "video_processor" not in attributes:
        return None
    processor = image_only_class(cls).from_pretrained(str(checkpoint), local_files_only=True)
    logger.warning("%s: %s loaded without its video processor (torchvision missing or no video processor "
                   "config): images and text work, videos are unavailable", checkpoint, name)
    return processor


__all__ = ["image_only_class", "load_image_only", "processor_class_name"]
