"""``safe predict``: answers from a run or checkpoint (:mod:`safe.inference.pipeline`), one JSON object a line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from safe.inference.pipeline import predict, read_requests
from safe.runs import StageResult
from safe.stages.common import LoadOptions, from_run, load_options


@dataclass
class PredictConfig(LoadOptions):
    """Options of ``safe predict``: one question (--question, --image, --audio-file) or a JSON-lines file (--input)."""

    run_dir: str | None = None
    """Run directory (its checkpoints/policy, else checkpoints/final)."""
    checkpoint: str | None = None
    """A SAFE checkpoint directory instead of --run-dir."""
    base: str | None = None
    """Frozen base (default: the one the run was trained on, recorded with it)."""
    audio: str | None = None
    """Audio encoder checkpoint (default: the one the run was trained with, recorded with it)."""
    image: str | None = None
    """Image file for the one question."""
    question: str | None = None
    """The question (one request)."""
    audio_file: str | None = None
    """Audio file (WAV / FLAC / OGG / MP3) for the question."""
    use_audio: Literal["true", "false"] | None = None
    """Force the audio path on or off (default: the policy decides, or audio is used when given)."""
    depth_file: str | None = None
    """Depth map (.npy array in metres, or an image file) for the question, for a checkpoint carrying depth."""
    use_depth: Literal["true", "false"] | None = None
    """Force the depth path on or off (default: used when a depth map is given)."""
    depth_encoder: str | None = None
    """Depth encoder folder (a transformers vision model with its image processor; default: the one saved
    with the checkpoint's processor, else the shipped depth encoder)."""
    input: str | None = None
    """JSON lines, one {question, image, audio, use_audio, depth, use_depth, id} object a line (relative paths
    from the file's folder); prints one JSON object a line, in order."""
    batch_size: int = 16
    """Questions per generate call with --input."""
    long_audio: Literal["truncate", "error"] = "truncate"
    """Clips longer than the audio encoder's window: use the first window (a warning on stderr) or refuse."""

    def __post_init__(self) -> None:
        if (self.checkpoint or self.run_dir) is None:
            raise ValueError("give --run-dir DIR (or --checkpoint DIR)")
        if (self.input is None) == (self.question is None):
            raise ValueError("give either --question (with --image / --audio-file / --depth-file) or --input FILE.jsonl")
        if self.question is not None and not self.question.strip():
            raise ValueError("--question is empty: give the question to answer")


@dataclass
class PredictResult(StageResult):
    """One answer per request, in order (nothing is recorded in a run directory)."""

    rows: list[dict[str, Any]] | None = None

    def summary(self) -> str:
        return "\n".join(json.dumps(r) for r in self.rows or [])


def predict_command(cfg: PredictConfig) -> PredictResult:
    """``safe predict``: warnings (a clip cut to the encoder's window) go to stderr as one line each, and
    transformers' progress bars and info logs are silenced while it runs, so stdout holds only answers."""
    import logging
    import sys

    from transformers.utils import logging as hf_logging

    opts = load_options(cfg)  # a bad loading flag fails before anything is loaded
    if cfg.checkpoint is None:  # the run's own base and encoder; one given must be them
        cfg = from_run(cfg, data=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("safe predict: warning: %(message)s"))
    log = logging.getLogger("safe.processing")
    log.addHandler(handler)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        if cfg.input is not None:
            requests = read_requests(cfg.input)
        else:
            use = None if cfg.use_audio is None else cfg.use_audio == "true"
            requests = [{"question": cfg.question, "image": cfg.image, "audio": cfg.audio_file, "use_audio": use,
                         "_where": "--question"}]
            if cfg.depth_file is not None or cfg.use_depth is not None:
                requests[0].update(depth=cfg.depth_file,
                                   use_depth=None if cfg.use_depth is None else cfg.use_depth == "true")
        source = cfg.checkpoint or cfg.run_dir
        rows = predict(source, requests, cfg.base or default_base(source), cfg.audio, cfg.batch_size,
                       cfg.long_audio, opts, encoders=default_encoders(source, cfg.depth_encoder))
    finally:
        log.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return PredictResult(rows=rows)



def default_base(source) -> str | None:
    """None (the recorded or built-in base) unless the checkpoint carries another modality, names no base and
    no built-in base is built: then the built-in VL model SAFE ships (the depth track trains on it without
    ``safe base build``)."""
    from safe.bench.build import SHIPPED_DIR
    from safe.data.source import cache_dir
    from safe.inference.pipeline import checkpoint_modalities, find_checkpoint
    from safe.processing.processor import PROCESSOR_FILE

    ckpt = find_checkpoint(source)
    if not checkpoint_modalities(ckpt) or (ckpt / PROCESSOR_FILE).is_file() \
            or (cache_dir() / "base" / "manifest.json").is_file():
        return None
    return str(SHIPPED_DIR)


def default_encoders(source, given: str | None) -> dict[str, str] | None:
    """``{"depth": folder}``: --depth-encoder, else (a checkpoint carrying depth whose processor names no
    depth encoder) the shipped one; None when the checkpoint has no depth modality."""
    from safe.bench.depth import SHIPPED_DEPTH_ENCODER
    from safe.inference.pipeline import checkpoint_modalities, find_checkpoint
    from safe.processing.processor import PROCESSOR_FILE

    if given is not None:
        return {"depth": given}
    ckpt = find_checkpoint(source)
    if "depth" not in checkpoint_modalities(ckpt):
        return None
    saved = ckpt / PROCESSOR_FILE
    if saved.is_file() and json.loads(saved.read_text()).get("sources", {}).get("depth"):
        return None
    return {"depth": str(SHIPPED_DEPTH_ENCODER)}
