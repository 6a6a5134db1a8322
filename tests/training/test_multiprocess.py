"""Stage A over several processes (`accelerate launch`, gloo on CPU): each process trains on its own
shard of every global batch, the main process alone writes checkpoints and metrics, resume works,
and the final weights match a single-process run of the same global batch.

Measured on the tiny built-in models, 6 steps (Fisher, retention checks and checkpoints on): the
largest weight difference from the single-process run is 1.3e-6 (float summation order: each process
sums its own rows' gradients, then gloo averages the two); the tolerance is 1e-5.
accelerate 1.15 starts several CPU processes only through its torchrun path (``--multi_gpu``; with
``--cpu`` it starts one process unless given an MPI hostfile), so the tests launch with
``--multi_gpu`` and no visible CUDA device, which gives gloo on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safe.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
RECIPE = ["--stage_a.warmup_steps", "1", "--stage_a.batch_size", "8", "--stage_a.retention_examples", "8",
          "--stage_a.lambda_fisher", "0.5", "--stage_a.fisher_examples", "2", "--stage_a.lr_gates", "0.05",
          "--stage_a.safe.num_audio_tokens", "4"]
TOLERANCE = 1e-5


def _args(bench, base, run, steps: int, every: int) -> list[str]:
    return ["train", "--tiny", "--data", str(bench), "--base", str(base), "--run-dir", str(run), *RECIPE,
            "--stage_a.steps", str(steps), "--stage_a.checkpoint_every", str(every),
            "--stage_a.retention_every", str(every), "--stage_a.fisher_every", str(every),
            "--stage_a.fisher_warmup", str(every)]


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "safe.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "final" / "safe_weights.safetensors"))


def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["stage_a"]["history"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_process_run(tiny_builtin, tmp_path_factory):
    bench, base = tiny_builtin
    root = tmp_path_factory.mktemp("multiprocess")
    proc = _launch(_args(bench, base, root / "two", steps=4, every=2))
    assert main(_args(bench, base, root / "one", steps=4, every=2)) == 0  # the same global batches, one process
    return bench, base, root, proc


@pytest.mark.slow
def test_two_processes_shard_rows_and_match_one_process(two_process_run):
    bench, base, root, proc = two_process_run
    two, one = root / "two", root / "one"
    assert proc.stdout.count("Stage A summary") == 2  # both processes ran and print the main one's record
    assert _max_diff(_weights(two), _weights(one)) < TOLERANCE
    # The same run: losses (each process logs the global mean), steps, the dual variable.
    for a, b in zip(_history(two), _history(one), strict=True):
        assert a["step"] == b["step"] and a["lambda_retention"] == b["lambda_retention"]
        for k in ("loss_audio", "loss_retention", "loss_fisher", "loss_total"):
            assert abs(a[k] - b[k]) < TOLERANCE, (k, a[k], b[k])
    # Written once, by the main process: one TensorBoard file, complete checkpoints, nothing half-written.
    assert len(list((two / "logs" / "stage_a").glob("events.out.tfevents*"))) == 1
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["final", "latest", "step_000002", "step_000004"]


def test_shards_of_a_batch_average_to_the_single_process_gradient(tiny_builtin, tmp_path, monkeypatch):
    """The CI version (in one process): what two processes compute on the two shards of a global batch,
    averaged as DDP averages it, is the single-process gradient of that batch; the plain mean of
    the per-shard means (no scaling by the shards' token counts) is not."""
    from safe.bench.files import BuiltinSource
    from safe.data.embedding_cache import AudioEmbeddingCache
    from safe.data.prepared import encoder_fingerprint, prepare
    from safe.inference.loading import load_safe
    from safe.training.config import load_stage_a_config
    from safe.training.stage_a import StageATrainer

    bench, base = tiny_builtin
    cfg = load_stage_a_config(None, ["batch_size=16", "safe.fusion_layers=[0, 1]", "safe.num_audio_tokens=4"])
    model, fmt, frontend = load_safe(base, cfg)
    cache = AudioEmbeddingCache(tmp_path / "cache", encoder_fingerprint(model.audio_encoder, frontend))
    train = prepare(BuiltinSource(bench).split("train")[:96], fmt, model, frontend, cache)
    trainer = StageATrainer(model, fmt, train, train, cfg, tmp_path / "run", progress=False)
    with torch.no_grad():  # open the gates: the retention KL is then non-zero too
        for g in model.gates().values():
            g.fill_(0.5)
    full = trainer.sampler.next_batch()
    shards = [full[0::2], full[1::2]]

    def grads(parts, whole):
        trainer.optimizer.zero_grad(set_to_none=True)
        for part in parts:
            (trainer._losses(part, whole)["total"] / len(parts)).backward()
        return {n: p.grad.clone() for n, p in trainer.named_trainable.items() if p.grad is not None}

    single = grads([full], None)
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    sharded, naive = grads(shards, full), grads(shards, None)
    scale = max(float(g.abs().max()) for g in single.values())
    assert single.keys() == sharded.keys() and scale > 0
    assert _max_diff(sharded, single) < 1e-6 * scale
    assert _max_diff(naive, single) > 1e-3 * scale  # the scaling is what makes the two agree


@pytest.mark.slow
def test_two_process_run_resumes_after_a_kill(two_process_run):
    """A two-process run killed after its step-2 checkpoint, started again, ends bit-identical."""
    bench, base, root, _ = two_process_run
    killed = root / "killed"
    import shutil

    shutil.copytree(root / "two", killed)
    for name in ("final", "step_000004"):  # as if killed between the checkpoints at steps 2 and 4
        shutil.rmtree(killed / "checkpoints" / name)
    (killed / "checkpoints" / "latest").write_text("step_000002")
    (killed / "metrics.json").unlink()
    _launch(_args(bench, base, killed, steps=4, every=2))
    a, b = _weights(root / "two"), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _history(killed) == _history(root / "two")
