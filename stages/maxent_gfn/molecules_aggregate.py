"""One row per (objective, seed) of the fragment-molecule runs, a check, and a plot: correlation of the
policy's exact log P(x) with beta log r(x) on the shared test set, and the reward of its samples.
Check: max-ent GSQL correlates better than naive soft Q-learning (which samples ~ n(x) R(x)).
The objective and seed are the wildcards recorded in each run's samples.parquet (input `samples`); its
metrics.json (no provenance) is the one beside it."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.common.artifacts import read_provenance
from stages.common.stage import StageContext

COLUMNS = ("pearson_logp_logr", "spearman_logp_logr", "v_s0", "mean_reward", "top10_unique_mean_reward",
           "modes", "unique_fraction", "mean_blocks", "molecules_scored")
SCHEMA = pa.schema([("objective", pa.string()), ("backward", pa.string()), ("seed", pa.int32())]
                   + [(c, pa.int64() if c in ("modes", "molecules_scored") else pa.float64()) for c in COLUMNS])


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    for path in ctx.input_list("samples"):
        w = read_provenance(path)["wildcards"]
        m = json.loads(metrics_of[path.parent].read_text())
        rows.append({"objective": w["mol_objective"], "backward": m["objective"]["backward"],
                     "seed": int(w["seed"]), **{c: m[c] for c in COLUMNS}})
    rows.sort(key=lambda r: (r["objective"], r["seed"]))
    ctx.write_table("table", pa.Table.from_pylist(rows, SCHEMA), SCHEMA)

    def mean(objective, key):
        vals = [r[key] for r in rows if r["objective"] == objective]
        return float(np.mean(vals)) if vals else None

    objectives = sorted({r["objective"] for r in rows})
    summary = {o: {c: mean(o, c) for c in COLUMNS} for o in objectives}
    maxent, naive = summary.get("gsql_maxent_pb"), summary.get("naive_sql")
    checks = {}
    if maxent and naive:
        checks["gsql_maxent_correlates_better_than_naive"] = \
            maxent["pearson_logp_logr"] > naive["pearson_logp_logr"]
    ctx.write_json("metrics", {"objectives": summary, "checks": checks})

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "pearson_logp_logr", "corr(log P(x), beta log r(x)), test set"),
                           (axes[1], "top10_unique_mean_reward", "top-10 sEH reward of samples")):
        ax.bar(objectives, [summary[o][key] for o in objectives], color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
