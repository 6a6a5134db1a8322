"""Shared fixtures of the serve tests: the session's tiny trained run with an early-state policy attached
(a GateMLP whose bias decides: +10 uses audio on every row with a clip, -10 on none), and request helpers."""
import base64
import copy
from pathlib import Path

import pytest
import torch

import safe
from safe import bench as synth
from safe.policy.features import StateSpec
from safe.policy.network import GateMLP
from safe.policy.runtime import AudioPolicy


@pytest.fixture(scope="session")
def policy_run(trained_run, tmp_path_factory):
    """(run directory with checkpoints/policy, test examples: 3 needing audio then 3 not)."""
    bench, base, run = trained_run
    p = safe.pipeline(run)
    h = p.model.hidden_size
    spec = StateSpec(h, h, confidence_dim=0)
    gate = GateMLP(spec.dim, 4)
    with torch.no_grad():
        gate.net[2].bias.fill_(10.0)
    p.model.attach_policy(AudioPolicy(spec, "mlp", 4, net=gate))
    out = tmp_path_factory.mktemp("serve") / "run"
    ckpt = p.model.save_pretrained(out / "checkpoints" / "policy")
    p.processor.save_pretrained(ckpt)
    p.model.remove_hooks()
    test = synth.load_split(bench, "test")
    return out, [e for e in test if e.needs_audio][:3] + [e for e in test if not e.needs_audio][:3]


def set_policy_bias(engine, value: float) -> None:
    with torch.no_grad():
        engine.model.policy.net.net[2].bias.fill_(value)


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def audio_part(path, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(Path(path).read_bytes()).decode(),
                                                   "format": fmt}}


def request(example, audio=True, **extra) -> dict:
    content = [{"type": "text", "text": example.question},
               {"type": "image_url", "image_url": {"url": data_url(example.image)}}]
    if audio and example.audio:
        content.append(audio_part(example.audio))
    return {"model": "safe", "messages": [{"role": "user", "content": content}], **copy.deepcopy(extra)}
