"""Summary of the Motif chain: one row per (agent, seed) of the held-out evaluation, the reward model's
agreement with the annotator, a four-panel plot, and the method note's check as a verdict (reported,
not asserted): does the intrinsic-only agent beat the random policy on mean score or mean depth?

Agent and seed are the wildcards in each artifact's provenance: an episodes.parquet's own, a curve.csv's
(plain CSV, no provenance) those of the policy checkpoint written beside it by the same train_rl job
(input `policies`). The random policy's evaluation has no policy input and, in its rule, no {agent}.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.motif.evaluate import EPISODES_SCHEMA

log = logging.getLogger(__name__)

AGENT_ORDER = ["random", "extrinsic", "intrinsic", "combined"]
SUMMARY_SCHEMA = pa.schema([
    ("agent", pa.string()), ("seed", pa.int32()), ("episodes", pa.int32()),
    ("score_mean", pa.float64()), ("score_sem", pa.float64()), ("max_depth_mean", pa.float64()),
    ("turns_mean", pa.float64()), ("steps_mean", pa.float64()), ("reached_depth2_rate", pa.float64()),
    ("intrinsic_return_mean", pa.float64()), ("crashed", pa.int32())])


def run_id(artifact: Path) -> tuple[str, int]:
    """(agent, seed) of the job that wrote `artifact` (Parquet or checkpoint), from its provenance."""
    prov = read_provenance(artifact)
    wildcards = prov["wildcards"]
    agent = wildcards.get("agent") or ("random" if "policy" not in prov["inputs"] else None)
    if agent is None or "seed" not in wildcards:
        raise ValueError(f"{artifact}: provenance names no agent and seed (wildcards {wildcards})")
    return agent, int(wildcards["seed"])


def sem(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def summarize(episodes: dict[tuple[str, int], pd.DataFrame]) -> list[dict]:
    rows = []
    for (agent, seed), df in episodes.items():
        rows.append({"agent": agent, "seed": seed, "episodes": len(df),
                     "score_mean": float(df.score.mean()), "score_sem": sem(df.score.to_numpy()),
                     "max_depth_mean": float(df.max_depth.mean()), "turns_mean": float(df.turns.mean()),
                     "steps_mean": float(df.steps.mean()),
                     "reached_depth2_rate": float(df.reached_depth2.mean()),
                     "intrinsic_return_mean": float(df.intrinsic_return.mean()),
                     "crashed": int(df.crashed.sum())})
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r["agent"], len(order)), r["agent"], r["seed"]))


def verdict(per_agent: dict[str, dict]) -> dict:
    """The note's small-scale check: intrinsic-only vs random on the same seeds and budget."""
    if "intrinsic" not in per_agent or "random" not in per_agent:
        return {"available": False}
    i, r = per_agent["intrinsic"], per_agent["random"]
    better_score = i["score_mean"] > r["score_mean"]
    better_depth = i["max_depth_mean"] > r["max_depth_mean"]
    # a mean above random by less than two standard errors of the difference is not evidence
    clear_score = i["score_mean"] - r["score_mean"] > 2 * math.hypot(i["score_sem"], r["score_sem"])
    return {"available": True, "intrinsic_beats_random_score": bool(better_score),
            "intrinsic_beats_random_depth": bool(better_depth),
            "intrinsic_beats_random": bool(better_score or better_depth),
            "intrinsic_beats_random_score_by_2se": bool(clear_score),
            "score": [i["score_mean"], r["score_mean"]], "score_sem": [i["score_sem"], r["score_sem"]],
            "max_depth": [i["max_depth_mean"], r["max_depth_mean"]]}


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = {run_id(p): read_table(p, EPISODES_SCHEMA).to_pandas() for p in ctx.input_list("episodes")}
    rows = summarize(episodes)
    ctx.write_table("table", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA)

    agents = [a for a in AGENT_ORDER if any(r["agent"] == a for r in rows)]
    pooled = {a: pd.concat([df for (ag, _), df in sorted(episodes.items()) if ag == a]) for a in agents}
    per_agent = {a: {"episodes": len(df), "seeds": sum(1 for r in rows if r["agent"] == a),
                     "score_mean": float(df.score.mean()), "score_sem": sem(df.score.to_numpy()),
                     "max_depth_mean": float(df.max_depth.mean()), "turns_mean": float(df.turns.mean()),
                     "reached_depth2_rate": float(df.reached_depth2.mean()),
                     "intrinsic_return_mean": float(df.intrinsic_return.mean())}
                 for a, df in pooled.items()}
    reward_metrics = json.loads(Path(ctx.inputs["reward_metrics"]).read_text())
    checks = verdict(per_agent)
    ctx.write_json("metrics", {
        "agents": per_agent, "verdict": checks,
        "reward_model": {k: reward_metrics.get(k) for k in
                         ("heldout_agreement", "heldout_decided", "train_agreement", "usable_pairs",
                          "distinct_captions", "probes_progress_above_walls")}})
    log.info("per agent: %s; verdict: %s", json.dumps(per_agent), checks)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("score_mean", "score", "game score at the end"), ("max_depth_mean", "max_depth", "deepest level"),
              ("intrinsic_return_mean", "intrinsic_return", "Motif intrinsic return (a_int = 1)")]
    for ax, (key, col, title) in zip(axes.flat, panels):
        means = [per_agent[a][key] for a in agents]
        errs = [sem(pooled[a][col].to_numpy()) for a in agents]
        ax.bar(agents, means, yerr=errs, color=["tab:gray", "tab:blue", "tab:orange", "tab:green"][:len(agents)],
               capsize=3)
        ax.set(title=f"held-out: {title}", ylabel=title)
    ax = axes.flat[3]
    policy_of = {p.parent: p for p in ctx.input_list("policies")}
    for path in ctx.input_list("curves"):
        agent, seed = run_id(policy_of[path.parent])
        curve = pd.read_csv(path)
        score = curve.score.astype(float).ffill().rolling(10, min_periods=1).mean()
        ax.plot(curve.step, score, label=f"{agent} s{seed}")
    ax.set(title="training episodes: final score (rolling 10 updates)", xlabel="env steps", ylabel="score")
    ax.legend(fontsize=7)
    fig.suptitle(f"Motif on NetHackScore-v0; reward model held-out agreement "
                 f"{reward_metrics.get('heldout_agreement', float('nan')):.2f}")
    fig.tight_layout()
    ctx.save_figure("plot", fig)
