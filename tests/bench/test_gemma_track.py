"""The Gemma track end to end on tiny parts of the real classes: a tiny Gemma 3 language model under the Gemma VL
base (vision side trained 2 steps), a tiny Whisper converted from a CTranslate2 file, a tiny speech track; then
`safe demo --track gemma`'s stages (verification, Stage A, Stages B/C, eval, the track's own figures, the report),
resume after a kill, the docs block from its metrics.json, and `safe predict` on the resulting run. What users
depend on: the closed path is bit-exact on the text set and the VL questions, the language model's digest is
the same at every stage boundary, a killed track starts again where it stopped, and the docs say what the run
measured (skipped without espeakng-loader). Marked ``slow`` (about 80 s of CPU: `make test-all` runs it); CI runs
the fast tiny-model checks of the same measurements (test_gemma_track_text.py, test_gemma_track_losses.py)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                                 reason="speech synthesis needs espeakng-loader (pip install 'safe-av[speech]')"),
              pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

RECIPE = """stage_a:
  steps: 3
  batch_size: 8
  warmup_steps: 1
  retention_every: 3
  retention_examples: 4
  checkpoint_every: 1
  lr_gates: 0.05
  answer_logits_only: true
  text_retention: text_retention.jsonl
  text_retention_rows: 2
  safe:
    fusion_layers: [0, -1]
    num_audio_tokens: 4
"""


@pytest.fixture(scope="module")
def parts(tiny_builtin, tmp_path_factory):
    """(Gemma VL base folder, Whisper folder, cache root): built once for the module."""
    from transformers import WhisperConfig, WhisperModel

    from safe.bench import files
    from safe.bench.gemma import base as gb
    from safe.bench.gemma.track_text import text_prompts, training_prompts
    from safe.bench.gemma.train import build_gemma_base
    from safe.bench.speech.track import PROMPTS
    from safe.bench.speech.whisper import convert
    from safe.processing.prompts import words_of
    from tests.bench.gemma_helpers import tiny_gemma_lm
    from tests.bench.test_speech_whisper import to_ct2, write_ct2

    bench, base = tiny_builtin
    root = tmp_path_factory.mktemp("gemma-track")
    rows = [e for s in ("train", "test") for e in files.load_split(bench, s)]
    words = words_of([t for e in rows for t in (e.question, *e.answers)] + list(PROMPTS.values())
                     + [p.text for p in text_prompts(12) + training_prompts()])
    lm = tiny_gemma_lm(root / "lm", words)
    vl = root / "gemma" / "vl"
    build_gemma_base(bench, vl, lm_dir=lm, builtin_vl=base / "vl",
                     cfg=gb.GemmaBaseConfig(steps=2, batch_size=4, monitor_rows=8), progress=False)
    torch.manual_seed(0)
    wcfg = WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=16, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                         max_source_positions=1500, max_target_positions=24, pad_token_id=62, bos_token_id=62,
                         eos_token_id=62, decoder_start_token_id=63)
    write_ct2(root / "model.bin", to_ct2(WhisperModel(wcfg)), {})
    audio = convert(root / "whisper", window_seconds=2, source=root / "model.bin")
    (root / "recipe.yaml").write_text(RECIPE)
    return vl, audio, root


def _demo(parts, run_dir, until=None, **kw):
    from safe.bench.gemma.track import GemmaTrackConfig
    from safe.stages.demo import DemoConfig
    from safe.stages.gemma import demo_gemma

    vl, audio, root = parts
    cfg = DemoConfig(run_dir=str(run_dir), recipe=str(root / "recipe.yaml"), track="gemma",
                     continue_on_gate_failure=True, seeds=1, **kw)
    return demo_gemma(cfg, echo=lambda *a: None, track=GemmaTrackConfig.tiny(), base=str(vl), audio=str(audio),
                      until=until)


@pytest.fixture(scope="module")
def track_run(parts, tmp_path_factory):
    import os

    root = parts[2]
    old = os.environ.get("SAFE_CACHE")
    os.environ["SAFE_CACHE"] = str(root / "cache")
    try:
        run = tmp_path_factory.mktemp("runs") / "demo-gemma"
        result = _demo(parts, run)
        yield run, result
    finally:
        if old is None:
            os.environ.pop("SAFE_CACHE")
        else:
            os.environ["SAFE_CACHE"] = old


def test_every_stage_runs_and_the_closed_path_is_bit_exact(track_run):
    run, result = track_run
    m = json.loads((run / "metrics.json").read_text())
    assert {"verify", "stage_a", "policy", "eval", "gemma", "timing"} <= set(m)
    assert m["stage_a"]["frozen_byte_identical"] and m["stage_a"]["config"]["answer_logits_only"]
    from safe.bench.gemma.track_text import training_prompts

    text = m["stage_a"]["text_retention"]  # Stage A's text-only rows: the file the track wrote into its data folder
    assert text["prompts"] == len(training_prompts()) and text["file"].endswith("text_retention.jsonl")
    assert all("loss_text_retention" in h for h in m["stage_a"]["history"])
    g = m["gemma"]
    for key in ("text", "vl"):
        s = g[key]
        assert s["n"] > 0 and s["closed_identical"] == 1.0 and s["closed_changed"] == 0
        assert s["closed_first_token_logits_equal"] and s["closed_mixed_batch_logits_equal"]
        assert 0.0 <= s["open_identical"] <= 1.0 and s["open_mean_kl"] >= 0.0
    assert g["text"]["n"] == 12 and set(g["text"]["per_kind"]) == {"fact", "completion", "arithmetic"}
    assert "mcnemar" in g["text"]["scored"] and "mcnemar" in g["vl"]["scored"]
    d = g["lm_sha256"]
    assert d["all_equal"] and {"before", "after_stage_a", "after_policy", "after_eval", "measurement_before",
                               "measurement_after"} <= set(d)
    assert len({v for k, v in d.items() if k != "all_equal"}) == 1  # one digest everywhere: the base's
    assert result.ok and (run / "report.html").is_file() and "partial" not in m["timing"]


def test_open_gate_changes_the_measured_distribution(parts, track_run):
    """The open-gate figures measure SAFE: the same comparison with the gates forced to 0 moves nothing."""
    from safe.bench.gemma import track as gt
    from safe.bench.gemma.track_text import text_prompts
    from safe.inference.loading import load_trained

    vl, audio, _ = parts
    run, _ = track_run
    model, fmt, _ = load_trained(vl, run / "checkpoints" / "policy", audio)
    clips = torch.randn(3, 100, 16)
    model.set_gates(0.5)
    moved = gt.text_retention(model, fmt.tok, text_prompts(12), clips, batch_size=6)
    assert moved["open_mean_kl"] > 0 and moved["closed_identical"] == 1.0
    model.set_gates(0.0)
    still = gt.text_retention(model, fmt.tok, text_prompts(12), clips, batch_size=6)
    assert still["open_mean_kl"] == 0.0 and still["open_identical"] == 1.0


def _killed_copy(parts, track_run, tmp_path, monkeypatch, metrics: dict):
    """A copy of the track's run directory holding ``metrics`` (a run killed part way), the tiny cache in use."""
    import shutil

    copy = tmp_path / "demo-gemma"
    shutil.copytree(track_run[0], copy)
    monkeypatch.setenv("SAFE_CACHE", str(parts[2] / "cache"))
    (copy / "metrics.json").write_text(json.dumps(metrics))
    return copy


def test_a_killed_track_starts_again_where_it_stopped(parts, track_run, tmp_path, monkeypatch):
    import safe.stages.evaluate as ev
    import safe.stages.policy as po
    import safe.stages.stage_a as sa
    import safe.stages.verify as ve
    from safe.stages import gemma as stage

    m = json.loads((track_run[0] / "metrics.json").read_text())
    recorded_eval = m.pop("eval")  # killed during the last stage: everything before it is recorded
    m["timing"] = {**m["timing"], "partial": True}
    copy = _killed_copy(parts, track_run, tmp_path, monkeypatch, m)
    ran = []
    monkeypatch.setattr(ve, "verify", lambda *a, **k: pytest.fail("verification ran again"))
    monkeypatch.setattr(sa, "run_stage_a", lambda *a, **k: pytest.fail("Stage A ran again"))
    monkeypatch.setattr(stage, "gemma_figures", lambda *a, **k: pytest.fail("the retention figures ran again"))
    monkeypatch.setattr(po, "train_policy", lambda *a, **k: pytest.fail("the policy stage ran again"))
    monkeypatch.setattr(ev, "evaluate", lambda cfg: ran.append(cfg.run_dir) or ev.EvalResult(recorded_eval))
    result = _demo(parts, copy)
    assert ran == [str(copy)] and result.ok
    after = json.loads((copy / "metrics.json").read_text())
    assert after["timing"]["seconds"] > m["timing"]["seconds"]  # the killed run's time is counted in
    for kept in ("verify_done_seconds", "stage_a_done_seconds", "gemma_done_seconds", "policy_done_seconds"):
        assert after["timing"][kept] == m["timing"][kept]  # a kept stage keeps the time it took when it ran
        assert after["timing"]["load_average"][kept] == m["timing"]["load_average"][kept]
    assert after["timing"]["eval_done_seconds"] > m["timing"]["policy_done_seconds"]
    assert after["gemma"]["lm_sha256"]["all_equal"] and "after_eval" in after["gemma"]["lm_sha256"]


def test_until_figures_stops_before_the_policy(parts, track_run, tmp_path, monkeypatch):
    """``python -m safe.stages.gemma --until figures``: a Stage A variant measured without Stages B/C."""
    import safe.stages.evaluate as ev
    import safe.stages.policy as po

    m = json.loads((track_run[0] / "metrics.json").read_text())
    for key in ("policy", "eval"):
        m.pop(key)
    copy = _killed_copy(parts, track_run, tmp_path, monkeypatch, m)
    monkeypatch.setattr(po, "train_policy", lambda *a, **k: pytest.fail("the policy stage ran"))
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("the evaluation ran"))
    result = _demo(parts, copy, until="figures")
    assert result.ok and result.metrics["stopped_after"] == "figures" and "stopped after figures" in result.summary()
    after = json.loads((copy / "metrics.json").read_text())
    assert "gemma" in after and "policy" not in after and after["timing"]["stopped_after"] == "figures"


def test_docs_block_comes_from_metrics(track_run, tmp_path):
    from safe.bench.gemma import track_docs

    run, _ = track_run
    page = tmp_path / "page.md"
    page.write_text(f"head\n{track_docs.START}\nold\n{track_docs.END}\ntail\n")
    block = track_docs.write(run, [page])
    text = page.read_text()
    assert "old" not in text and text.startswith("head\n") and text.endswith("tail\n")
    m = json.loads((run / "metrics.json").read_text())
    assert f"{m['gemma']['text']['open_identical']:.3f}" in block and "McNemar" in block


def test_predict_and_serve_answer_on_the_track_run(track_run, capsys):
    """`safe predict` and `safe serve` take the run directory alone (base and encoder from its record)."""
    from fastapi.testclient import TestClient

    import safe
    from safe.bench.files import load_split
    from safe.cli import main
    from safe.serve.app import create_app
    from safe.stages.serve import ServeConfig
    from tests.serve.conftest import request

    run, _ = track_run
    ex = next(e for e in load_split(_data(run), "test") if e.needs_audio)
    code = main(["predict", "--run-dir", str(run), "--image", ex.image, "--question", ex.question,
                 "--audio-file", ex.audio])
    out, err = capsys.readouterr()
    assert code == 0, err
    one = json.loads(out)
    assert one == safe.pipeline(run)(image=ex.image, question=ex.question, audio=ex.audio)
    with TestClient(create_app(ServeConfig(run_dir=str(run), max_batch=2, max_wait_ms=50))) as client:
        r = client.post("/v1/chat/completions", json=request(ex))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == one["answer"]


def _data(run):
    return json.loads((run / "run.json").read_text())["data"]
