"""Deployment certificate: what ``safe verify --certificate FILE`` checked, on which weights, and the check
``safe serve --certificate FILE`` runs before it serves.

The weights are identified by :func:`safe.models.integrity.state_hash` (SHA-256 over every state-dict
entry's name, dtype, shape and bytes) of the *loaded* modules: the frozen base, the audio encoder and
SAFE's own parts (projector, adapters, policy). Hashing what is loaded, not the files, means a
different file holding the same tensors still matches and a changed tensor never does, whatever the
storage format.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import nn

from safe.atomic import write_atomic
from safe.models.integrity import state_hash

FORMAT = "safe-deployment-certificate"
VERSION = 1
PARTS = ("base", "audio_encoder", "safe")
LIBRARIES = ("safe", "torch", "transformers", "numpy", "safetensors", "tokenizers", "soundfile", "soxr")


class CertificateError(ValueError):
    """The certificate is missing, unreadable, of another format, failed, or names other weights than
    the model loaded; the message names the file and the part."""


def fingerprints(model) -> dict[str, str]:
    """SHA-256 (:func:`~safe.models.integrity.state_hash`) of a ``SAFEModel``'s base, encoder and SAFE parts."""
    return {"base": state_hash(model.base_model), "audio_encoder": state_hash(model.audio_encoder),
            "safe": state_hash(nn.ModuleDict(model.safe_modules()))}


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_certificate(path: str | os.PathLike, model, checks: list[dict[str, Any]], *, passed: bool,
                      source: dict[str, Any]) -> dict[str, Any]:
    """Write the certificate (JSON, atomically: a temporary file renamed) and return it. ``checks``:
    ``{"name", "passed", "detail"}`` per check run; ``source``: where the model came from."""
    cert = {"format": FORMAT, "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "passed": bool(passed), "source": source, "sha256": fingerprints(model),
            "hash": "safe.models.integrity.state_hash: SHA-256 over each state-dict entry (name, dtype, shape, bytes)",
            "checks": checks, "libraries": library_versions()}
    write_atomic(path, json.dumps(cert, indent=2))
    return cert


def read_certificate(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CertificateError(f"--certificate {path}: no such file (write one with safe verify --run-dir RUN "
                               f"--certificate {path})")
    try:
        cert = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CertificateError(f"--certificate {path}: not a readable JSON certificate ({err})") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT or cert.get("version") != VERSION:
        raise CertificateError(f"--certificate {path}: not a {FORMAT} version {VERSION} file")
    if not isinstance(cert.get("sha256"), dict) or set(PARTS) - set(cert["sha256"]):
        raise CertificateError(f"--certificate {path}: it lists no sha256 for {sorted(set(PARTS) - set(cert.get('sha256') or {}))}")
    bad = [p for p in PARTS if not isinstance(cert["sha256"][p], str)]
    if bad:
        raise CertificateError(f"--certificate {path}: sha256 of {bad} must be hex strings")
    if not isinstance(cert.get("libraries") or {}, dict):
        raise CertificateError(f"--certificate {path}: 'libraries' must be an object")
    return cert


def check_certificate(path: str | os.PathLike, model) -> dict[str, Any]:
    """The certificate at ``path`` if it passed and its hashes are those of ``model``'s weights; else
    :class:`CertificateError` naming every part that differs. Library versions that differ are
    returned under ``"library_changes"`` (they do not change the weights; the caller warns)."""
    cert = read_certificate(path)
    if cert.get("passed") is not True:
        raise CertificateError(f"--certificate {path}: the verification it records did not pass")
    have = fingerprints(model)
    diff = [f"{p}: certified {cert['sha256'][p][:16]}.., loaded {have[p][:16]}.." for p in PARTS
            if cert["sha256"][p] != have[p]]
    if diff:
        raise CertificateError(f"--certificate {path}: the loaded weights are not the verified ones ("
                               + "; ".join(diff) + "); refusing to serve")
    now = library_versions()
    changes = {k: (v, now.get(k)) for k, v in (cert.get("libraries") or {}).items() if now.get(k) != v}
    return {**cert, "library_changes": changes}


__all__ = ["CertificateError", "check_certificate", "fingerprints", "library_versions", "read_certificate",
           "write_certificate"]
