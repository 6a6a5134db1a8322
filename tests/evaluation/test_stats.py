"""Tests for safe.evaluation.stats: each checked against scipy on the same inputs, published
values, or numbers worked out by hand in the test."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from safe.evaluation.stats import (
    PROPORTION,
    BootstrapCI,
    MeanCI,
    _paired_diff_ci,
    bootstrap_ci,
    cohens_d,
    format_mean_ci,
    mcnemar,
    mean_ci,
    paired_bootstrap_ci,
)


def table(b: int, c: int, both_right: int = 0, both_wrong: int = 0):
    """Paired correctness arrays with the given 2x2 table (b: A right/B wrong; c: A wrong/B right)."""
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    bb = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(bb)


# ------------------------------------------------------------------------------------ McNemar
class TestMcNemar:
    def test_counts_and_accuracies(self):
        a, b = table(b=7, c=3, both_right=10, both_wrong=5)
        r = mcnemar(a, b)
        assert (r.b, r.c, r.n) == (7, 3, 25)
        assert r.acc_a == pytest.approx(17 / 25)
        assert r.acc_b == pytest.approx(13 / 25)
        assert r.acc_diff == pytest.approx(4 / 25)
        assert r.odds_ratio == pytest.approx(7 / 3)

    def test_published_small_table_exact_and_chi2(self):
        # stat-tools.xyz McNemar calculator, b=12, c=5: chi2(cc) = 2.1176, p = 0.1456;
        # exact binomial p = 0.1435.
        a, b = table(12, 5, both_right=40, both_wrong=32)
        ex = mcnemar(a, b)  # b + c = 17 < 25 -> exact
        assert ex.method == "exact"
        assert ex.statistic == 5
        assert ex.pvalue == pytest.approx(0.1435, abs=5e-5)
        assert ex.pvalue == pytest.approx(st.binomtest(5, 17, 0.5).pvalue, rel=1e-12)
        # and by the definition: 2 * P(X <= 5), X ~ Bin(17, 1/2)
        assert ex.pvalue == pytest.approx(2 * sum(math.comb(17, k) for k in range(6)) / 2**17)

        ch = mcnemar(a, b, exact=False)
        assert ch.method == "chi2-cc"
        assert ch.statistic == pytest.approx(2.1176, abs=5e-5)
        assert ch.statistic == pytest.approx((abs(12 - 5) - 1) ** 2 / 17)
        assert ch.pvalue == pytest.approx(0.1456, abs=5e-5)
        assert ch.pvalue == pytest.approx(st.chi2.sf(36 / 17, df=1), rel=1e-12)

    def test_published_exact_two_tailed(self):
        # Calcugator chi2_mcnemar example (20 teenagers, b=11, c=3): two-tailed p = 0.0573730...
        a, b = table(11, 3, both_right=1, both_wrong=5)
        r = mcnemar(a, b)
        assert r.method == "exact"
        assert r.pvalue == pytest.approx(0.057373046875, rel=1e-12)

    def test_published_large_table_uncorrected(self):
        # Wikipedia "McNemar's test", 314 patients: a=101, b=121, c=59, d=33 -> chi2 = 21.35.
        a, b = table(121, 59, both_right=101, both_wrong=33)
        r = mcnemar(a, b, correction=False)
        assert r.method == "chi2"
        assert r.statistic == pytest.approx(21.35, abs=0.01)
        assert r.pvalue == pytest.approx(st.chi2.sf((121 - 59) ** 2 / 180, df=1), rel=1e-12)
        assert r.pvalue < 1e-5
        # default (b + c >= 25): continuity-corrected chi-square
        rc = mcnemar(a, b)
        assert rc.method == "chi2-cc"
        assert rc.statistic == pytest.approx(61**2 / 180)
        assert rc.pvalue > r.pvalue

    def test_method_switches_at_25_discordant_pairs(self):
        assert mcnemar(*table(14, 10)).method == "exact"  # 24
        assert mcnemar(*table(15, 10)).method == "chi2-cc"  # 25
        assert mcnemar(*table(15, 10), exact=True).method == "exact"
        assert mcnemar(*table(14, 10), exact=False).method == "chi2-cc"

    def test_no_discordant_pairs(self):
        a, b = table(0, 0, both_right=30, both_wrong=10)
        for exact in (None, True, False):
            r = mcnemar(a, b, exact=exact)
            assert r.pvalue == 1.0
            assert r.statistic == 0.0
            assert r.odds_ratio == 1.0  # (0 + 0.5) / (0 + 0.5)
            assert r.acc_diff == 0.0
        # the interval is not degenerate: identical answers on 40 questions do not prove equality
        assert r.ci_low < 0.0 < r.ci_high

    def test_equal_discordant_counts_give_p_one(self):
        r = mcnemar(*table(20, 20), exact=False)
        assert r.statistic == 0.0 and r.pvalue == 1.0

    def test_haldane_correction(self):
        assert mcnemar(*table(3, 0)).odds_ratio == pytest.approx(3.5 / 0.5)
        assert mcnemar(*table(0, 4)).odds_ratio == pytest.approx(0.5 / 4.5)

    def test_swapping_systems(self):
        a, b = table(30, 12, both_right=50, both_wrong=8)
        r1, r2 = mcnemar(a, b), mcnemar(b, a)
        assert r1.pvalue == pytest.approx(r2.pvalue)
        assert r1.odds_ratio == pytest.approx(1 / r2.odds_ratio)
        assert r1.acc_diff == pytest.approx(-r2.acc_diff)
        assert r1.ci_low == pytest.approx(-r2.ci_high)
        assert r1.significant() and r1.pvalue < 0.05

    def test_accepts_ints_and_lists(self):
        r = mcnemar([1, 0, 1, 1], [0, 0, 1, 0])
        assert (r.b, r.c) == (2, 0)
        assert mcnemar([1.0, 0.0], [0.0, 1.0]).b == 1

    def test_diff_ci_by_hand(self):
        # Bonett-Price: p12 = (b+1)/(n+2), p21 = (c+1)/(n+2)
        a, b = table(12, 5, both_right=3)  # n = 20
        r = mcnemar(a, b)
        p12, p21, m = 13 / 22, 6 / 22, 22
        se = math.sqrt((p12 + p21 - (p12 - p21) ** 2) / m)
        assert r.ci_low == pytest.approx(7 / 22 - 1.959963984540054 * se)
        assert r.ci_high == pytest.approx(7 / 22 + 1.959963984540054 * se)
        r90 = mcnemar(a, b, confidence=0.90)
        assert r90.ci_high - r90.ci_low == pytest.approx(2 * 1.6448536269514722 * se)

    def test_diff_ci_coverage(self):
        # Simulated coverage of the 95% interval for a true difference 0.10 - 0.05 = 0.05.
        rng = np.random.default_rng(0)
        n, reps = 200, 2000
        counts = rng.multinomial(n, [0.10, 0.05, 0.85], size=reps)
        hits = 0
        for b, c, _ in counts:
            lo, hi = _paired_diff_ci(int(b), int(c), n, 0.95)
            hits += lo <= 0.05 <= hi
        assert 0.93 <= hits / reps <= 0.97

    @pytest.mark.parametrize(
        "a, b, match",
        [
            ([True, False], [True], "lengths 2 and 1"),
            ([], [], "empty"),
            ([0.5, 1], [1, 1], "only booleans"),
            ([2, 1], [1, 1], "only booleans"),
            (["yes", "no"], [1, 1], "boolean-like"),
            ([[1, 0]], [[1, 0]], "1-D"),
        ],
    )
    def test_validation(self, a, b, match):
        with pytest.raises(ValueError, match=match):
            mcnemar(a, b)

    def test_to_dict_is_json_ready(self):
        import json

        d = mcnemar(*table(3, 1)).to_dict()
        assert json.loads(json.dumps(d))["b"] == 3


# ---------------------------------------------------------------------------------- bootstrap
def _scipy_percentile_ci(data, statistic, n_resamples, seed, confidence=0.95, paired=False):
    kw = dict(
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        paired=paired,
    )
    try:
        r = st.bootstrap(data, statistic, rng=np.random.default_rng(seed), **kw)
    except TypeError:  # scipy < 1.15 names the generator random_state
        r = st.bootstrap(data, statistic, random_state=np.random.default_rng(seed), **kw)
    return r.confidence_interval.low, r.confidence_interval.high


class TestBootstrap:
    def test_same_draws_as_scipy_give_identical_interval(self):
        # scipy resamples with rng.integers(0, n, (n_resamples, n)); with the same generator and
        # one block of draws the two percentile intervals must agree to rounding.
        x = np.random.default_rng(1).exponential(size=60)
        lo, hi = _scipy_percentile_ci((x,), np.mean, 3000, seed=7)
        r = bootstrap_ci(x, n_resamples=3000, seed=7)
        assert isinstance(r, BootstrapCI)
        assert r.estimate == pytest.approx(x.mean())
        assert (r.low, r.high) == pytest.approx((lo, hi), rel=1e-12)
        # a custom (non-vectorised) statistic uses the same draws
        lo_m, hi_m = _scipy_percentile_ci((x,), np.median, 3000, seed=7)
        rm = bootstrap_ci(x, np.median, n_resamples=3000, seed=7)
        assert rm.estimate == pytest.approx(np.median(x))
        assert (rm.low, rm.high) == pytest.approx((lo_m, hi_m), rel=1e-12)

    def test_large_sample_matches_normal_theory_and_scipy(self):
        # For the mean of n = 2000 draws the percentile interval is mean +- 1.96 s / sqrt(n) up to
        # Monte Carlo error of ~0.03 se per endpoint (10k resamples). A 90% interval, an SD
        # instead of an SE, or a one-sided quantile would miss by >= 0.3 se.
        x = np.random.default_rng(2).normal(3.0, 2.0, size=2000)
        se = x.std(ddof=1) / math.sqrt(x.size)
        r = bootstrap_ci(x, n_resamples=10_000, seed=3)
        z = st.norm.ppf(0.975)
        assert abs(r.low - (x.mean() - z * se)) < 0.1 * se
        assert abs(r.high - (x.mean() + z * se)) < 0.1 * se
        lo, hi = _scipy_percentile_ci((x,), np.mean, 10_000, seed=99)  # a different stream
        assert abs(r.low - lo) < 0.15 * se and abs(r.high - hi) < 0.15 * se
        r90 = bootstrap_ci(x, n_resamples=10_000, seed=3, confidence=0.90)
        assert abs((r90.high - r90.low) / 2 - st.norm.ppf(0.95) * se) < 0.1 * se

    def test_deterministic_given_seed(self):
        x = np.random.default_rng(4).random(50)
        assert bootstrap_ci(x, seed=11) == bootstrap_ci(x, seed=11)
        assert bootstrap_ci(x, seed=11) != bootstrap_ci(x, seed=12)

    def test_paired_difference(self):
        rng = np.random.default_rng(5)
        base = rng.normal(size=500)
        a = base + rng.normal(scale=0.3, size=500) + 0.2
        b = base + rng.normal(scale=0.3, size=500)
        r = bootstrap_ci((a, b), n_resamples=5000, seed=0)
        assert r.estimate == pytest.approx(a.mean() - b.mean())
        # paired = one-sample bootstrap of the differences with the same draws
        assert r == bootstrap_ci(a - b, n_resamples=5000, seed=0)
        assert r == paired_bootstrap_ci(a, b, n_resamples=5000, seed=0)
        # custom paired statistic called as f(a_res, b_res) sees the same joint resamples
        rc = bootstrap_ci(
            (a, b), lambda u, v: float(u.mean() - v.mean()), n_resamples=5000, seed=0
        )
        assert (rc.low, rc.high) == pytest.approx((r.low, r.high), rel=1e-9)
        # width follows the SE of the differences (0.3*sqrt(2)/sqrt(500)), far below the
        # unpaired SE (~sqrt(2)/sqrt(500)): pairing is used.
        se_d = (a - b).std(ddof=1) / math.sqrt(500)
        assert (r.high - r.low) / 2 == pytest.approx(1.96 * se_d, rel=0.1)
        # and scipy's paired bootstrap agrees within Monte Carlo error
        lo, hi = _scipy_percentile_ci(
            (a, b), lambda u, v, axis: u.mean(axis) - v.mean(axis), 5000, seed=1, paired=True
        )
        assert abs(r.low - lo) < 0.15 * se_d and abs(r.high - hi) < 0.15 * se_d

    def test_corpus_statistic_over_indices(self):
        # The pattern used for corpus metrics: resample indices, recompute the statistic.
        x = np.arange(10.0)
        r = bootstrap_ci(np.arange(10), lambda idx: float(x[idx.astype(int)].sum()), n_resamples=200)
        assert r.estimate == 45.0 and r.low < 45.0 < r.high

    def test_single_value_is_degenerate(self):
        assert bootstrap_ci([0.7]) == BootstrapCI(0.7, 0.7, 0.7)

    @pytest.mark.parametrize(
        "data, kw, match",
        [
            ([], {}, "at least 1"),
            ([1.0, float("nan")], {}, "NaN"),
            (([1.0, 2.0], [1.0]), {}, "equal lengths"),
            ([1.0, 2.0], {"confidence": 1.5}, "confidence"),
            ([1.0, 2.0], {"n_resamples": 0}, "n_resamples"),
            (np.ones((2, 3)), {}, "1-D"),
        ],
    )
    def test_validation(self, data, kw, match):
        with pytest.raises(ValueError, match=match):
            bootstrap_ci(data, **kw)


# ---------------------------------------------------------------------------------- Cohen's d
class TestCohensD:
    def test_independent_by_hand(self):
        # means 4 and 2; variances 4 and 2; pooled = (2*4 + 1*2) / 3 = 10/3
        assert cohens_d([2, 4, 6], [1, 3]) == pytest.approx(2 / math.sqrt(10 / 3))
        # equal groups: s = sqrt(2.5) in both
        assert cohens_d([1, 2, 3, 4, 5], [3, 4, 5, 6, 7]) == pytest.approx(-2 / math.sqrt(2.5))

    def test_independent_matches_student_t(self):
        rng = np.random.default_rng(0)
        a, b = rng.normal(1.0, 2.0, 13), rng.normal(0.0, 1.0, 21)
        t = st.ttest_ind(a, b, equal_var=True).statistic
        assert cohens_d(a, b) == pytest.approx(t * math.sqrt(1 / 13 + 1 / 21), rel=1e-10)

    def test_paired_by_hand(self):
        # differences [-1, 0, -2, -1]: mean -1, sample variance 2/3
        assert cohens_d([1, 2, 3, 4], [2, 2, 5, 5], paired=True) == pytest.approx(
            -1 / math.sqrt(2 / 3)
        )

    def test_paired_matches_paired_t(self):
        rng = np.random.default_rng(1)
        a = rng.normal(size=5)  # e.g. five seeds
        b = a - 0.3 + rng.normal(scale=0.2, size=5)
        t = st.ttest_rel(a, b).statistic
        assert cohens_d(a, b, paired=True) == pytest.approx(t / math.sqrt(5), rel=1e-10)
        # paired and independent differ on correlated data
        assert abs(cohens_d(a, b, paired=True)) > abs(cohens_d(a, b))

    def test_zero_spread(self):
        assert cohens_d([1, 1, 1], [1, 1]) == 0.0
        assert cohens_d([2, 2, 2], [1, 1]) == math.inf
        assert cohens_d([1, 2], [2, 3], paired=True) == -math.inf

    def test_validation(self):
        with pytest.raises(ValueError, match="equal lengths"):
            cohens_d([1, 2, 3], [1, 2], paired=True)
        with pytest.raises(ValueError, match="at least 2"):
            cohens_d([1], [2], paired=True)
        with pytest.raises(ValueError, match="n_a \\+ n_b >= 3"):
            cohens_d([1], [2])
        with pytest.raises(ValueError, match="NaN"):
            cohens_d([1, float("inf")], [2, 3])


# ------------------------------------------------------------------------------- mean +- CI
class TestMeanCI:
    def test_matches_scipy_t_interval(self):
        v = [0.912, 0.905, 0.921, 0.899, 0.917]
        r = mean_ci(v)
        lo, hi = st.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=st.sem(v))
        assert isinstance(r, MeanCI)
        assert (r.low, r.high) == pytest.approx((lo, hi), rel=1e-12)
        assert r.half_width == pytest.approx((hi - lo) / 2)
        lo99, hi99 = st.t.interval(0.99, len(v) - 1, loc=np.mean(v), scale=st.sem(v))
        assert mean_ci(v, 0.99)[1:3] == pytest.approx((lo99, hi99), rel=1e-12)

    def test_by_hand_with_table_value(self):
        # 1..5: mean 3, s^2 = 2.5, sem = sqrt(0.5); t(0.975, 4) = 2.776 (t tables)
        r = mean_ci([1, 2, 3, 4, 5])
        assert r.mean == 3.0
        assert r.half_width == pytest.approx(2.776 * math.sqrt(0.5), abs=1e-3)

    def test_single_value(self):
        r = mean_ci([0.5])
        assert r.mean == 0.5 and all(math.isnan(x) for x in (r.low, r.high, r.half_width))

    def test_constant_values(self):
        assert mean_ci([0.3, 0.3, 0.3]) == pytest.approx(MeanCI(0.3, 0.3, 0.3, 0.0))

    def test_validation(self):
        with pytest.raises(ValueError, match="at least 1"):
            mean_ci([])
        with pytest.raises(ValueError, match="confidence"):
            mean_ci([1, 2], confidence=0)


class TestFormat:
    def test_format(self):
        assert format_mean_ci(MeanCI(0.9123, 0.9023, 0.9223, 0.01)) == "0.912 ± 0.010"
        assert format_mean_ci(MeanCI(0.9123, 0.9023, 0.9223, 0.01), 1, scale=100) == "91.2 ± 1.0"
        v = [1, 2, 3, 4, 5]
        assert format_mean_ci(v, 2) == f"3.00 ± {mean_ci(v).half_width:.2f}"
        assert format_mean_ci([0.5]) == "0.500 (n=1)"


# ---------------------------------------------------------------------- bounded mean CI (seeds)
class TestBoundedMeanCI:
    def test_near_one_stays_inside_unit_interval(self):
        # The demo printed a 3-seed interval of an accuracy reaching 1.0048; bounded, it cannot.
        plain = mean_ci([0.999, 1.0, 1.0])
        assert plain.high > 1.0  # the t interval leaves [0, 1] ...
        r = mean_ci([0.999, 1.0, 1.0], bounds=(0, 1))
        assert 0.0 <= r.low <= r.mean <= r.high <= 1.0  # ... the bounded one does not
        assert r.high == 1.0 and r.low == pytest.approx(plain.low, rel=1e-15)
        assert r.mean == plain.mean and r.half_width == plain.half_width
        lo, hi = st.t.interval(0.95, 2, loc=np.mean([0.999, 1, 1]), scale=st.sem([0.999, 1, 1]))
        assert (r.low, r.high) == pytest.approx((lo, 1.0), rel=1e-12)

    def test_near_zero_and_unchanged_inside(self):
        r = mean_ci([0.0, 0.002, 0.0], bounds=(0, 1))
        assert r.low == 0.0 and 0.0 < r.high < 1.0
        inside = [0.91, 0.93, 0.92]
        assert mean_ci(inside, bounds=(0, 1)) == mean_ci(inside)
        # one-sided bounds
        assert mean_ci([0.0, 5.0, 0.1], bounds=(0, None)).low == 0.0
        assert mean_ci([1.0, 1.99, 2.0], bounds=(None, 2.0)).high == 2.0

    def test_clipping_keeps_the_coverage_of_the_t_interval(self):
        # Per-seed accuracies near the ceiling: the clipped interval covers the true mean exactly
        # as often as the unclipped one (nominal 95% for normal noise), and never leaves [0, 1].
        rng = np.random.default_rng(0)
        true = 0.995
        hits_t = hits_b = 0
        for _ in range(2000):
            v = np.clip(true + rng.normal(scale=0.002, size=3), 0, 1)
            t, b = mean_ci(v), mean_ci(v, bounds=(0, 1))
            assert 0.0 <= b.low and b.high <= 1.0
            hits_t += t.low <= true <= t.high
            hits_b += b.low <= true <= b.high
        assert hits_b == hits_t and 0.9 <= hits_b / 2000 <= 0.98

    @pytest.mark.parametrize("bounds, match", [
        ((1, 0), "low < high"), ((0,), "pair"), (0.5, "pair"), ((0, 1, 2), "pair"), (("a", 1), "pair"),
    ])
    def test_bad_bounds(self, bounds, match):
        with pytest.raises(ValueError, match=match):
            mean_ci([0.2, 0.3], bounds=bounds)

    def test_values_outside_bounds_are_refused(self):
        with pytest.raises(ValueError, match=r"values must lie within bounds.*1\.2"):
            mean_ci([0.5, 1.2], bounds=(0, 1))

    def test_format_shows_clipped_interval_as_range(self):
        r = mean_ci([0.999, 1.0, 1.0], bounds=PROPORTION)
        assert format_mean_ci(r, 4) == f"0.9997 [{r.low:.4f}, 1.0000]"
        assert format_mean_ci(mean_ci([0.91, 0.93, 0.92], bounds=PROPORTION), 3) == (
            f"0.920 ± {mean_ci([0.91, 0.93, 0.92]).half_width:.3f}")
