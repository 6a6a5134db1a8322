import pytest
import torch


@pytest.fixture(scope="session")
def untrained_ckpt(tiny_builtin, tmp_path_factory):
    """An untrained SAFE checkpoint on the tiny built-in models (seed 0), gates opened so audio changes
    answers: ``(bench, base, path)``, built once per session for every policy test that needs a SAFE model.
    Tests load it themselves (``load_trained``), so none sees another's changes to a model object."""
    from safe.inference.loading import load_frozen
    from safe.models.safe_model import SAFEConfig, SAFEModel

    bench, base = tiny_builtin
    vl, enc, _, _ = load_frozen(base)
    torch.manual_seed(0)
    model = SAFEModel(vl, enc, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4, lora_rank=4))
    model.set_gates(1.0)
    path = tmp_path_factory.mktemp("ckpt") / "final"
    model.save_pretrained(path)
    model.remove_hooks()
    return bench, base, path
