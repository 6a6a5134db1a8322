"""The speech track: eSpeak NG synthesis through ctypes, the question plan, and the generated folder read by
the stages' data source and the processor (tiny sizes; synthesis tests skip without espeakng-loader)."""
from __future__ import annotations

import importlib.util
import json
import wave
from collections import Counter

import numpy as np
import pytest

from safe.bench.speech.track import AUDIO_FAMILIES, PROMPTS, QUESTION_FAMILIES, SpeechConfig, make_row, split_plan

_HAVE_ESPEAK = importlib.util.find_spec("espeakng_loader") is not None
needs_espeak = pytest.mark.skipif(not _HAVE_ESPEAK,
                                  reason="speech synthesis needs espeakng-loader (pip install 'safe-av[speech]')")


def test_plan_has_exact_shares_balanced_targets_and_is_reproducible():
    cfg = SpeechConfig(n_train=400, n_val=0, n_test=0, n_retention=40, n_ood_test=0)
    plan = split_plan(cfg, "train")
    assert plan == split_plan(cfg, "train")
    fams = Counter(f for f, _ in plan)
    assert sum(fams[f] for f in AUDIO_FAMILIES) == 200 and fams["spoken_question"] == 29
    assert fams["spoken_shape"] == 57 and fams["spoken_colour"] == 114
    assert Counter(t for f, t in plan if f == "spoken_colour") == {"circle": 38, "square": 38, "triangle": 38}
    assert {f for f, _ in split_plan(cfg, "retention")} <= {f for f, v in QUESTION_FAMILIES.items() if not v}


def _typed(family: str) -> set[str]:
    """Every filling of a VL family's template."""
    return {PROMPTS[family].format(shape=s, colour=c, side=d) for s in ("circle", "square", "triangle")
            for c in ("red", "green", "blue", "yellow") for d in ("left", "right")}


def test_rows_answer_from_the_picture_and_the_utterance():
    cfg = SpeechConfig.tiny(n_test=60)
    seen = set()
    for i in range(60):
        ex, image, utt = make_row(cfg, "test", i)
        assert (ex, utt) == make_row(cfg, "test", i)[::2]
        objects = ex.meta["objects"]
        seen.add(ex.family)
        assert utt["voice"] in cfg.voices and utt["rate"] in cfg.test_rates and utt["pitch"] in cfg.test_pitches
        if ex.family == "spoken_shape":  # the named shape, described in two words
            shape = next(s for s in ("circle", "square", "triangle") if s in utt["text"])
            assert [f"{o['colour']} {o['shape']}" for o in objects if o["shape"] == shape] == [ex.answer]
        elif ex.family == "spoken_colour":  # the object of the named colour, described in two words
            colour = next(c for c in ("red", "green", "blue", "yellow") if c in utt["text"])
            assert [f"{o['colour']} {o['shape']}" for o in objects if o["colour"] == colour] == [ex.answer]
        elif ex.family == "spoken_question":
            assert ex.question == PROMPTS["spoken_question"] and utt["text"] in _typed(ex.meta["spoken_family"])
        else:  # typed VL question; what it hears is words of an audio family
            assert not ex.needs_audio and ex.question in _typed(ex.family)
        assert image.size == (48, 48)
    assert seen == set(QUESTION_FAMILIES)
    held = {make_row(cfg, "ood_test", i)[2]["voice"] for i in range(8)}
    assert held <= set(cfg.held_out_voices)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="held_out_voices must differ"):
        SpeechConfig(voices=("en-us",), held_out_voices=("en-us",))
    with pytest.raises(ValueError, match="rates"):
        SpeechConfig(rates=(20,))
    with pytest.raises(ValueError, match="window_seconds"):
        SpeechConfig(window_seconds=0)
    assert SpeechConfig.from_dict(json.loads(json.dumps(SpeechConfig().to_dict()))) == SpeechConfig()


@needs_espeak
def test_espeak_speaks_int16_at_22khz_and_names_bad_voices():
    from safe.bench.speech import espeak

    assert espeak.sample_rate() == 22050
    slow = espeak.synthesize("what colour is the circle?", espeak.Voice("en-us", rate=150))
    fast = espeak.synthesize("what colour is the circle?", espeak.Voice("en-us", rate=300))
    assert slow.dtype == np.int16 and 1.2 < len(slow) / 22050 < 3.0
    assert len(fast) < 0.7 * len(slow) and np.abs(slow).max() > 5000
    high = espeak.synthesize("circle", espeak.Voice("en+f3", pitch=90))
    assert len(high) > 0.3 * 22050
    with pytest.raises(espeak.EspeakError, match="no voice 'xx-nowhere'"):
        espeak.synthesize("hello", "xx-nowhere")
    with pytest.raises(espeak.EspeakError, match="rate"):
        espeak.Voice("en-us", rate=10)


@needs_espeak
def test_generated_track_is_read_by_the_data_source_and_the_processor(tmp_path):
    from transformers import WhisperFeatureExtractor

    from safe.bench.files import BuiltinSource
    from safe.bench.speech.files import generate_speech_benchmark, utterance_id
    from safe.processing.audio import read_wav
    from safe.processing.features import FeatureFrontEnd
    from safe.processing.processor import SAFEProcessor
    from safe.processing.prompts import PromptFormat, build_tokenizer

    cfg = SpeechConfig.tiny()
    out = generate_speech_benchmark(tmp_path / "speech", cfg, progress=False)
    info = json.loads((out / "benchmark.json").read_text())
    assert info["task"] == "speech" and info["splits"] == ["train", "val", "test", "retention", "ood_test"]
    assert set(info["voices"]["ood_test"]) == {"en-us+m1"} and "en-us+m1" not in info["voices"]["train"]
    source = BuiltinSource(out)
    test = source.split("test")
    assert len(test) == 12 and all(e.task == "speech" for e in test)
    e = next(e for e in test if e.needs_audio)
    assert e.audio.endswith(f"{utterance_id(e.meta['utterance'])}.wav")
    with wave.open(e.audio) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (22050, 2, 1)
        assert w.getnframes() <= cfg.window_seconds * 22050
    # the processor takes the clip as any user's 22 kHz int16 audio and resamples it as training does
    fe = WhisperFeatureExtractor(feature_size=80, chunk_length=cfg.window_seconds)
    proc = SAFEProcessor(PromptFormat(build_tokenizer(["what"]), 9), FeatureFrontEnd(extractor=fe))
    with wave.open(e.audio) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    np.testing.assert_array_equal(proc.load_audio(pcm, sampling_rate=22050), read_wav(e.audio, target_rate=16000)[0])
    mtime = (out / "benchmark.json").stat().st_mtime_ns
    generate_speech_benchmark(out, cfg, progress=False)  # complete for this config: reused
    assert (out / "benchmark.json").stat().st_mtime_ns == mtime
