"""Collect every evaluation into the accuracy vs neurons-removed tradeoff over the lambda_max sweep:
one table (mean over seeds per variant), one plot (accuracy vs fraction removed for DemP and the
magnitude baseline at the same widths, dense as a line; live fraction over DemP training; training
steps/s per pruning period), and the claims, each a row of output `claims` (stages.common.stats; the
training seed is the unit, variants of one seed are compared paired on the same test set).

lambda_max is chosen on the validation split, never on test (`choose`): per (dataset, model), the sweep
point removing the most units among those whose mean validation accuracy is within `acc_tolerance` of
dense's mean validation accuracy (none qualifies: the most accurate on validation). Its claim texts say
"val-chosen"; all numbers in the claims are test accuracies. Per (dataset, model, lambda_max):
  DemP stays within `acc_tolerance` of dense accuracy      (non-inferiority: paired t against -tol)
  DemP is more accurate than magnitude pruning at the same widths (the magnitude run of a seed is cut
                                                           to the widths of DemP's run of that seed, and
                                                           `check_widths` refuses to compare otherwise)
  DemP's pruned network is faster than dense               (pruned / dense latency below 1)
  DemP's training speeds up as units die                   (steps/s in the last pruning period over the
                                                           first, divided by the same ratio of the dense
                                                           run of that seed, above 1: the dense run's
                                                           ratio takes out warm-up and machine load)
metrics.json per (dataset, model): the sweep's means, each point's claim verdicts and the choice
(`chosen`: lambda_max, its validation and test accuracies, why it was chosen).
The latency and steps/s columns make the table, the metrics and the plot's speed panels vary between
re-runs (wall clock, see evaluate.py); everything else is deterministic.
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
    ("chosen", pa.bool_()),              # the lambda_max chosen on validation (DemP and its magnitude twin)
    ("n_seeds", pa.int32()),
    ("val_acc", pa.float64()),           # mean over seeds, validation split (the choice reads this)
    ("test_acc", pa.float64()),          # mean over seeds, test split (reported only)
    ("test_acc_std", pa.float64()),      # std over seeds (0 with one seed)
    ("units", pa.float64()),
    ("removed_fraction", pa.float64()),
    ("params", pa.float64()),
    ("flops", pa.float64()),
    ("latency_ratio", pa.float64()),     # pruned / dense latency (NaN when not measured)
    ("steps_per_s_first", pa.float64()), # training steps/s in the first pruning period, mean over seeds
    ("steps_per_s_last", pa.float64()),  # the same in the last one (all periods: metrics.json)
])


METHOD = "demp"


class WidthMismatch(ValueError):
    """The magnitude baseline does not have DemP's widths: the comparison would not be at equal size."""


def method_of(variant: str) -> tuple[str, int | None]:
    """dense -> (dense, None); demp_l2 / magnitude_l2 -> (demp / magnitude, 2)."""
    method, _, index = variant.partition("_l")
    return method, int(index) if index else None


def nan_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def mean_lists(lists: list[list[float]]) -> list[float]:
    """Element-wise mean over the common length (seeds log the same periods)."""
    n = min((len(v) for v in lists), default=0)
    return [float(np.mean([v[i] for v in lists])) for i in range(n)]


def check_widths(rows: list[dict], allocation: str) -> None:
    """Every magnitude run must have its DemP twin's widths: layer by layer (`per_layer`), or in total
    (`global`, where one threshold reallocates them)."""
    demp = {(r["dataset"], r["model"], method_of(r["variant"])[1], r["seed"]): r for r in rows
            if r["variant"].startswith("demp")}
    for r in rows:
        if not r["variant"].startswith("magnitude"):
            continue
        twin = demp.get((r["dataset"], r["model"], method_of(r["variant"])[1], r["seed"]))
        if twin is None:
            continue
        same = list(r["widths"]) == list(twin["widths"]) if allocation == "per_layer" else \
            sum(r["widths"]) == sum(twin["widths"])
        if not same:
            raise WidthMismatch(f"{r['dataset']}/{r['model']} {r['variant']} seed {r['seed']}: magnitude widths "
                                f"{list(r['widths'])} vs DemP {list(twin['widths'])} "
                                f"(demp.magnitude.allocation: {allocation})")


def choose(rows: list[dict], sweep: dict, tol: float) -> dict[tuple[str, str], dict]:
    """{(dataset, model): the lambda_max chosen on validation} (see the module docstring); reads
    `val_acc` and `removed_fraction` only, never `test_acc`."""
    out = {}
    for key in sorted({(r["dataset"], r["model"]) for r in rows}):
        mine = [r for r in rows if (r["dataset"], r["model"]) == key]
        dense_val = float(np.mean([r["val_acc"] for r in mine if r["variant"] == "dense"]))
        points = {}
        for i in sorted({method_of(r["variant"])[1] for r in mine if r["variant"].startswith("demp")}):
            runs = [r for r in mine if r["variant"] == f"demp_l{i}"]
            points[i] = (float(np.mean([r["val_acc"] for r in runs])),
                         float(np.mean([r["removed_fraction"] for r in runs])))
        if not points:
            continue
        within = [i for i, (val, _) in points.items() if val >= dense_val - tol]
        if within:
            i = max(within, key=lambda j: (points[j][1], points[j][0]))
            why = f"most units removed with validation accuracy within {tol:g} of dense"
        else:
            i = max(points, key=lambda j: points[j][0])
            why = f"no point within {tol:g} of dense on validation: the most accurate one"
        out[key] = {"index": i, "lambda_max": sweep[key[1]]["lambda_max"][i], "val_acc": points[i][0],
                    "dense_val_acc": dense_val, "removed_fraction": points[i][1], "why": why,
                    "val_acc_by_lambda": {sweep[key[1]]["lambda_max"][j]: v for j, (v, _) in points.items()}}
    return out


def summarise(rows: list[dict], sweep: dict, chosen: dict) -> list[dict]:
    """Means over seeds per variant: the SUMMARY_SCHEMA columns, and `period_steps_per_s` (a list, which
    the CSV copy of the table cannot hold: it goes to metrics.json and the plot)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["variant"])].append(r)
    out = []
    for (dataset, model, variant), rs in groups.items():
        method, lam = method_of(variant)
        mean = {k: float(np.mean([r[k] for r in rs])) for k in
                ("val_acc", "test_acc", "units", "removed_fraction", "params", "flops", "latency_ratio")}
        pick = chosen.get((dataset, model), {}).get("index")
        out.append({"dataset": dataset, "model": model, "variant": variant, "method": method,
                    "lambda_max": math.nan if lam is None else sweep[model]["lambda_max"][lam],
                    "chosen": lam is not None and lam == pick,
                    "n_seeds": len(rs), "test_acc_std": float(np.std([r["test_acc"] for r in rs])),
                    **mean})
        speeds = out[-1]["period_steps_per_s"] = mean_lists([r["period_steps_per_s"] for r in rs])
        out[-1]["steps_per_s_first"], out[-1]["steps_per_s_last"] = (speeds[0], speeds[-1]) if speeds else \
            (math.nan, math.nan)
    order = {"dense": 0, "demp": 1, "magnitude": 2}
    return sorted(out, key=lambda r: (r["dataset"], r["model"], order[r["method"]],
                                      np.nan_to_num(r["lambda_max"], nan=-1.0)))


def per_seed(rows: list[dict], key: tuple[str, str], variant: str, field: str) -> dict[int, float]:
    return {r["seed"]: r[field] for r in rows if (r["dataset"], r["model"], r["variant"]) == (*key, variant)}


def speedup(periods: list[float]) -> float:
    """Steps/s in the last pruning period over the first (NaN with fewer than two periods)."""
    return periods[-1] / periods[0] if len(periods) >= 2 and periods[0] > 0 else math.nan


def claim_rows(rows: list[dict], sweep: dict, tol: float, chosen: dict | None = None
               ) -> dict[tuple[str, str, float], list[dict]]:
    """{(dataset, model, lambda_max): [tolerance, magnitude, latency, training speed-up claim]} from
    per-seed evaluation rows; `chosen` (from `choose`) marks the validation-chosen point's texts."""
    out = {}
    for key in sorted({(r["dataset"], r["model"]) for r in rows}):
        dataset, model = key
        dense = per_seed(rows, key, "dense", "test_acc")
        dense_speed = per_seed(rows, key, "dense", "period_steps_per_s")
        points = sorted({method_of(r["variant"])[1] for r in rows
                         if (r["dataset"], r["model"]) == key and r["variant"].startswith("demp")})
        for i in points:
            lam = sweep[model]["lambda_max"][i]
            demp = per_seed(rows, key, f"demp_l{i}", "test_acc")
            mag = per_seed(rows, key, f"magnitude_l{i}", "test_acc")
            removed = float(np.mean(list(per_seed(rows, key, f"demp_l{i}", "removed_fraction").values())))
            mark = " (val-chosen)" if (chosen or {}).get(key, {}).get("index") == i else ""
            where = f"{dataset}/{model} lambda_max {lam:g}{mark}, {removed:.0%} units removed"
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
                metric="test accuracy, DemP minus magnitude pruning (equal widths, checked)"))
            ratio = per_seed(rows, key, f"demp_l{i}", "latency_ratio")
            timed = [ratio[s] for s in sorted(ratio) if math.isfinite(ratio[s])]
            claims.append(stats.one_sample(
                timed, null=1.0, alternative="less", method=METHOD,
                claim_text=f"{where}: the pruned network's forward pass is faster than dense",
                metric="latency, pruned / dense (same input, interleaved)",
                detail="" if timed else "not shown: latency not measured (demp.evaluate.latency_repeats: 0)"))
            speed = per_seed(rows, key, f"demp_l{i}", "period_steps_per_s")
            ratios = [speedup(speed[s]) / speedup(dense_speed[s]) for s in sorted(set(speed) & set(dense_speed))]
            ratios = [r for r in ratios if math.isfinite(r)]
            claims.append(stats.one_sample(
                ratios, null=1.0, alternative="greater", method=METHOD,
                claim_text=f"{where}: DemP's training speeds up as units die (steps/s, last vs first period)",
                metric="steps/s last / first pruning period, DemP over dense of the same seed",
                detail="" if ratios else "not shown: fewer than two pruning periods"))
    return out


def verdicts(summary: list[dict], claims: dict, chosen: dict, tol: float) -> dict:
    """Per (dataset, model): the sweep's means beside each point's claim verdicts, and the choice."""
    out = {}
    for key in sorted({(r["dataset"], r["model"]) for r in summary}):
        mine = [r for r in summary if (r["dataset"], r["model"]) == key]
        dense = next(r for r in mine if r["method"] == "dense")
        demp = {r["lambda_max"]: r for r in mine if r["method"] == "demp"}
        mag = {r["lambda_max"]: r for r in mine if r["method"] == "magnitude"}
        sweep = []
        for lam in sorted(demp):
            within, beats, faster, speeds_up = claims[(*key, lam)]
            d, m = demp[lam], mag.get(lam)
            sweep.append({"lambda_max": lam, "removed_fraction": d["removed_fraction"],
                          "demp_val_acc": d["val_acc"], "demp_acc": d["test_acc"],
                          "magnitude_acc": m["test_acc"] if m else None,
                          "demp_latency_ratio": nan_none(d["latency_ratio"]),
                          "demp_period_steps_per_s": d["period_steps_per_s"],
                          "within_tolerance_of_dense": within["holds"], "beats_magnitude": beats["holds"],
                          "faster_than_dense": faster["holds"],
                          "training_speeds_up": speeds_up["holds"],
                          "training_speedup_vs_dense": nan_none(speeds_up["effect"]),
                          "accuracy_gap_to_magnitude_ci": [nan_none(beats["ci_low"]), nan_none(beats["ci_high"])],
                          "n_seeds": beats["n"]})
        pick = chosen.get(key)
        at = next((p for p in sweep if pick and p["lambda_max"] == pick["lambda_max"]), None)
        most = max(demp.values(), key=lambda r: r["removed_fraction"]) if demp else None
        out["/".join(key)] = {
            "dense_val_acc": dense["val_acc"], "dense_acc": dense["test_acc"],
            "dense_period_steps_per_s": dense["period_steps_per_s"],
            "acc_tolerance": tol,
            "chosen": None if pick is None else {
                "lambda_max": pick["lambda_max"], "why": pick["why"], "val_acc": pick["val_acc"],
                "dense_val_acc": pick["dense_val_acc"], "val_acc_by_lambda": pick["val_acc_by_lambda"],
                "removed_fraction": at["removed_fraction"], "test_acc": at["demp_acc"],
                "magnitude_test_acc": at["magnitude_acc"],
                "within_tolerance_of_dense": at["within_tolerance_of_dense"],
                "beats_magnitude": at["beats_magnitude"]},
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
    from matplotlib.ticker import MaxNLocator

    rows = [r for p in ctx.input_list("tables") for r in read_table(p, EVAL_SCHEMA).to_pylist()]
    sweep = ctx.params["sweep"]
    tol = ctx.params["aggregate"]["acc_tolerance"]
    check_widths(rows, ctx.params["magnitude"]["allocation"])
    chosen = choose(rows, sweep, tol)
    summary = summarise(rows, sweep, chosen)
    ctx.write_table("table", pa.Table.from_pylist(summary, SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    claims = claim_rows(rows, sweep, tol, chosen)
    ctx.write_claims("claims", [c for point in claims.values() for c in point])
    result = verdicts(summary, claims, chosen, tol)
    for key, v in result.items():
        c = v["chosen"]
        log.info("%s: dense %.4f; lambda_max %g chosen on validation (%s): %.0f%% removed, test %.4f, "
                 "magnitude %s; DemP beats magnitude at %d/%d", key, v["dense_acc"], c["lambda_max"], c["why"],
                 100 * c["removed_fraction"], c["test_acc"], c["magnitude_test_acc"], v["demp_wins"],
                 v["comparisons"])
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
    fig, axes = plt.subplots(3, len(keys), figsize=(4.6 * len(keys), 10), squeeze=False)
    for col, key in enumerate(keys):
        dataset, model = key.split("/")
        mine = [r for r in summary if (r["dataset"], r["model"]) == (dataset, model)]
        ax = axes[0][col]
        ax.axhline(result[key]["dense_acc"], color="k", ls=":", label="dense")
        for method, style in (("demp", "o-"), ("magnitude", "s--")):
            pts = sorted((r["removed_fraction"], r["test_acc"]) for r in mine if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), style, label=method)
        pick = next((r for r in mine if r["method"] == "demp" and r["chosen"]), None)
        if pick:
            ax.plot(pick["removed_fraction"], pick["test_acc"], "*", ms=14, color="C0", mec="k",
                    label="chosen on validation")
        ax.set(xlabel="fraction of hidden units removed", ylabel="test accuracy", title=key, xlim=(0, 1))
        ax.legend(fontsize=8)
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
        ax = axes[2][col]
        for r in mine:
            if r["method"] != "magnitude" and r["period_steps_per_s"]:
                label = "dense" if r["method"] == "dense" else f"DemP lambda_max={r['lambda_max']:g}"
                ax.plot(range(1, len(r["period_steps_per_s"]) + 1), r["period_steps_per_s"], "o-", label=label,
                        color="k" if r["method"] == "dense" else f"C{lams.index(r['lambda_max'])}")
        ax.set(xlabel="pruning period", ylabel="training steps/s (wall clock)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=100)
