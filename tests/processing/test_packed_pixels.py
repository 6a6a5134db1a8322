"""Prepared (row-indexed) sets of the families whose processor packs a batch's image patches into one
sequence (Qwen2/2.5/3-VL, InternVL): each row keeps its own patch block and ``image_grid_thw`` row, and a
gathered batch is exactly what the family's processor gives for the same examples together (any rows, any
order, through re-indexed views); a batch's rows can be taken apart again (the cascade's audio rows, Stage
A's retention rows). CI: Qwen2-VL; -m slow: the others."""
import numpy as np
import pytest
import torch
from PIL import Image

from safe.bench.families import tiny_family, tiny_processor
from safe.data.prepared import PreparedSet
from safe.data.records import Example
from safe.data.rows import PackedImageRows, TensorRows
from safe.processing.vlm_prompts import VLMProcessorFormat, take_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

PACKED = [pytest.param("qwen2-vl"), *(pytest.param(k, marks=pytest.mark.slow)
                                      for k in ("qwen2.5-vl", "qwen3-vl", "internvl"))]
SIZES = [(32, 32), (32, 64), (70, 40), (64, 30)]  # (h, w): different patch / crop counts
QUESTIONS = ["what colour ?", "which shape is left ?", "how many ?", "is there a dog ?"]
ANSWERS = ["red", "blue green", "yes", "no"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root, rng, paths = tmp_path_factory.mktemp("images"), np.random.default_rng(0), []
    for i, (h, w) in enumerate(SIZES):
        paths.append(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _setup(kind, tmp_path, images):
    model, proc = tiny_family(kind), tiny_processor(kind)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    fmt = VLMProcessorFormat(tmp_path, model)
    examples = [Example(id=f"e{i}", task="t", family="f", question=q, answers=(a,), image=str(p))
                for i, (q, a, p) in enumerate(zip(QUESTIONS, ANSWERS, images))]
    data = PreparedSet(examples, fmt.encode(examples), PackedImageRows([str(p) for p in images], fmt.pixel_blocks),
                       TensorRows(torch.zeros(len(examples), 2, 4)), torch.zeros(len(examples), dtype=torch.bool))
    return model, fmt, data


def _processor_batch(fmt, rows, images, answers=False):
    return fmt.batch([QUESTIONS[i] for i in rows], [Image.open(images[i]).convert("RGB") for i in rows],
                     answers=[ANSWERS[i] for i in rows] if answers else None)


def _same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape and torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("kind", PACKED)
def test_a_gathered_batch_is_the_processors_batch(kind, tmp_path, images):
    model, fmt, data = _setup(kind, tmp_path, images)
    assert fmt.packs_pixels and data.pixels.packed
    blocks = [data.pixels[i].shape[0] for i in range(len(SIZES))]
    assert len(set(blocks)) > 1, blocks  # the images really need different numbers of patches / crops
    for rows in ([2, 0, 3], [1], [3, 2, 1, 0]):
        want = _processor_batch(fmt, rows, images)
        _same(data.prompt_inputs(fmt, rows), want)
        train = {**fmt.train_batch(data.enc, rows), "pixel_values": data.pixels[rows]}
        _same(train, _processor_batch(fmt, rows, images, answers=True))
    view = data.subset([3, 1, 2])  # re-indexed lazily: blocks and grid rows stay together
    _same(view.prompt_inputs(fmt, [2, 0]), _processor_batch(fmt, [2, 3], images))
    blank = data.pixels.map(torch.zeros_like)  # safe eval's "no image" input keeps the packed shape
    assert torch.equal(blank[[0, 1]], torch.zeros_like(data.pixels[[0, 1]]))
    with torch.no_grad():  # the model takes the gathered batch: its image features match the placeholders
        out = model.generate(**data.prompt_inputs(fmt, [0, 1, 2]), max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 3


@pytest.mark.parametrize("kind", PACKED)
def test_rows_taken_from_a_packed_batch_are_those_rows_packed_alone(kind, tmp_path, images):
    model, fmt, data = _setup(kind, tmp_path, images)
    batch = data.prompt_inputs(fmt, [0, 1, 2, 3])
    for rows in (torch.tensor([1, 3]), torch.tensor([False, False, True, False])):
        sub = take_rows(batch, rows, 4, fmt.image)
        alone = data.prompt_inputs(fmt, rows.nonzero().squeeze(1).tolist() if rows.dtype == torch.bool else rows.tolist())
        assert torch.equal(sub["pixel_values"], alone["pixel_values"])
        if "image_grid_thw" in alone:
            assert torch.equal(sub["image_grid_thw"], alone["image_grid_thw"])
        with torch.no_grad():  # the same rows, on the wider batch's padding: the model accepts them
            model(**sub)
    with pytest.raises(ValueError, match="do not divide"):
        take_rows({**batch, "pixel_values": batch["pixel_values"][:-1]}, torch.tensor([0]), 4, fmt.image)
