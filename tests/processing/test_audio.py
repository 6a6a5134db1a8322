"""The audio decoder: every row of issue 15's table, one error class naming the input, resampling checked
on the signal (a tone's frequency), not only on shapes."""
import io
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from safe.processing.audio import AudioInputError, load_audio, read_wav, write_wav

SR = 16000


def _tone(freq=440.0, rate=SR, seconds=0.5, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spec))]


def _raises(fn, *parts):
    with pytest.raises(AudioInputError) as err:
        fn()
    for p in parts:
        assert p in str(err.value), (p, str(err.value))
    return str(err.value)


def test_int16_array_is_scaled_to_unit_range():
    x = _tone()
    pcm = np.round(x * 32767).astype(np.int16)
    y = load_audio(pcm, SR)
    assert y.dtype == np.float32 and np.abs(y).max() <= 1.0
    np.testing.assert_allclose(y, pcm / 32768.0, atol=1e-7)
    np.testing.assert_allclose(y, x, atol=1e-4)
    np.testing.assert_allclose(load_audio(torch.from_numpy(pcm), SR), y)  # a tensor is read like the array
    u8 = np.round(x * 127 + 128).astype(np.uint8)
    np.testing.assert_allclose(load_audio(u8, SR), x, atol=1 / 127)


def test_8khz_array_is_resampled_not_reinterpreted():
    x = _tone(440.0, rate=8000, seconds=1.0)
    y = load_audio(x, 8000, target_rate=SR)
    assert len(y) == SR  # one second at the encoder's rate
    assert abs(_peak_hz(y, SR) - 440.0) < 2.0  # read as 16 kHz it would be an 880 Hz tone
    assert abs(_peak_hz(load_audio(x, SR, target_rate=SR), SR) - 880.0) < 2.0
    # 44.1 kHz -> 16 kHz keeps the tone too (libsoxr, not interpolation)
    assert abs(_peak_hz(load_audio(_tone(1000.0, 44100, 1.0), 44100), SR) - 1000.0) < 2.0


def test_stereo_is_downmixed_either_layout():
    left, right = _tone(440.0), _tone(660.0, amp=0.2)
    want = (left + right) / 2
    np.testing.assert_allclose(load_audio(np.stack([left, right], 1), SR), want, atol=1e-7)  # (n, 2)
    np.testing.assert_allclose(load_audio(np.stack([left, right], 0), SR), want, atol=1e-7)  # (2, n)
    _raises(lambda: load_audio(np.zeros((100, 20)), SR, name="audio[3]"), "audio[3]", "channels")
    _raises(lambda: load_audio(np.zeros((2, 3, 4)), SR, name="audio[1]"), "audio[1]", "shape")


def test_nan_inf_empty_and_missing_rate_are_errors_naming_the_input():
    _raises(lambda: load_audio(np.full(100, np.nan, np.float32), SR, name="audio[3]"), "audio[3]", "all samples",
            "NaN")
    x = _tone()
    x[5] = np.inf
    _raises(lambda: load_audio(x, SR, name="clip"), "clip", "1 of", "infinite")
    _raises(lambda: load_audio(np.zeros(0, np.float32), SR, name="audio[0]"), "audio[0]", "no samples")
    _raises(lambda: load_audio(_tone(), name="audio[2]"), "audio[2]", "sampling_rate")
    _raises(lambda: load_audio(_tone(), 0), "sampling_rate")
    _raises(lambda: load_audio(np.array(["a", "b"]), SR), "dtype")
    assert issubclass(AudioInputError, ValueError)
    silence = load_audio(np.zeros(SR, np.int16), SR)  # silence is a clip
    assert silence.shape == (SR,) and not silence.any()


def test_header_only_cut_short_not_audio_and_missing_files(tmp_path):
    write_wav(tmp_path / "header.wav", np.zeros(0), SR)
    _raises(lambda: load_audio(tmp_path / "header.wav"), "header.wav", "no samples")
    write_wav(tmp_path / "ok.wav", _tone(), SR)
    raw = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(raw[:44 + 1001])  # cut in the middle of a 16-bit sample
    _raises(lambda: load_audio(tmp_path / "cut.wav"), "cut.wav", "cut short")
    _raises(lambda: load_audio(raw[:44 + 1001], name="upload"), "upload", "cut short")
    (tmp_path / "head.wav").write_bytes(raw[:30])  # cut inside the header
    _raises(lambda: load_audio(tmp_path / "head.wav"), "head.wav")
    (tmp_path / "notes.wav").write_text("not audio at all\n" * 20)
    _raises(lambda: load_audio(tmp_path / "notes.wav"), "notes.wav", "cannot read audio")
    (tmp_path / "blob.xyz").write_bytes(np.random.default_rng(0).bytes(4000))
    _raises(lambda: load_audio(tmp_path / "blob.xyz"), "blob.xyz")
    _raises(lambda: load_audio(tmp_path / "missing.flac"), "missing.flac", "not found")
    _raises(lambda: load_audio(tmp_path / "ok.wav", sampling_rate=8000), "ok.wav", "16000")


@pytest.mark.parametrize("fmt,subtype,tol", [("WAV", "PCM_24", 1e-6), ("WAV", "FLOAT", 0.0), ("WAV", "PCM_32", 1e-8),
                                             ("WAV", "PCM_U8", 2 / 127), ("FLAC", "PCM_16", 2 / 32767),
                                             ("OGG", "VORBIS", None), ("MP3", "MPEG_LAYER_III", None)])
def test_file_formats_decode_to_the_same_clip(tmp_path, fmt, subtype, tol):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    x = _tone(440.0, rate=22050, seconds=1.0)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(str(path), np.stack([x, x], 1), 22050, format=fmt, subtype=subtype)  # stereo, 22.05 kHz
    y = load_audio(path)
    want = load_audio(x, 22050)
    if tol is not None:
        assert len(y) == len(want)
        np.testing.assert_allclose(y, want, atol=tol + 1e-6)
    else:  # lossy codecs: the same tone, the same length within the codec's padding
        assert abs(len(y) - len(want)) < 0.1 * SR and abs(_peak_hz(y, SR) - 440.0) < 3.0
    np.testing.assert_array_equal(load_audio(path.read_bytes()), y)  # bytes and file-like too
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), y)


def test_read_wav_keeps_the_old_contract(tmp_path):
    x = _tone()
    write_wav(tmp_path / "a.wav", x, SR)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == SR and y.dtype == np.float32
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_array_equal(y, pcm.astype(np.float32) / 32768.0)  # the stdlib reader's exact values
    y8, rate8 = read_wav(tmp_path / "a.wav", target_rate=8000)
    assert rate8 == 8000 and len(y8) == len(x) // 2


def test_one_hour_clip_follows_the_length_rule(tmp_path, caplog):
    rate = 1000  # an hour at 1 kHz keeps the file small (7 MB)
    path = tmp_path / "hour.wav"
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for minute in range(60):
            f.write(np.full(60 * rate, 0.1 * (minute % 2), np.float32))
    assert sf.info(str(path)).duration == 3600
    with caplog.at_level(logging.WARNING, logger="safe.processing"):
        y = load_audio(path, target_rate=SR, max_seconds=1.0)
    assert len(y) == SR
    assert "hour.wav" in caplog.text and "3600.0 s" in caplog.text and "first 1 s" in caplog.text
    _raises(lambda: load_audio(path, target_rate=SR, max_seconds=1.0, long_audio="error"), "hour.wav", "3600.0 s",
            "long_audio")
    assert len(load_audio(np.zeros(5 * SR, np.float32), SR, max_seconds=2.0)) == 2 * SR
    assert len(load_audio(np.zeros(5 * SR, np.float32), SR)) == 5 * SR  # no max_seconds: the whole clip
    with pytest.raises(ValueError, match="long_audio"):
        load_audio(np.zeros(10), SR, long_audio="pool")


def test_a_high_sample_rate_file_is_refused_from_its_header(tmp_path):
    """The length limit counts seconds: a file declaring FLAC's highest rate (655,350 Hz) x 8 channels
    would decode 40 times the samples of 16 kHz audio per second kept (a 170 KB file, 630 MB decoded)."""
    from safe.processing.audio import MAX_SAMPLE_RATE

    buf = io.BytesIO()
    sf.write(buf, np.zeros((2000, 8), np.float32), 655350, format="FLAC")
    _raises(lambda: load_audio(buf.getvalue(), None, SR, max_seconds=30, long_audio="error", name="bomb.flac"),
            "bomb.flac", "655350 Hz", str(MAX_SAMPLE_RATE))
    ok = tmp_path / "hi.wav"  # 192 kHz, the highest rate accepted, still decodes
    sf.write(ok, _tone(rate=192000, seconds=0.1), 192000)
    assert load_audio(ok, None, SR).shape == (1600,)


def test_frames_times_channels_are_capped_from_the_header(tmp_path, monkeypatch):
    import safe.processing.audio as audio

    f = tmp_path / "four.wav"
    sf.write(f, np.zeros((SR, 4), np.float32), SR, subtype="FLOAT")
    monkeypatch.setattr(audio, "MAX_DECODED_SAMPLES", 4 * SR - 1)
    _raises(lambda: load_audio(f, None, SR), "four.wav", "16000 frames x 4 channels")
    assert load_audio(f, None, SR, max_seconds=0.5).shape == (SR // 2,)  # the frames kept count, not the file's


def test_a_multichannel_file_is_downmixed_block_by_block(tmp_path):
    """Decoding holds the mono clip, never all 8 channels at once (the checks on it and their copies stay
    under half of what the 8 channels take), and the checks
    made before the downmix still see every channel."""
    import tracemalloc

    rate, frames = 48000, 48000 * 20
    x = np.zeros((frames, 8), np.float32)
    x[:, 3] = 0.8
    f = tmp_path / "eight.wav"
    sf.write(f, x, rate, subtype="FLOAT")
    del x
    tracemalloc.start()
    try:
        y = load_audio(f, None, rate)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(y, 0.1, atol=1e-6)
    assert peak < frames * 8 * 4 / 2, peak  # the full (frames, 8) float32 array alone is 30.7 MB
    bad = np.zeros((1000, 2), np.float32)
    bad[10, 1], bad[20, 0], bad[30, 0], bad[30, 1] = np.inf, np.nan, 1e30, -1e30
    g = tmp_path / "bad.wav"
    sf.write(g, bad, SR, subtype="FLOAT")
    _raises(lambda: load_audio(g, None, SR), "bad.wav", "2 of 2000 samples are NaN or infinite")
    bad[10, 1] = bad[20, 0] = 0
    sf.write(g, bad, SR, subtype="FLOAT")
    _raises(lambda: load_audio(g, None, SR), "bad.wav", "peak at 1e+30")  # their mean, 0, would hide them
