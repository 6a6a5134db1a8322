"""Tests for safe.evaluation.attribution: hand-computed games, the Shapley axioms, numpy references."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from safe.evaluation.attribution import lomo_drop, paired_change_count, shapley_two_player, summarize_shapley

# Every 0/1 game on two players: (v_none, v_image, v_audio, v_both) for all 16 combinations.
ALL_GAMES = np.array(list(itertools.product([0, 1], repeat=4)), dtype=float).T


class TestShapleyTwoPlayer:
    def test_hand_computed_cases(self):
        # sample 0: only audio answers it; 1: only the pair does (synergy); 2: either suffices;
        # 3: image alone right, adding audio breaks it; 4: scores, not correctness.
        v_none = [0, 0, 0, 0, 0.2]
        v_image = [0, 0, 1, 1, 0.5]
        v_audio = [1, 0, 1, 0, 0.3]
        v_both = [1, 1, 1, 0, 0.9]
        pi, pa = shapley_two_player(v_none, v_image, v_audio, v_both)
        np.testing.assert_array_equal(pi[:4], [0.0, 0.5, 0.5, 0.5])
        np.testing.assert_array_equal(pa[:4], [1.0, 0.5, 0.5, -0.5])
        # sample 4 by hand: image 0.5*((0.5-0.2)+(0.9-0.3)) = 0.45; audio 0.5*((0.3-0.2)+(0.9-0.5)) = 0.25
        assert pi[4] == pytest.approx(0.45, abs=1e-15)
        assert pa[4] == pytest.approx(0.25, abs=1e-15)

    def test_efficiency_exact_on_all_binary_games(self):
        pi, pa = shapley_two_player(*ALL_GAMES)
        v_none, _, _, v_both = ALL_GAMES
        assert np.array_equal(pi + pa, v_both - v_none)

    def test_efficiency_on_real_valued_scores(self):
        rng = np.random.default_rng(0)
        v = rng.random((4, 1000))
        pi, pa = shapley_two_player(*v)
        np.testing.assert_allclose(pi + pa, v[3] - v[0], rtol=0, atol=1e-14)

    def test_symmetry_swapping_players_swaps_values(self):
        rng = np.random.default_rng(1)
        v_none, v_image, v_audio, v_both = rng.random((4, 200))
        pi, pa = shapley_two_player(v_none, v_image, v_audio, v_both)
        pi2, pa2 = shapley_two_player(v_none, v_audio, v_image, v_both)
        assert np.array_equal(pi, pa2) and np.array_equal(pa, pi2)

    def test_null_player_gets_zero(self):
        # Audio never changes the payoff: v_audio == v_none and v_both == v_image.
        rng = np.random.default_rng(2)
        v_none, v_image = rng.integers(0, 2, (2, 50)).astype(float)
        pi, pa = shapley_two_player(v_none, v_image, v_none, v_image)
        assert np.array_equal(pa, np.zeros(50))
        assert np.array_equal(pi, v_image - v_none)

    def test_booleans_accepted(self):
        pi, pa = shapley_two_player([False], [True], [False], [True])
        assert pi.tolist() == [1.0] and pa.tolist() == [0.0]

    @pytest.mark.parametrize("bad", ["v_image", "v_audio", "v_both"])
    def test_length_mismatch_names_argument(self, bad):
        args = {"v_none": [0, 1], "v_image": [0, 1], "v_audio": [0, 1], "v_both": [0, 1]}
        args[bad] = [0, 1, 1]
        with pytest.raises(ValueError, match=bad):
            shapley_two_player(**args)

    def test_nan_rejected(self):
        with pytest.raises(ValueError, match="v_none"):
            shapley_two_player([math.nan], [0], [0], [0])


class TestSummarizeShapley:
    def test_values_by_hand(self):
        pi = [0.0, 0.5, 0.5, 0.5, 1.0]
        pa = [1.0, 0.5, 0.5, -0.5, 0.0]
        s = summarize_shapley(pi, pa, ["sound", "sound", "vl", "vl", "vl"])
        assert s["image_mean"] == pytest.approx(2.5 / 5)
        assert s["audio_mean"] == pytest.approx(1.5 / 5)
        # mean|image| = 2.5/5, mean|audio| = 2.5/5 -> share 0.5
        assert s["audio_share"] == pytest.approx(0.5)
        assert list(s["by_family"]) == ["sound", "vl"]
        assert s["by_family"]["sound"] == {"image": 0.25, "audio": 0.75, "n": 2}
        assert s["by_family"]["vl"]["image"] == pytest.approx(2 / 3)
        assert s["by_family"]["vl"]["audio"] == pytest.approx(0.0)
        assert s["by_family"]["vl"]["n"] == 3

    def test_audio_share_against_numpy(self):
        rng = np.random.default_rng(3)
        pi, pa = rng.normal(size=(2, 100))
        s = summarize_shapley(pi, pa, ["a"] * 100)
        ref = np.abs(pa).mean() / (np.abs(pi).mean() + np.abs(pa).mean())
        assert s["audio_share"] == pytest.approx(ref, rel=1e-12)
        assert 0.0 <= s["audio_share"] <= 1.0

    def test_share_nan_when_all_zero(self):
        assert math.isnan(summarize_shapley([0.0, 0.0], [0.0, 0.0], ["a", "b"])["audio_share"])

    def test_validation_names_argument(self):
        with pytest.raises(ValueError, match="phi_audio"):
            summarize_shapley([0.0, 1.0], [0.0], ["a", "a"])
        with pytest.raises(ValueError, match="groups"):
            summarize_shapley([0.0, 1.0], [0.0, 1.0], ["a"])
        with pytest.raises(ValueError, match="phi_image"):
            summarize_shapley([], [], [])


class TestLomoDrop:
    def test_by_hand(self):
        active = [1, 1, 1, 0, True, True]
        muted = [0, 1, 0, 0, True, False]
        groups = ["sound", "sound", "sound", "sound", "vl", "vl"]
        r = lomo_drop(active, muted, groups)
        assert set(r) == {"sound", "vl", "all"}
        assert r["sound"] == {"active": 0.75, "muted": 0.25, "drop": 0.5, "n": 4}
        assert r["vl"] == {"active": 1.0, "muted": 0.5, "drop": 0.5, "n": 2}
        assert r["all"]["active"] == pytest.approx(5 / 6)
        assert r["all"]["muted"] == pytest.approx(2 / 6)
        assert r["all"]["drop"] == pytest.approx(3 / 6)
        assert r["all"]["n"] == 6

    def test_negative_drop_when_muting_helps(self):
        r = lomo_drop([0, 0], [1, 0], ["x", "x"])
        assert r["x"]["drop"] == -0.5

    def test_validation(self):
        with pytest.raises(ValueError, match="muted_correct"):
            lomo_drop([1, 0], [1], ["a", "a"])
        with pytest.raises(ValueError, match="groups"):
            lomo_drop([1, 0], [1, 0], ["a"])
        with pytest.raises(ValueError, match="active_correct"):
            lomo_drop([], [], [])
        with pytest.raises(ValueError, match="active_correct"):
            lomo_drop([0.5, 1], [1, 1], ["a", "a"])
        with pytest.raises(ValueError, match="all"):
            lomo_drop([1], [1], ["all"])


class TestPairedChangeCount:
    def test_counts_differences(self):
        assert paired_change_count(["red", "two", "dog", "left"], ["red", "three", "cat", "left"]) == 2
        assert paired_change_count([], []) == 0
        assert paired_change_count(["a"] * 5, ["a"] * 5) == 0
        assert paired_change_count(["a", "b"], ["b", "a"]) == 2

    def test_length_mismatch(self):
        with pytest.raises(ValueError, match="b_answers"):
            paired_change_count(["a", "b"], ["a"])
        with pytest.raises(ValueError, match="a_answers"):
            paired_change_count("ab", ["a", "b"])
