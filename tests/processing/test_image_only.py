"""Processors without torchvision: a checkpoint laid out as on the hub (tokenizer, image processor config
naming the processor class, a video processor config, a chat template) whose processor class takes a video
processor loads without it, with a logged warning, and gives the same input_ids / pixel_values /
image_grid_thw as the family's image processor and chat template applied directly, and refuses videos.
(Mistral 3's Pixtral processor, which needs torchvision itself, is refused naming it: test_vlm_prompts.py.)
CI: Qwen2-VL; -m slow: the others."""
import importlib.util
import json
import logging

import numpy as np
import pytest
import torch
from jinja2 import Template
from PIL import Image

from safe.bench.families import _CHAT, image_processor, tiny_family, tiny_processor, tiny_tokenizer
from safe.processing.image_only import image_only_class
from safe.processing.vlm_prompts import VLMProcessorFormat, load_processor

_HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

QUESTIONS = ["what colour ?", "which shape is left ?"]
FAMILIES = [pytest.param("qwen2-vl"), *(pytest.param(k, marks=pytest.mark.slow)
                                        for k in ("qwen2.5-vl", "qwen3-vl", "internvl"))]
_CLASS = {"qwen2-vl": "Qwen2VLProcessor", "qwen2.5-vl": "Qwen2_5_VLProcessor", "qwen3-vl": "Qwen3VLProcessor",
          "internvl": "InternVLProcessor"}
_VIDEO = {"qwen2-vl": "Qwen2VLVideoProcessor", "qwen2.5-vl": "Qwen2VLVideoProcessor", "qwen3-vl": "Qwen3VLVideoProcessor",
          "internvl": "InternVLVideoProcessor"}
_INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                    "video_token": "<video_context>"}


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (70, 40)]]


def _image_text(kind, ip_out, i):
    if kind == "internvl":  # image_seq_length (4) context tokens per crop
        return "<img>" + "<IMG_CONTEXT>" * (4 * int(ip_out["num_patches"][i])) + "</img>"
    return "<|vision_start|>" + "<|image_pad|>" * (int(ip_out["image_grid_thw"][i].prod()) // 4) + "<|vision_end|>"


def _hub_checkpoint(kind, path):
    """The files a hub checkpoint of ``kind`` has: the processor class named in preprocessor_config.json,
    a video processor config (which this environment cannot build) and chat_template.json."""
    model = tiny_family(kind)
    model.save_pretrained(path)
    tiny_tokenizer(_INTERNVL_TOKENS if kind == "internvl" else None).save_pretrained(path)
    image_processor(kind).save_pretrained(path)
    pre = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**pre, "processor_class": _CLASS[kind]}))
    (path / "video_preprocessor_config.json").write_text(json.dumps(
        {"video_processor_type": _VIDEO[kind], "processor_class": _CLASS[kind]}))
    chat = _CHAT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>" if kind != "internvl" else "<IMG_CONTEXT>")
    (path / "chat_template.json").write_text(json.dumps({"chat_template": chat}))
    if kind == "internvl":  # its image_seq_length default (256) is for the real vision tower
        (path / "processor_config.json").write_text(json.dumps({"processor_class": _CLASS[kind], "image_seq_length": 4}))
    return model


@pytest.mark.parametrize("kind", FAMILIES)
def test_a_video_family_loads_without_its_video_processor(kind, tmp_path, caplog):
    model = _hub_checkpoint(kind, tmp_path)
    with caplog.at_level(logging.WARNING, logger="safe.processing.image_only"):
        fmt = VLMProcessorFormat(tmp_path, model)
    assert type(fmt.processor).__name__ == _CLASS[kind]
    if not _HAVE_TORCHVISION:  # the fallback; with torchvision the full class loads and must give the same inputs
        assert not hasattr(fmt.processor, "video_processor")
        assert sum("videos are unavailable" in r.getMessage() for r in caplog.records) == 1
    got = fmt.batch(QUESTIONS, _images())
    # the image path done by hand: the image processor, then the chat template with as many image tokens
    # as each image's patches (Qwen: grid / merge_size^2) or crops (InternVL: image_seq_length each) need
    ip = image_processor(kind)
    ip_out = ip(images=_images(), return_tensors="pt")
    turn = lambda q: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]  # noqa: E731
    texts = [Template(_CHAT.replace("IMAGE", _image_text(kind, ip_out, i))).render(messages=turn(q), add_generation_prompt=True)
             for i, q in enumerate(QUESTIONS)]
    tok = tiny_tokenizer(_INTERNVL_TOKENS if kind == "internvl" else None)
    want = tok(texts, padding=True, return_tensors="pt")
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])
    assert torch.equal(got["pixel_values"], ip_out["pixel_values"])
    if kind != "internvl":
        assert torch.equal(got["image_grid_thw"], ip_out["image_grid_thw"])
        assert torch.equal(got["mm_token_type_ids"], (want["input_ids"] == fmt.image).long())
    assert (got["input_ids"] == fmt.image).sum(1).tolist()[0] != (got["input_ids"] == fmt.image).sum(1).tolist()[1]
    with torch.no_grad():
        model(**got)  # the model's own image features fill exactly those placeholders
    if not _HAVE_TORCHVISION:
        with pytest.raises(ValueError, match="without its video processor"):  # not dropped silently
            fmt.processor(text=["a video"], videos=[np.zeros((2, 32, 32, 3), dtype=np.uint8)])


def test_the_image_only_class_saves_and_loads_as_its_parent(tmp_path):
    import transformers as tf

    proc = tiny_processor("internvl")
    assert type(proc) is image_only_class(tf.InternVLProcessor) and issubclass(type(proc), tf.InternVLProcessor)
    proc.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "InternVLProcessor" and config["image_seq_length"] == 4
    again = load_processor(tmp_path)
    assert again.image_seq_length == 4 and again.chat_template == proc.chat_template
    with pytest.raises(ValueError, match="no video processor"):
        image_only_class(tf.Idefics3Processor)


def test_smolvlm_uses_its_own_processor(tmp_path):
    import transformers as tf

    pytest.importorskip("num2words")
    proc = tiny_processor("smolvlm")
    assert isinstance(proc, tf.SmolVLMProcessor)
    proc.save_pretrained(tmp_path)
    assert isinstance(load_processor(tmp_path), tf.SmolVLMProcessor)
