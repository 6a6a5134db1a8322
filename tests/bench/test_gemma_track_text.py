"""The Gemma track's text retention set and its measurement, on a tiny Gemma 3 of the real class under SAFE (fast:
no training). What users depend on: the set is the same everywhere and scored by its rule, the closed path is
bit-exact on text-only prompts (answers and logits), the open path's figures measure what the gate lets in
(nothing at gate 0), Gemma's digest is unchanged, and the docs block says what metrics.json holds."""
import pytest
import torch

from safe.bench.gemma import track as gt
from safe.bench.gemma.track_text import is_correct, text_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_set_is_fixed_balanced_and_scored_by_its_rule():
    p = text_prompts()
    assert len(p) == 300 and len({x.question for x in p}) == 300 and p == text_prompts()
    assert {x.kind for x in p} == {"fact", "completion", "arithmetic"} and all(x.gold for x in p)
    assert p[0].text == "Question: What colour is the sky on a clear day?\nAnswer:"
    assert is_correct("Paris.", ("paris",)) and is_correct("12 apples", ("12",))
    assert not is_correct("120", ("12",)) and not is_correct("Lyon", ("paris",))


@pytest.fixture(scope="module")
def safe_tiny(tiny_builtin, tmp_path_factory):
    from safe import SAFEConfig, SAFEModel
    from safe.bench import presets as P
    from safe.bench.gemma import base as gb
    from safe.processing.prompts import words_of
    from tests.bench.gemma_helpers import tiny_gemma_lm

    _, base = tiny_builtin
    lm = tiny_gemma_lm(tmp_path_factory.mktemp("gemma") / "lm", words_of([p.text for p in text_prompts(12)]))
    model, tok, _ = gb.assemble(lm, base / "vl")
    safe = SAFEModel(model, P.tiny_audio_encoder("whisper"), SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4))
    return safe, tok


def test_closed_is_bit_exact_and_open_measures_the_gate(safe_tiny):
    safe, tok = safe_tiny
    prompts = text_prompts(12)
    clips = torch.randn(3, 10, safe.audio_encoder.output_dim, generator=torch.Generator().manual_seed(0))
    before = gt.lm_sha256(safe.base_model.model.language_model)
    safe.set_gates(0.5)
    moved = gt.text_retention(safe, tok, prompts, clips, batch_size=5)
    assert moved["n"] == 12 and moved["closed_identical"] == 1.0 and moved["closed_changed"] == 0
    assert moved["closed_first_token_logits_equal"] and moved["closed_mixed_batch_logits_equal"]
    assert moved["open_mean_kl"] > 0 and set(moved["per_kind"]) == {"fact", "completion", "arithmetic"}
    assert moved["scored"]["n"] == 12 and "pvalue" in moved["scored"]["mcnemar"]
    safe.set_gates(0.0)  # the same measurement with nothing let in: the open figures must say so
    shut = gt.text_retention(safe, tok, prompts, clips, batch_size=5)
    assert shut["open_mean_kl"] == 0.0 and shut["open_identical"] == 1.0 and shut["changed_examples"] == []
    assert gt.lm_sha256(safe.base_model.model.language_model) == before


def test_a_broken_closed_path_is_caught(safe_tiny, monkeypatch):
    """Switch the guarantee off (the adapters run on closed rows too): the closed figures must show it."""
    safe, tok = safe_tiny
    safe.set_gates(0.5)
    real = safe.generate

    def leaky(*a, audio_mask=None, **k):
        return real(*a, audio_mask=None if audio_mask is not None else audio_mask, **k)  # every row open

    monkeypatch.setattr(safe, "generate", leaky)
    got = gt.text_retention(safe, tok, text_prompts(12), torch.randn(3, 10, safe.audio_encoder.output_dim), 6)
    assert not got["closed_first_token_logits_equal"]


def test_docs_block_reports_each_target_from_the_metrics(tmp_path):
    from safe.bench.gemma import track_docs

    def figures(open_identical, changed):
        return {"n": 300, "closed_identical": 1.0, "closed_changed": 0, "closed_first_token_logits_equal": True,
                "closed_mixed_batch_logits_equal": True, "open_identical": open_identical, "open_changed": changed,
                "open_mean_kl": 1e-4, "open_max_kl": 2e-3,
                "scored": {"n": 300, "base_accuracy": 0.5, "open_accuracy": 0.49, "mcnemar": {"pvalue": 0.5}}}

    m = {"gemma": {"text": figures(0.997, 1), "vl": figures(0.98, 6),
                   "lm_sha256": {"expected": "ab" * 32, "before": "ab" * 32, "all_equal": True}, "torch_threads": 2},
         "stage_a": {"audio_accuracy": 0.7, "audio_accuracy_base": 0.05, "frozen_byte_identical": True,
                     "per_family": {"spoken_question": {"open": 0.5, "base": 0.2}}, "steps": 20,
                     "config": {"batch_size": 8}, "train_seconds": 600.0,
                     "parameters": {"total": {"parameters": 1000, "trainable": 10}}},
         "timing": {"seconds": 1800.0}}
    block = track_docs.block(m)
    assert "0.997 identical (1 of 300 changed; target >= 0.995: met)" in block
    assert "0.980 identical (6 of 300 changed; target >= 0.995: **missed**)" in block
    assert "+65.0 points; target +30: met" in block and "McNemar p 0.500" in block
    assert "Audio-use rate" not in block  # no policy figures in the run: the row is left out, never filled in
    page = tmp_path / "page.md"
    page.write_text(f"head\n{track_docs.START}\nold\n{track_docs.END}\ntail\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(__import__("json").dumps(m))
    track_docs.write(tmp_path / "run", [page])
    assert page.read_text().startswith("head\n") and "old" not in page.read_text()


def test_demo_without_the_gemma_base_names_the_command(tmp_path, monkeypatch, capsys):
    from safe.cli import main

    monkeypatch.setenv("SAFE_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--track", "gemma", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no Gemma VL base at" in err and "make gemma-base" in err
