"""Statistics for every claim a method makes, on scipy.stats.

Conventions (README "Claims"): the unit of replication is the training seed; episodes, states or
molecules evaluated under one seed are averaged into that seed's value first (`unit_means`). Two
methods evaluated on the same units (same seeds and the same evaluation episodes) are compared paired
(`paired`), otherwise unpaired (`welch`). Each comparison returns one claim row: the effect, a
two-sided confidence interval, n, the test, its p-value and whether the claim holds (the one-sided test
at `alpha` AND the interval excluding the null on the claimed side). With n < 2 there is no interval and
the claim is "not shown".
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

CLAIMS_SCHEMA = pa.schema([
    ("method", pa.string()), ("claim", pa.string()), ("metric", pa.string()),
    ("effect", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("confidence", pa.float64()), ("n", pa.int64()), ("unit", pa.string()), ("test", pa.string()),
    ("p_value", pa.float64()), ("holds", pa.bool_()), ("detail", pa.string()),
])


def claim(method: str, claim: str, metric: str, effect: float, ci: tuple[float, float], n: int,
          unit: str, test: str, p_value: float, holds: bool, confidence: float = 0.95,
          detail: str = "") -> dict[str, Any]:
    """One row of CLAIMS_SCHEMA."""
    return {"method": method, "claim": claim, "metric": metric, "effect": float(effect),
            "ci_low": float(ci[0]), "ci_high": float(ci[1]), "confidence": float(confidence),
            "n": int(n), "unit": unit, "test": test, "p_value": float(p_value), "holds": bool(holds),
            "detail": detail}


def claims_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = list(rows)
    return pa.Table.from_pylist(rows, schema=CLAIMS_SCHEMA) if rows else CLAIMS_SCHEMA.empty_table()


def unit_means(values: Mapping[Any, Sequence[float]]) -> dict[Any, float]:
    """{unit: mean of its evaluation values} (e.g. seed -> mean return over its episodes)."""
    return {u: float(np.mean(v)) for u, v in values.items()}


def _t_interval(diffs: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats

    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean, se = float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(n))
    if se == 0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return mean - half, mean + half


def _holds(effect: float, ci: tuple[float, float], p: float, alternative: str, alpha: float,
           null: float) -> bool:
    if not np.isfinite(p) or p >= alpha:
        return False
    if alternative == "greater":
        return effect > null and ci[0] > null
    if alternative == "less":
        return effect < null and ci[1] < null
    return not (ci[0] <= null <= ci[1])


def paired(a: Sequence[float], b: Sequence[float], *, method: str, claim_text: str, metric: str,
           unit: str = "seed", alternative: str = "greater", null: float = 0.0,
           confidence: float = 0.95, alpha: float = 0.05, detail: str = "",
           test_name: str = "paired t") -> dict[str, Any]:
    """Claim that a - b is `alternative` than `null`, with a[i] and b[i] measured on the same unit i.
    Effect: mean difference; interval: Student t on the differences; test: one-sided paired t-test."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired claim '{claim_text}': {len(a)} vs {len(b)} values; pair them per {unit}")
    diffs = a - b - null
    n = len(diffs)
    effect = float(a.mean() - b.mean()) if n else math.nan
    ci = tuple(x + null for x in _t_interval(diffs, confidence))
    if n < 2:
        p = math.nan
    elif np.all(diffs == diffs[0]):
        p = 0.0 if _side(diffs[0], alternative) else 1.0
    else:
        p = float(stats.ttest_1samp(diffs, 0.0, alternative=alternative).pvalue)
    holds = _holds(effect, ci, p, alternative, alpha, null)
    return claim(method, claim_text, metric, effect, ci, n, unit, f"{test_name} (one-sided)"
                 if alternative != "two-sided" else test_name, p, holds, confidence,
                 detail or ("not shown: fewer than 2 units" if n < 2 else ""))


def _side(x: float, alternative: str) -> bool:
    return x > 0 if alternative == "greater" else x < 0 if alternative == "less" else x != 0


def welch(a: Sequence[float], b: Sequence[float], *, method: str, claim_text: str, metric: str,
          unit: str = "seed", alternative: str = "greater", null: float = 0.0,
          confidence: float = 0.95, alpha: float = 0.05, detail: str = "") -> dict[str, Any]:
    """Claim that mean(a) - mean(b) is `alternative` than `null` for independent samples.
    Interval: Welch-Satterthwaite t; test: one-sided Welch t-test."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    n = min(len(a), len(b))
    effect = float(a.mean() - b.mean()) if n else math.nan
    if n < 2:
        return claim(method, claim_text, metric, effect, (math.nan, math.nan), n, unit, "Welch t", math.nan,
                     False, confidence, detail or "not shown: fewer than 2 units per group")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        ci, p = (effect, effect), (0.0 if _side(effect - null, alternative) else 1.0)
    else:
        dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
        ci = (effect - half, effect + half)
        p = float(stats.ttest_ind(a - null, b, equal_var=False, alternative=alternative).pvalue)
    return claim(method, claim_text, metric, effect, ci, n, unit, "Welch t (one-sided)"
                 if alternative != "two-sided" else "Welch t", p,
                 _holds(effect, ci, p, alternative, alpha, null), confidence, detail)


def one_sample(x: Sequence[float], *, method: str, claim_text: str, metric: str, null: float,
               unit: str = "seed", alternative: str = "greater", confidence: float = 0.95,
               alpha: float = 0.05, detail: str = "") -> dict[str, Any]:
    """Claim that mean(x) is `alternative` than a fixed `null` (e.g. a ratio above 1)."""
    x = np.asarray(x, float)
    return paired(x, np.zeros_like(x), method=method, claim_text=claim_text, metric=metric, unit=unit,
                  alternative=alternative, null=null, confidence=confidence, alpha=alpha, detail=detail,
                  test_name="one-sample t")


def proportion(successes: int, n: int, *, method: str, claim_text: str, metric: str, null: float,
               unit: str, alternative: str = "greater", confidence: float = 0.95, alpha: float = 0.05,
               detail: str = "") -> dict[str, Any]:
    """Claim that a success rate exceeds (or falls below) `null`: exact binomial test, Wilson interval."""
    from scipy import stats

    if n == 0:
        return claim(method, claim_text, metric, math.nan, (math.nan, math.nan), 0, unit, "binomial",
                     math.nan, False, confidence, detail or "not shown: no trials")
    res = stats.binomtest(successes, n, null, alternative=alternative)
    # the interval is two-sided whatever the test's side (proportion_ci follows the test's alternative)
    ci = stats.binomtest(successes, n, null).proportion_ci(confidence_level=confidence, method="wilson")
    rate = successes / n
    return claim(method, claim_text, metric, rate, (ci.low, ci.high), n, unit, "exact binomial",
                 res.pvalue, _holds(rate, (ci.low, ci.high), res.pvalue, alternative, alpha, null),
                 confidence, detail)
