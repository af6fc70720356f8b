"""Summary of the Motif chain: one row per (agent, seed) of the held-out evaluation, the reward model's
agreement with the annotator, a four-panel plot, and the claims (output `claims`, stages.common.stats).

Unit of replication: the RL seed. Every agent (and the random policy, one per seed) plays the same held-out
levels, so a seed's episodes are averaged first and agents are compared paired by seed; the standard errors
in metrics.json are over seeds too. The reward model is trained once: its claims use held-out caption pairs
(agreement with the annotator, exact binomial test) and probe captions (Welch) as units.
metrics.json's `verdict` holds the claims' verdicts (e.g. `intrinsic_beats_random_score`).

Output `messages_by_agent`: what each agent reads on the held-out levels, one row per (agent, distinct
message) summed over seeds, ranked by steps (rank 0 = the empty message, steps without a caption): its
share of the agent's steps, episodes, normalized reward rhat and the intrinsic reward it paid (a_int = 1).

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

from stages.common import stats
from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.motif.evaluate import EPISODES_SCHEMA, MESSAGES_SCHEMA
from stages.motif.reward import PROBES_BAD, PROBES_GOOD

log = logging.getLogger(__name__)

AGENT_ORDER = ["random", "extrinsic", "intrinsic", "combined"]
SUMMARY_SCHEMA = pa.schema([
    ("agent", pa.string()), ("seed", pa.int32()), ("episodes", pa.int32()),
    ("score_mean", pa.float64()), ("score_sem", pa.float64()), ("max_depth_mean", pa.float64()),
    ("turns_mean", pa.float64()), ("steps_mean", pa.float64()), ("reached_depth2_rate", pa.float64()),
    ("intrinsic_return_mean", pa.float64()), ("intrinsic_per_step_mean", pa.float64()), ("crashed", pa.int32())])
MESSAGES_BY_AGENT_SCHEMA = pa.schema([
    ("agent", pa.string()), ("rank", pa.int32()), ("message", pa.string()), ("steps", pa.int64()),
    ("step_share", pa.float64()), ("episodes", pa.int64()), ("seeds", pa.int32()), ("rhat", pa.float64()),
    ("intrinsic", pa.float64()), ("intrinsic_share", pa.float64())])
METHOD = "motif"
# (name, agent a, agent b, per-seed quantity, claim): "a's quantity is greater than b's", paired by seed
COMPARISONS = [
    ("intrinsic_raises_intrinsic_return", "intrinsic", "random", "intrinsic_return",
     "the intrinsic-only agent collects more intrinsic reward per episode than the random policy"),
    ("intrinsic_raises_intrinsic_per_step", "intrinsic", "random", "intrinsic_per_step",
     "the intrinsic-only agent collects more intrinsic reward per step than the random policy"),
    ("combined_raises_intrinsic_per_step", "combined", "random", "intrinsic_per_step",
     "the intrinsic + extrinsic agent collects more intrinsic reward per step than the random policy"),
    ("intrinsic_return_above_extrinsic_agent", "intrinsic", "extrinsic", "intrinsic_return",
     "the intrinsic-only agent collects more intrinsic reward per episode than the extrinsic-only agent"),
    ("intrinsic_per_step_above_extrinsic_agent", "intrinsic", "extrinsic", "intrinsic_per_step",
     "the intrinsic-only agent collects more intrinsic reward per step than the extrinsic-only agent"),
    ("combined_beats_extrinsic_score", "combined", "extrinsic", "score",
     "the intrinsic + extrinsic agent scores higher than the extrinsic-only agent"),
    ("intrinsic_beats_random_score", "intrinsic", "random", "score",
     "the intrinsic-only agent scores higher than the random policy"),
    ("intrinsic_beats_random_depth", "intrinsic", "random", "max_depth",
     "the intrinsic-only agent goes deeper than the random policy"),
    ("intrinsic_beats_extrinsic_score", "intrinsic", "extrinsic", "score",
     "the intrinsic-only agent scores higher than the extrinsic-only agent (the paper's surprise)"),
]


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
                     "intrinsic_per_step_mean": float((df.intrinsic_return / df.steps.clip(lower=1)).mean()),
                     "crashed": int(df.crashed.sum())})
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r["agent"], len(order)), r["agent"], r["seed"]))


def per_seed(episodes: dict[tuple[str, int], pd.DataFrame], agent: str, quantity: str) -> dict[int, float]:
    """{seed: mean over its held-out episodes} of score, max_depth, intrinsic_return or intrinsic_per_step."""
    out = {}
    for (a, seed), df in episodes.items():
        if a == agent:
            values = df.intrinsic_return / df.steps.clip(lower=1) if quantity == "intrinsic_per_step" else df[quantity]
            out[seed] = float(values.mean())
    return out


def messages_by_agent(messages: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Sum each agent's message tallies over its seeds; rank by steps (the empty message gets rank 0)."""
    if not messages:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in MESSAGES_BY_AGENT_SCHEMA})
    df = pd.concat([m.assign(agent=a) for (a, _), m in messages.items()])
    out = df.groupby(["agent", "message"], as_index=False).agg(
        steps=("steps", "sum"), episodes=("episodes", "sum"), seeds=("steps", "size"), rhat=("rhat", "first"),
        intrinsic=("intrinsic", "sum"))
    totals = out.groupby("agent")[["steps", "intrinsic"]].transform("sum")
    out["step_share"] = out.steps / totals.steps
    out["intrinsic_share"] = (out.intrinsic / totals.intrinsic.where(totals.intrinsic > 0)).fillna(0.0)
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    out = out.assign(is_empty=out.message == "", key=out.agent.map(lambda a: order.get(a, len(order))))
    out = out.sort_values(["key", "agent", "is_empty", "steps", "message"],
                          ascending=[True, True, False, False, True], kind="stable")
    has_empty = out.groupby("agent")["is_empty"].transform("any")
    out["rank"] = out.groupby("agent").cumcount() + np.where(has_empty, 0, 1)
    return out[[f.name for f in MESSAGES_BY_AGENT_SCHEMA]].reset_index(drop=True)


def claim_rows(episodes: dict[tuple[str, int], pd.DataFrame], reward_metrics: dict) -> dict[str, dict]:
    """{verdict name: claim row}: the agent comparisons, then the reward model's."""
    out = {}
    agents = {a for a, _ in episodes}
    for name, a, b, quantity, text in COMPARISONS:
        if a in agents and b in agents:
            x, y = per_seed(episodes, a, quantity), per_seed(episodes, b, quantity)
            seeds = sorted(set(x) & set(y))
            out[name] = stats.paired([x[s] for s in seeds], [y[s] for s in seeds], method=METHOD,
                                     metric=f"{quantity} (mean over held-out episodes), {a} minus {b}",
                                     claim_text=text)
    decided, agreement = reward_metrics.get("heldout_decided"), reward_metrics.get("heldout_agreement")
    if decided is not None and agreement is not None:
        out["reward_model_agrees_with_judge"] = stats.proportion(
            round(agreement * decided), decided, null=0.5, unit="held-out caption pair", method=METHOD,
            metric="agreement with the annotator's label on held-out decided pairs",
            claim_text="the reward model prefers the caption the LLM annotator preferred, on held-out pairs",
            detail="split by pair: held-out pairs share captions with training pairs")
    by_caption = reward_metrics.get("caption_split") or {}
    if by_caption.get("heldout_agreement") is not None and by_caption.get("heldout_decided"):
        n = by_caption["heldout_decided"]
        out["reward_model_agrees_with_judge_unseen_captions"] = stats.proportion(
            round(by_caption["heldout_agreement"] * n), n, null=0.5, unit="held-out caption pair", method=METHOD,
            metric="agreement with the annotator's label on decided pairs of two unseen captions",
            claim_text="a reward model trained without some captions prefers the caption the LLM annotator "
                       "preferred on pairs of two of those captions",
            detail=f"split by caption: {by_caption['heldout_captions']} of {by_caption['distinct_captions']} "
                   f"captions held out, {by_caption['n_train']} training pairs")
    probes = reward_metrics.get("probe_rewards_normalized")
    if probes:
        out["reward_model_ranks_progress_above_walls"] = stats.welch(
            [probes[m] for m in PROBES_GOOD if m in probes], [probes[m] for m in PROBES_BAD if m in probes],
            unit="probe caption", method=METHOD, metric="normalized reward, progress probes minus wall probes",
            claim_text="the reward model ranks kills, gold and stairs above walls and blocked moves")
    return out


def top_messages(by_agent: pd.DataFrame, agent: str, k: int) -> list[dict]:
    """The agent's k most frequent non-empty messages (message, step share, rhat) for metrics.json."""
    rows = by_agent[(by_agent.agent == agent) & (by_agent["rank"] >= 1)].head(k)
    return [{"message": r.message, "step_share": float(r.step_share),
             "rhat": float(r.rhat) if math.isfinite(r.rhat) else None} for r in rows.itertuples()]


def verdict_of(c: dict) -> dict:
    def num(x):
        return float(x) if math.isfinite(x) else None

    return {"holds": c["holds"], "effect": num(c["effect"]), "ci": [num(c["ci_low"]), num(c["ci_high"])],
            "p_value": num(c["p_value"]), "n": c["n"], "unit": c["unit"]}


def verdict(claims: dict[str, dict]) -> dict:
    """metrics.json's verdicts: the claims' `holds` (same names), with their numbers under `claims`."""
    if "intrinsic_beats_random_score" not in claims:
        return {"available": False, "claims": {k: verdict_of(c) for k, c in claims.items()}}
    holds = {k: c["holds"] for k, c in claims.items()}
    return {"available": True, **holds,
            "intrinsic_beats_random": holds["intrinsic_beats_random_score"] or holds["intrinsic_beats_random_depth"],
            "claims": {k: verdict_of(c) for k, c in claims.items()}}


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = {run_id(p): read_table(p, EPISODES_SCHEMA).to_pandas() for p in ctx.input_list("episodes")}
    rows = summarize(episodes)
    ctx.write_table("table", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    messages = {run_id(p): read_table(p, MESSAGES_SCHEMA).to_pandas() for p in ctx.input_list("messages")}
    by_agent = messages_by_agent(messages)
    ctx.write_table("messages_by_agent", pa.Table.from_pandas(by_agent, MESSAGES_BY_AGENT_SCHEMA, preserve_index=False),
                    MESSAGES_BY_AGENT_SCHEMA)

    agents = [a for a in AGENT_ORDER if any(r["agent"] == a for r in rows)]
    pooled = {a: pd.concat([df for (ag, _), df in sorted(episodes.items()) if ag == a]) for a in agents}

    def seed_sem(agent, quantity):
        return sem(np.array(list(per_seed(episodes, agent, quantity).values())))

    # means over all episodes (= mean of seed means: every seed plays the same levels); sem over seeds
    per_agent = {a: {"episodes": len(df), "seeds": sum(1 for r in rows if r["agent"] == a),
                     "score_mean": float(df.score.mean()), "score_sem": seed_sem(a, "score"),
                     "max_depth_mean": float(df.max_depth.mean()), "max_depth_sem": seed_sem(a, "max_depth"),
                     "turns_mean": float(df.turns.mean()),
                     "reached_depth2_rate": float(df.reached_depth2.mean()),
                     "intrinsic_return_mean": float(df.intrinsic_return.mean()),
                     "intrinsic_return_sem": seed_sem(a, "intrinsic_return"),
                     "intrinsic_per_step_mean": float(np.mean(list(per_seed(episodes, a, "intrinsic_per_step")
                                                                   .values()))),
                     "intrinsic_per_step_sem": seed_sem(a, "intrinsic_per_step"),
                     "top_messages": top_messages(by_agent, a, 5)}
                 for a, df in pooled.items()}
    reward_metrics = json.loads(Path(ctx.inputs["reward_metrics"]).read_text())
    claims = claim_rows(episodes, reward_metrics)
    ctx.write_claims("claims", list(claims.values()))
    checks = verdict(claims)
    ctx.write_json("metrics", {
        "agents": per_agent, "verdict": checks,
        "reward_model": {k: reward_metrics.get(k) for k in
                         ("heldout_agreement", "heldout_decided", "train_agreement", "usable_pairs",
                          "distinct_captions", "caption_split")}})
    log.info("per agent: %s; verdicts: %s", json.dumps(per_agent), {k: c["holds"] for k, c in claims.items()})

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("score_mean", "score", "game score at the end"), ("max_depth_mean", "max_depth", "deepest level"),
              ("intrinsic_return_mean", "intrinsic_return", "Motif intrinsic return (a_int = 1)")]
    for ax, (key, col, title) in zip(axes.flat, panels):
        means = [per_agent[a][key] for a in agents]
        errs = [seed_sem(a, col) for a in agents]          # over seeds, the unit of replication
        ax.bar(agents, means, yerr=errs, color=["tab:gray", "tab:blue", "tab:orange", "tab:green"][:len(agents)],
               capsize=3)
        ax.set(title=f"held-out: {title} (+- sem over seeds)", ylabel=title)
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
