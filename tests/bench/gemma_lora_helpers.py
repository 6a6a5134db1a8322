"""A saved tiny Gemma LLaVA base (a tiny Gemma 3 of the real class, one vision-side step) and a tiny Whisper
folder, as the Gemma comparison and the scale benchmark's gemma preset read the real ones."""
from pathlib import Path

from safe.bench import files
from safe.bench.gemma import base as gb
from safe.processing.prompts import words_of
from tests.bench.gemma_helpers import tiny_gemma_lm


def tiny_gemma_vl(bench: Path, builtin: Path, root: Path, extra_words=()) -> tuple[Path, Path]:
    """(VL base folder, Whisper folder) under ``root``."""
    from safe.bench import presets as P
    from safe.bench.gemma.train import build_gemma_base

    rows = [e for s in ("train", "test") for e in files.load_split(bench, s)]
    lm = tiny_gemma_lm(root / "lm", words_of([t for e in rows for t in (e.question, *e.answers)] + list(extra_words)))
    build_gemma_base(bench, root / "vl", lm_dir=lm, builtin_vl=builtin / "vl",
                     cfg=gb.GemmaBaseConfig(steps=1, batch_size=2, monitor_rows=4), progress=False)
    whisper = root / "whisper"
    P.tiny_audio_encoder("whisper").save_pretrained(whisper)
    P.tiny_feature_extractor("whisper").save_pretrained(whisper)
    return root / "vl", whisper
