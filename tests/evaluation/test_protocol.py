"""The evaluation protocol end to end on the tiny built-in benchmark: every section filled, report written."""
import json
import math

import pytest
import torch

from safe.bench.files import BuiltinSource
from safe.evaluation.protocol import run_eval
from safe.inference.loading import load_frozen
from safe.models.safe_model import SAFEConfig, SAFEModel
from safe.policy.stage import PolicyStageConfig, run_policy_stage
from safe.reporting.report import report_sections, write_report
from tests.evaluation.fake_metrics import full_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def evaluated(tiny_builtin):
    bench, base = tiny_builtin
    vl, enc, fmt, frontend = load_frozen(base)
    torch.manual_seed(0)
    model = SAFEModel(vl, enc, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4, lora_rank=4)).eval()
    model.set_gates(1.0)
    cfg = PolicyStageConfig(alphas=[0.0], alpha=0.0, steps=3, seeds=2, train_rows=40, cost_batch=8,
                            distill_epochs=2, latency_batches=[1, 8])
    data = BuiltinSource(bench)
    policy, _ = run_policy_stage(model, fmt, frontend, data, cfg)
    from safe.evaluation import protocol

    calls = {"policy": [], "noisy": []}  # what the stress tests fed the model (spied, not changed)
    real_policy, real_noisy = protocol.policy_answers, protocol._noisy_embeddings

    def policy_answers(model, fmt, data, previews, *a, **k):
        calls["policy"].append(previews.clone())
        return real_policy(model, fmt, data, previews, *a, **k)

    def noisy(model, frontend, waveforms, snr_db, seed, background=None):
        calls["noisy"].append((snr_db, background is not None))
        return real_noisy(model, frontend, waveforms, snr_db, seed, background)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol, "policy_answers", policy_answers)
        mp.setattr(protocol, "_noisy_embeddings", noisy)
        ev = run_eval(model, fmt, frontend, data, policy_metrics=policy, stage_a={"frozen_byte_identical": True})
    ev["_calls"] = calls
    yield model, policy, ev
    model.remove_hooks()


def test_stress_uses_other_rows_clips_and_background_sounds(evaluated, tiny_builtin):
    """Irrelevance: the policy decides on VL questions carrying *other* rows' clips (not their own); the SNR
    sweep mixes in other clips of the split as background besides white noise."""
    _, _, ev = evaluated
    calls = ev.pop("_calls")
    ex = BuiltinSource(tiny_builtin[0]).split("test")
    vl = [i for i, e in enumerate(ex) if not e.needs_audio]
    own, irrelevant = calls["policy"][0], calls["policy"][1]
    assert len(own) == len(ex) and len(irrelevant) == len(vl)
    same = sum(bool(torch.equal(irrelevant[j], own[i])) for j, i in enumerate(vl))
    assert same < len(vl) // 10  # another row's clip (a row shares a clip with another only by chance)
    irr = ev["robustness"]["irrelevant"]
    assert 0.0 <= irr["false_positive_rate"] <= 1.0 and "false_positive_rate_own_clip" in irr
    assert sorted(calls["noisy"]) == sorted((lvl, bg) for lvl in (20.0, 10.0, 0.0, -10.0) for bg in (False, True))
    assert all("background_audio_accuracy" in p for p in ev["robustness"]["snr_sweep"])


def test_eval_fills_every_section_from_measurements(evaluated):
    model, policy, ev = evaluated
    r = ev["retention"]
    assert set(r["vl_accuracy"]) == {"base", "gate_closed", "gate_open", "policy"}
    assert r["vl_accuracy"]["gate_closed"] == r["vl_accuracy"]["base"]  # the bypass, measured on answers
    assert r["answers_changed"]["gate_closed"] == 0
    assert r["mcnemar"]["gate_closed"]["b"] == 0 and r["mcnemar"]["gate_closed"]["c"] == 0
    a = ev["audio_gains"]["audio_accuracy"]["safe"]
    assert a["ci_low"] <= a["mean"] <= a["ci_high"]
    snr = ev["robustness"]["snr_sweep"]
    assert [p["snr_db"] for p in snr] == [None, 20.0, 10.0, 0.0, -10.0]
    assert ev["robustness"]["ood_sounds"]["n"] > 0
    f = ev["efficiency"]["flops_per_query"]
    assert f["always_audio"] > f["base"] > 0  # the adapters cost FLOPs; counted, not assumed
    assert f["base"] <= f["policy"]
    assert ev["efficiency"]["memory_bytes"]["safe_parts"] > 0
    shape = ev["efficiency"]["shape"]  # what the efficiency figures were measured on (issue 20)
    assert shape["base_parameters"] > shape["vision_parameters"] > 0 and shape["device"] == "cpu"
    assert shape["text"].startswith("this run's model: VL base ")
    sh = ev["attribution"]["shapley"]
    assert not math.isnan(sh["image_mean"])
    gates = {g["gate"]: g for g in ev["stage_gates"]}
    assert gates["Stage 1: gate closed reproduces the base (answers identical)"]["passed"]
    json.dumps(ev)


def test_builtin_benchmark_is_one_row_of_the_per_benchmark_tables(evaluated):
    """The built-in benchmark is one task ("synth"): its per-benchmark rows repeat the overall figures."""
    _, _, ev = evaluated
    r, g = ev["retention"], ev["audio_gains"]
    assert list(r["per_task"]) == ["synth"] and list(g["per_task"]) == ["synth"]
    t = r["per_task"]["synth"]
    assert t["n"] == r["answers_changed"]["n"] and t["metric"] == "exact_match" and t["test"] == "mcnemar"
    assert t["accuracy"] == r["vl_accuracy"]
    assert {k: v["b"] for k, v in t["paired_tests"].items()} == {k: v["b"] for k, v in r["mcnemar"].items()}
    assert {k: t["answers_changed"][k] for k in ("gate_closed", "gate_open", "policy")} == \
        {k: r["answers_changed"][k] for k in ("gate_closed", "gate_open", "policy")}
    assert g["per_task"]["synth"]["accuracy"] == g["audio_accuracy"]
    caps = g["captions_per_task"]["synth"]
    assert caps["rows"] == g["caption_cider_d"]["safe"]["n"] and set(caps["systems"]) == {"base", "safe", "policy"}


def test_flops_count_the_audio_encoder_exactly(evaluated, tiny_builtin):
    """Always-audio FLOPs = the same calls fed cached encoder outputs + the encoder's own FLOPs; the
    policy's count encodes exactly the rows it picked."""
    from safe import bench as synth
    from safe.data.prepared import prepare, read_waveforms
    from safe.evaluation.efficiency import count_flops
    from safe.evaluation.protocol import FLOP_ROWS
    from safe.models.generation import MAX_NEW_TOKENS

    model, _, ev = evaluated
    bench, base = tiny_builtin
    fmt, frontend = load_frozen(base)[2:]
    ex = synth.load_split(bench, "test")[:FLOP_ROWS]
    data = prepare(ex, fmt, model, frontend, None)
    wav = read_waveforms(ex, frontend.sampling_rate)
    gen = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    from_embeddings = encoder = 0
    for s in range(0, len(ex), 16):
        idx = list(range(s, min(s + 16, len(ex))))
        batch = {**fmt.prompt_batch(data.enc, idx), "pixel_values": data.pixels[idx]}
        feats = frontend([wav[i] for i in idx])
        hidden = model.audio_encoder.encode(feats)
        encoder += count_flops(lambda: model.audio_encoder.encode(feats))
        from_embeddings += count_flops(lambda: model.generate(**batch, **gen, audio_embeddings=hidden,
                                                              audio_mask=torch.ones(len(idx), dtype=torch.bool)))
    assert encoder > 0
    e = ev["efficiency"]
    assert e["flops_rows"] == len(ex)
    assert e["flops_per_query"]["always_audio"] * len(ex) == pytest.approx(from_embeddings + encoder, rel=1e-9)
    assert e["flops_encoder_rows"] == e["flops_rows_using_audio"]


def test_report_covers_every_section_and_embeds_plots(evaluated, tmp_path):
    _, policy, ev = evaluated
    metrics = {"policy": policy, "eval": ev, "stage_a": {"vl_accuracy_base": 1.0, "audio_accuracy": 0.5},
               "verify": {"passed": True, "models": {"x": {"passed": True}}},
               "base": {"vl_accuracy": 1.0, "test_accuracy": {"colour": 1.0}}, "timing": {"seconds": 1.0},
               "depth": full_metrics()["depth"]}  # the per-modality section: a second modality's figures
    sections = report_sections(metrics)
    assert all(sections.values()), [k for k, v in sections.items() if not v]
    html = write_report(metrics, tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert "http://" not in html and "https://" not in html
