"""One row per (objective, seed) of the fragment-molecule runs, the claims, and a plot: the correlation of
the policy's exact log P(x) with beta log r(x) on the shared test set over training, and the trajectory
entropy and path KL of the final samplers.

Claims (output `claims`, stages.common.stats; the training seed is the unit, objectives compared paired by
seed, every run evaluated on the same test molecules):
  * corr(log P, log R): each GSQL variant beats naive soft Q-learning (which samples ~ n(x) R(x)), and
    max-ent P_B beats uniform P_B;
  * trajectory entropy H(tau) of the final sampler: max-ent P_B above uniform P_B (what max-ent is for);
  * path KL E_x KL(P(tau | x) || uniform over x's construction orders): max-ent P_B below uniform P_B.
metrics.json's `checks` are their verdicts. The objective and seed are the wildcards recorded in each
run's samples.parquet (input `samples`); its metrics.json and train_curve.csv (no provenance) are the
ones beside it."""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import read_provenance
from stages.common.stage import StageContext

ENTROPIES = ("trajectory_entropy", "terminal_entropy", "conditional_entropy", "mean_log_paths", "path_kl")
INT_COLUMNS = ("iterations", "modes", "modes_visited", "molecules_scored")
COLUMNS = ("pearson_logp_logr", "spearman_logp_logr", "best_pearson", "iterations", "stopped_by", "v_s0",
           "mean_reward", "top10_unique_mean_reward", "modes", "modes_visited", "unique_fraction",
           "mean_blocks", "molecules_scored", *(f"{e}{s}" for e in ENTROPIES for s in ("", "_se")),
           "uniform_pb_path_kl")
SCHEMA = pa.schema([("objective", pa.string()), ("backward", pa.string()), ("seed", pa.int32())]
                   + [(c, pa.int64() if c in INT_COLUMNS else pa.string() if c == "stopped_by" else pa.float64())
                      for c in COLUMNS])
METHOD = "maxent_gfn"
# (key, better, worse, direction, what): claims paired by seed between backward policies
COMPARISONS = (
    ("pearson_logp_logr", "maxent", "none", "greater", "tracks R better"),
    ("pearson_logp_logr", "uniform", "none", "greater", "tracks R better"),
    ("pearson_logp_logr", "maxent", "uniform", "greater", "tracks R better"),
    ("trajectory_entropy", "maxent", "uniform", "greater", "samples trajectories with a higher entropy"),
    ("path_kl", "maxent", "uniform", "less", "builds each molecule in orders closer to uniform (lower path KL)"),
)
METRIC = {"pearson_logp_logr": "Pearson corr(log P(x), log R(x)) on the test molecules",
          "trajectory_entropy": "trajectory entropy H(tau) of the final sampler, nats",
          "path_kl": "E_x KL(P(tau|x) || uniform over construction orders) of the final sampler, nats"}
NAME = {"pearson_logp_logr": "correlates_better_than", "trajectory_entropy": "higher_entropy_than",
        "path_kl": "lower_path_kl_than"}


def claim_rows(rows: list[dict]) -> dict[str, dict]:
    """{check name: claim row}, paired by seed."""
    by = {}                                       # backward -> (objective, {seed: row})
    for r in rows:
        by.setdefault(r["backward"], (r["objective"], {}))[1][r["seed"]] = r
    out = {}
    for key, better, worse, direction, what in COMPARISONS:
        if better in by and worse in by:
            (a_name, a), (b_name, b) = by[better], by[worse]
            seeds = sorted(set(a) & set(b))
            out[f"{a_name}_{NAME[key]}_{b_name}"] = stats.paired(
                [a[s][key] for s in seeds], [b[s][key] for s in seeds], method=METHOD, alternative=direction,
                metric=f"{METRIC[key]}, {a_name} minus {b_name}",
                claim_text=f"fragment molecules: {a_name} ({better} P_B) {what} than {b_name} ({worse} P_B)")
    return out


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves = [], defaultdict(list)          # curves[objective] -> [(steps, pearson)] per seed
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    curve_of = {p.parent: p for p in ctx.input_list("curves")}
    for path in ctx.input_list("samples"):
        w = read_provenance(path)["wildcards"]
        m = json.loads(metrics_of[path.parent].read_text())
        rows.append({"objective": w["mol_objective"], "backward": m["objective"]["backward"],
                     "seed": int(w["seed"]), **{c: m[c] for c in COLUMNS}})
        if path.parent in curve_of:
            c = np.genfromtxt(curve_of[path.parent], delimiter=",", names=True)
            curves[w["mol_objective"]].append((np.atleast_1d(c["step"]), np.atleast_1d(c["pearson_logp_logr"])))
    rows.sort(key=lambda r: (r["objective"], r["seed"]))
    ctx.write_table("table", pa.Table.from_pylist(rows, SCHEMA), SCHEMA)

    objectives = sorted({r["objective"] for r in rows})
    summary = {}
    for o in objectives:
        sel = [r for r in rows if r["objective"] == o]
        summary[o] = {c: float(np.mean([r[c] for r in sel])) for c in COLUMNS if c != "stopped_by"}
        summary[o]["stopped_by"] = sorted(r["stopped_by"] for r in sel)
        summary[o]["n_seeds"] = len(sel)
    claims = claim_rows(rows)
    ctx.write_claims("claims", list(claims.values()))
    checks = {name: c["holds"] for name, c in claims.items()}
    ctx.write_json("metrics", {"objectives": summary, "checks": checks,
                               "n_seeds": min((c["n"] for c in claims.values()), default=0)})

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = dict(zip(objectives, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for o in objectives:
        for i, (steps, pearson) in enumerate(curves[o]):
            axes[0].plot(steps, pearson, color=colors[o], alpha=0.8, label=o if i == 0 else None)
    axes[0].set(xlabel="iteration", ylabel="corr(log P(x), beta log r(x))", title="test set, per seed")
    axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "trajectory_entropy", "trajectory entropy H(tau)"),
                           (axes[2], "path_kl", "path KL: E_x KL(P(tau|x) || uniform orders)")):
        for x, o in enumerate(objectives):
            sel = [r for r in rows if r["objective"] == o]
            ax.errorbar([x + 0.08 * (i - 1) for i in range(len(sel))], [r[key] for r in sel],
                        yerr=[1.96 * r[f"{key}_se"] for r in sel], fmt="o", color=colors[o])
        ax.set_xticks(range(len(objectives)), objectives, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("nats (per seed; bars: 95% over the samples)", fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
