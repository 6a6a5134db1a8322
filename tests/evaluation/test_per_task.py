"""Retention per VL benchmark, gains per audio benchmark and caption metrics per caption benchmark
(safe.evaluation.per_task / captions) on a hand-made mixture of answers with known counts."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from safe.data.records import Example
from safe.evaluation import captions as caps
from safe.evaluation.metrics import bleu_scores, cider_d_scores
from safe.evaluation.per_task import gains_per_task, paired_graded_test, retention_per_task
from safe.evaluation.protocol import bootstrap_mean as _ci
from safe.evaluation.scoring import answer_score
from safe.evaluation.stats import mcnemar

MODES = ("base", "gate_closed", "gate_open", "policy")


def _ex(i, task, answers, family="q", needs_audio=False, audio=None):
    return Example(id=str(i), task=task, family=family, question="Describe the sound." if family == "caption" else "?",
                   answers=tuple(answers), needs_audio=needs_audio, audio=audio)


VQA_ANS = ["yes"] + ["yes"] * 3 + ["no"] * 7   # mca, then ten annotators: "yes" 0.9, "no" 1.0
ROWS = (
    # (example, {mode: answer}); modes not named answer as the base
    [(_ex(i, "vqav2", VQA_ANS), {"base": "no", "gate_open": "yes" if i == 0 else "no"}) for i in range(3)]
    + [(_ex(10 + i, "gqa", ["table"]), {"base": "table" if i < 4 else "chair",
                                       "gate_open": "table" if i not in (0, 1) else "chair"}) for i in range(6)]
    + [(_ex(20 + i, "avqa", ["violin"], needs_audio=True), {"base": "piano", "gate_open": "violin" if i else "piano",
                                                          "policy": "violin"}) for i in range(4)]
    # AudioCaps: one row per caption, two clips with two captions each; Clotho: one row, two captions
    + [(_ex(30 + i, "audiocaps", [c], "caption", True, audio=f"/clips/{i // 2}.wav"),
        {"base": "music", "gate_open": ["a dog barks", "rain falls on a roof"][i // 2]})
       for i, c in enumerate(["a dog barks loudly", "a dog is barking", "rain falls on a roof", "heavy rain"])]
    + [(_ex(40, "clotho", ["birds sing in a forest", "birds chirping"], "caption", True, audio="/c/b.wav"),
        {"base": "noise", "gate_open": "birds sing"})]
)
EX = [e for e, _ in ROWS]
ANSWERS = {m: [a.get(m, a["base"]) for _, a in ROWS] for m in MODES}
SCORES = {m: [answer_score(p, e) for p, e in zip(ANSWERS[m], EX)] for m in MODES}


def test_retention_per_vl_benchmark():
    r = retention_per_task(EX, SCORES, ANSWERS)
    assert list(r) == ["gqa", "vqav2"]  # VL-only rows only, sorted
    g = r["gqa"]
    assert (g["metric"], g["n"], g["test"]) == ("gqa_exact_match", 6, "mcnemar")
    assert g["accuracy"] == {"base": 4 / 6, "gate_closed": 4 / 6, "gate_open": 4 / 6, "policy": 4 / 6}
    t = g["paired_tests"]["gate_open"]  # rows 0, 1 lost, rows 4, 5 gained: b = 2, c = 2
    assert (t["test"], t["b"], t["c"], t["n"]) == ("mcnemar", 2, 2, 6)
    assert t["pvalue"] == mcnemar([0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]).pvalue
    assert g["answers_changed"] == {"gate_closed": 0, "gate_open": 4, "policy": 0}
    v = r["vqav2"]
    assert (v["metric"], v["n"], v["test"]) == ("vqa_accuracy", 3, "wilcoxon")
    assert v["accuracy"]["base"] == pytest.approx(1.0) and v["accuracy"]["gate_open"] == pytest.approx(2.9 / 3)
    w = v["paired_tests"]["gate_open"]
    assert w["n_differing"] == 1 and w["diff"] == pytest.approx(-0.1 / 3) and w["ci_low"] <= w["diff"] <= w["ci_high"]
    assert v["paired_tests"]["gate_closed"]["pvalue"] == 1.0  # nothing differs


def test_paired_graded_test_hand_checked():
    """Differences (0.1, 0, 0, -0.3, 0.3, 0.6): the zeros are dropped; |d| ranks 1, 2.5, 2.5, 4; the
    negative one has rank 2.5, so W- = 2.5, W+ = 7.5 and the two-sided statistic min(W+, W-) = 2.5."""
    a = np.array([0.6, 0.5, 0.5, 0.2, 0.8, 1.0])
    b = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.4])
    t = paired_graded_test(a, b)
    assert t["statistic"] == pytest.approx(2.5) and t["n_differing"] == 4 and t["n"] == 6
    assert t["diff"] == pytest.approx(0.7 / 6) and 0.0 < t["pvalue"] <= 1.0
    same = paired_graded_test(a, a)
    assert (same["statistic"], same["pvalue"], same["diff"]) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="equal length"):
        paired_graded_test([0.1, 0.2], [0.1])


def test_gains_per_audio_benchmark_and_captions_per_clip():
    per_task, captions = gains_per_task(EX, SCORES, ANSWERS, _ci)
    assert list(per_task) == ["avqa"]  # the only audio benchmark with question rows
    a = per_task["avqa"]
    assert (a["metric"], a["n"]) == ("exact_match", 4)
    assert a["accuracy"]["base"]["mean"] == 0.0 and a["accuracy"]["safe"]["mean"] == 0.75
    assert a["accuracy"]["policy"]["mean"] == 1.0
    assert a["safe_minus_base"]["mean"] == 0.75 and a["safe_minus_base"]["ci_low"] <= 0.75
    assert list(captions) == ["audiocaps", "clotho"]
    ac = captions["audiocaps"]
    assert (ac["clips"], ac["rows"]) == (2, 4)  # five captions a clip in the real test split; two here
    refs = [["a dog barks loudly", "a dog is barking"], ["rain falls on a roof", "heavy rain"]]
    safe = ac["systems"]["safe"]
    expected_bleu = bleu_scores(["a dog barks", "rain falls on a roof"], refs)
    assert [safe[f"bleu_{k}"] for k in (1, 2, 3, 4)] == pytest.approx(expected_bleu)
    # every predicted word is in a reference (precision 1); lengths 3 + 5 against the closest references
    # 4 + 5: brevity penalty exp(1 - 9 / 8)
    assert safe["bleu_1"] == pytest.approx(np.exp(1 - 9 / 8))
    assert safe["cider_d"]["mean"] == pytest.approx(np.mean(cider_d_scores(["a dog barks", "rain falls on a roof"],
                                                                           refs)))
    assert safe["rouge_l"] > ac["systems"]["base"]["rouge_l"] == 0.0
    assert safe["meteor"] is None and "not requested" in ac["unavailable"]["meteor"]
    assert "CoreNLP" in ac["unavailable"]["spice"] and "SPICE" in ac["unavailable"]["spider"]
    assert captions["clotho"]["clips"] == 1


def test_caption_rows_group_by_clip():
    groups = caps.group_caption_rows(EX, [i for i, e in enumerate(EX) if e.is_caption])
    assert [g[0] for g in groups] == [[13, 14], [15, 16], [17]]
    assert groups[0][1] == ["a dog barks loudly", "a dog is barking"]


def test_rouge_l_hand_checked():
    """"a dog barks" vs "a dog is barking": LCS "a dog" = 2, P = 2/3, R = 2/4;
    F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * (1/3) / (0.5 + 0.96) = 0.55707..."""
    assert caps.rouge_l_scores(["a dog barks"], [["a dog is barking"]]) == pytest.approx([2.44 / 3 / 1.46])


def test_meteor_unavailable_without_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no java"):
        caps.meteor_score(["a dog"], [["a dog barks"]])
    _, captions = gains_per_task(EX, SCORES, ANSWERS, _ci, meteor=True)
    assert captions["clotho"]["systems"]["safe"]["meteor"] is None
    assert "no java" in captions["clotho"]["unavailable"]["meteor"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="the toolkit's METEOR needs Java")
def test_meteor_with_java():
    refs = [["a dog barks loudly", "dog barking"], ["rain falls on a roof"]]
    scores = caps.meteor_score((), refs, {"close": ["a dog is barking", "rain on the roof"],
                                          "same": ["a dog barks loudly", "rain falls on a roof"]})
    assert scores["close"] == pytest.approx(0.3288, abs=1e-3)  # the toolkit's own run on these captions
    assert scores["same"] > 0.9 > scores["close"]
    _, captions = gains_per_task(EX, SCORES, ANSWERS, _ci, meteor=True)
    assert 0.0 < captions["clotho"]["systems"]["safe"]["meteor"] < 1.0 and "meteor" not in captions["clotho"]["unavailable"]


def test_retention_and_gains_take_a_mixed_split():
    """The evaluation's two sections on the mixture: overall keys as before, the per-benchmark ones added;
    a split without VL-only rows has no McNemar to run."""
    from safe.evaluation.protocol import retention_and_gains

    retention, gains = retention_and_gains(EX, SCORES, ANSWERS)
    assert retention["answers_changed"]["n"] == 9 and set(retention["mcnemar"]) == {"gate_closed", "gate_open",
                                                                                      "policy"}
    assert retention["per_task"] == retention_per_task(EX, SCORES, ANSWERS)
    assert list(gains["per_task"]) == ["avqa"] and list(gains["captions_per_task"]) == ["audiocaps", "clotho"]
    audio_only = [i for i, e in enumerate(EX) if e.needs_audio]
    sub = lambda d: {k: [v[i] for i in audio_only] for k, v in d.items()}  # noqa: E731
    retention, gains = retention_and_gains([EX[i] for i in audio_only], sub(SCORES), sub(ANSWERS))
    assert retention["mcnemar"] == {} and retention["per_task"] == {} and gains["per_task"]["avqa"]["n"] == 4
