"""A tiny checkpoint of a per-image-token-count family saved to disk with its own processor, used the
way a user would: a few Stage A steps (safe train's run_stage_a: SAFE weights move, frozen ones do not,
closed rows answer as the base), safe predict on the run, then a policy decision (the policy stage's early
state); under -m slow also the policy stage and safe eval's protocol. CI: LLaVA-NeXT (tiling) and Qwen2-VL
(a batch's image patches packed into one sequence, M-RoPE); -m slow: the other families whose processor
this environment can build."""
import json

import pytest
import torch
from safetensors.torch import load_file

from safe.bench import presets as P
from safe.bench.families import tiny_family, tiny_processor
from safe.bench.files import BuiltinSource
from safe.cli import main
from safe.evaluation.protocol import run_eval
from safe.inference.loading import load_trained
from safe.policy.stage import PolicyStageConfig, run_policy_stage
from safe.training.config import load_stage_a_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


FAMILIES = [pytest.param("llava-next"), pytest.param("qwen2-vl"),  # tiling; packed patches + M-RoPE
            *(pytest.param(k, marks=pytest.mark.slow)
              for k in ("gemma3", "paligemma", "idefics3", "mllama", "qwen2.5-vl", "qwen3-vl", "internvl",
                        "llava-onevision", "smolvlm", "mistral3"))]  # mistral3: skipped without torchvision


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper")
    P.tiny_audio_encoder("whisper").save_pretrained(path)
    P.tiny_feature_extractor("whisper").save_pretrained(path)  # 16 mel bins, as the tiny encoder reads
    return path


def _checkpoint(kind, path):
    proc = tiny_processor(kind)
    if proc is None:
        pytest.skip(f"the {kind} processor class needs torchvision here")
    tiny_family(kind).save_pretrained(path)
    proc.save_pretrained(path)
    return path


def _stage_a(kind, bench, audio_dir, tmp_path):
    from safe.stages.stage_a import run_stage_a

    base = _checkpoint(kind, tmp_path / "base")
    cfg = load_stage_a_config(None, ["steps=2", "warmup_steps=1", "batch_size=8", "retention_every=2",
                                     "retention_examples=4", "checkpoint_every=2", "safe.fusion_layers=[0, -1]",
                                     "safe.num_audio_tokens=4"])
    run = tmp_path / "run"
    m = run_stage_a(BuiltinSource(bench), base, cfg, run, audio=audio_dir, progress=False, max_train=16, max_eval=4)
    assert (run / "checkpoints" / "final" / "safe_weights.safetensors").is_file()
    # the steps moved SAFE weights only, and the trained model's closed rows answered as the base did
    assert m["frozen_byte_identical"] and m["frozen_hashes_before"] == m["frozen_hashes_after"]
    assert m["answers_identical_gate_closed"] == 1.0
    return base, run


@pytest.mark.parametrize("kind", FAMILIES)
def test_stage_a_then_a_policy_decision_in_predict(kind, tiny_builtin, audio_dir, tmp_path, capsys):
    import safe
    from safe.bench import load_split
    from safe.policy.features import StateSpec
    from safe.policy.network import GateMLP
    from safe.policy.runtime import AudioPolicy

    bench, _ = tiny_builtin
    base, run = _stage_a(kind, bench, audio_dir, tmp_path)
    p = safe.pipeline(run)
    assert p.processor.kind == "vlm" and p.model.backbone.name == kind
    rows = load_split(bench, "test")[:2]
    gates = [float(v) for k, v in load_file(str(run / "checkpoints" / "final" / "safe_weights.safetensors")).items()
             if k.endswith("gate.value")]
    assert gates and any(g != 0.0 for g in gates)  # the steps did train the SAFE side
    # a mixed batch: the row without audio gets the base's own tokens (a fresh base loaded from disk)
    inputs = p.processor(text=[e.question for e in rows], images=[e.image for e in rows], audio=[rows[0].audio, None])
    inputs.pop("audio_preview", None)
    vl = {k: v for k, v in inputs.items() if not k.startswith("audio_")}
    fresh = type(p.model.base_model).from_pretrained(base).eval()
    with torch.no_grad():
        got = p.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        want = fresh.generate(**vl, max_new_tokens=4, do_sample=False)
    assert torch.equal(got[1], want[1])
    # safe predict on the saved run (the command line), JSON lines in, one answer per request out
    requests = tmp_path / "q.jsonl"
    requests.write_text("\n".join(json.dumps({"id": str(i), "question": e.question, "image": e.image,
                                                "audio": e.audio}) for i, e in enumerate(rows)) + "\n")
    assert main(["predict", "--run-dir", str(run), "--input", str(requests), "--batch-size", "2"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["id"] for a in answers] == ["0", "1"] and all(isinstance(a["answer"], str) for a in answers)
    h = p.model.hidden_size
    gate = GateMLP(StateSpec(h, h, confidence_dim=0).dim, 4)
    with torch.no_grad():
        gate.net[2].bias.fill_(10.0)  # P(use audio) ~ 1: the rows with audio use it
    p.model.attach_policy(AudioPolicy(StateSpec(h, h, confidence_dim=0), "mlp", 4, net=gate))
    out = p(image=[e.image for e in rows], question=[e.question for e in rows], audio=[rows[0].audio, None])
    assert [o["used_audio"] for o in out] == [True, False]
    assert all(isinstance(o["answer"], str) for o in out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llava-next", "gemma3", "qwen2-vl", "internvl"])
def test_policy_stage_on_a_family_checkpoint(kind, tiny_builtin, audio_dir, tmp_path):
    bench, _ = tiny_builtin
    base, run = _stage_a(kind, bench, audio_dir, tmp_path)
    model, fmt, frontend = load_trained(base, run / "checkpoints" / "final", audio_dir)
    assert type(fmt).__name__ == "VLMProcessorFormat" and model.backbone.name == kind
    model.set_gates(1.0)
    pcfg = PolicyStageConfig(alphas=[0.0], alpha=0.0, steps=2, seeds=1, train_rows=16, cost_batch=4,
                             distill_epochs=1, latency_batches=[4], state="early")
    m, _ = run_policy_stage(model, fmt, frontend, BuiltinSource(bench), pcfg)
    assert 0.0 <= m["test"]["use_rate"] <= 1.0
    assert m["deployed"]["encoder_rows"] == m["deployed"]["rows_using_audio"]
    ev = run_eval(model, fmt, frontend, BuiltinSource(bench), policy_metrics=m, stage_a={"frozen_byte_identical": True})
    r = ev["retention"]  # safe eval on the family's prepared test set: closed gates answer as the base
    assert r["vl_accuracy"]["gate_closed"] == r["vl_accuracy"]["base"] and r["answers_changed"]["gate_closed"] == 0
