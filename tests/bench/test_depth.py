"""The depth track: scenes with depth maps, questions only depth answers, and its frozen depth encoder."""
import numpy as np
import pytest

from safe.bench.depth import (
    BACKGROUND_DEPTH,
    DEPTH_FAMILIES,
    MIN_GAP,
    DepthSplits,
    _plan,
    depth_split,
    make_depth_example,
)
from safe.bench.questions import SynthConfig

SCENE = SynthConfig()


@pytest.fixture(scope="module")
def test_split():
    return depth_split(SCENE, DepthSplits(n_test=60), "test")


def test_answers_follow_from_the_depths(test_split):
    examples, _, _ = test_split
    seen = set()
    for ex in examples:
        objs = ex.meta["objects"]
        depths = sorted(o["depth"] for o in objs)
        assert all(b - a >= MIN_GAP - 1e-9 for a, b in zip(depths, depths[1:]))
        if ex.family == "nearest_shape":
            assert ex.answer == min(objs, key=lambda o: o["depth"])["shape"]
            assert len({o["shape"] for o in objs}) == len(objs)
        elif ex.family == "farthest_colour":
            assert ex.answer == max(objs, key=lambda o: o["depth"])["colour"]
            assert len({o["colour"] for o in objs}) == len(objs)
        elif ex.family == "behind_shape":
            named = next(o for o in objs if f"the {o['colour']} {o['shape']}?" in ex.question)
            behind = [o for o in objs if o["depth"] > named["depth"]]
            assert len(objs) == 3 and len(behind) == 1 and ex.answer == behind[0]["shape"]
        assert ex.needs_audio == (ex.family in DEPTH_FAMILIES)  # the trainer's "needs the modality" flag
        seen.add(ex.family)
    assert set(DEPTH_FAMILIES) <= seen


def test_depth_map_holds_each_object_at_its_depth(test_split):
    examples, pictures, maps = test_split
    ex, depth = examples[0], make_depth_example(SCENE, DepthSplits(n_test=60), "test", 0)[2]
    cell = SCENE.cell_size
    for o in ex.meta["objects"]:
        cy, cx = o["row"] * cell + cell // 2 + o["dy"], o["col"] * cell + cell // 2 + o["dx"]
        assert depth[cy, cx] == pytest.approx(o["depth"])
    assert depth[0, 0] == BACKGROUND_DEPTH
    assert maps.shape == (60, 48, 48) and maps.min() >= 1.0 and maps.max() == BACKGROUND_DEPTH


def test_examples_are_a_pure_function_of_seed_split_index():
    a = make_depth_example(SCENE, DepthSplits(), "train", 5)
    b = make_depth_example(SCENE, DepthSplits(), "train", 5)
    assert a[0] == b[0] and np.array_equal(a[2], b[2])
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
    plan = _plan(DepthSplits(), "retention")
    assert {f for f, _ in plan}.isdisjoint(DEPTH_FAMILIES)  # the retention buffer is VL-only


def test_shipped_depth_encoder_is_a_frozen_transformers_vit(test_split):
    import torch

    from safe.bench.depth import depth_pixels
    from safe.bench.depth_model import load_depth_encoder, load_depth_processor
    from safe.models.encoders import wrap_encoder

    enc = wrap_encoder(load_depth_encoder())
    assert enc.kind == "vit" and all(not p.requires_grad for p in enc.parameters())
    _, _, maps = test_split
    pixels = load_depth_processor()(maps[:4])  # the encoder's own (shipped) image processor
    assert torch.allclose(pixels, torch.from_numpy(np.stack([depth_pixels(m) for m in maps[:4]])), atol=1e-6)
    tokens = enc.encode(pixels)
    assert tokens.shape == (4, 1 + SCENE.grid ** 2, enc.output_dim)


def test_the_policy_preview_is_what_the_pipeline_reads_off_the_encoder_input(test_split):
    """The depth policy is trained on depth_preview of the maps and deployed on map_preview of the depth
    encoder's input (what safe.pipeline has): the same numbers, each cell's nearest point as nearness."""
    import torch

    from safe.bench.depth import NEAR, load_depth_processor
    from safe.bench.depth_policy import depth_preview
    from safe.processing.modalities import map_preview

    examples, _, maps = test_split
    trained = depth_preview(maps, SCENE.grid)
    deployed = map_preview(load_depth_processor()(maps), SCENE.grid)
    assert torch.allclose(trained, deployed, atol=1e-6) and not trained[:, SCENE.grid ** 2:].any()
    for ex, row in zip(examples[:8], trained):
        for o in ex.meta["objects"]:  # objects are drawn inside their own cell
            want = (BACKGROUND_DEPTH - o["depth"]) / (BACKGROUND_DEPTH - NEAR)
            assert row[o["row"] * SCENE.grid + o["col"]] == pytest.approx(want, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_track(tmp_path_factory):
    """A few Stage A steps for depth on small splits (the unchanged trainer), plus the depth policy."""

    from safe.bench.build import SHIPPED_DIR
    from safe.bench.depth_model import run_depth_track
    from safe.training.config import load_stage_a_config

    recipe = load_stage_a_config("stage_a_depth.yaml", [  # the shipped recipe, by name
        "steps=3", "warmup_steps=1", "retention_every=0", "checkpoint_every=3", "batch_size=8",
        "safe.fusion_layers=[-1]"])
    run = tmp_path_factory.mktemp("depth") / "run"
    metrics = run_depth_track(run, SHIPPED_DIR / "vl", recipe, splits=DepthSplits(48, 8, 16), progress=False,
                              policy={"steps": 4, "train_rows": 24, "cost_rows": 2})
    return metrics, recipe


@pytest.mark.slow
def test_depth_policy_is_scored_beside_never_always_and_oracle(tiny_track):
    p = tiny_track[0]["policy"]
    assert p["rows"] == {"train": 24, "test": 16}
    from safe.bench.depth_policy import ALPHAS

    assert p["alpha"] in ALPHAS and [s["alpha"] for s in p["alpha_sweep"]] == sorted(ALPHAS)
    for name in ("policy", "distilled", "never", "always", "oracle"):
        assert 0.0 <= p[name]["accuracy"] <= 1.0 and 0.0 <= p[name]["use_rate"] <= 1.0
    assert p["never"]["use_rate"] == 0.0 and p["always"]["use_rate"] == 1.0
    assert p["oracle"]["accuracy"] >= max(p["never"]["accuracy"], p["always"]["accuracy"])
    assert p["costs_ms_per_query"]["depth_question"]["with_audio"] > 0


@pytest.mark.slow
def test_the_depth_policy_is_saved_with_the_weights_and_the_pipeline_consults_it(tiny_track):
    """checkpoints/policy holds the distilled depth gate; safe.pipeline on the run decides each row with it."""
    import safe
    from safe.bench.build import SHIPPED_DIR
    from safe.bench.depth import SHIPPED_DEPTH_ENCODER

    m = tiny_track[0]
    assert m["policy"]["checkpoint"].endswith("checkpoints/policy")
    p = safe.pipeline(m["policy"]["checkpoint"].removesuffix("/checkpoints/policy"), SHIPPED_DIR,
                      encoders={"depth": SHIPPED_DEPTH_ENCODER})
    assert p.model.policy is not None and p.model.policy.kind == "mlp"
    examples, pictures, maps = depth_split(SCENE, DepthSplits(n_test=6), "test")
    out = p(image=pictures, question=[e.question for e in examples], depth=list(maps))
    probs = [r["depth_probability"] for r in out]
    assert all(q is not None for q in probs) and [r["used_depth"] for r in out] == [q > 0.5 for q in probs]


@pytest.mark.slow
def test_depth_track_trains_and_composes_with_audio_on_the_built_in_base(tiny_track):
    """A few Stage A steps on small depth splits, then the depth checkpoint added next to audio on the
    built-in base: the depth-only row is exactly the depth-only model's, the others exactly what the audio
    model gave before depth was added."""
    import torch

    from safe import SAFEConfig, SAFEModel
    from safe.bench.build import SHIPPED_DIR
    from safe.bench.depth_model import load_depth_encoder, load_depth_processor
    from safe.models.loading import load_audio_encoder
    from safe.processing.prompts import load_pixels, load_vl_model

    m, recipe = tiny_track
    assert m["frozen_byte_identical"] and m["steps"] == 3
    assert {"depth_accuracy", "depth_accuracy_base", "vl_accuracy_gate_open"} <= set(m)
    assert m["answers_identical_gate_closed"] == 1.0

    depth_only = SAFEModel.from_pretrained(m["checkpoint"], load_vl_model(SHIPPED_DIR / "vl")[0], load_depth_encoder())
    assert depth_only.modality_names == ["depth"]
    base, _, fmt = load_vl_model(SHIPPED_DIR / "vl")
    audio_enc = load_audio_encoder(SHIPPED_DIR / "audio_encoder")
    both = SAFEModel(base, audio_enc, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4))
    both.set_gates(0.5)
    examples, pictures, maps = depth_split(SCENE, DepthSplits(n_test=4), "test")
    x = {**fmt.prompt_batch(fmt.encode(examples), range(4)), "pixel_values": load_pixels(pictures)}
    c = audio_enc.config
    audio = torch.randn(4, c.num_mel_bins, 2 * c.max_source_positions, generator=torch.Generator().manual_seed(0))
    depth = load_depth_processor()(maps)
    amask, dmask = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False])
    with torch.no_grad():
        before = both(**x, audio_features=audio, audio_mask=amask).logits
        both.load_modality("depth", m["checkpoint"], load_depth_encoder())
        got = both(**x, audio_features=audio, audio_mask=amask, depth_features=depth, depth_mask=dmask).logits
        want = depth_only(**x, depth_features=depth, depth_mask=dmask).logits
    assert torch.equal(got[1], want[1])      # depth only: the depth-only model's row
    assert torch.equal(got[2:], before[2:])  # audio only, and neither: as before depth was added
