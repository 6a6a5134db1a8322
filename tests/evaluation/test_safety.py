import pytest
import torch

from safe.evaluation.safety import verify_model
from tests.models.helpers import MIXED, build, inputs


@pytest.mark.parametrize("base_kind,audio_kind", [("llava", "whisper"), ("blip2-opt", "clap"), ("blip2-t5", "clap")])
def test_verification_passes_and_restores_state(base_kind, audio_kind):
    model, _, enc = build(base_kind, audio_kind)
    x, audio = inputs(model, enc)
    before = {k: v.clone() for k, v in model.safe_state_dict().items()}
    result = verify_model(model, x, audio, MIXED)
    assert result.passed, result.table()
    assert len(result.checks) == 10
    after = model.safe_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # verification leaves the model as it was


def test_verification_detects_a_leaky_adapter():
    """A broken injection that touches closed rows must FAIL the check (the checks can fail)."""
    model, _, enc = build()
    x, audio = inputs(model, enc)
    hook = model._injector._make_hook

    def leaky(adapter):
        inner = hook(adapter)

        def h(module, args, output):
            new = inner(module, args, output)
            return None if new is None else new + 1e-3  # perturbs every row
        return h

    model._injector.detach()
    model._injector._make_hook = leaky
    model._injector.attach()
    result = verify_model(model, x, audio, MIXED)
    failed = {c.name for c in result.checks if not c.passed}
    assert "forward: closed rows bit-exact" in failed and not result.passed


def test_verification_needs_a_mixed_batch():
    model, _, enc = build()
    x, audio = inputs(model, enc)
    with pytest.raises(ValueError, match="mixed audio_mask"):
        verify_model(model, x, audio, torch.ones(4, dtype=torch.bool))
