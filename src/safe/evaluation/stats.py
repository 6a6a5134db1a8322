"""Statistics for the evaluation protocol (docs/design.md, the proposal's targets).

* McNemar's test on paired per-question correctness (QA retention and gains), with the odds ratio
  of the discordant pairs and a confidence interval for the paired difference in accuracy.
* Percentile bootstrap confidence intervals (generation metrics such as CIDEr), one-sample and
  paired.
* Cohen's d (independent samples, pooled SD) and d_z (paired).
* Mean +- Student-t confidence interval over seeds ("5 random seeds, report mean +- 95% CI"),
  kept inside the range of a bounded quantity (a proportion's in [0, 1]), and a formatter for tables.

The statistical tests and intervals come from kept libraries: McNemar from statsmodels
(``statsmodels.stats.contingency_tables.mcnemar``), the bootstrap from ``scipy.stats.bootstrap``,
the t interval from ``scipy.stats.t.interval``. This module adds what they leave to the caller:
input checks (``ValueError`` naming the offending argument), the choice between exact and
asymptotic McNemar, the effect sizes and the interval on the accuracy difference, and a fixed
result type for the report.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as _st
from statsmodels.stats.contingency_tables import mcnemar as _statsmodels_mcnemar

__all__ = ["McNemarResult", "mcnemar", "BootstrapCI", "bootstrap_ci", "paired_bootstrap_ci", "cohens_d",
           "MeanCI", "mean_ci", "PROPORTION", "format_mean_ci"]

# Below this many discordant pairs the chi-square approximation is poor and McNemar's test is
# computed exactly (the usual rule of thumb, e.g. the Wikipedia article and MedCalc's manual).
EXACT_THRESHOLD = 25

# Upper bound on the number of elements of one block of bootstrap indices, so that a large
# evaluation set (n ~ 1e5) with 1e4 resamples does not allocate a 1e9-element matrix.
_BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return c


def _as_1d_float(x: Any, name: str, *, min_len: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} value(s), got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_bool(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of booleans, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: McNemar's test needs at least one paired outcome")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be boolean-like (bool or 0/1), got dtype {arr.dtype}")
    # 0/1 ints or floats are accepted; anything else (0.5, 2, NaN) is a caller bug, not a vote.
    ok = (arr == 0) | (arr == 1)
    if not np.all(ok):
        bad = arr[~ok][:3].tolist()
        raise ValueError(f"{name} must contain only booleans or 0/1, found e.g. {bad}")
    return arr.astype(bool)


# --------------------------------------------------------------------------------------------
# McNemar
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McNemarResult:
    """Result of :func:`mcnemar`.

    Attributes:
        b: pairs where system A is right and system B is wrong.
        c: pairs where system A is wrong and system B is right.
        n: number of pairs (questions).
        statistic: the chi-square statistic for the asymptotic test, or ``min(b, c)`` (the
            binomial count) for the exact test; 0.0 when ``b + c == 0``.
        pvalue: two-sided p-value for H0 "A and B have the same accuracy" (marginal homogeneity).
        method: ``"exact"`` (binomial), ``"chi2-cc"`` (chi-square with continuity correction) or
            ``"chi2"`` (without correction).
        odds_ratio: ``b / c``, the conditional odds that A is the one that is right when the two
            disagree; 0.5 is added to both counts (Haldane) when either is zero, so it is always
            finite and equals 1.0 when there are no discordant pairs.
        acc_a, acc_b: accuracies of A and B.
        acc_diff: ``acc_a - acc_b`` (= ``(b - c) / n``); positive means A is better, the same
            direction as ``odds_ratio > 1``.
        ci_low, ci_high: confidence interval for ``acc_diff`` (Bonett-Price adjusted Wald).
        confidence: level of that interval.
    """

    b: int
    c: int
    n: int
    statistic: float
    pvalue: float
    method: str
    odds_ratio: float
    acc_a: float
    acc_b: float
    acc_diff: float
    ci_low: float
    ci_high: float
    confidence: float

    def significant(self, alpha: float = 0.05) -> bool:
        """True when ``pvalue < alpha``."""
        return bool(self.pvalue < alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields (for the report)."""
        return asdict(self)


def _paired_diff_ci(b: int, c: int, n: int, confidence: float) -> tuple[float, float]:
    """Bonett-Price adjusted Wald interval for p_A - p_B from paired binary data.

    With ``p12 = (b + 1) / (n + 2)`` and ``p21 = (c + 1) / (n + 2)``::

        (p12 - p21) +- z * sqrt((p12 + p21 - (p12 - p21)**2) / (n + 2))

    Bonett, D. G. & Price, R. M. (2012), "Adjusted Wald confidence interval for a difference of
    binomial proportions based on paired data", J. Educ. Behav. Stat. 37(4), 479-488. Chosen over
    the plain Wald interval because the plain one collapses to zero width when ``b == c == 0`` --
    exactly the retention case (gate closed, identical answers) where an honest interval matters.
    Clipped to [-1, 1].
    """
    z = float(_st.norm.ppf(0.5 + confidence / 2.0))
    m = n + 2.0
    p12 = (b + 1.0) / m
    p21 = (c + 1.0) / m
    d = p12 - p21
    se = math.sqrt(max(p12 + p21 - d * d, 0.0) / m)
    return max(-1.0, d - z * se), min(1.0, d + z * se)


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray,
            exact: bool | None = None, *, correction: bool = True, confidence: float = 0.95) -> McNemarResult:
    """McNemar's test for two systems scored on the same questions.

    Only the discordant pairs carry information: ``b`` = #(A right, B wrong) and
    ``c`` = #(A wrong, B right).

    * exact test (``exact=True``, or ``exact=None`` and ``b + c < 25``): under H0 the number of
      discordant pairs won by A is Binomial(b + c, 1/2); the p-value is the two-sided binomial
      test of ``min(b, c)``, i.e. ``min(1, 2 * P(X <= min(b, c)))``.
    * asymptotic test (``exact=False``, or ``exact=None`` and ``b + c >= 25``): the statistic
      ``(|b - c| - 1)**2 / (b + c)`` (Edwards' continuity correction; ``(b - c)**2 / (b + c)``
      with ``correction=False``) is referred to chi-square with 1 degree of freedom.
    * both computed by statsmodels' ``mcnemar`` on the 2x2 table, with two cases it does not
      cover handled here: ``b + c == 0`` (the systems never disagree; statsmodels divides by
      zero) gives statistic 0.0 and p-value 1.0, and ``b == c`` with the correction gives
      statistic 0.0 and p-value 1.0 (the corrected numerator is floored at zero; statsmodels
      would report ``1 / (b + c)``, i.e. evidence of a difference from two equal counts).

    Reference: McNemar, Q. (1947), Psychometrika 12(2), 153-157; Agresti, "Categorical Data
    Analysis" (2002), section 10.1.

    Args:
        correct_a, correct_b: per-question correctness of A and B (bool or 0/1), same order.
        exact: force the exact (True) or chi-square (False) test; None chooses by ``b + c``.
        correction: continuity correction for the chi-square test (ignored when exact).
        confidence: level of the interval on the accuracy difference.

    Returns:
        :class:`McNemarResult` with the counts, statistic, p-value, odds ratio ``b / c``, both
        accuracies, ``acc_a - acc_b`` and its confidence interval.

    Raises:
        ValueError: empty inputs, different lengths, or values other than booleans / 0 / 1.
    """
    a = _as_bool(correct_a, "correct_a")
    bb = _as_bool(correct_b, "correct_b")
    if a.shape != bb.shape:
        raise ValueError(f"correct_a and correct_b must be paired: lengths {a.size} and {bb.size} differ")
    conf = _check_confidence(confidence)
    n = int(a.size)
    b = int(np.count_nonzero(a & ~bb))
    c = int(np.count_nonzero(~a & bb))
    nd = b + c
    use_exact = (nd < EXACT_THRESHOLD) if exact is None else bool(exact)

    if nd == 0 or (b == c and correction and not use_exact):
        statistic, pvalue = 0.0, 1.0
    else:
        # Only the discordant cells enter either test; the concordant ones are left at 0.
        ref = _statsmodels_mcnemar([[0, b], [c, 0]], exact=use_exact, correction=correction)
        statistic, pvalue = float(ref.statistic), float(ref.pvalue)
    method = "exact" if use_exact else ("chi2-cc" if correction else "chi2")

    # Haldane-Anscombe: add 0.5 to both cells when one is empty so the ratio stays finite.
    if b == 0 or c == 0:
        odds_ratio = (b + 0.5) / (c + 0.5)
    else:
        odds_ratio = b / c

    lo, hi = _paired_diff_ci(b, c, n, conf)
    return McNemarResult(
        b=b,
        c=c,
        n=n,
        statistic=statistic,
        pvalue=min(1.0, pvalue),
        method=method,
        odds_ratio=float(odds_ratio),
        acc_a=float(a.mean()),
        acc_b=float(bb.mean()),
        acc_diff=(b - c) / n,
        ci_low=lo,
        ci_high=hi,
        confidence=conf,
    )


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
class BootstrapCI(NamedTuple):
    """Point estimate (the statistic on the original data) and percentile interval."""

    estimate: float
    low: float
    high: float


def _is_paired(data: Any) -> bool:
    """A 2-tuple/list whose two items are themselves sequences means paired samples (a, b)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    return all(isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, str) for x in data)


def bootstrap_ci(data: Any, statistic: Callable[..., float] | None = None, *, n_resamples: int = 10_000,
                 confidence: float = 0.95, seed: int | None = 0) -> BootstrapCI:
    """Percentile bootstrap confidence interval (Efron & Tibshirani 1993, ch. 13).

    Computed by ``scipy.stats.bootstrap(method="percentile")``: ``n_resamples`` samples of size n
    drawn with replacement, the statistic on each, and the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of that distribution (linear interpolation). The
    percentile method (not BCa) is kept so that the report's intervals are the ones it printed
    before scipy computed them.

    Two forms:

    * ``bootstrap_ci(values)``: one sample; ``statistic(resample_1d) -> float``, default the mean.
    * ``bootstrap_ci((a, b))``: paired samples of equal length (e.g. per-caption CIDEr of two
      systems on the same clips); rows are resampled jointly (scipy's ``paired=True``),
      ``statistic(a_res, b_res) -> float``, default ``mean(a) - mean(b)``. The pairing is what
      makes the interval narrow when the two systems are correlated. The default is computed as
      the one-sample bootstrap of ``a - b``, which draws the same rows.

    For corpus-level metrics (BLEU) pass indices, ``bootstrap_ci(np.arange(n), lambda idx:
    bleu([preds[i] for i in idx], [refs[i] for i in idx]))``.

    The default statistics are vectorised; a custom callable is called once per resample. The
    resamples are drawn in blocks of at most ~4e6 indices (scipy's ``batch``) so a large set does
    not allocate ``n_resamples * n`` at once. The result is deterministic for a given ``seed`` (a
    ``numpy.random.default_rng`` seed, passed to scipy as ``rng``); with ``seed=None`` it is not.

    Returns:
        ``BootstrapCI(estimate, low, high)``; ``estimate`` is the statistic on the original data.
        A single observation gives the degenerate interval ``(x, x)`` (scipy needs two).

    Raises:
        ValueError: empty data, NaN/inf, paired arrays of different lengths, ``n_resamples < 1``,
            ``confidence`` outside (0, 1), or a statistic that returns NaN/inf on a resample.
    """
    conf = _check_confidence(confidence)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    n_resamples = int(n_resamples)

    paired = False
    if _is_paired(data):
        a = _as_1d_float(data[0], "a")
        b = _as_1d_float(data[1], "b")
        if a.size != b.size:
            raise ValueError(f"paired samples must have equal lengths, got {a.size} and {b.size}")
        if statistic is None:
            samples, stat, vectorized = (a - b,), np.mean, True
        else:
            samples, stat, vectorized, paired = (a, b), statistic, False, True
    else:
        x = _as_1d_float(data, "values")
        samples, stat, vectorized = (x,), (np.mean if statistic is None else statistic), statistic is None

    estimate = float(stat(*samples))
    n = samples[0].size
    if n == 1:
        return BootstrapCI(estimate, estimate, estimate)
    res = _st.bootstrap(samples, stat, n_resamples=n_resamples, batch=_block_rows(n),
                        vectorized=vectorized, paired=paired, confidence_level=conf,
                        method="percentile", rng=np.random.default_rng(seed))
    if not np.all(np.isfinite(res.bootstrap_distribution)):
        raise ValueError("the statistic returned NaN or inf on some bootstrap resample")
    return BootstrapCI(estimate, float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        statistic: Callable[[np.ndarray, np.ndarray], float] | None = None, *,
                        n_resamples: int = 10_000, confidence: float = 0.95, seed: int | None = 0) -> BootstrapCI:
    """Paired percentile bootstrap; same as ``bootstrap_ci((a, b), ...)``.

    Default statistic ``mean(a) - mean(b)``: the interval for the difference of mean scores of
    two systems evaluated on the same items.
    """
    return bootstrap_ci((a, b), statistic, n_resamples=n_resamples, confidence=confidence, seed=seed)


def _block_rows(n: int) -> int:
    """Resamples per block, so that one block holds at most _BOOTSTRAP_BLOCK_ELEMENTS indices."""
    return max(1, _BOOTSTRAP_BLOCK_ELEMENTS // max(n, 1))


# --------------------------------------------------------------------------------------------
# effect size
# --------------------------------------------------------------------------------------------
def cohens_d(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, paired: bool = False) -> float:
    """Cohen's d for ``a`` versus ``b`` (positive when ``mean(a) > mean(b)``).

    * independent samples (Cohen 1988, eq. 2.5.2)::

          d = (mean(a) - mean(b)) / s_p,
          s_p = sqrt(((n_a - 1) s_a**2 + (n_b - 1) s_b**2) / (n_a + n_b - 2))

      with ``s`` the sample SD (ddof=1). Equals ``t * sqrt(1/n_a + 1/n_b)`` for Student's t.
    * paired (``paired=True``), Cohen's d_z::

          d_z = mean(a - b) / sd(a - b)     (ddof=1)

      Equals ``t / sqrt(n)`` for the paired t statistic. Appropriate for per-seed or per-item
      paired scores.

    Returns:
        The effect size as a float. If the SD in the denominator is 0: 0.0 when the means are
        equal too (no effect), otherwise ``+inf`` / ``-inf``.

    Raises:
        ValueError: NaN/inf, fewer than 2 pairs (paired), unequal lengths (paired), or
            ``n_a + n_b < 3`` (independent; the pooled SD needs one degree of freedom).
    """
    if paired:
        x = _as_1d_float(a, "a", min_len=2)
        y = _as_1d_float(b, "b", min_len=2)
        if x.size != y.size:
            raise ValueError(f"paired samples must have equal lengths, got {x.size} and {y.size}")
        d = x - y
        num = float(d.mean())
        den = float(d.std(ddof=1))
    else:
        x = _as_1d_float(a, "a")
        y = _as_1d_float(b, "b")
        na, nb = x.size, y.size
        if na + nb < 3:
            raise ValueError(f"cohens_d needs n_a + n_b >= 3 for a pooled SD, got {na} + {nb}")
        va = float(x.var(ddof=1)) if na > 1 else 0.0
        vb = float(y.var(ddof=1)) if nb > 1 else 0.0
        num = float(x.mean() - y.mean())
        den = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.copysign(math.inf, num)
    return num / den


# --------------------------------------------------------------------------------------------
# mean +- CI over seeds
# --------------------------------------------------------------------------------------------
class MeanCI(NamedTuple):
    """Mean with a two-sided Student-t interval over seeds.

    ``low = mean - half_width`` and ``high = mean + half_width``, except where :func:`mean_ci` was
    given ``bounds`` and an end was clipped to them: ``low`` / ``high`` then hold the clipped ends
    (always within the bounds) and ``half_width`` still the t half-width.
    """

    mean: float
    low: float
    high: float
    half_width: float


PROPORTION = (0.0, 1.0)
"""``bounds`` for :func:`mean_ci` of accuracies, use rates and other fractions."""


def _check_bounds(bounds: Any, x: np.ndarray) -> tuple[float, float]:
    try:
        lo, hi = (-math.inf if bounds[0] is None else float(bounds[0]),
                  math.inf if bounds[1] is None else float(bounds[1]))
        if len(bounds) != 2:
            raise TypeError
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers or None, got {bounds!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"bounds must be a pair (low, high) with low < high, got {bounds!r}")
    outside = x[(x < lo) | (x > hi)]
    if outside.size:
        raise ValueError(f"values must lie within bounds {bounds!r}, found e.g. {outside[:3].tolist()}")
    return lo, hi


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, *,
            bounds: tuple[float | None, float | None] | None = None) -> MeanCI:
    """Mean and Student-t confidence interval, for a metric measured over a few seeds.

    The interval is ``scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=s / sqrt(n))``
    with ``s`` the sample SD (ddof=1): ``mean +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)``.

    ``bounds=(low, high)`` (e.g. :data:`PROPORTION`, ``(0, 1)``, for accuracies and use rates;
    ``None`` for an open side) is the range the quantity cannot leave. The t interval is then
    clipped to it. Why clipping rather than a percentile bootstrap or a Wilson interval: the
    true mean lies inside the bounds, so intersecting the interval with them never removes it,
    and the clipped interval covers it exactly as often as the t interval does. A percentile
    bootstrap over 3-5 seeds has only 10-126 distinct resamples and is far too narrow (it cannot
    reach beyond the observed range), and Wilson's interval is for a count of successes out of n
    trials, not for a mean of a few per-seed proportions whose spread comes from training. The
    values themselves must lie within the bounds.

    Returns:
        ``MeanCI(mean, low, high, half_width)``. With a single value the interval is undefined:
        ``MeanCI(x, nan, nan, nan)``. Identical values give a zero-width interval.

    Raises:
        ValueError: empty input, NaN/inf, ``confidence`` outside (0, 1), malformed ``bounds``, or
            a value outside ``bounds``.
    """
    conf = _check_confidence(confidence)
    x = _as_1d_float(values, "values")
    lo, hi = (-math.inf, math.inf) if bounds is None else _check_bounds(bounds, x)
    m = float(x.mean())
    n = x.size
    if n == 1:
        return MeanCI(m, math.nan, math.nan, math.nan)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:  # scipy's t.interval needs scale > 0 (it answers NaN for 0)
        return MeanCI(m, m, m, 0.0)
    low, high = _st.t.interval(conf, n - 1, loc=m, scale=sem)
    return MeanCI(m, max(lo, float(low)), min(hi, float(high)), float(high) - m)


def format_mean_ci(values_or_ci: Sequence[float] | np.ndarray | MeanCI, digits: int = 3, *, scale: float = 1.0,
                   confidence: float = 0.95) -> str:
    """Format a mean and its CI half-width for a table, e.g. ``"0.912 ± 0.010"``.

    Args:
        values_or_ci: the per-seed values (passed to :func:`mean_ci`) or a :class:`MeanCI`.
        digits: decimals for both numbers.
        scale: multiply both numbers first (``scale=100`` prints percentages, "91.2 ± 1.0").
        confidence: used only when raw values are given.

    Returns:
        ``"<mean> ± <half_width>"``; ``"<mean> [<low>, <high>]"`` when ``mean_ci`` clipped the
        interval to its bounds (it is no longer symmetric); with a single value (no interval)
        ``"<mean> (n=1)"``.
    """
    ci = values_or_ci if isinstance(values_or_ci, MeanCI) else mean_ci(values_or_ci, confidence)
    if int(digits) < 0:
        raise ValueError(f"digits must be >= 0, got {digits!r}")
    mean = ci.mean * scale
    if math.isnan(ci.half_width):
        return f"{mean:.{digits}f} (n=1)"
    clipped = not (math.isclose(ci.low, ci.mean - ci.half_width, rel_tol=1e-9, abs_tol=1e-12)
                   and math.isclose(ci.high, ci.mean + ci.half_width, rel_tol=1e-9, abs_tol=1e-12))
    if clipped:
        return f"{mean:.{digits}f} [{ci.low * scale:.{digits}f}, {ci.high * scale:.{digits}f}]"
    return f"{mean:.{digits}f} ± {ci.half_width * scale:.{digits}f}"
