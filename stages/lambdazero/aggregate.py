"""Stage 8, aggregate: one table over seeds (evaluation rows per arm + candidate counts), the oracle
efficiency over seeds, the claims, and a plot of the top-k docking scores, ligand efficiencies and proxy
predictions per arm and seed.

Claims (output `claims`, stages.common.stats): the seed of the chain (initial docked set on) is the unit;
the arms of a seed are compared paired by seed (they share the seed's final proxy, its training set and
the top-k size). Out of sample (molecules the final proxy was not trained on): the policy's fresh
molecules score higher on the proxy than random rollouts' fresh molecules; its top-k dock better (lower
Vina score) and with better ligand efficiency than random's top-k; its top-k pass the QED/SA gates at more
than `evaluate.min_topk_pass_rate`. Oracle efficiency: with the same number of docking calls as the
method chose (active learning + final top-k), random screening of distinct random MDP molecules finds
fewer molecules at least as good as the best of the seed's initial set, needs more calls to find the first
one, and finds a worse best; the method's docking calls are under 5% of the distinct molecules its proxy
scored. metrics.json holds the claims' verdicts.

The seed is the wildcard recorded in each evaluation.parquet's provenance; a seed's metrics.json (no
provenance) is the one beside its table, its efficiency and candidates tables the ones recording the
same seed.
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
from stages.lambdazero.efficiency import EFFICIENCY_SCHEMA
from stages.lambdazero.evaluate import ARMS, SCREEN, SUMMARY_SCHEMA
from stages.lambdazero.export import CANDIDATES_SCHEMA

log = logging.getLogger(__name__)

TABLE_SCHEMA = pa.schema([pa.field("seed", pa.int32()), *SUMMARY_SCHEMA,
                          pa.field("candidates_exported", pa.int32())])
EFFICIENCY_TABLE_SCHEMA = pa.schema([pa.field("seed", pa.int32()), *EFFICIENCY_SCHEMA])
METHOD = "lambdazero"
OUT_OF_SAMPLE = "out of sample: only molecules the final proxy was not trained on"
CLAIM_THRESHOLD = "initial_best"
DOCKED_FRACTION_MAX = 0.05      # "a small fraction": under 5% of the distinct molecules scored


def note(text: str, n: int) -> str:
    """A claim's detail; stats' "not shown" note is kept in front when there are fewer than 2 units."""
    return text if n >= 2 else f"not shown: fewer than 2 units; {text}"


def claim_rows(rows: list[dict], min_pass_rate: float, efficiency: list[dict] | None = None,
               docked_fraction: list[float] | None = None) -> dict[str, dict]:
    """{verdict name: claim row} from the evaluation rows (one per seed and arm), the efficiency rows
    (one per seed, sequence and threshold) and each seed's method docking calls / distinct molecules the
    proxy scored."""
    arm = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({s for s, a in arm if a == "policy"} & {s for s, a in arm if a == "random"})

    def of(name, field):
        return [arm[s, name][field] for s in seeds]

    out = {
        "beats_random_on_proxy_out_of_sample": stats.paired(
            of("policy", "mean_proxy_mu"), of("random", "mean_proxy_mu"), method=METHOD,
            metric="mean final-proxy prediction of -Vina score (kcal/mol) over the arm's fresh distinct molecules, "
                   "policy minus random", detail=note(OUT_OF_SAMPLE, len(seeds)),
            claim_text="out of sample, the policy's molecules score higher on the docking proxy than random MDP "
                       "rollouts"),
        "beats_random_on_topk_docking": stats.paired(
            of("policy", "topk_mean_score"), of("random", "topk_mean_score"), alternative="less", method=METHOD,
            metric="mean Vina score (kcal/mol) of the arm's fresh top-k by reward, docked, policy minus random",
            detail=note(OUT_OF_SAMPLE, len(seeds)),
            claim_text="the policy's fresh top-k molecules dock better (lower score) than random rollouts' top-k"),
        "beats_random_on_topk_ligand_efficiency": stats.paired(
            of("policy", "topk_mean_le"), of("random", "topk_mean_le"), method=METHOD,
            metric="mean ligand efficiency (-Vina score / heavy atoms, kcal/mol per atom) of the arm's fresh "
                   "top-k, policy minus random", detail=note(OUT_OF_SAMPLE, len(seeds)),
            claim_text="the policy's fresh top-k molecules have higher ligand efficiency than random rollouts' "
                       "top-k"),
        "topk_passes_gates": stats.one_sample(
            of("policy", "topk_gate_pass_rate"), null=min_pass_rate, method=METHOD,
            metric=f"fraction of the policy's fresh top-k passing the QED/SA gates (null: {min_pass_rate:g})",
            claim_text="the policy's top-k molecules pass the QED and SA gates"),
    }
    eff = {(r["seed"], r["sequence"]): r for r in efficiency or [] if r["threshold_name"] == CLAIM_THRESHOLD}
    eseeds = sorted({s for s, q in eff if q == "method"} & {s for s, q in eff if q == SCREEN})

    def eff_of(seq, field):
        return [eff[s, seq][field] for s in eseeds]

    budget = note("budget = the method's docking calls (active learning + final top-k; initial set excluded): "
                  f"{sorted(set(eff_of('method', 'budget')))}", len(eseeds))
    out.update({
        "method_hit_rate_beats_screening": stats.paired(
            eff_of("method", "hit_rate"), eff_of(SCREEN, "hit_rate"), method=METHOD,
            metric="fraction of docking calls scoring at least as well as the best of the seed's initial set, "
                   "method minus random screening at the same budget", detail=budget,
            claim_text="the method's docking calls find molecules at least as good as the initial set's best "
                       "more often than random screening"),
        "method_reaches_initial_best_in_fewer_calls": stats.paired(
            eff_of("method", "calls_to_reach_censored"), eff_of(SCREEN, "calls_to_reach_censored"),
            alternative="less", method=METHOD,
            metric="docking calls until the first molecule at least as good as the seed's initial best, method "
                   "minus random screening (budget + 1 when not reached)", detail=budget,
            claim_text="the method needs fewer docking calls than random screening to find a molecule at least as "
                       "good as the initial set's best"),
        "method_best_beats_screening": stats.paired(
            eff_of("method", "best_score"), eff_of(SCREEN, "best_score"), alternative="less", method=METHOD,
            metric="best Vina score (kcal/mol) within the budget, method minus random screening", detail=budget,
            claim_text="with the same docking budget the method finds a better-scoring molecule than random "
                       "screening"),
        "method_le_vs_screening": stats.paired(
            eff_of("method", "mean_le"), eff_of(SCREEN, "mean_le"), method=METHOD,
            metric="mean ligand efficiency (-Vina score / heavy atoms, kcal/mol per atom) of the docked molecules "
                   "within the budget, method minus random screening", detail=budget,
            claim_text="the molecules the method docks are more ligand-efficient than random screening's"),
        "docking_is_a_small_fraction_of_proxy_scored": stats.one_sample(
            docked_fraction or [], null=DOCKED_FRACTION_MAX, alternative="less", method=METHOD,
            metric="the method's docking calls / distinct molecules the proxy scored during training "
                   f"(null: {DOCKED_FRACTION_MAX:g})",
            claim_text="the method docks a small fraction of the molecules its proxy scores"),
    })
    return out


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

    rows, oracle, efficiency = [], {}, []
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    candidates_of = {seed_of(p): p for p in ctx.input_list("candidates")}
    for path in ctx.input_list("efficiency"):
        seed = seed_of(path)
        efficiency += [{"seed": seed, **r} for r in read_table(path, EFFICIENCY_SCHEMA).to_pylist()]
    efficiency.sort(key=lambda r: (r["seed"], r["sequence"] != "method"))
    for table_path in ctx.input_list("tables"):
        seed = seed_of(table_path)
        metrics_path = metrics_of[table_path.parent]
        n_cand = read_table(candidates_of[seed], CANDIDATES_SCHEMA).num_rows
        rows += [{"seed": seed, **r, "candidates_exported": n_cand}
                 for r in read_table(table_path, SUMMARY_SCHEMA).to_pylist()]
        oracle[str(seed)] = json.loads(metrics_path.read_text())["oracle"]
    rows.sort(key=lambda r: (r["seed"], ARMS.index(r["arm"])))
    ctx.write_table("table", pa.Table.from_pylist(rows, TABLE_SCHEMA), TABLE_SCHEMA)
    ctx.write_table("efficiency", pa.Table.from_pylist(efficiency, EFFICIENCY_TABLE_SCHEMA), EFFICIENCY_TABLE_SCHEMA)
    fractions = [o["method_docking_calls_per_proxy_distinct"] for o in oracle.values()
                 if "method_docking_calls_per_proxy_distinct" in o]
    claims = claim_rows(rows, ctx.params["evaluate"]["min_topk_pass_rate"], efficiency, fractions)
    ctx.write_claims("claims", list(claims.values()))
    verdicts = {name: verdict_of(c) for name, c in claims.items()}
    holds = all(c["holds"] for c in claims.values())
    ctx.write_json("metrics", {"claims": verdicts, "holds": holds, "oracle": oracle, "seeds": len(oracle),
                               "claims_hold": f"{sum(c['holds'] for c in claims.values())}/{len(claims)}"})
    log.info("claims: %s", {name: v["holds"] for name, v in verdicts.items()})

    fig, (ax_score, ax_le, ax_mu) = plt.subplots(1, 3, figsize=(15, 4))
    seeds = sorted({r["seed"] for r in rows})
    width = 0.8 / len(ARMS)
    for k, arm in enumerate(ARMS):
        sel = [next(r for r in rows if r["seed"] == s and r["arm"] == arm) for s in seeds]
        x = np.arange(len(seeds)) + (k - 1) * width
        ax_score.bar(x, [r["topk_mean_score"] for r in sel], width, label=arm)
        ax_le.bar(x, [r["topk_mean_le"] for r in sel], width, label=arm)
        ax_mu.bar(x, [r["mean_proxy_mu"] for r in sel], width, label=arm)
    for ax, title, unit in ((ax_score, "top-k mean Vina score (lower = better)", "kcal/mol"),
                            (ax_le, "top-k mean ligand efficiency", "kcal/mol per heavy atom"),
                            (ax_mu, "mean proxy prediction of -score (policy/random: fresh)", "kcal/mol")):
        ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
        ax.set(title=title, ylabel=unit)
        ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
