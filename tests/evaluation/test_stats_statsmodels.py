"""The statistics of the report against statsmodels on the same inputs (scipy cross-checks live in
test_stats.py)."""
import numpy as np
import pytest

from safe.evaluation.stats import mcnemar, mean_ci

contingency = pytest.importorskip("statsmodels.stats.contingency_tables")
weightstats = pytest.importorskip("statsmodels.stats.weightstats")


def _pairs(both, a_only, b_only, neither):
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return np.array(a, bool), np.array(b, bool)


@pytest.mark.parametrize("counts", [(50, 3, 9, 20), (400, 30, 12, 58), (10, 0, 7, 2), (80, 40, 33, 5)])
@pytest.mark.parametrize("exact,correction", [(True, True), (False, True), (False, False)])
def test_mcnemar_matches_statsmodels(counts, exact, correction):
    a, b = _pairs(*counts)
    ours = mcnemar(a, b, exact=exact, correction=correction)
    table = [[counts[0], counts[1]], [counts[2], counts[3]]]
    ref = contingency.mcnemar(table, exact=exact, correction=correction)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)


@pytest.mark.parametrize("values", [[0.91, 0.93, 0.92], [0.5, 0.7, 0.55, 0.61, 0.66], [1.0, 2.0]])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_matches_statsmodels_tconfint(values, confidence):
    ours = mean_ci(values, confidence)
    low, high = weightstats.DescrStatsW(np.asarray(values)).tconfint_mean(alpha=1 - confidence)
    assert (ours.low, ours.high) == pytest.approx((low, high), rel=1e-12)
