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
