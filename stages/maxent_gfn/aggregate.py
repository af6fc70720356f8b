"""One row per (grid, objective, seed), the checks of the method note, and a two-panel plot:
exact L1 over training per objective, and trajectory entropy against its maximum.

Grid, objective and seed are the wildcards recorded in each terminal_distribution.parquet's provenance (input
`distributions`); the metrics.json and train_curve.csv of a run (no provenance) are the ones in its folder.
Checks (per grid, every seed): max-ent GSQL reaches L1 < l1_max, |V(s0) - log Z| < logz_error_max, trajectory
entropy within entropy_gap_max of the maximum and all modes; naive SQL stays far off (L1 > 10 l1_max);
TB with a uniform P_B matches the marginal (L1 < l1_max) with a lower entropy than max-ent GSQL.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa

from stages.common.artifacts import read_provenance
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
    ("n_modes", pa.int32()),
    ("mode_mass", pa.float64()),            # P_T(modes); the target's is R(modes)/Z
])


def checks(rows: list[dict], thresholds: dict) -> dict:
    def of(objective):
        return [r for r in rows if r["objective"] == objective]

    out = {}
    maxent = of("gsql_maxent_pb")
    if maxent:
        out["gsql_maxent_l1"] = all(r["l1"] < thresholds["l1_max"] for r in maxent)
        out["gsql_maxent_logz"] = all(r["logz_error"] < thresholds["logz_error_max"] for r in maxent)
        out["gsql_maxent_entropy"] = all(r["max_trajectory_entropy"] - r["trajectory_entropy"]
                                         < thresholds["entropy_gap_max"] for r in maxent)
        out["gsql_maxent_all_modes"] = all(r["modes_found"] == r["n_modes"] for r in maxent)
    if of("naive_sql"):
        out["naive_sql_fails"] = all(r["l1"] > 10 * thresholds["l1_max"] for r in of("naive_sql"))
    if of("tb") and maxent:
        out["tb_matches_marginal"] = all(r["l1"] < thresholds["l1_max"] for r in of("tb"))
        out["tb_lower_entropy"] = (max(r["trajectory_entropy"] for r in of("tb"))
                                   < min(r["trajectory_entropy"] for r in maxent) - thresholds["entropy_gap_max"])
    return out


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
        rows.append({"grid": grid, "objective": objective, "seed": int(w["seed"]),
                     **{f.name: m[f.name] for f in SUMMARY_SCHEMA if f.name in m}})
        curve = np.genfromtxt(curve_of[dist_path.parent], delimiter=",", names=True)
        curves[(grid, objective)].append((curve["step"], curve["l1"]))
    rows.sort(key=lambda r: (r["grid"], r["objective"], r["seed"]))
    ctx.write_table("table", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA)

    summary = {}
    for grid in sorted({r["grid"] for r in rows}):
        mine = [r for r in rows if r["grid"] == grid]
        per_objective = {}
        for objective in sorted({r["objective"] for r in mine}):
            sel = [r for r in mine if r["objective"] == objective]
            per_objective[objective] = {
                k: float(np.mean([r[k] for r in sel]))
                for k in ("l1", "logz_error", "trajectory_entropy", "modes_found", "mode_mass")}
            per_objective[objective]["n_seeds"] = len(sel)
        verdicts = checks(mine, ctx.params["aggregate"])
        summary[grid] = {"max_trajectory_entropy": mine[0]["max_trajectory_entropy"],
                         "n_modes": mine[0]["n_modes"], "objectives": per_objective,
                         "checks": verdicts, "all_checks_pass": all(verdicts.values())}
        log.info("%s: checks %s", grid, verdicts)
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
        right = [summary[grid]["objectives"][o]["l1"] < ctx.params["aggregate"]["l1_max"] for o in objectives]
        ax_h.barh(objectives, ent, color=["tab:blue" if ok else "tab:gray" for ok in right])
        for y, (h, ok) in enumerate(zip(ent, right)):
            ax_h.text(h, y, f" {h:.3f}" + ("" if ok else " (wrong marginal)"), va="center", fontsize=7)
        ax_h.axvline(summary[grid]["max_trajectory_entropy"], color="k", ls="--", label="maximum")
        ax_h.set(xlabel="trajectory entropy (nats)", title=f"{grid}: trajectory entropy")
        ax_h.set_xlim(0.8 * min(ent), 1.25 * max(ent))
        ax_h.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=110)
