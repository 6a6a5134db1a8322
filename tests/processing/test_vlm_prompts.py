"""Prompts of the per-image-token-count families through the checkpoint's own processor: a tiny
checkpoint saved with its processor, prompts identical to the processor's own, images of different
sizes in one batch (different image-token counts), training batches, SAFEProcessor round trip.
CI: LLaVA-NeXT; -m slow: every family whose processor class this environment can build."""
import numpy as np
import pytest
import torch
from PIL import Image

from safe.bench.families import family_inputs, tiny_family, tiny_processor
from safe.processing.features import FeatureFrontEnd
from safe.processing.processor import SAFEProcessor
from safe.processing.vlm_prompts import VLMProcessorFormat

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


TILING = ["llava-next", "idefics3", "gemma3", "paligemma", "mllama", "qwen2-vl", "llava-onevision", "internvl"]
PARAMS = [pytest.param(k, marks=() if k == "llava-next" else pytest.mark.slow) for k in TILING]
QUESTIONS = ["what colour ?", "which shape is left ?"]


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (32, 64)]]


def _checkpoint(kind, tmp_path):
    proc = tiny_processor(kind)
    if proc is None:
        pytest.skip(f"the {kind} processor class needs torchvision here")
    model = tiny_family(kind)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    return model, proc


@pytest.mark.parametrize("kind", PARAMS)
def test_prompts_come_from_the_checkpoints_processor(kind, tmp_path):
    model, proc = _checkpoint(kind, tmp_path)
    fmt = VLMProcessorFormat(tmp_path, model)
    x = fmt.batch(QUESTIONS, _images())
    want = family_inputs(kind, model, QUESTIONS, _images(), proc)
    assert sorted(x) == sorted(want) and all(torch.equal(x[k], want[k]) for k in want)
    counts = (x["input_ids"] == fmt.image).sum(1).tolist()
    if kind in ("llava-next", "idefics3", "qwen2-vl", "llava-onevision"):  # tiling: the count follows the size
        assert counts[0] != counts[1] and min(counts) > 0, counts
    with torch.no_grad():
        logits = model(**x).logits  # the model accepts the batch: counts match its image features
        ids = model.generate(**x, max_new_tokens=2, do_sample=False)
    assert logits.shape[:2] == x["input_ids"].shape and len(fmt.decode(ids, x["input_ids"].shape[1])) == 2
    train = fmt.batch(QUESTIONS, _images(), answers=["red", "blue green"])
    n_answer = (train["labels"] != -100).sum(1).tolist()
    assert n_answer == [2, 3]  # answer words + eos
    assert torch.equal(train["input_ids"][:, -1], torch.full((2,), fmt.eos))
    with torch.no_grad():
        model(**{k: v for k, v in train.items() if k != "labels"})


def test_safe_processor_round_trip_and_mixed_rows(tmp_path):
    import transformers as tf

    model, _ = _checkpoint("llava-next", tmp_path / "ckpt")
    fmt = VLMProcessorFormat(tmp_path / "ckpt", model)
    front = FeatureFrontEnd(extractor=tf.WhisperFeatureExtractor(feature_size=16, chunk_length=1, hop_length=160))
    sp = SAFEProcessor(fmt, front)
    clip = np.sin(np.arange(16000) / 20).astype(np.float32)
    args = dict(text=QUESTIONS, images=[_images()[1], None], audio=[clip, None], sampling_rate=16000)
    got = sp(**args)
    assert sp.kind == "vlm" and got["audio_mask"].tolist() == [True, False]
    assert got["pixel_values"].shape[0] == 2  # the row without an image got the stand-in
    sp.save_pretrained(tmp_path / "proc")
    again = SAFEProcessor.from_pretrained(tmp_path / "proc")(**args)
    assert sorted(again) == sorted(got) and all(torch.equal(again[k], got[k]) for k in got)
    text_only = sp(text=["what colour ?"])
    assert "pixel_values" not in text_only and not (text_only["input_ids"] == fmt.image).any()


def test_template_needs_its_placeholders(tmp_path):
    model, _ = _checkpoint("llava-next", tmp_path)
    with pytest.raises(ValueError, match="must contain"):
        VLMProcessorFormat(tmp_path, model, template="Q: {question}")
    fmt = VLMProcessorFormat(tmp_path, model, template="<image> Q: {question} A:")
    assert fmt.prompt("what colour ?") == "<image> Q: what colour ? A:"


def test_a_processor_needing_a_missing_package_is_named(tmp_path):
    import json

    from transformers.utils import is_torchvision_available

    from safe.bench.families import image_processor, tiny_tokenizer

    if is_torchvision_available():
        pytest.skip("torchvision is installed: Pixtral's processor builds")
    # the video families load without their video processor (tests/processing/test_image_only.py);
    # Mistral 3's Pixtral processor imports torchvision itself
    tiny_family("mistral3").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    image_processor("mistral3").save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "PixtralProcessor"}))
    with pytest.raises(ImportError, match="Pixtral.*needs torchvision"):
        VLMProcessorFormat(tmp_path, tiny_family("mistral3"))
