"""Stage A on the tiny built-in models: the loop's guarantees, not its accuracy (make demo shows that)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from safe.bench.files import BuiltinSource
from safe.stages.stage_a import run_stage_a
from safe.training.config import load_stage_a_config
from safe.training.stage_a import ResumeMismatch

FAST = ["steps=12", "warmup_steps=2", "batch_size=8", "retention_every=4", "retention_examples=12",
        "checkpoint_every=5", "lambda_fisher=0.5", "fisher_warmup=3", "fisher_every=3", "fisher_examples=4", "lr_gates=0.05",
        "safe.fusion_layers=[0, 1]", "safe.num_audio_tokens=4"]


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "final" / "safe_weights.safetensors"))


def test_resumed_run_is_bit_identical_to_uninterrupted(tiny_builtin, tmp_path):
    bench, base = tiny_builtin
    cfg = load_stage_a_config(None, FAST)
    data = BuiltinSource(bench)
    straight = run_stage_a(data, base, cfg, tmp_path / "a", progress=False, max_eval=8)
    killed = run_stage_a(data, base, cfg, tmp_path / "b", progress=False, stop_after=8)  # dies after step 8
    assert killed == {"interrupted": True, "step": 8}
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step_000005"
    resumed = run_stage_a(data, base, cfg, tmp_path / "b", progress=False, max_eval=8)  # rerun the command
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["history"] == resumed["history"]
    assert straight["frozen_byte_identical"] and resumed["frozen_byte_identical"]


def test_training_moves_only_safe_weights_and_starts_silent(tiny_builtin, tmp_path):
    bench, base = tiny_builtin
    m = run_stage_a(BuiltinSource(bench), base, load_stage_a_config(None, FAST), tmp_path, progress=False, max_eval=8)
    first = m["history"][0]
    # At the zero-gate start the adapted model is the base: the retention KL is exactly zero.
    assert first["loss_retention"] == 0.0 and first["loss_audio"] > 0
    # EWC: zero until the first Fisher estimate (after step 3), positive once the weights left the anchor
    assert all(h["loss_fisher"] == 0.0 for h in m["history"][:3])
    assert all(h["loss_fisher"] > 0.0 for h in m["history"][3:])
    # the estimate waited for the gates to open: the adapters' and projector's Fisher is not zero
    state = torch.load(tmp_path / "checkpoints" / "step_000012" / "trainer_state.pt", weights_only=True)["fisher"]
    fisher = {k[len("fisher/"):]: v for k, v in state.items() if k.startswith("fisher/")}
    assert int(state["num_estimates"]) == 4  # after step 3, refreshed at 6, 9 and 12
    for part in ("projector.", "adapters."):
        assert sum(float(v.sum()) for k, v in fisher.items() if k.startswith(part) and "gate" not in k) > 0
    assert m["frozen_hashes_before"] == m["frozen_hashes_after"]
    gates = [v for k, v in _weights(tmp_path).items() if k.endswith("gate.value")]
    assert gates and all(float(g) != 0.0 for g in gates)  # the gates learned to open
    assert "retention_vl_accuracy" in m["history"][3] and m["answers_identical_gate_closed"] == 1.0
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "logs" / "stage_a").iterdir())


def test_resume_refuses_a_different_config(tiny_builtin, tmp_path):
    bench, base = tiny_builtin
    run_stage_a(BuiltinSource(bench), base, load_stage_a_config(None, FAST), tmp_path, progress=False, stop_after=5)
    other = load_stage_a_config(None, [*FAST, "lr_adapters=0.01"])
    with pytest.raises(ResumeMismatch, match="lr_adapters"):
        run_stage_a(BuiltinSource(bench), base, other, tmp_path, progress=False)


def test_safe_train_command_writes_metrics(tiny_builtin, tmp_path, capsys):
    from safe.cli import main

    bench, base = tiny_builtin
    # the same settings as flags: key=value -> --stage_a.key value (a list comma-separated)
    flags = [a for o in FAST for a in ("--stage_a." + o.split("=")[0], o.split("=")[1].strip("[]").replace(" ", ""))]
    args = ["train", "--data", str(bench), "--base", str(base), "--run-dir", str(tmp_path), "--config",
            "configs/stage_a_builtin.yaml", *flags]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Stage A summary" in out and "base + encoder byte-identical (sha256)" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())["stage_a"]
    for key in ("vl_accuracy_gate_open", "audio_accuracy", "vl_retention_ratio_gate_open", "caption_cider_d",
                "answers_identical_gate_closed", "frozen_byte_identical", "seconds"):
        assert key in metrics
    assert main(["train", "--stage_a.steps", "0"]) == 2  # bad config: an error message, not a traceback
    assert "steps: expected a positive integer, got 0" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_trained_on_other_data(tiny_builtin, tmp_path):
    bench, base = tiny_builtin
    cfg = load_stage_a_config(None, FAST)
    run_stage_a(BuiltinSource(bench), base, cfg, tmp_path, progress=False, stop_after=5)
    with pytest.raises(ResumeMismatch, match="max_train"):
        run_stage_a(BuiltinSource(bench), base, cfg, tmp_path, progress=False, max_train=30)
    # --fresh starts over instead (and clears the old TensorBoard logs)
    m = run_stage_a(BuiltinSource(bench), base, cfg, tmp_path, progress=False, max_train=30, fresh=True, max_eval=4)
    assert m["steps"] == 12
