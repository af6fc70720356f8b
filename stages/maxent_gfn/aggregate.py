"""One row per (grid, objective, seed), the claims of the method note, and a two-panel plot:
exact L1 over training per objective, and trajectory entropy against its maximum.

Grid, objective and seed are the wildcards recorded in each terminal_distribution.parquet's provenance (input
`distributions`); the metrics.json and train_curve.csv of a run (no provenance) are the ones in its folder.
Claims (output `claims`, stages.common.stats, the training seed as unit, per grid), with the thresholds of
`maxent_gfn.aggregate` (overridden per grid by `aggregate.grids.<grid>`): every objective with a backward
policy matches R/Z (exact L1 < l1_max); max-ent GSQL's |V(s0) - log Z| < logz_error_max; the max-ent
objectives (exact or learned n(s)) reach the maximum trajectory entropy (gap < entropy_gap_max); each
uniform-P_B objective has a lower entropy than max-ent GSQL by more than entropy_gap_max (paired by seed);
naive soft Q-learning misses R/Z (L1 > miss_factor l1_max). metrics.json's `checks` are those claims'
verdicts. "Modes" are counted two ways: modes sampled at least once during training (the curve), and the
expected number of distinct modes in `mode_samples` draws from the final sampler, exactly from its P_T:
sum over modes m of 1 - (1 - P_T(m))^N.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = pa.schema([
    ("grid", pa.string()),
    ("objective", pa.string()),
    ("seed", pa.int32()),
    ("loss", pa.string()),
    ("backward", pa.string()),
    ("iterations", pa.int32()),
    ("l1", pa.float64()),                   # exact, sum over states
    ("logz_error", pa.float64()),           # |log Z estimate - log Z|
    ("trajectory_entropy", pa.float64()),
    ("max_trajectory_entropy", pa.float64()),
    ("modes_found", pa.int32()),            # modes sampled at least once during training
    ("final_sampler_modes", pa.float64()),  # expected distinct modes in mode_samples draws of the final P_T
    ("n_modes", pa.int32()),
    ("mode_mass", pa.float64()),            # P_T(modes); the target's is R(modes)/Z
])


METHOD = "maxent_gfn"
MAXENT = "gsql_maxent_pb"      # the objective the others are compared with


def claim_rows(grid: str, rows: list[dict], thresholds: dict) -> dict[str, dict]:
    """{check name: claim row} for one grid's rows (one per objective and seed)."""
    l1_max, gap_max = thresholds["l1_max"], thresholds["entropy_gap_max"]
    miss = thresholds.get("miss_factor", 10) * l1_max
    of = defaultdict(dict)                       # objective -> seed -> row
    for r in rows:
        of[r["objective"]][r["seed"]] = r
    out = {}

    def values(objective, fn):
        return [fn(r) for _, r in sorted(of[objective].items())]

    for objective in sorted(of):
        backward = next(iter(of[objective].values()))["backward"]
        l1 = values(objective, lambda r: r["l1"])
        if backward == "none":
            out[f"{objective}_misses_target"] = stats.one_sample(
                l1, null=miss, method=METHOD, metric="exact L1 to R/Z (null: miss_factor l1_max)",
                claim_text=f"{grid}: {objective} (no backward policy) misses R/Z (L1 > {miss:g})")
            continue
        out[f"{objective}_l1"] = stats.one_sample(
            l1, null=l1_max, alternative="less", method=METHOD, metric="exact L1 to R/Z (null: l1_max)",
            claim_text=f"{grid}: {objective} ({backward} P_B) matches R/Z (exact L1 < {l1_max:g})")
        if backward in ("maxent", "learned_n"):
            out[f"{objective}_entropy"] = stats.one_sample(
                values(objective, lambda r: r["max_trajectory_entropy"] - r["trajectory_entropy"]),
                null=gap_max, alternative="less", method=METHOD,
                metric="maximum minus trajectory entropy, nats (null: entropy_gap_max)",
                claim_text=f"{grid}: {objective} reaches the maximum trajectory entropy (gap < {gap_max:g})")
        if objective == MAXENT:
            out[f"{objective}_logz"] = stats.one_sample(
                values(objective, lambda r: r["logz_error"]), null=thresholds["logz_error_max"],
                alternative="less", method=METHOD, metric="|V(s0) - log Z| (null: logz_error_max)",
                claim_text=f"{grid}: {objective} estimates log Z (error < {thresholds['logz_error_max']:g})")
        if backward == "uniform" and MAXENT in of:
            seeds = sorted(set(of[MAXENT]) & set(of[objective]))
            out[f"{objective}_lower_entropy"] = stats.paired(
                [of[MAXENT][s]["trajectory_entropy"] for s in seeds],
                [of[objective][s]["trajectory_entropy"] for s in seeds], null=gap_max, method=METHOD,
                metric=f"trajectory entropy, {MAXENT} minus {objective} (null: entropy_gap_max)",
                claim_text=f"{grid}: {objective} (uniform P_B) has a lower trajectory entropy than {MAXENT}")
    return out


def thresholds_for(aggregate: dict, grid: str) -> dict:
    """The aggregate thresholds with the grid's overrides (`aggregate.grids.<grid>`) applied."""
    return {**{k: v for k, v in aggregate.items() if k != "grids"}, **aggregate.get("grids", {}).get(grid, {})}


def expected_distinct(p: np.ndarray, n: int) -> float:
    """Expected number of distinct items among n independent draws: sum_i 1 - (1 - p_i)^n."""
    with np.errstate(divide="ignore"):                  # p = 1: log1p(-1) = -inf, the item is certain
        return float(np.sum(-np.expm1(n * np.log1p(-np.clip(p, 0.0, 1.0)))))


def none_if_nan(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves = [], defaultdict(list)       # curves[(grid, objective)] -> [(steps, l1)]
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    curve_of = {p.parent: p for p in ctx.input_list("curves")}
    for dist_path in ctx.input_list("distributions"):
        w = read_provenance(dist_path)["wildcards"]
        grid, objective = w["grid"], w["objective"]
        m = json.loads(metrics_of[dist_path.parent].read_text())
        dist = read_table(dist_path)
        p_modes = dist.filter(dist["is_mode"])["model"].to_numpy()
        rows.append({"grid": grid, "objective": objective, "seed": int(w["seed"]),
                     **{f.name: m[f.name] for f in SUMMARY_SCHEMA if f.name in m},
                     "final_sampler_modes": expected_distinct(p_modes, ctx.params["aggregate"]["mode_samples"])})
        curve = np.genfromtxt(curve_of[dist_path.parent], delimiter=",", names=True)
        curves[(grid, objective)].append((curve["step"], curve["l1"]))
    rows.sort(key=lambda r: (r["grid"], r["objective"], r["seed"]))
    ctx.write_table("table", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA)

    summary, claims = {}, []
    for grid in sorted({r["grid"] for r in rows}):
        mine = [r for r in rows if r["grid"] == grid]
        per_objective = {}
        for objective in sorted({r["objective"] for r in mine}):
            sel = [r for r in mine if r["objective"] == objective]
            per_objective[objective] = {
                k: float(np.mean([r[k] for r in sel]))
                for k in ("l1", "logz_error", "trajectory_entropy", "modes_found", "final_sampler_modes",
                          "mode_mass")}
            per_objective[objective]["n_seeds"] = len(sel)
        grid_claims = claim_rows(grid, mine, thresholds_for(ctx.params["aggregate"], grid))
        claims += grid_claims.values()
        verdicts = {name: c["holds"] for name, c in grid_claims.items()}
        summary[grid] = {"max_trajectory_entropy": mine[0]["max_trajectory_entropy"],
                         "thresholds": thresholds_for(ctx.params["aggregate"], grid),
                         "n_modes": mine[0]["n_modes"], "objectives": per_objective,
                         "checks": verdicts, "all_checks_pass": all(verdicts.values()),
                         "claim_intervals": {name: [none_if_nan(c["ci_low"]), none_if_nan(c["ci_high"])]
                                             for name, c in grid_claims.items()},
                         "n_seeds": min((c["n"] for c in grid_claims.values()), default=0)}
        log.info("%s: checks %s", grid, verdicts)
    ctx.write_claims("claims", claims)
    ctx.write_json("metrics", summary)

    grids = sorted(summary)
    fig, axes = plt.subplots(len(grids), 2, figsize=(11, 3.8 * len(grids)), squeeze=False)
    for (ax_l1, ax_h), grid in zip(axes, grids):
        objectives = sorted(summary[grid]["objectives"])
        for objective in objectives:
            runs = curves[(grid, objective)]
            ax_l1.plot(runs[0][0], np.mean([l1 for _, l1 in runs], axis=0), label=objective)
        ax_l1.set(yscale="log", xlabel="iteration", ylabel="exact L1 to R/Z", title=grid)
        ax_l1.legend(fontsize=7)
        ent = [summary[grid]["objectives"][o]["trajectory_entropy"] for o in objectives]
        # an entropy only means something for samplers of R/Z: grey out those whose marginal is off
        right = [summary[grid]["objectives"][o]["l1"] < summary[grid]["thresholds"]["l1_max"]
                 for o in objectives]
        ax_h.barh(objectives, ent, color=["tab:blue" if ok else "tab:gray" for ok in right])
        for y, (h, ok) in enumerate(zip(ent, right)):
            ax_h.text(h, y, f" {h:.3f}" + ("" if ok else " (wrong marginal)"), va="center", fontsize=7)
        ax_h.axvline(summary[grid]["max_trajectory_entropy"], color="k", ls="--", label="maximum")
        ax_h.set(xlabel="trajectory entropy (nats)", title=f"{grid}: trajectory entropy")
        ax_h.set_xlim(0.8 * min(ent), 1.25 * max(ent))
        ax_h.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=110)
