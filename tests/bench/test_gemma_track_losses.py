"""Stage A's ``answer_logits_only`` (the Gemma track's recipe sets it: Gemma's 262,144-word head over every
position costs more than its layers): the head runs on the answer positions only, and the losses and their
gradients are those of the full computation."""
import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.training.config import load_stage_a_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_answer_only_logits_give_the_same_losses_and_gradients(tiny_builtin, tmp_path, monkeypatch):
    from safe.data.prepared import prepare
    from safe.inference.loading import load_safe
    from safe.training.stage_a import StageATrainer

    bench, base = tiny_builtin
    arch = ["safe.fusion_layers=[0, 1]", "safe.num_audio_tokens=4"]
    model, fmt, frontend = load_safe(base, load_stage_a_config(None, arch))
    model.set_gates(0.5)  # open: the retention KL is not zero
    src = BuiltinSource(bench)
    train = prepare(src.split("train")[:32], fmt, model, frontend)
    retention = prepare(src.split("retention")[:4], fmt, model, frontend)
    rows = [i for i in range(32) if bool(train.needs_audio[i])][:3] + \
        [i for i in range(32) if not bool(train.needs_audio[i])][:3]
    seen = []
    real_forward = type(model).forward

    def spy(self, *a, **k):
        out = real_forward(self, *a, **k)
        seen.append(out.logits.shape[1])
        return out

    monkeypatch.setattr(type(model), "forward", spy)
    results = {}
    for only in (False, True):
        cfg = load_stage_a_config(None, ["batch_size=6", "checkpoint_every=0", f"answer_logits_only={only}", *arch])
        trainer = StageATrainer(model, fmt, train, retention, cfg, tmp_path / str(only), progress=False)
        model.zero_grad(set_to_none=True)
        losses = trainer._losses(rows)
        losses["total"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[only] = ({k: v.detach() for k, v in losses.items()}, grads, seen.pop())
    (full, g_full, width_full), (only, g_only, width_only) = results[False], results[True]
    assert width_only < width_full  # the head ran on fewer positions
    assert full["audio"] > 0 and full["retention"] > 0
    for k in ("audio", "retention", "total"):
        torch.testing.assert_close(only[k], full[k], rtol=1e-5, atol=1e-6)
    assert g_full.keys() == g_only.keys() and g_full
    for n in g_full:
        torch.testing.assert_close(g_only[n], g_full[n], rtol=1e-4, atol=1e-6)
