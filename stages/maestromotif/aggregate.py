"""Stage 8: tables, a plot and the claims.

Claims (rows of results/maestromotif/claims.parquet, stages/common/stats.py):
- per skill with a stated preference (Descender, Ascender, Discoverer): its reward model ranks the
  hand-written probe captions the way its description says (share of probe comparisons ranked right,
  exact binomial test against 0.5; unit: probe comparison);
- the sandbox stops the whole hostile suite (run here, at this scale): share stopped, binomial against
  0.9, and holds only with 0 escapes (unit: hostile program);
- per navigation task: the composed agent's success rate minus the single agent's, and minus random's,
  paired over training seeds (each seed's rate averaged over the same evaluation levels first).
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.common.stats import paired, proportion
from stages.maestromotif.hostile import run_suite
from stages.maestromotif.sandbox import Limits

log = logging.getLogger(__name__)
METHOD = "maestromotif"
SKILL_WORDS = {"descender": "prefers going down a level", "ascender": "prefers going up a level",
               "discoverer": "prefers gold and kills on the same level over going down"}


def run(ctx: StageContext) -> None:
    cfg = ctx.params["aggregate"]
    conf = cfg["confidence"]
    claims = []
    reward = json.loads(ctx.inputs["reward_metrics"].read_text())["goals"]
    for skill, words in SKILL_WORDS.items():
        if skill in reward:
            m = reward[skill]
            claims.append(proportion(m["probes_ok"], m["probes_n"], method=METHOD, null=0.5, confidence=conf,
                                     claim_text=f"{skill} reward model {words} (hand-written captions)",
                                     metric="probe comparisons ranked as described", unit="probe comparison",
                                     detail=f"held-out agreement {m['heldout_agreement']:.3f}"))

    rows = run_suite(Limits(cpu_s=1, wall_s=cfg["sandbox_wall_s"]))
    escapes = [r["name"] for r in rows if r["escaped"]]
    stopped = sum(not r["escaped"] for r in rows)
    c = proportion(stopped, len(rows), method=METHOD, null=0.9, confidence=conf, unit="hostile program",
                   claim_text="the sandbox refuses or kills the whole hostile suite (0 escapes)",
                   metric="share of hostile programs stopped",
                   detail=f"escapes: {escapes or 'none'}; refused {sum(r['status'] == 'refused' for r in rows)}, "
                          f"error {sum(r['status'] == 'error' for r in rows)}, "
                          f"killed {sum(r['status'] == 'killed' for r in rows)}")
    c["holds"] = bool(c["holds"] and not escapes)
    claims.append(c)

    frames = []
    for path in ctx.input_list("episodes"):
        wc = read_provenance(path)["wildcards"]
        df = read_table(path).to_pandas()
        df["agent"], df["seed_run"] = wc["agent"], int(wc["seed"])
        frames.append(df)
    eps = pd.concat(frames, ignore_index=True)
    per_seed = eps.groupby(["task", "agent", "seed_run"]).agg(
        success=("success", "mean"), max_depth=("max_depth", "mean"), score=("score", "mean"),
        turns=("turns", "mean"), gold=("gold", "mean"), mines=("reached_mines", "mean"),
        policy_errors=("policy_errors", "sum")).reset_index()
    summary = per_seed.groupby(["task", "agent"]).agg(
        success=("success", "mean"), success_sd=("success", "std"), max_depth=("max_depth", "mean"),
        score=("score", "mean"), turns=("turns", "mean"), gold=("gold", "mean"), mines=("mines", "mean"),
        seeds=("seed_run", "nunique"), policy_errors=("policy_errors", "sum")).reset_index()
    singles = sorted(a for a in eps.agent.unique() if a.startswith("single_"))
    for task in cfg["navigation_tasks"]:
        seeds = sorted(per_seed.seed_run.unique())
        rate = defaultdict(dict)
        for r in per_seed[per_seed.task == task].itertuples():
            rate[r.agent][r.seed_run] = r.success
        for other in singles + ["random"]:
            if other not in rate or "composed" not in rate:
                continue
            common = [s for s in seeds if s in rate[other] and s in rate["composed"]]
            claims.append(paired([rate["composed"][s] for s in common], [rate[other][s] for s in common],
                                 method=METHOD, confidence=conf, metric=f"success rate, task {task}",
                                 claim_text=f"composed agent reaches the {task} goal more often than {other}",
                                 detail=f"same evaluation levels; mean success composed "
                                        f"{np.mean([rate['composed'][s] for s in common]):.3f}, {other} "
                                        f"{np.mean([rate[other][s] for s in common]):.3f}"))
    policies = json.loads(ctx.inputs["policies"].read_text())
    ctx.write_claims("claims", claims)
    table = pa.Table.from_pandas(summary, preserve_index=False)
    ctx.write_table("table", table, table.schema)
    ctx.write_json("metrics", {"hostile_suite": {"n": len(rows), "escapes": escapes,
                                                 "max_seconds": max(r["seconds"] for r in rows)},
                               "policy_sources": {k: v["source"] for k, v in policies["tasks"].items()},
                               "llm_pass_rate": policies["llm_pass_rate"],
                               "codegen_rounds": policies["rounds"], "codegen_rounds_passed": policies["rounds_passed"],
                               "reward": {g: {k: m[k] for k in ("heldout_agreement", "probes_ok", "probes_n")}
                                          for g, m in reward.items()}})
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    pivot = summary.pivot(index="task", columns="agent", values="success")
    pivot.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("success rate (mean over seeds)")
    ax.set_title("MaestroMotif: composed vs single vs random")
    ctx.save_figure("plot", fig)
    log.info("claims: %s", [(c["claim"], round(c["effect"], 3), c["holds"]) for c in claims])
