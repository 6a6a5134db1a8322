"""Stage A's curriculum (audio rows easy -> hard by the base's measured loss, exposure 25% -> 100%) and its
dual ascent (the retention weight rises while VL accuracy with the gate open is under the floor)."""
import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.training.config import load_stage_a_config
from safe.training.curriculum import curriculum_order

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prepared(tiny_builtin, tmp_path_factory):
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_safe

    bench, base = tiny_builtin
    cfg = load_stage_a_config(None, ["safe.fusion_layers=[0, 1]", "safe.num_audio_tokens=4"])
    model, fmt, frontend = load_safe(base, cfg)
    cache = AudioEmbeddingCache(tmp_path_factory.mktemp("cache"), encoder_fingerprint(model.audio_encoder, frontend))
    src = BuiltinSource(bench)
    train = prepare(src.split("train")[:96], fmt, model, frontend, cache)
    retention = prepare(src.split("retention")[:12], fmt, model, frontend, cache)
    return model, fmt, train, retention


def _trainer(prepared, run_dir, overrides):
    from safe.training.stage_a import StageATrainer

    model, fmt, train, retention = prepared
    cfg = load_stage_a_config(None, ["batch_size=8", "warmup_steps=0", "safe.fusion_layers=[0, 1]",
                                     "safe.num_audio_tokens=4", "checkpoint_every=0", *overrides])
    with torch.no_grad():
        for g in model.gates().values():
            g.zero_()
    return StageATrainer(model, fmt, train, retention, cfg, run_dir, progress=False)


def test_order_sorts_rows_by_measured_loss_and_is_kept_for_a_resume(tmp_path):
    from types import SimpleNamespace

    rows = [0, 2, 3, 5]
    examples = [SimpleNamespace(family=f) for f in "abcdef"]
    loss = {0: 3.0, 2: 0.5, 3: 2.0, 5: 0.1}
    order, summary = curriculum_order("base_loss", rows, examples, losses=lambda r: [loss[i] for i in r],
                                      folder=tmp_path)
    assert order == [5, 2, 3, 0] and summary["first_quarter_families"] == {"f": 1}
    again, _ = curriculum_order("base_loss", rows, examples, losses=lambda r: pytest.fail("measured again"),
                                folder=tmp_path)
    assert again == order
    assert curriculum_order("none", rows, examples)[0] == rows


def test_first_steps_draw_the_easiest_quarter_by_base_loss(prepared, tmp_path):
    from safe.training.curriculum import base_losses

    trainer = _trainer(prepared, tmp_path, ["steps=2", "retention_every=0"])
    audio = [i for i, n in enumerate(prepared[2].needs_audio.tolist()) if n]
    loss = dict(zip(audio, base_losses(trainer._unwrapped.base_model, trainer._base_inputs, audio)))
    fit = trainer.fit(resume=False)
    assert fit["history"][0]["audio_exposure"] == 0.25  # exposure starts at 25% of the audio rows
    trainer.sampler.set_exposure(0.25)
    eligible = set(trainer.sampler.eligible_audio)
    rest = [loss[i] for i in audio if i not in eligible]
    assert len(eligible) == -(-len(audio) // 4) and rest
    assert max(loss[i] for i in eligible) <= min(rest) + 1e-4  # the easiest rows, as the base measured them
    assert fit["curriculum"]["order"] == "base_loss"
    assert fit["curriculum"]["easiest_quarter_mean_loss"] < fit["curriculum"]["hardest_quarter_mean_loss"]


def test_dual_ascent_raises_the_retention_weight_below_the_floor(prepared, tmp_path, monkeypatch):
    """The loop feeds each measurement to the dual step: below the floor lambda rises, above it relaxes back
    (never under the configured weight). The measurements are scripted (the tiny base answers 1 in 12)."""
    trainer = _trainer(prepared, tmp_path, ["steps=3", "retention_every=1", "lambda_retention=1", "dual_lr=50",
                                            "retention_tau=0.01"])
    measured = iter([0.90, 0.50, 0.45, 0.99])  # base (gate closed), then gate open after steps 1, 2, 3
    monkeypatch.setattr(trainer, "retention_accuracy", lambda gate_open=True: next(measured))
    fit = trainer.fit(resume=False)
    lam = [h["lambda_retention"] for h in fit["history"]]
    assert fit["base_retention_accuracy"] == 0.90
    assert lam[0] == pytest.approx(1 + 50 * (0.89 - 0.50))
    assert lam[1] == pytest.approx(lam[0] + 50 * (0.89 - 0.45))
    assert lam[2] == pytest.approx(max(1.0, lam[1] + 50 * (0.89 - 0.99)))
    assert lam[1] > lam[0] > 1.0 and lam[2] < lam[1]


def test_stage_a_measures_the_adapters_output_scale_before_its_first_step(prepared, tiny_builtin, tmp_path):
    """safe.output_scale=hidden_rms: the trainer measures the base's hidden RMS at each fusion layer, scales the
    adapters by it, and the checkpoint saves the measured list."""
    import json

    from safe.inference.loading import load_safe
    from safe.training.stage_a import StageATrainer

    _, fmt, train, retention = prepared
    cfg = load_stage_a_config(None, ["batch_size=8", "warmup_steps=0", "safe.fusion_layers=[0, 1]", "steps=1",
                                     "safe.num_audio_tokens=4", "checkpoint_every=0", "retention_every=0",
                                     "safe.output_scale=hidden_rms"])
    model, _, _ = load_safe(tiny_builtin[1], cfg)
    trainer = StageATrainer(model, fmt, train, retention, cfg, tmp_path, progress=False)
    scales = trainer.output_scales["audio"]
    assert len(scales) == 2 and all(s > 0 for s in scales) and scales != [1.0, 1.0]
    assert [model.adapters[str(i)].output_scale for i in model.fusion_layers] == scales
    trainer.fit()
    saved = json.loads((tmp_path / "checkpoints" / "final" / "safe_config.json").read_text())["config"]
    assert saved["output_scale"] == scales
