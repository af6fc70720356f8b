"""Collect every evaluation into the accuracy vs neurons-removed tradeoff over the lambda_max sweep:
one table (mean over seeds per variant), one plot (accuracy vs fraction removed for DemP and the
magnitude baseline at the same widths, dense as a line; live fraction over DemP training), and the
claims per (dataset, model, lambda_max), each a row of output `claims` (stages.common.stats; the
training seed is the unit, variants of one seed are compared paired on the same test set):
  DemP stays within `acc_tolerance` of dense accuracy      (non-inferiority: paired t against -tol)
  DemP is more accurate than magnitude pruning at the same widths (the magnitude run of a seed is cut
                                                           to the widths of DemP's run of that seed)
  DemP's pruned network is faster than dense               (pruned / dense latency below 1)
metrics.json per (dataset, model): the sweep's means and each point's claim verdicts; `demp_wins` counts
the points where the magnitude claim holds, `max_removed_within_tol` is the largest fraction removed at a
point whose tolerance claim holds (0 when none does), `latency_ratio_at_max` the ratio at DemP's largest
removal (< 1: faster).
The latency columns make the table and metrics vary between re-runs (see evaluate.py); the plot does
not show them and is byte-deterministic.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.demp.evaluate import EVAL_SCHEMA, read_curve

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = pa.schema([
    ("dataset", pa.string()),
    ("model", pa.string()),
    ("variant", pa.string()),
    ("method", pa.string()),             # dense / demp / magnitude
    ("lambda_max", pa.float64()),        # DemP's lambda_max (magnitude: the DemP run it matches); NaN dense
    ("n_seeds", pa.int32()),
    ("test_acc", pa.float64()),          # mean over seeds
    ("test_acc_std", pa.float64()),      # std over seeds (0 with one seed)
    ("units", pa.float64()),
    ("removed_fraction", pa.float64()),
    ("params", pa.float64()),
    ("flops", pa.float64()),
    ("latency_ratio", pa.float64()),     # pruned / dense latency (NaN when not measured)
])


METHOD = "demp"


def method_of(variant: str) -> tuple[str, int | None]:
    """dense -> (dense, None); demp_l2 / magnitude_l2 -> (demp / magnitude, 2)."""
    method, _, index = variant.partition("_l")
    return method, int(index) if index else None


def nan_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def summarise(rows: list[dict], sweep: dict) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["variant"])].append(r)
    out = []
    for (dataset, model, variant), rs in groups.items():
        method, lam = method_of(variant)
        mean = {k: float(np.mean([r[k] for r in rs])) for k in
                ("test_acc", "units", "removed_fraction", "params", "flops", "latency_ratio")}
        out.append({"dataset": dataset, "model": model, "variant": variant, "method": method,
                    "lambda_max": math.nan if lam is None else sweep[model]["lambda_max"][lam],
                    "n_seeds": len(rs), "test_acc_std": float(np.std([r["test_acc"] for r in rs])), **mean})
    order = {"dense": 0, "demp": 1, "magnitude": 2}
    return sorted(out, key=lambda r: (r["dataset"], r["model"], order[r["method"]],
                                      np.nan_to_num(r["lambda_max"], nan=-1.0)))


def per_seed(rows: list[dict], key: tuple[str, str], variant: str, field: str) -> dict[int, float]:
    return {r["seed"]: r[field] for r in rows if (r["dataset"], r["model"], r["variant"]) == (*key, variant)}


def claim_rows(rows: list[dict], sweep: dict, tol: float) -> dict[tuple[str, str, float], list[dict]]:
    """{(dataset, model, lambda_max): [tolerance, magnitude, latency claim]} from per-seed evaluation rows."""
    out = {}
    for key in sorted({(r["dataset"], r["model"]) for r in rows}):
        dataset, model = key
        dense = per_seed(rows, key, "dense", "test_acc")
        points = sorted({method_of(r["variant"])[1] for r in rows
                         if (r["dataset"], r["model"]) == key and r["variant"].startswith("demp")})
        for i in points:
            lam = sweep[model]["lambda_max"][i]
            demp = per_seed(rows, key, f"demp_l{i}", "test_acc")
            mag = per_seed(rows, key, f"magnitude_l{i}", "test_acc")
            removed = float(np.mean(list(per_seed(rows, key, f"demp_l{i}", "removed_fraction").values())))
            where = f"{dataset}/{model}, lambda_max {lam:g} ({removed:.0%} of units removed)"
            seeds = sorted(set(demp) & set(dense))
            claims = out.setdefault((dataset, model, lam), [])
            claims.append(stats.paired(
                [demp[s] for s in seeds], [dense[s] for s in seeds], null=-tol, method=METHOD,
                claim_text=f"{where}: DemP's test accuracy is within {tol:g} of dense",
                metric="test accuracy, DemP minus dense (null: -acc_tolerance)"))
            seeds = sorted(set(demp) & set(mag))
            claims.append(stats.paired(
                [demp[s] for s in seeds], [mag[s] for s in seeds], method=METHOD,
                claim_text=f"{where}: DemP is more accurate than magnitude pruning at the same widths",
                metric="test accuracy, DemP minus magnitude pruning"))
            ratio = per_seed(rows, key, f"demp_l{i}", "latency_ratio")
            timed = [ratio[s] for s in sorted(ratio) if math.isfinite(ratio[s])]
            claims.append(stats.one_sample(
                timed, null=1.0, alternative="less", method=METHOD,
                claim_text=f"{where}: the pruned network's forward pass is faster than dense",
                metric="latency, pruned / dense (same input, interleaved)",
                detail="" if timed else "not shown: latency not measured (demp.evaluate.latency_repeats: 0)"))
    return out


def verdicts(summary: list[dict], claims: dict, tol: float) -> dict:
    """Per (dataset, model): the sweep's means beside each point's claim verdicts."""
    out = {}
    for key in sorted({(r["dataset"], r["model"]) for r in summary}):
        mine = [r for r in summary if (r["dataset"], r["model"]) == key]
        dense = next(r for r in mine if r["method"] == "dense")
        demp = {r["lambda_max"]: r for r in mine if r["method"] == "demp"}
        mag = {r["lambda_max"]: r for r in mine if r["method"] == "magnitude"}
        sweep = []
        for lam in sorted(demp):
            within, beats, faster = claims[(*key, lam)]
            d, m = demp[lam], mag.get(lam)
            sweep.append({"lambda_max": lam, "removed_fraction": d["removed_fraction"], "demp_acc": d["test_acc"],
                          "magnitude_acc": m["test_acc"] if m else None,
                          "demp_latency_ratio": nan_none(d["latency_ratio"]),
                          "within_tolerance_of_dense": within["holds"], "beats_magnitude": beats["holds"],
                          "faster_than_dense": faster["holds"],
                          "accuracy_gap_to_magnitude_ci": [nan_none(beats["ci_low"]), nan_none(beats["ci_high"])],
                          "n_seeds": beats["n"]})
        most = max(demp.values(), key=lambda r: r["removed_fraction"]) if demp else None
        out["/".join(key)] = {
            "dense_acc": dense["test_acc"],
            "max_removed_within_tol": max((p["removed_fraction"] for p in sweep if p["within_tolerance_of_dense"]),
                                          default=0.0),
            "acc_tolerance": tol,
            "sweep": sweep,
            "demp_wins": sum(p["beats_magnitude"] for p in sweep),
            "comparisons": sum(p["magnitude_acc"] is not None for p in sweep),
            "latency_ratio_at_max": nan_none(most["latency_ratio"]) if most else None,
            "removed_at_max": most["removed_fraction"] if most else None,
        }
    return out


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for p in ctx.input_list("tables") for r in read_table(p, EVAL_SCHEMA).to_pylist()]
    sweep = ctx.params["sweep"]
    summary = summarise(rows, sweep)
    ctx.write_table("table", pa.Table.from_pylist(summary, SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    tol = ctx.params["aggregate"]["acc_tolerance"]
    claims = claim_rows(rows, sweep, tol)
    ctx.write_claims("claims", [c for point in claims.values() for c in point])
    result = verdicts(summary, claims, tol)
    for key, v in result.items():
        log.info("%s: dense %.4f, max removed within tol %.3f, DemP beats magnitude at %d/%d, latency ratio %s",
                 key, v["dense_acc"], v["max_removed_within_tol"], v["demp_wins"], v["comparisons"],
                 v["latency_ratio_at_max"])
    ctx.write_json("metrics", result)

    # A curve (CSV, no provenance) belongs to the run whose eval.parquet sits beside it.
    run_of = {p.parent: read_provenance(p)["wildcards"] for p in ctx.input_list("tables")}
    curves = defaultdict(list)   # (dataset, model) -> [(lambda, steps, live fraction)] of DemP seed runs
    for path in ctx.input_list("curves"):
        w = run_of[path.parent]
        dataset, model, variant = w["dataset"], w["model"], w["variant"]
        curve = read_curve(path)
        lam = sweep[model]["lambda_max"][method_of(variant)[1]]
        curves[(dataset, model)].append((lam, [r["step"] for r in curve], [r["live_fraction"] for r in curve]))

    keys = sorted(result)
    fig, axes = plt.subplots(2, len(keys), figsize=(4.6 * len(keys), 7), squeeze=False)
    for col, key in enumerate(keys):
        dataset, model = key.split("/")
        mine = [r for r in summary if (r["dataset"], r["model"]) == (dataset, model)]
        ax = axes[0][col]
        ax.axhline(result[key]["dense_acc"], color="k", ls=":", label="dense")
        for method, style in (("demp", "o-"), ("magnitude", "s--")):
            pts = sorted((r["removed_fraction"], r["test_acc"]) for r in mine if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), style, label=method)
        ax.set(xlabel="fraction of hidden units removed", ylabel="test accuracy", title=key, xlim=(0, 1))
        ax.legend()
        ax = axes[1][col]
        lams = sorted({c[0] for c in curves[(dataset, model)]})
        labelled = set()
        for lam, steps, live in sorted(curves[(dataset, model)], key=lambda c: c[0]):
            # one colour and one legend entry per lambda; seeds share them
            ax.plot(steps, live, color=f"C{lams.index(lam)}", alpha=0.8,
                    label=None if lam in labelled else f"lambda_max={lam:g}")
            labelled.add(lam)
        ax.set(xlabel="training step", ylabel="live unit fraction (probe set)", ylim=(0, 1.02))
        ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=100)
