"""Stage 8, aggregate: one table over seeds (evaluation rows per arm + candidate counts), the claims, and a
plot of the top-k docking scores and proxy predictions per arm and seed.

Claims (output `claims`, stages.common.stats): the seed of the chain (initial docked set on) is the unit;
the policy and random arms of a seed are compared paired by seed. The policy's molecules score higher on
the final proxy than random rollouts, its top-k dock better (lower Vina score) than random's top-k, and its
top-k pass the QED/SA gates at more than `evaluate.min_topk_pass_rate`. metrics.json holds the claims'
verdicts (these replace each seed's own verdict and molecule-level Mann-Whitney test in its metrics.json).

The seed is the wildcard recorded in each evaluation.parquet's provenance; a seed's metrics.json (no
provenance) is the one beside its table, its candidates.parquet the one recording the same seed.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.lambdazero.evaluate import ARMS, SUMMARY_SCHEMA
from stages.lambdazero.export import CANDIDATES_SCHEMA

log = logging.getLogger(__name__)

TABLE_SCHEMA = pa.schema([pa.field("seed", pa.int32()), *SUMMARY_SCHEMA,
                          pa.field("candidates_exported", pa.int32())])
METHOD = "lambdazero"
IN_SAMPLE = ("in-sample: the final proxy was fitted on molecules docked during active learning, some of "
             "them the policy's")


def claim_rows(rows: list[dict], min_pass_rate: float) -> dict[str, dict]:
    """{verdict name: claim row} from the evaluation rows (one per seed and arm)."""
    arm = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({s for s, a in arm if a == "policy"} & {s for s, a in arm if a == "random"})

    def of(name, field):
        return [arm[s, name][field] for s in seeds]

    # a detail replaces stats' "not shown" note, so keep that note where it applies
    in_sample = IN_SAMPLE if len(seeds) >= 2 else f"not shown: fewer than 2 units; {IN_SAMPLE}"

    return {
        "beats_random_on_proxy": stats.paired(
            of("policy", "mean_proxy_mu"), of("random", "mean_proxy_mu"), method=METHOD,
            metric="mean proxy prediction of -Vina score (kcal/mol) over the arm's distinct molecules, "
                   "policy minus random", detail=in_sample,
            claim_text="the policy's molecules score higher on the docking proxy than random MDP rollouts"),
        "beats_random_on_topk_docking": stats.paired(
            of("policy", "topk_mean_score"), of("random", "topk_mean_score"), alternative="less", method=METHOD,
            metric="mean Vina score (kcal/mol) of the arm's top-k by reward, docked, policy minus random",
            claim_text="the policy's top-k molecules dock better (lower score) than random rollouts' top-k"),
        "topk_passes_gates": stats.one_sample(
            of("policy", "topk_gate_pass_rate"), null=min_pass_rate, method=METHOD,
            metric=f"fraction of the policy's top-k passing the QED/SA gates (null: {min_pass_rate:g})",
            claim_text="the policy's top-k molecules pass the QED and SA gates"),
    }


def verdict_of(c: dict) -> dict:
    """A claim row as plain JSON (null where the row has NaN)."""
    def num(x):
        return float(x) if np.isfinite(x) else None

    return {"holds": c["holds"], "effect": num(c["effect"]), "ci": [num(c["ci_low"]), num(c["ci_high"])],
            "p_value": num(c["p_value"]), "n": c["n"], "detail": c["detail"]}


def seed_of(path: Path) -> int:
    return int(read_provenance(path)["wildcards"]["seed"])


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, oracle = [], {}
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    candidates_of = {seed_of(p): p for p in ctx.input_list("candidates")}
    for table_path in ctx.input_list("tables"):
        seed = seed_of(table_path)
        metrics_path = metrics_of[table_path.parent]
        n_cand = read_table(candidates_of[seed], CANDIDATES_SCHEMA).num_rows
        rows += [{"seed": seed, **r, "candidates_exported": n_cand}
                 for r in read_table(table_path, SUMMARY_SCHEMA).to_pylist()]
        oracle[str(seed)] = json.loads(metrics_path.read_text())["oracle"]
    rows.sort(key=lambda r: (r["seed"], ARMS.index(r["arm"])))
    ctx.write_table("table", pa.Table.from_pylist(rows, TABLE_SCHEMA), TABLE_SCHEMA)
    claims = claim_rows(rows, ctx.params["evaluate"]["min_topk_pass_rate"])
    ctx.write_claims("claims", list(claims.values()))
    verdicts = {name: verdict_of(c) for name, c in claims.items()}
    holds = all(c["holds"] for c in claims.values())
    ctx.write_json("metrics", {"claims": verdicts, "holds": holds, "oracle": oracle, "seeds": len(oracle),
                               "claims_hold": f"{sum(c['holds'] for c in claims.values())}/{len(claims)}"})
    log.info("claims: %s", {name: v["holds"] for name, v in verdicts.items()})

    fig, (ax_score, ax_mu) = plt.subplots(1, 2, figsize=(10, 4))
    seeds = sorted({r["seed"] for r in rows})
    width = 0.8 / len(ARMS)
    for k, arm in enumerate(ARMS):
        sel = [next(r for r in rows if r["seed"] == s and r["arm"] == arm) for s in seeds]
        x = np.arange(len(seeds)) + (k - 1) * width
        ax_score.bar(x, [r["topk_mean_score"] for r in sel], width, label=arm)
        ax_mu.bar(x, [r["mean_proxy_mu"] for r in sel], width, label=arm)
    for ax, title in ((ax_score, "top-k mean Vina score (lower = better)"),
                      (ax_mu, "mean proxy prediction of -score")):
        ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
        ax.set(title=title, ylabel="kcal/mol")
        ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
