"""The built-in benchmark, its base models and the tiny presets: the demo's own material.

The library (``safe.models``, ``safe.data``, ``safe.training``, ``safe.policy``, ``safe.evaluation``,
``safe.adapters``) never imports this package; the CLI and the tests use it. Modules:

* :mod:`safe.bench.audio` clip synthesis, :mod:`safe.bench.scenes` pictures,
  :mod:`safe.bench.questions` question families and examples, :mod:`safe.bench.files` the folder on
  disk and its :class:`~safe.bench.files.BuiltinSource`, :mod:`safe.bench.baselines` deaf baselines;
* :mod:`safe.bench.vl_model` / :mod:`safe.bench.audio_model` / :mod:`safe.bench.build` the built-in
  base models, :mod:`safe.bench.presets` tiny random-weight Hugging Face models (not imported here:
  they import torch and transformers).
"""
from safe.bench.audio import SOUND_KINDS, describe_clip, synthesize_clip
from safe.bench.baselines import majority_baseline, object_guess_baseline
from safe.bench.files import (
                              BenchmarkMissingError,
                              BuiltinSource,
                              benchmark_fingerprint,
                              generate_benchmark,
                              load_benchmark_info,
                              load_split,
)
from safe.bench.questions import (
                              AUDIO_FAMILIES,
                              AUDIO_ONLY_FAMILIES,
                              AUDIO_VISUAL_FAMILIES,
                              CAPTION_FAMILIES,
                              QUESTION_FAMILIES,
                              SPLITS,
                              VL_FAMILIES,
                              SynthConfig,
                              make_example,
)
from safe.bench.scenes import render_scene

__all__ = [
    "AUDIO_FAMILIES", "AUDIO_ONLY_FAMILIES", "AUDIO_VISUAL_FAMILIES", "BenchmarkMissingError", "BuiltinSource",
    "CAPTION_FAMILIES", "QUESTION_FAMILIES", "SOUND_KINDS", "SPLITS", "SynthConfig", "VL_FAMILIES",
    "benchmark_fingerprint", "describe_clip", "generate_benchmark", "load_benchmark_info", "load_split",
    "majority_baseline", "make_example", "object_guess_baseline", "render_scene", "synthesize_clip",
]
