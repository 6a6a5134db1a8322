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


@pytest.mark.parametrize("kind", PACKED)
def test_a_cascade_policy_on_a_packed_batch(kind, tmp_path, images):
    """The cascade re-runs its chosen rows alone: their packed patches are cut out of the batch's, so the
    chosen rows are SAFE's generate on those rows, the others the base's own tokens."""
    import copy

    from safe import SAFEConfig, SAFEModel
    from safe.bench import presets as P
    from safe.policy.features import PREVIEW_DIM, StateSpec
    from safe.policy.network import GateMLP
    from safe.policy.runtime import AudioPolicy

    base, fmt, data = _setup(kind, tmp_path, images)
    ref = copy.deepcopy(base)
    enc = P.tiny_audio_encoder("whisper")
    model = SAFEModel(base, enc, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4, lora_rank=4))
    model.set_gates(0.7)
    spec = StateSpec(model.hidden_size, model.hidden_size)  # the cascade state (with the base's confidence)
    net = GateMLP(spec.dim, hidden=1)
    with torch.no_grad():  # uses audio exactly where preview feature 0 is positive
        for p in net.parameters():
            p.zero_()
        net.net[0].weight[0, spec.question_dim + spec.image_dim] = 1.0
        net.net[2].weight.fill_(1.0)
    model.attach_policy(AudioPolicy(spec, "mlp", hidden=1, net=net))
    x = data.prompt_inputs(fmt, [0, 1, 2, 3])
    audio = P.random_audio(enc, 4, seed=1)
    use = [False, True, False, True]
    preview = torch.zeros(4, PREVIEW_DIM)
    preview[:, 0] = torch.tensor([1.0 if u else -1.0 for u in use])
    gen = dict(max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        out = model.generate(**x, audio_features=audio, audio_preview=preview, **gen)
        base_out = ref.generate(**x, **gen)
        rows = torch.tensor([1, 3])
        alone = data.prompt_inputs(fmt, rows.tolist())  # the chosen rows packed by themselves
        with_audio = model.generate(**take_rows(x, rows, 4, fmt.image), audio_features=audio[rows],
                                    audio_mask=torch.ones(2, dtype=torch.bool), **gen)
    assert out.used_audio.tolist() == use
    for i in (0, 2):
        assert torch.equal(out.sequences[i, : base_out.shape[1]], base_out[i])
    assert torch.equal(out.sequences[rows, : with_audio.shape[1]], with_audio)
    assert torch.equal(take_rows(x, rows, 4, fmt.image)["pixel_values"], alone["pixel_values"])


def test_blocks_follow_the_processors_own_image_defaults(tmp_path, images):
    """InternVL's processor crops to patches whatever its image processor's config says (a hub checkpoint's
    says no): each row's block is what the processor makes, not what the image processor makes alone."""
    import transformers as tf

    from safe.bench.families import _CHAT, tiny_tokenizer
    from safe.processing.image_only import image_only_class

    tok = tiny_tokenizer({"start_image_token": "<img>", "end_image_token": "</img>",
                          "context_image_token": "<IMG_CONTEXT>", "video_token": "<video_context>"})
    ip = tf.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=False, min_patches=1, max_patches=2)
    proc = image_only_class(tf.InternVLProcessor)(ip, tok, image_seq_length=4,
                                                  chat_template=_CHAT.replace("IMAGE", "<IMG_CONTEXT>"))
    tiny_family("internvl").save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    fmt = VLMProcessorFormat(tmp_path, tiny_family("internvl"))
    blocks = fmt.pixel_blocks([str(p) for p in images])
    assert [ip(images=[Image.open(p).convert("RGB")], return_tensors="pt")["pixel_values"].shape[0]
            for p in images] == [1] * len(images)
    assert sum(b.shape[0] for b in blocks) > len(images)  # the processor cropped
    rows = [1, 2]
    want = _processor_batch(fmt, rows, images)
    assert torch.equal(torch.cat([blocks[i] for i in rows]), want["pixel_values"])
