"""One row per (objective, seed) of the fragment-molecule runs, the claims, and a plot: correlation of the
policy's exact log P(x) with beta log r(x) on the shared test set, and the reward of its samples.
Claims (output `claims`, stages.common.stats; the training seed is the unit, objectives compared paired by
seed on the same test molecules): each GSQL variant correlates better than naive soft Q-learning (which
samples ~ n(x) R(x)); max-ent P_B correlates better than uniform P_B. metrics.json's `checks` are their
verdicts.
The objective and seed are the wildcards recorded in each run's samples.parquet (input `samples`); its
metrics.json (no provenance) is the one beside it."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import read_provenance
from stages.common.stage import StageContext

COLUMNS = ("pearson_logp_logr", "spearman_logp_logr", "v_s0", "mean_reward", "top10_unique_mean_reward",
           "modes", "unique_fraction", "mean_blocks", "molecules_scored")
SCHEMA = pa.schema([("objective", pa.string()), ("backward", pa.string()), ("seed", pa.int32())]
                   + [(c, pa.int64() if c in ("modes", "molecules_scored") else pa.float64()) for c in COLUMNS])
METHOD = "maxent_gfn"
# (better, worse) by backward policy: what the README says about the correlation with log R
COMPARISONS = (("maxent", "none"), ("uniform", "none"), ("maxent", "uniform"))


def claim_rows(rows: list[dict]) -> dict[str, dict]:
    """{check name: claim row}: the Pearson correlation of log P with log R, paired by seed."""
    by = {}                                       # backward -> (objective, {seed: pearson})
    for r in rows:
        by.setdefault(r["backward"], (r["objective"], {}))[1][r["seed"]] = r["pearson_logp_logr"]
    out = {}
    for better, worse in COMPARISONS:
        if better in by and worse in by:
            (a_name, a), (b_name, b) = by[better], by[worse]
            seeds = sorted(set(a) & set(b))
            out[f"{a_name}_correlates_better_than_{b_name}"] = stats.paired(
                [a[s] for s in seeds], [b[s] for s in seeds], method=METHOD,
                metric=f"Pearson corr(log P(x), log R(x)) on the test molecules, {a_name} minus {b_name}",
                claim_text=f"fragment molecules: {a_name} ({better} P_B) tracks R better than {b_name} "
                           f"({worse} P_B)")
    return out


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
    claims = claim_rows(rows)
    ctx.write_claims("claims", list(claims.values()))
    checks = {name: c["holds"] for name, c in claims.items()}
    ctx.write_json("metrics", {"objectives": summary, "checks": checks,
                               "n_seeds": min((c["n"] for c in claims.values()), default=0)})

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "pearson_logp_logr", "corr(log P(x), beta log r(x)), test set"),
                           (axes[1], "top10_unique_mean_reward", "top-10 sEH reward of samples")):
        ax.bar(objectives, [summary[o][key] for o in objectives], color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
