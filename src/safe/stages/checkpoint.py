"""The SAFE checkpoint ``safe policy train`` and ``safe eval`` start from, with its data and embedding cache."""
from __future__ import annotations

from pathlib import Path

from safe.data.embedding_cache import AudioEmbeddingCache
from safe.data.prepared import encoder_fingerprint
from safe.inference.loading import load_trained
from safe.stages.common import StageError, base_path, data_source


def open_checkpoint(checkpoint: Path, *, data: str | None, base: str | None, audio: str | None, missing: str,
                    load_options: dict | None = None):
    """What ``safe policy train`` and ``safe eval`` start from: ``(data source, SAFE model, prompt format,
    audio front end, embedding cache)`` for the SAFE checkpoint folder ``checkpoint``. A folder without
    ``safe_config.json`` raises :class:`~safe.stages.common.StageError` ending in ``missing`` (what to run
    first), before anything is loaded or created. ``load_options``: see :func:`load_frozen`."""
    if not (checkpoint / "safe_config.json").is_file():
        raise StageError(f"--checkpoint {checkpoint} is not a SAFE checkpoint (no safe_config.json): {missing}")
    source = data_source(data)
    model, fmt, frontend = load_trained(base_path(base), checkpoint, audio, **(load_options or {}))
    cache = AudioEmbeddingCache(source.cache_dir, encoder_fingerprint(model.audio_encoder, frontend))
    return source, model, fmt, frontend, cache

