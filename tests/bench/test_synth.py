"""The built-in synthetic benchmark: determinism, balance, labels, audio content, disk format."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safe.bench.audio import NUMBER_WORDS, PITCHED_KINDS, SHAPE_SOUNDS, SOUND_KINDS, describe_clip, synthesize_clip
from safe.bench.baselines import majority_baseline, object_guess_baseline
from safe.bench.files import BenchmarkMissingError, generate_benchmark, load_benchmark_info, load_split
from safe.bench.questions import (
    AUDIO_FAMILIES,
    AUDIO_VISUAL_FAMILIES,
    QUESTION_FAMILIES,
    VL_FAMILIES,
    SynthConfig,
    make_example,
    split_plan,
)
from safe.data.records import Example
from safe.evaluation.robustness import add_noise, mix_background, other_rows
from safe.processing.audio import read_wav

SR = 16000


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate_benchmark(tmp_path_factory.mktemp("synth") / "bench", SynthConfig.tiny(), progress=False)


@pytest.fixture(scope="module")
def splits(bench) -> dict[str, list[Example]]:
    return {s: load_split(bench, s) for s in SynthConfig.tiny().split_sizes()}


# -- determinism -------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files(bench, tmp_path):
    other = generate_benchmark(tmp_path / "again", SynthConfig.tiny(), progress=False)
    a, b = _tree_hashes(bench), _tree_hashes(other)
    assert a == b
    assert any(k.endswith(".png") for k in a) and any(k.endswith(".wav") for k in a)


def test_different_seed_differs(bench, tmp_path):
    other = generate_benchmark(tmp_path / "seed1", SynthConfig.tiny(seed=1), progress=False)
    a, b = _tree_hashes(bench), _tree_hashes(other)
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert len(differing) > 0.9 * len(a)


def test_example_does_not_depend_on_generation_order():
    # Each example is a pure function of (config, split, index): building one alone gives the same bytes.
    cfg = SynthConfig.tiny()
    plan = split_plan(cfg, "train")
    ex_a, img_a, wav_a = make_example(cfg, "train", 17, plan)
    ex_b, img_b, wav_b = make_example(cfg, "train", 17)
    assert ex_a == ex_b and img_a.tobytes() == img_b.tobytes() and np.array_equal(wav_a, wav_b)


def test_existing_complete_benchmark_is_reused(bench):
    before = (bench / "benchmark.json").stat().st_mtime_ns
    assert generate_benchmark(bench, SynthConfig.tiny(), progress=False) == bench
    assert (bench / "benchmark.json").stat().st_mtime_ns == before


def test_damaged_benchmark_is_regenerated_not_reused(bench, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bench, copy)
    (copy / "audio" / "val_000001.wav").unlink()
    generate_benchmark(copy, SynthConfig.tiny(), progress=False)
    assert _tree_hashes(copy) == _tree_hashes(bench)


# -- sizes, shares, labels, balance --------------------------------------------------------------
def test_split_sizes_and_counts(bench, splits):
    cfg = SynthConfig.tiny()
    info = load_benchmark_info(bench)
    assert set(splits) == {"train", "val", "test", "retention", "ood_test"}
    for split, n in cfg.split_sizes().items():
        assert len(splits[split]) == n
        assert info["counts"][split]["total"] == n
        assert sum(info["counts"][split]["families"].values()) == n
        assert len({ex.id for ex in splits[split]}) == n
    assert info["shape_sounds"] == SHAPE_SOUNDS
    assert info["families"] == QUESTION_FAMILIES
    assert set(info["answers"]) == {ex.answer for exs in splits.values() for ex in exs}


def test_no_ood_split_without_held_out_sounds():
    cfg = SynthConfig.tiny(held_out_sounds=())
    assert "ood_test" not in cfg.split_sizes()
    assert cfg.in_distribution_sounds == SOUND_KINDS


@pytest.mark.parametrize("vl_share", [0.65, 0.3])
def test_vl_share_respected(vl_share):
    cfg = SynthConfig(vl_share=vl_share)
    for split in ("train", "val", "test", "ood_test"):
        plan = split_plan(cfg, split)
        n_vl = sum(not QUESTION_FAMILIES[fam] for fam, _ in plan)
        assert abs(n_vl - vl_share * len(plan)) <= 1
    assert all(not QUESTION_FAMILIES[fam] for fam, _ in split_plan(cfg, "retention"))


def test_families_and_needs_audio_labels(splits):
    for exs in splits.values():
        for ex in exs:
            assert ex.task == "synth"
            assert ex.needs_audio == QUESTION_FAMILIES[ex.family]
            assert ex.image is not None and ex.audio is not None  # VL questions carry irrelevant audio
            assert ex.answer == ex.answer.lower().strip() and ex.answer
    train_families = {ex.family for ex in splits["train"]}
    assert train_families == set(QUESTION_FAMILIES)
    assert not any(QUESTION_FAMILIES[f] for f in VL_FAMILIES)
    assert all(QUESTION_FAMILIES[f] for f in AUDIO_FAMILIES)


def test_audio_families_balanced_among_themselves_and_within():
    cfg = SynthConfig()  # default sizes: the plan is cheap, no files are written
    plan = split_plan(cfg, "train")
    fam_counts = Counter(fam for fam, _ in plan if QUESTION_FAMILIES[fam])
    assert max(fam_counts.values()) - min(fam_counts.values()) <= 1
    for family in AUDIO_FAMILIES:
        targets = Counter(str(t) for fam, t in plan if fam == family)
        share = max(targets.values()) / sum(targets.values())
        assert share <= 1 / len(targets) + 0.01, (family, targets)


def test_deaf_baselines(splits):
    exs = [ex for s in ("train", "val", "test") for ex in splits[s]]
    base = majority_baseline(exs)
    assert base["pitch"] <= 0.5 + 0.05
    assert base["beep_count"] <= 0.25 + 0.1
    assert base["sounding_object"] <= 0.25 + 0.1
    guess = object_guess_baseline(exs)
    assert set(guess) == set(AUDIO_VISUAL_FAMILIES)
    assert 1 / 3 - 1e-9 <= guess["sounding_object"] <= 1 / 2 + 1e-9
    assert object_guess_baseline([ex for ex in exs if ex.family == "colour"]) == {}


def test_sounding_object_is_consistent_with_mapping(splits):
    for ex in splits["train"]:
        if ex.family != "sounding_object":
            continue
        objects = ex.meta["objects"]
        shapes = [o["shape"] for o in objects]
        colours = [o["colour"] for o in objects]
        assert 2 <= len(objects) <= 3 and len(set(shapes)) == len(shapes) and len(set(colours)) == len(colours)
        sounding = [o for o in objects if SHAPE_SOUNDS[o["shape"]] == ex.meta["clip"]["kind"]]
        assert len(sounding) == 1 and sounding[0]["colour"] == ex.answer


def test_vl_answers_are_unambiguous(splits):
    for ex in splits["train"] + splits["retention"]:
        objs = ex.meta["objects"]
        if ex.family == "colour":
            shape = ex.question.split("the ")[1].rstrip("?")
            assert [o["colour"] for o in objs if o["shape"] == shape] == [ex.answer]
        elif ex.family == "shape":
            colour = ex.question.split("the ")[1].split()[0]
            assert [o["shape"] for o in objs if o["colour"] == colour] == [ex.answer]
        elif ex.family == "count":
            assert NUMBER_WORDS[len(objs) - 1] == ex.answer
        elif ex.family == "position":
            pick = min if ex.meta["side"] == "left" else max
            edge = pick(o["col"] for o in objs)
            assert [o["shape"] for o in objs if o["col"] == edge] == [ex.answer]


def test_held_out_sounds_only_in_ood_test(splits):
    held = set(SynthConfig.tiny().held_out_sounds)
    assert held
    for split in ("train", "val", "test", "retention"):
        assert not {ex.meta["clip"]["kind"] for ex in splits[split]} & held
    ood = splits["ood_test"]
    assert {ex.meta["clip"]["kind"] for ex in ood} == held
    assert {ex.answer for ex in ood if ex.family == "sound_kind"} <= held
    assert all(ex.meta["ood"] for ex in ood)


# -- images and audio ----------------------------------------------------------------------------
def test_image_and_clip_format(splits):
    ex = splits["train"][0]
    img = Image.open(ex.image)
    assert img.size == (48, 48) and img.mode == "RGB"
    x, rate = read_wav(ex.audio)
    assert rate == SR and len(x) == SR and np.abs(x).max() <= 1.0


def test_objects_stay_in_their_cells(splits):
    for ex in splits["train"][:40]:
        arr = np.asarray(Image.open(ex.image)).astype(int)
        for o in ex.meta["objects"]:
            cell = arr[o["row"] * 16:(o["row"] + 1) * 16, o["col"] * 16:(o["col"] + 1) * 16]
            assert (np.abs(cell - np.array([24, 24, 24])).sum(-1) > 0).sum() > 40  # something is drawn
            assert abs(o["dx"]) <= 1 and abs(o["dy"]) <= 1
        occupied = {(o["row"], o["col"]) for o in ex.meta["objects"]}
        for r in range(3):
            for c in range(3):
                if (r, c) not in occupied:
                    assert (arr[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] == 24).all()


def _burst_count(x: np.ndarray) -> int:
    frames = np.abs(x[: len(x) // 160 * 160]).reshape(-1, 160).max(axis=1)  # 10 ms frames
    on = frames > 0.5 * frames.max()
    return int(on[0]) + int(np.sum(on[1:] & ~on[:-1]))


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spec)])


@pytest.mark.parametrize("n_beeps", [1, 2, 3, 4])
def test_beep_clips_have_that_many_bursts(n_beeps):
    for i in range(10):
        x = synthesize_clip("beeps", np.random.default_rng(i), n_beeps=n_beeps)
        assert x.dtype == np.float32 and len(x) == SR
        assert _burst_count(x) == n_beeps


def test_pitch_is_visible_in_the_spectrum():
    for i in range(10):
        for kind in ("tone", "beeps", "organ", "clarinet", "siren", "pluck", "bell"):
            lo = synthesize_clip(kind, np.random.default_rng(i), pitch="low")
            hi = synthesize_clip(kind, np.random.default_rng(i), pitch="high")
            assert _peak_hz(lo) < 500 and _peak_hz(hi) > 900, kind


def test_chirp_direction_and_kinds_differ():
    def centroid(x):
        spec = np.abs(np.fft.rfft(x))
        return float((spec * np.fft.rfftfreq(len(x), 1 / SR)).sum() / spec.sum())

    for i in range(5):
        up = synthesize_clip("upchirp", np.random.default_rng(i))
        down = synthesize_clip("downchirp", np.random.default_rng(i))
        on_up, on_down = np.flatnonzero(np.abs(up) > 1e-3), np.flatnonzero(np.abs(down) > 1e-3)
        mid_up, mid_down = (on_up[0] + on_up[-1]) // 2, (on_down[0] + on_down[-1]) // 2
        assert centroid(up[:mid_up]) < centroid(up[mid_up:])
        assert centroid(down[:mid_down]) > centroid(down[mid_down:])
    # Noise is spectrally flat, a tone is not.
    noise = synthesize_clip("noise", np.random.default_rng(0))
    tone = synthesize_clip("tone", np.random.default_rng(0), pitch="low")
    def flat(x):
        return np.exp(np.mean(np.log(np.abs(np.fft.rfft(x)) + 1e-9))) / np.mean(np.abs(np.fft.rfft(x)))

    assert flat(noise) > 0.3 > flat(tone)


def test_every_kind_synthesizes_and_bad_arguments_fail():
    for kind in SOUND_KINDS:
        x = synthesize_clip(kind, np.random.default_rng(0), sample_rate=8000, seconds=0.5)
        assert len(x) == 4000 and 0.3 <= np.abs(x).max() <= 0.61 and np.isfinite(x).all()
    with pytest.raises(ValueError, match="unknown sound kind"):
        synthesize_clip("banjo", np.random.default_rng(0))
    with pytest.raises(ValueError, match="has no pitch"):
        synthesize_clip("noise", np.random.default_rng(0), pitch="low")
    with pytest.raises(ValueError, match="n_beeps"):
        synthesize_clip("beeps", np.random.default_rng(0), n_beeps=5)
    assert describe_clip("beeps", "high", 3) == "three high beeps"
    assert describe_clip("beeps", "low", 1) == "one low beep"
    assert describe_clip("upchirp") == "a rising chirp"
    assert set(PITCHED_KINDS) <= set(SOUND_KINDS)


def test_add_noise_hits_the_snr():
    rng = np.random.default_rng(0)
    x = synthesize_clip("organ", rng, pitch="low")
    for snr in (0.0, 10.0, 20.0):
        y = add_noise(x, snr, np.random.default_rng(1))
        noise = y.astype(np.float64) - x
        measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
        assert abs(measured - snr) < 0.3 and y.dtype == np.float32
    batch = add_noise(np.stack([x, 0.1 * x]), 10.0, np.random.default_rng(2))
    assert batch.shape == (2, SR)
    assert np.array_equal(add_noise(np.zeros(100), 5.0, rng), np.zeros(100, np.float32))


def test_snr_config_adds_noise(tmp_path):
    cfg = SynthConfig.tiny(snr_db=0.0, n_train=4, n_val=0, n_test=0, n_retention=0, n_ood_test=0)
    ex, _, clean = make_example(SynthConfig.tiny(n_train=4, n_val=0, n_test=0, n_retention=0, n_ood_test=0),
                                "train", 0)
    ex_noisy, _, noisy = make_example(cfg, "train", 0)
    assert ex_noisy.meta["snr_db"] == 0.0 and not np.allclose(clean, noisy)
    assert np.abs(noisy).max() <= 0.99 + 1e-6
    # Silent stretches of the clean clip are no longer silent.
    assert (np.abs(clean) < 1e-6).any() and not (np.abs(noisy[np.abs(clean) < 1e-6]) < 1e-4).all()


# -- config validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vl_share=0.0), r"vl_share.*\(0, 1\).*0\.0"),
        (dict(vl_share=1.0), r"vl_share.*1\.0"),
        (dict(vl_share=1.5), r"vl_share.*1\.5"),
        (dict(n_train=-1), r"n_train.*-1"),
        (dict(seed=1.5), r"seed.*1\.5"),
        (dict(held_out_sounds=("banjo",)), r"held_out_sounds.*banjo"),
        (dict(held_out_sounds=("beeps",)), r"held_out_sounds.*beeps"),
        (dict(held_out_sounds=("tone",)), r"held_out_sounds.*tone"),
        (dict(image_size=50), r"image_size.*50"),
        (dict(jitter_px=3), r"jitter_px.*3"),
        (dict(sample_rate=4000), r"sample_rate.*4000"),
        (dict(clip_seconds=0.1), r"clip_seconds.*0\.1"),
        (dict(snr_db=float("nan")), r"snr_db.*nan"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_config_round_trip():
    cfg = SynthConfig.tiny(seed=3, held_out_sounds=["siren"], snr_db=5)
    again = SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.held_out_sounds == ("siren",)
    with pytest.raises(ValueError, match="unknown SynthConfig fields"):
        SynthConfig.from_dict({**cfg.to_dict(), "colour_count": 5})


# -- disk format ---------------------------------------------------------------------------------
def test_manifest_is_relocatable_and_load_split_resolves(bench, splits, tmp_path):
    line = json.loads((bench / "train.jsonl").read_text().splitlines()[0])
    assert line["image"] == "images/train_000000.png" and line["audio"] == "audio/train_000000.wav"
    ex = splits["train"][0]
    assert Path(ex.image).is_absolute() and Path(ex.image).is_file() and Path(ex.audio).is_file()
    assert ex == Example.from_dict({**line, "image": ex.image, "audio": ex.audio})
    # Copy the folder elsewhere: it still loads, pointing at the copy.
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(bench, moved)
    moved_ex = load_split(moved, "train")[0]
    assert moved_ex.image.startswith(str(moved.resolve())) and moved_ex.question == ex.question


def test_missing_or_incomplete_benchmark_errors(bench, tmp_path):
    with pytest.raises(BenchmarkMissingError, match="benchmark.json is missing"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="split 'dev' is not in the benchmark"):
        load_split(bench, "dev")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bench, broken)
    with open(broken / "val.jsonl", "a") as f:
        f.write("{}\n")
    with pytest.raises(BenchmarkMissingError, match="does not match"):
        load_split(broken, "val")
    (broken / "images" / "test_000003.png").unlink()
    with pytest.raises(BenchmarkMissingError, match="test_000003.png"):
        load_split(broken, "test")
    # A crash mid-generation leaves no benchmark.json, so nothing loads.
    (broken / "benchmark.json").unlink()
    with pytest.raises(BenchmarkMissingError):
        load_split(broken, "train")
    assert isinstance(BenchmarkMissingError("x"), FileNotFoundError)


def test_background_mix_hits_the_snr_and_other_rows_skip_themselves():
    rng = np.random.default_rng(0)
    x, b = rng.standard_normal(800), 3.0 * rng.standard_normal(300)  # a short background is tiled
    for snr in (20.0, 0.0, -10.0):
        noise = mix_background(x, b, snr) - x.astype(np.float32)
        assert 10 * np.log10(np.mean(x**2) / np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(snr, abs=0.01)
    assert np.array_equal(mix_background(np.zeros(10), b, 0.0), np.zeros(10, np.float32))
    pick = other_rows(50, np.random.default_rng(1))
    assert (pick != np.arange(50)).all() and pick.min() >= 0 and pick.max() < 50 and len(set(pick.tolist())) > 20
