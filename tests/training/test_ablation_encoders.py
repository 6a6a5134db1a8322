"""The encoder comparison of ``safe ablate --encoder-b``: encoder A alone, encoder B alone and A + B as an ensemble,
each trained with the recipe unchanged on the same data, recorded with their encoders, costs and scores, and shown
in docs/results.md's Stage A section. Tiny configs only (the measured run is `make ablations-encoders`)."""
import json

import pytest

from safe.bench import presets as P
from safe.bench.files import BuiltinSource
from safe.data.rows import TensorRows, TupleRows
from safe.reporting.ablation_rows import stage_a_grid
from safe.stages.ablate import run_ablations
from safe.training.ablation import ENCODER_GRID, STAGE_A_GRID, select_grid
from tests.training.test_stage_a import FAST

STEPS = 4


@pytest.fixture(scope="module")
def encoder_b(tmp_path_factory):
    """A second audio encoder of another class (wav2vec 2.0) with its feature extractor, as a checkpoint folder."""
    path = tmp_path_factory.mktemp("encoder_b")
    P.tiny_audio_encoder("wav2vec2", seed=1).save_pretrained(path)
    P.tiny_feature_extractor("wav2vec2").save_pretrained(path)
    return path


def _signature(folder):
    return json.loads((folder / "seed0" / "checkpoints" / "final" / "safe_config.json").read_text())["base_signature"]


def test_a_b_and_the_ensemble_each_train_with_their_own_encoders(tiny_builtin, encoder_b, tmp_path):
    bench, base = tiny_builtin
    out = run_ablations(BuiltinSource(bench), base, None, tmp_path, overrides=FAST, steps=STEPS,
                        names=list(ENCODER_GRID), progress=False, encoder_b=encoder_b,
                        encoder_labels=["the built-in one", "tiny wav2vec"])
    rows = {r["name"]: r for r in out["rows"]}
    a, b, ab = (rows[n] for n in ENCODER_GRID)
    # Each entry's checkpoint names the encoder(s) it was trained on.
    assert _signature(tmp_path / "encoder_A_alone")["audio_encoder"] == "whisper"
    assert _signature(tmp_path / "encoder_B_alone")["audio_encoder"] == "wav2vec2"
    assert _signature(tmp_path / "encoders_A___B__ensemble")["audio_encoder"] == "whisper+wav2vec2"
    # The ensemble has both projectors and one set of adapters: more than either alone, less than both together.
    assert max(a["trainable_parameters"], b["trainable_parameters"]) < ab["trainable_parameters"] \
        < a["trainable_parameters"] + b["trainable_parameters"]
    assert ab["encoder_parameters"] == a["encoder_parameters"] + b["encoder_parameters"]
    assert ab["encoder_ms_per_clip"] == pytest.approx(a["encoder_ms_per_clip"] + b["encoder_ms_per_clip"], abs=2e-3)
    assert (a["encoders"], b["encoders"], ab["encoders"]) == ("A: the built-in one", "B: tiny wav2vec",
                                                             "A: the built-in one + B: tiny wav2vec")
    for r in (a, b, ab):
        assert r["answers_identical_gate_closed"] == 1.0 and "vl_retention_ratio_gate_open" in r
        assert r["changes"].startswith("the recipe, frozen encoder(s): ") and r["train_seconds"] > 0
    # The generated results section shows the comparison and says plainly which encoders were compared.
    text = stage_a_grid({"ablations": out})
    assert "Encoder comparison" in text and "A: the built-in one + B: tiny wav2vec" in text
    assert "No CLAP model is among them" in text


def test_encoder_entries_need_b_and_the_default_grid_is_unchanged():
    assert list(select_grid(None)) == list(STAGE_A_GRID)
    assert list(select_grid(None, encoders=True)) == [*STAGE_A_GRID, *ENCODER_GRID]
    with pytest.raises(ValueError, match="compares encoders: give the second encoder"):
        select_grid(["encoder B alone"])


def test_tuple_rows_keep_members_aligned():
    import torch

    x, y = TensorRows(torch.arange(6.0).view(3, 2)), TensorRows(torch.arange(9.0).view(3, 3))
    rows = TupleRows([x, y])
    a, b = rows[[2, 0]]
    assert torch.equal(a, x[[2, 0]]) and torch.equal(b, y[[2, 0]])
    a, b = rows.take([1])[[0]]
    assert torch.equal(b, y[[1]])
    with pytest.raises(ValueError, match="two or more stores of one length"):
        TupleRows([x, TensorRows(torch.zeros(2, 1))])


def test_report_takes_the_encoder_rows_of_another_run(tmp_path):
    """`safe report --encoders-run DIR`: the comparison measured in its own run (make ablations-encoders-quick)
    joins this run's Stage A section with its own steps, split and sizes; without such rows it is an error."""
    from safe.runs import RunDir
    from safe.stages.common import StageError
    from safe.stages.evaluate import with_encoder_rows

    grid = {"name": "reference", "changes": "the recipe", "audio_accuracy": 0.5, "trainable_parameters": 10}
    enc = {"name": "encoder B alone", "encoders": "B: Whisper tiny.en", "audio_accuracy": 0.4, "steps": 150,
           "seeds": 1, "trainable_parameters": 12, "encoder_parameters": 8_000_000, "encoder_ms_per_clip": 9.5}
    RunDir(tmp_path / "enc").record("ablations", {"steps": 150, "seeds": 1, "split": "test", "train_rows": 3000,
                                                  "eval_rows": 600, "rows": [enc]})
    merged = with_encoder_rows({"ablations": {"steps": 400, "seeds": 1, "split": "test", "rows": [grid]}},
                               str(tmp_path / "enc"))
    assert [r["name"] for r in merged["ablations"]["rows"]] == ["reference", "encoder B alone"]
    text = stage_a_grid(merged)
    assert "400 steps per entry" in text and "150 steps per entry" in text
    assert "(3000 training rows, 600 scored), measured in its own run" in text and "| B: Whisper tiny.en |" in text
    RunDir(tmp_path / "none").record("ablations", {"steps": 400, "rows": [grid]})
    with pytest.raises(StageError, match="no encoder comparison in its metrics.json"):
        with_encoder_rows({}, str(tmp_path / "none"))
