"""Tiny random-weight instances of every supported VLM family, with their own processors, for
``safe verify --all-presets`` and the tests.

Each family is the real transformers class (``LlavaNextForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``, ...) with a few decoder layers, small widths and a tiny vision
tower, plus the family's real processor class over a tiny word-level tokenizer (built offline) with a
small chat template. Prompts come from that processor: it expands the image placeholder to as many
tokens as the image needs (tiling, dynamic resolution), never a constant of ours.

The processor classes with a video processor (Qwen-VL, LLaVA-OneVision, InternVL, SmolVLM) are built
without it (:mod:`safe.processing.image_only`), so they need no torchvision; SmolVLM's needs ``num2words``.
Mistral 3's (Pixtral's) processor needs ``torchvision`` itself. Where a class is unavailable,
:func:`family_inputs` builds the same prompt from the family's own image processor and the model's own
``get_image_features`` (the number of features it returns per image is the number of placeholders the
model checks), so the model side is exercised either way; :func:`has_processor` says which path a family
takes here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

VOCAB = 128
FAMILIES = ("llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "idefics3", "smolvlm",
            "gemma3", "paligemma", "mllama", "internvl", "mistral3")
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<video>", "<|image_pad|>", "<|video_pad|>",
            "<|vision_start|>", "<|vision_end|>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
            "<start_of_image>", "<image_soft_token>", "<end_of_image>", "<|image|>", "<|python_tag|>", "<img>",
            "</img>", "<IMG_CONTEXT>", "<video_context>", "[IMG]", "[IMG_BREAK]", "[IMG_END]",
            *(f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)))
WORDS = tuple("what is the colour of shape in picture a red blue green left right yes no user assistant : ? . , "
              "which how many there sound dog bird".split())
IMAGE_TOKEN = {"llava-next": "<image>", "llava-onevision": "<image>", "qwen2-vl": "<|image_pad|>",
               "qwen2.5-vl": "<|image_pad|>", "qwen3-vl": "<|image_pad|>", "idefics3": "<image>", "smolvlm": "<image>",
               "gemma3": "<image_soft_token>", "paligemma": "<image>", "mllama": "<|image|>", "internvl": "<IMG_CONTEXT>",
               "mistral3": "[IMG]"}
"""The token the model config names as its image placeholder."""
_TEMPLATE_IMAGE = {"qwen2-vl": "<|vision_start|><|image_pad|><|vision_end|>", "gemma3": "<start_of_image>"}
_CHAT = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}IMAGE"
         "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def tiny_tokenizer(extra: dict[str, str] | None = None):
    """A word-level ``PreTrainedTokenizerFast`` holding every family's special tokens (built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw: dict[str, Any] = {"extra_special_tokens": extra} if extra else {"additional_special_tokens": list(SPECIALS[4:])}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left", **kw)


_ID = {t: i for i, t in enumerate(SPECIALS)}


def _text(**kw) -> dict:
    d = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=VOCAB, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    d.update(kw)
    return d


def _vision(**kw) -> dict:
    d = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=16)
    d.update(kw)
    return d


def tiny_family(kind: str, seed: int = 0, attn_implementation: str | None = None) -> nn.Module:
    """A randomly initialised tiny model of family ``kind`` (:data:`FAMILIES`), token ids matching
    :func:`tiny_tokenizer`."""
    _quiet()
    import transformers as tf

    torch.manual_seed(seed)
    img = _ID[IMAGE_TOKEN.get(kind, "<image>")]
    mrope = {"type": "mrope", "mrope_section": [2, 3, 3]}
    if kind == "llava-next":
        cfg = tf.LlavaNextConfig(vision_config=tf.CLIPVisionConfig(**_vision(projection_dim=32)),
                                 text_config=tf.LlamaConfig(**_text()), image_token_index=img,
                                 image_grid_pinpoints=_PINPOINTS, vision_feature_layer=-1)
        cls = tf.LlavaNextForConditionalGeneration
    elif kind == "llava-onevision":
        cfg = tf.LlavaOnevisionConfig(vision_config={**_vision(), "model_type": "siglip_vision_model"},
                                      text_config={**_text(), "model_type": "qwen2"}, image_token_index=img,
                                      video_token_index=_ID["<video>"], image_grid_pinpoints=_PINPOINTS,
                                      vision_feature_layer=-1)
        cls = tf.LlavaOnevisionForConditionalGeneration
    elif kind in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl"):
        ids = dict(image_token_id=img, video_token_id=_ID["<|video_pad|>"], vision_start_token_id=_ID["<|vision_start|>"],
                   vision_end_token_id=_ID["<|vision_end|>"])
        if kind == "qwen2-vl":
            vis = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2)
            cfg, cls = tf.Qwen2VLConfig(text_config=_text(rope_scaling=mrope), vision_config=vis, **ids), \
                tf.Qwen2VLForConditionalGeneration
        elif kind == "qwen2.5-vl":
            vis = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4, patch_size=14,
                       spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1])
            cfg, cls = tf.Qwen2_5_VLConfig(text_config=_text(rope_scaling=mrope), vision_config=vis, **ids), \
                tf.Qwen2_5_VLForConditionalGeneration
        else:
            text = _text(head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                    "mrope_interleaved": True})
            vis = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4, patch_size=16,
                       spatial_merge_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0])
            cfg, cls = tf.Qwen3VLConfig(text_config=text, vision_config=vis, **ids), tf.Qwen3VLForConditionalGeneration
    elif kind in ("idefics3", "smolvlm"):
        conf, cls = ((tf.Idefics3Config, tf.Idefics3ForConditionalGeneration) if kind == "idefics3"
                     else (tf.SmolVLMConfig, tf.SmolVLMForConditionalGeneration))
        cfg = conf(vision_config=_vision(patch_size=8), text_config=_text(), image_token_id=img, scale_factor=2)
    elif kind == "gemma3":
        cfg = tf.Gemma3Config(text_config=_text(head_dim=16, sliding_window=16), vision_config=_vision(patch_size=8),
                              mm_tokens_per_image=4, image_token_index=img, boi_token_index=_ID["<start_of_image>"],
                              eoi_token_index=_ID["<end_of_image>"])
        cls = tf.Gemma3ForConditionalGeneration
    elif kind == "paligemma":
        cfg = tf.PaliGemmaConfig(text_config=_text(head_dim=16, model_type="gemma"),
                                 vision_config=_vision(projection_dim=64), image_token_index=img, projection_dim=64,
                                 hidden_size=64)
        cls = tf.PaliGemmaForConditionalGeneration
    elif kind == "mllama":
        vis = _vision(num_global_layers=1, max_num_tiles=2, intermediate_layers_indices=[0], vision_output_dim=64,
                      supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
        cfg = tf.MllamaConfig(vision_config=vis, text_config=_text(num_hidden_layers=4, cross_attention_layers=[1]),
                              image_token_index=img)
        cls = tf.MllamaForConditionalGeneration
    elif kind == "internvl":
        cfg = tf.InternVLConfig(vision_config=_vision(image_size=[32, 32], patch_size=[8, 8]),
                                text_config={**_text(), "model_type": "qwen2"}, image_token_id=img,
                                downsample_ratio=0.5, image_seq_length=4)
        cls = tf.InternVLForConditionalGeneration
    elif kind == "mistral3":
        cfg = tf.Mistral3Config(vision_config={**_vision(image_size=64, patch_size=8, head_dim=8), "model_type": "pixtral"},
                                text_config={**_text(), "model_type": "mistral"}, image_token_index=img,
                                spatial_merge_size=2)
        cls = tf.Mistral3ForConditionalGeneration
    else:
        raise ValueError(f"unknown family {kind!r}; choose from {FAMILIES}")
    if attn_implementation is not None:
        cfg._attn_implementation = attn_implementation
    model = cls(cfg).eval()
    if kind == "gemma3":  # its projector weight is initialised to zeros: every image would embed to 0
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.05)
    return model


def tiny_processor(kind: str):
    """The family's own processor over :func:`tiny_tokenizer`, or None where its class needs a package
    this environment lacks (Pixtral's needs torchvision; see the module docstring). The families whose
    processor takes a video processor get their class without it
    (:func:`safe.processing.image_only.image_only_class`): images only, no torchvision needed."""
    _quiet()
    import transformers as tf

    from safe.processing.image_only import image_only_class

    chat = _CHAT.replace("IMAGE", _TEMPLATE_IMAGE.get(kind if not kind.startswith("qwen") else "qwen2-vl",
                                                       IMAGE_TOKEN[kind]))
    tok = tiny_tokenizer()
    try:
        if kind == "llava-next":
            ip = tf.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                            image_grid_pinpoints=_PINPOINTS)
            return tf.LlavaNextProcessor(ip, tok, patch_size=16, vision_feature_select_strategy="default",
                                         num_additional_image_tokens=1, chat_template=chat)
        if kind == "idefics3":
            ip = tf.Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
            return tf.Idefics3Processor(ip, tok, image_seq_len=4, chat_template=chat)
        if kind == "gemma3":
            tok = tiny_tokenizer({"boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
                                  "eoi_token": "<end_of_image>"})
            return tf.Gemma3Processor(tf.Gemma3ImageProcessor(size={"height": 32, "width": 32}), tok,
                                      chat_template=chat, image_seq_length=4)
        if kind == "paligemma":
            ip = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
            ip.image_seq_length = 4
            return tf.PaliGemmaProcessor(ip, tiny_tokenizer({"image_token": "<image>"}), chat_template=chat)
        if kind == "mllama":
            return tf.MllamaProcessor(tf.MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2), tok,
                                      chat_template=chat)
        if kind in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl"):
            cls = {"qwen2-vl": tf.Qwen2VLProcessor, "qwen2.5-vl": tf.Qwen2_5_VLProcessor, "qwen3-vl": tf.Qwen3VLProcessor}
            return image_only_class(cls[kind])(image_processor(kind), tok, chat_template=chat)
        if kind == "llava-onevision":
            return image_only_class(tf.LlavaOnevisionProcessor)(image_processor(kind), tok, num_image_tokens=4,
                                                                vision_feature_select_strategy="full", chat_template=chat)
        if kind == "smolvlm":
            return image_only_class(tf.SmolVLMProcessor)(image_processor(kind), tok, image_seq_len=4, chat_template=chat)
        if kind == "internvl":
            tok = tiny_tokenizer({"start_image_token": "<img>", "end_image_token": "</img>",
                                  "context_image_token": "<IMG_CONTEXT>", "video_token": "<video_context>"})
            return image_only_class(tf.InternVLProcessor)(image_processor(kind), tok, image_seq_length=4, chat_template=chat)
        if kind == "mistral3":
            return tf.PixtralProcessor(image_processor(kind), tok, patch_size=8, spatial_merge_size=2, chat_template=chat)
    except (ImportError, AttributeError):  # the class needs torchvision / num2words here
        return None
    raise ValueError(f"unknown family {kind!r}; choose from {FAMILIES}")


def image_processor(kind: str):
    """The family's own image processor (PIL backend where torchvision is missing)."""
    _quiet()
    import transformers as tf

    if kind.startswith("qwen"):
        p = 16 if kind == "qwen3-vl" else 14
        return tf.Qwen2VLImageProcessor(min_pixels=(2 * p) ** 2, max_pixels=(4 * p) ** 2 * 2, patch_size=p, merge_size=2)
    if kind == "llava-onevision":
        return tf.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=_PINPOINTS)
    if kind == "smolvlm":
        return tf.SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    if kind == "internvl":
        return tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=2)
    if kind == "mistral3":
        return tf.PixtralImageProcessor(size={"longest_edge": 64}, patch_size=8)
    proc = tiny_processor(kind)
    return proc.image_processor


def has_processor(kind: str) -> bool:
    return tiny_processor(kind) is not None


_WRAP = {"qwen2-vl": ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
         "internvl": ("<img>", "<IMG_CONTEXT>", "</img>"), "mistral3": ("", "[IMG]", "[IMG_END]"),
         "llava-onevision": ("", "<image>", "")}


def family_inputs(kind: str, model: nn.Module, questions: Sequence[str], images: Sequence, processor=None,
                  answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Left-padded prompts (one image per row) for ``model``: through ``processor`` (default
    :func:`tiny_processor`) and its chat template, or, where that class is unavailable here, through
    the family's image processor with one placeholder per feature ``get_image_features`` returns."""
    processor = tiny_processor(kind) if processor is None else processor
    turn = lambda q: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]  # noqa: E731
    if processor is not None:
        texts = [processor.apply_chat_template(turn(q), add_generation_prompt=True, tokenize=False) for q in questions]
        if answers is not None:
            texts = [t + " " + a + "<eos>" for t, a in zip(texts, answers)]
        out = dict(processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt"))
        out.pop("labels", None)
        return out
    ip = image_processor(kind)
    vis = {k: v for k, v in ip(images=list(images), return_tensors="pt").items()
           if k not in ("batch_num_images", "num_patches")}
    with torch.no_grad():
        feats = model.model.get_image_features(**vis).pooler_output
    counts = [len(f) for f in feats] if isinstance(feats, (list, tuple)) else [feats.shape[1]] * len(images)
    if kind == "internvl":  # one image may be several crops of image_seq_length tokens each
        counts = [int(n) * feats.shape[1] for n in ip(images=list(images), return_tensors="pt")["num_patches"]]
    start, token, end = _WRAP["qwen2-vl" if kind.startswith("qwen") else kind]
    tok = tiny_tokenizer()
    texts = []
    for i, q in enumerate(questions):
        text = _CHAT.replace("IMAGE", start + token * counts[i] + end)
        from jinja2 import Template

        texts.append(Template(text).render(messages=turn(q), add_generation_prompt=True)
                     + ("" if answers is None else " " + answers[i] + "<eos>"))
    enc = tok(texts, padding=True, return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **vis}
    if kind.startswith("qwen"):  # what Qwen's processor returns alongside input_ids for M-RoPE
        out["mm_token_type_ids"] = (enc["input_ids"] == _ID[IMAGE_TOKEN[kind]]).long()
    return out
