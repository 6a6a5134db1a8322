import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_builtin(tmp_path_factory):
    """Tiny benchmark + tiny built-in models, built once per test session (a few seconds)."""
    from safe import bench as synth
    from safe.bench.build import BuiltinConfig, build_builtin_models

    root = tmp_path_factory.mktemp("builtin")
    bench = synth.generate_benchmark(root / "bench", synth.SynthConfig.tiny(), progress=False)
    build_builtin_models(bench, root / "base", BuiltinConfig.tiny(), progress=False)
    return bench, root / "base"


@pytest.fixture(scope="session")
def trained_run(tiny_builtin, tmp_path_factory):
    """A short Stage A run (a few steps) on the tiny built-in models, in a run directory with
    checkpoints/final (SAFE weights + the processor), built once per session."""
    from safe.bench.files import BuiltinSource
    from safe.stages.stage_a import run_stage_a
    from safe.training.config import load_stage_a_config

    bench, base = tiny_builtin
    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = load_stage_a_config(None, ["steps=12", "warmup_steps=1", "batch_size=16", "retention_every=6",
                                     "retention_examples=8", "checkpoint_every=12", "lr_gates=0.2",
                                     "safe.fusion_layers=[0, -1]", "safe.num_audio_tokens=4"])
    run_stage_a(BuiltinSource(bench), base, cfg, run, progress=False, max_eval=8, max_train=96)
    return bench, base, run


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread is several times faster than two on a shared CPU (measured by the
    family tests); a module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
