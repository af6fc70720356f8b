"""stages.common.stats against known answers: scipy's own intervals and tests, Wilson's formula, and the
rules for small n (no interval, "not shown") and for the claimed side."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from stages.common import stats

KW = {"method": "m", "claim_text": "c", "metric": "x"}
A = [3.1, 2.4, 4.0, 3.3, 2.9]
B = [2.0, 2.2, 3.1, 2.5, 2.8]


def test_paired_interval_and_p_match_scipy_ttest_rel():
    row = stats.paired(A, B, **KW, confidence=0.9)
    ref = sps.ttest_rel(A, B, alternative="greater")
    ci = sps.ttest_rel(A, B).confidence_interval(confidence_level=0.9)
    assert row["effect"] == pytest.approx(np.mean(A) - np.mean(B))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["p_value"] == pytest.approx(ref.pvalue)
    assert row["n"] == 5 and row["unit"] == "seed" and row["confidence"] == 0.9 and row["holds"]
    assert set(row) == set(stats.CLAIMS_SCHEMA.names)


def test_paired_with_a_null_shifts_the_test_not_the_effect():
    # "a is at most 0.5 below b" (non-inferiority): H0 a - b <= -0.5
    row = stats.paired(B, A, **KW, null=-0.5)
    diffs = np.subtract(B, A)
    assert row["effect"] == pytest.approx(diffs.mean())
    assert row["p_value"] == pytest.approx(sps.ttest_1samp(diffs, -0.5, alternative="greater").pvalue)
    ci = sps.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["holds"] is (row["p_value"] < 0.05 and ci.low > -0.5)


def test_paired_refuses_unpaired_lengths():
    with pytest.raises(ValueError, match="pair them per seed"):
        stats.paired([1.0, 2.0], [1.0], **KW)


def test_welch_interval_and_p_match_scipy():
    a, b = [5.1, 6.3, 5.8, 7.0], [4.0, 4.4, 5.9, 3.8, 4.6, 5.0]
    row = stats.welch(a, b, **KW)
    ref = sps.ttest_ind(a, b, equal_var=False, alternative="greater")
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert row["effect"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["p_value"] == pytest.approx(ref.pvalue) and row["holds"]
    assert row["n"] == 4 and row["test"] == "Welch t (one-sided)"


def test_one_sample_is_a_t_test_against_the_null_on_the_claimed_side():
    x = [0.8, 0.7, 0.9, 0.75]
    row = stats.one_sample(x, **KW, null=1.0, alternative="less")
    assert row["effect"] == pytest.approx(np.mean(x))     # the effect is the mean itself, not mean - null
    assert row["p_value"] == pytest.approx(sps.ttest_1samp(x, 1.0, alternative="less").pvalue)
    ci = sps.ttest_1samp(x, 1.0).confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["holds"] and not stats.one_sample(x, **KW, null=1.0, alternative="greater")["holds"]


def test_proportion_is_an_exact_binomial_test():
    row = stats.proportion(18, 25, **KW, null=0.5, unit="pair")
    assert row["effect"] == pytest.approx(0.72) and row["n"] == 25
    assert row["p_value"] == pytest.approx(sps.binomtest(18, 25, 0.5, alternative="greater").pvalue)
    assert row["holds"] and row["test"] == "exact binomial" and row["unit"] == "pair"
    assert not stats.proportion(14, 25, **KW, null=0.5, unit="pair")["holds"]    # p = 0.35


def test_proportion_interval_is_the_two_sided_wilson_interval():
    k, n, z = 18, 25, sps.norm.ppf(0.975)
    row = stats.proportion(k, n, **KW, null=0.5, unit="pair")
    p_hat = k / n
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((centre - half, centre + half), rel=1e-9)


@pytest.mark.parametrize("make", [
    lambda: stats.paired([1.0], [0.0], **KW),
    lambda: stats.one_sample([5.0], **KW, null=0.0),
    lambda: stats.welch([3.0], [1.0, 2.0], **KW),
    lambda: stats.proportion(0, 0, **KW, null=0.5, unit="pair"),
])
def test_fewer_than_two_units_is_not_shown_whatever_the_effect(make):
    row = make()
    assert row["holds"] is False and row["detail"].startswith("not shown")
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"]) and math.isnan(row["p_value"])


def test_a_significant_effect_on_the_wrong_side_does_not_hold():
    row = stats.paired(B, A, **KW)             # B < A everywhere: "B greater than A" is false
    assert row["effect"] < 0 and row["p_value"] > 0.95 and not row["holds"]


def test_identical_differences_give_a_degenerate_interval_and_a_decided_test():
    row = stats.paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], **KW)
    assert (row["ci_low"], row["ci_high"], row["p_value"], row["holds"]) == (1.0, 1.0, 0.0, True)


def test_claims_table_keeps_the_schema_also_when_empty():
    assert stats.claims_table([]).schema.equals(stats.CLAIMS_SCHEMA)
    table = stats.claims_table([stats.paired(A, B, **KW)])
    assert table.num_rows == 1 and table.schema.equals(stats.CLAIMS_SCHEMA)
