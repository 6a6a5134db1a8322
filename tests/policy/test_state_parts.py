"""The policy state's parts: the pooled image embedding, the audio preview as an embedding, the state kinds
saved before them, and the state ablation over part subsets (its costs included)."""
import numpy as np
import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.inference.loading import load_trained
from safe.policy.features import StateSpec, probe_image
from safe.policy.preview import PREVIEW_SECONDS, preview_embedding
from safe.policy.stage import PolicyStageConfig, prepare_policy_data
from safe.policy.state_ablation import STATE_SUBSETS, run_state_ablation, select_subsets, subset_costs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model(untrained_ckpt):
    bench, base, path = untrained_ckpt
    model, fmt, frontend = load_trained(base, path)
    return bench, model, fmt, frontend


def test_state_spec_of_an_older_policy_loads_as_its_layout():
    """A policy saved before the part kinds existed stored widths only: it reads as the projection image
    and the statistics preview, the layout it was trained on."""
    old = {"question_dim": 128, "image_dim": 128, "preview_dim": 34, "confidence_dim": 0}
    spec = StateSpec.from_dict(old)
    assert (spec.image_kind, spec.preview_kind, spec.dim) == ("projection", "stats", 290)
    new = StateSpec(8, 4, 6, 3, image_kind="pooled", preview_kind="embedding")
    assert StateSpec.from_dict(new.to_dict()) == new
    with pytest.raises(ValueError, match="image_kind must be one of"):
        StateSpec(8, 4, image_kind="clip")
    with pytest.raises(ValueError, match="preview_kind must be one of"):
        StateSpec(8, 4, preview_kind="clap")


def test_pooled_image_is_the_vision_towers_pooled_output(tiny_model):
    bench, model, fmt, frontend = tiny_model
    data = prepare_policy_data(model, fmt, frontend, BuiltinSource(bench).split("test")[:6], None)
    batch = data.prepared.prompt_inputs(fmt, list(range(6)), torch.device("cpu"))
    probe = probe_image(model.base_model, model.backbone, batch)
    tower = model.base_model.model.vision_tower
    with torch.no_grad():
        want = tower(batch["pixel_values"]).pooler_output
    assert probe.pooled.shape == (6, tower.config.hidden_size)
    assert torch.allclose(probe.pooled, want, atol=1e-6)
    assert probe.embedding.shape == (6, model.hidden_size)  # the projection part is unchanged


def test_preview_embedding_reads_only_the_window_through_the_first_layer(tiny_model):
    _, model, _, frontend = tiny_model
    rng = np.random.default_rng(0)
    wav = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(3)]
    emb = preview_embedding(model.audio_encoder, frontend, wav)
    assert emb.shape == (3, model.audio_encoder.output_dim) and bool(torch.isfinite(emb).all())
    # only the first PREVIEW_SECONDS are read: changing the rest of the clip changes nothing
    cut = int(PREVIEW_SECONDS * 16000)
    late = [np.concatenate([w[:cut], rng.standard_normal(16000 - cut).astype(np.float32)]) for w in wav]
    assert torch.equal(preview_embedding(model.audio_encoder, frontend, late), emb)
    # and it is the clip's, not a constant: another window, another embedding
    other = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(3)]
    assert not torch.allclose(preview_embedding(model.audio_encoder, frontend, other), emb)


def test_subset_costs_price_the_preview_and_the_path():
    costs = {"f": {"preview": 0.1, "policy": 0.01, "base_pass": 1.0, "audio": 2.0}}
    early = {"f": {"early_skip": 0.8, "early_audio": 2.5, "policy": 0.01}}
    stats = subset_costs(("question", "preview"), costs, early, embedding_ms=0.3)["f"]
    assert {k: stats[k] for k in ("without_audio", "with_audio", "state_ms")} == pytest.approx(
        {"without_audio": 0.91, "with_audio": 2.61, "state_ms": 0.1})
    assert "base_pass" not in stats  # priced as the early path
    emb = subset_costs(("question", "preview_embedding", "confidence"), costs, early, embedding_ms=0.3)["f"]
    assert {k: emb[k] for k in ("without_audio", "with_audio", "state_ms")} == pytest.approx(
        {"without_audio": 1.31, "with_audio": 3.31, "state_ms": 0.3})
    assert emb["base_pass"] == 1.0  # priced as the cascade


def test_state_ablation_rows_over_seeds(tiny_model):
    bench, model, fmt, frontend = tiny_model
    src = BuiltinSource(bench)
    train = prepare_policy_data(model, fmt, frontend, src.split("train")[:40], None)
    test = prepare_policy_data(model, fmt, frontend, src.split("test")[:30], None)
    cfg = PolicyStageConfig(alphas=[0.1], alpha=0.1, steps=3, cost_batch=8)
    names = ["question", "question + image + preview (early)",
             "question + pooled image + preview embedding + confidence"]
    out = run_state_ablation(model, fmt, frontend, train, test, cfg, seeds=2, names=names)
    rows = {r["name"]: r for r in out["rows"]}
    assert list(rows) == names
    spec_dims = {"question": model.hidden_size, "image": model.hidden_size,
                 "image_pooled": model.base_model.model.vision_tower.config.hidden_size, "preview": 34,
                 "preview_embedding": model.audio_encoder.output_dim, "confidence": 3}
    for name, r in rows.items():
        assert r["state_dim"] == sum(spec_dims[p] for p in STATE_SUBSETS[name])
        assert r["seeds"] == 2 and len(r["accuracy_values"]) == 2 and len(r["accuracy_ci"]) == 2
        assert 0.0 <= r["use_rate"] <= 1.0
    # the preview's measured cost is in the entry's price: statistics, embedding, none
    assert rows["question"]["state_ms"] == 0.0
    assert out["preview_embedding_ms"] > 0
    assert rows[names[2]]["state_ms"] == pytest.approx(out["preview_embedding_ms"])
    assert out["best"] in rows and out["default"] == "question + image + preview (early)"
    with pytest.raises(ValueError, match="unknown state entry"):
        select_subsets(["question + CLAP"])
