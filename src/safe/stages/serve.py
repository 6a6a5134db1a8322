"""``safe serve``: the OpenAI-compatible endpoint (:mod:`safe.serve`) over a trained run, on uvicorn.

The model, processor and policy are loaded (and, with ``--certificate``, checked against the verified
weights) before the server binds its port, so a bad run directory or certificate is one error line and
exit code 2, never a half-started server.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safe.models.generation import MAX_NEW_TOKENS
from safe.runs import StageResult
from safe.stages.common import DType, StageError

EXTRA_CONNECTIONS = 32
"""Connections and requests uvicorn takes at once beyond ``--max-queue`` (for /health, /metrics and the
429s of refused chat requests); past ``--max-queue`` plus these it answers 503."""


@dataclass
class ServeConfig:
    """Options of ``safe serve``."""

    run_dir: str | None = None
    """Run directory to serve (its checkpoints/policy, else checkpoints/final), or a SAFE checkpoint directory."""
    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only)."""
    port: int = 8000
    """TCP port."""
    model_name: str = "safe"
    """Model id clients send as "model" (GET /v1/models lists it)."""
    max_batch: int = 8
    """Requests per batch (one policy pass and one generate); 1 turns dynamic batching off."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to join."""
    cache_clips: int = 1024
    """Clip embeddings kept in memory (LRU by clip content); 0 turns the cache off."""
    cache_mb: float = 512.0
    """Memory the clip cache may hold (MiB); the least recently used clips go first past it."""
    max_body_mb: float = 16.0
    """Largest request body accepted (MiB); bigger ones get 413."""
    body_timeout_s: float = 30.0
    """Seconds a client has to send its whole request body; past it, 408."""
    max_messages: int = 8
    """Most messages a request may hold (refused before its shape is validated)."""
    max_parts: int = 16
    """Most content parts one message may hold."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens (question, template, image tokens; default: the base's positions)."""
    max_image_width: int = 4096
    """Widest image decoded (pixels; judged from the header, before decoding)."""
    max_image_height: int = 4096
    """Tallest image decoded (pixels; judged from the header, before decoding)."""
    max_decodes: int = 4
    """Images and clips decoded at once; further requests wait for a slot."""
    max_queue: int = 32
    """Chat requests admitted at once (body being read, decoded, waiting for a batch or in the running one); past
    it a request gets 429 with Retry-After, so waiting requests, each holding its decoded media, stay bounded."""
    max_audio_peak: float = 1000.0
    """Largest absolute audio sample accepted (float audio belongs in [-1, 1])."""
    max_audio_channels: int = 8
    """Most channels an audio file may hold (judged from its header)."""
    max_audio_seconds: float | None = None
    """Longest clip accepted, in seconds (default: the audio encoder's window; a longer clip gets 400)."""
    max_tokens: int = 64
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = MAX_NEW_TOKENS
    """Tokens generated when a request gives no max_tokens (the evaluation's answer length: the built-in answers
    fit in it)."""
    max_n: int = 4
    """Largest n (choices per request)."""
    allow_local_media: bool = False
    """Accept image_url parts naming a local file (path or file://); off: data: URLs only."""
    certificate: str | None = None
    """Deployment certificate from safe verify --certificate: refuse to start unless the loaded weights match it."""
    base: str | None = None
    """Frozen base (default: the one the run was trained on, recorded with it)."""
    audio: str | None = None
    """Audio encoder checkpoint (default: the one the run was trained with, recorded with it)."""
    depth_encoder: str | None = None
    """Depth encoder folder (a transformers vision model with its image processor; default: the one saved with
    the checkpoint's processor, else the shipped depth encoder), for a run carrying depth."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda:0."""
    dtype: DType = "float32"
    """Dtype of the frozen parts."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """uvicorn's log level."""

    def __post_init__(self) -> None:
        if self.run_dir is None:
            raise StageError("give --run-dir DIR (a trained run or a SAFE checkpoint directory)")
        for name in ("max_batch", "max_tokens", "default_max_tokens", "max_n", "max_messages", "max_parts",
                     "max_image_width", "max_image_height", "max_decodes", "max_audio_channels", "max_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise StageError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if self.default_max_tokens > self.max_tokens:
            raise StageError(f"--default-max-tokens {self.default_max_tokens} is over --max-tokens {self.max_tokens}")
        if isinstance(self.cache_clips, bool) or not isinstance(self.cache_clips, int) or self.cache_clips < 0:
            raise StageError(f"--cache-clips must be an integer >= 0, got {self.cache_clips!r}")
        if not self.max_wait_ms >= 0:
            raise StageError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms!r}")
        if not self.max_body_mb > 0:
            raise StageError(f"--max-body-mb must be > 0, got {self.max_body_mb!r}")
        for name in ("body_timeout_s", "max_audio_peak"):
            if not getattr(self, name) > 0:
                raise StageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)!r}")
        if not self.cache_mb >= 0:
            raise StageError(f"--cache-mb must be >= 0, got {self.cache_mb!r}")
        mp = self.max_prompt_tokens
        if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < 1):
            raise StageError(f"--max-prompt-tokens must be an integer >= 1, got {mp!r}")
        if self.max_audio_seconds is not None and not self.max_audio_seconds > 0:
            raise StageError(f"--max-audio-seconds must be > 0, got {self.max_audio_seconds!r}")
        if not 0 < self.port < 65536:
            raise StageError(f"--port must be in 1..65535, got {self.port}")


@dataclass
class ServeResult(StageResult):
    """How many requests the server answered before it stopped (nothing is recorded in the run)."""

    def summary(self) -> str:
        m = self.metrics
        return f"safe serve stopped after {m.get('batches', 0)} batches"


def serve(cfg: ServeConfig) -> ServeResult:
    """Load the run, check the certificate, then serve until interrupted (Ctrl-C). transformers' progress
    bars and info logs are silenced while loading, so a refused start is one error line."""
    try:
        import uvicorn

        from safe.serve.app import create_app, load_engine
    except ImportError as err:
        raise StageError(f"safe serve needs fastapi, uvicorn and prometheus-client ({err}): "
                         "pip install 'safe-av[serve]'") from None
    from transformers.utils import logging as hf_logging

    from safe.stages.common import from_run
    from safe.stages.predict import default_encoders

    cfg = from_run(cfg, data=False)  # the run's own base and encoder; one given must be them
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        engine = load_engine(cfg, default_encoders(cfg.run_dir, cfg.depth_encoder))
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    app = create_app(cfg, engine)
    # Connections beyond the admitted chat requests (their 429s, /health, /metrics) are bounded too:
    # past this uvicorn answers 503 without reading the request.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                limit_concurrency=cfg.max_queue + EXTRA_CONNECTIONS)
    return ServeResult({"batches": engine.batches})
