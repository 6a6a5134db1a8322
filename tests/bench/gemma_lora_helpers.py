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


def tiny_gemma_llava(root: Path) -> Path:
    """A saved LLaVA over a tiny Gemma 3 of the real class and a tiny CLIP tower (random weights, no benchmark
    needed): what ``benchmarks/scale.py --preset gemma`` loads, in seconds."""
    import torch
    import transformers as tf

    text = tf.Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                               sliding_window=16, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                               tie_word_embeddings=True)
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 image_size=32, patch_size=16, projection_dim=32)
    cfg = tf.LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=299,
                         image_seq_length=4, vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(root / "llava")
    return root / "llava"
