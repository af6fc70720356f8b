"""Why is Motif's intrinsic-only agent no better than random? Short diagnostic runs (issue 11, Motif item 5).

Each variant trains one PPO agent (stages.motif.train_rl.train, seed `--seed`) for `--steps` env steps with
the default params (params.yaml `motif`) plus the variant's overrides, then plays the default held-out
evaluation levels (stages.motif.evaluate, `--episodes` episodes) and reports the game score, depth,
episode length, the intrinsic reward per step and per episode under the DEFAULT formula (so every variant
is measured with the same yardstick), the share of steps paying intrinsic reward, and the last training
updates' value loss / entropy. A random policy is evaluated on the same levels in the same process.

Variants (name: overrides) are the knobs item 5 asks about:
  base         the default params
  eps_q0.85/0.9/0.95 threshold quantile (MaestroMotif's per-skill thresholds 0.85-0.95; paper 0.5 for Motif)
  beta1, beta0 count exponent N^-1, no count normalization (paper 3)
  aint1        a_int 1.0: ten times the intrinsic reward, so the value loss is not negligible
  ent0.003     the paper's entropy coefficient (default 0.01)
  lr3e-4       a smaller learning rate
  ext          the extrinsic-only agent (a_ext 0.1, a_int 0), for the paper's comparison

One thread, sequential, one seed per variant (a diagnostic, not a claim: claims come from the chain).

`--offline` trains nothing: it replays the collected random-policy dataset (data/motif/steps.parquet)
through the reward formula for several thresholds and count exponents and prints, per setting, the
intrinsic reward per step and per episode, the share of messages that pay, and the share of the intrinsic
reward paid on steps where the game score rises (at that step or the next): how much of what the
intrinsic reward pays for is score. Then the messages that earn the most intrinsic reward. Seconds.

Usage: OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/motif_diagnose.py --steps 100000
       [--variants base,eps_q0.9] [--seed 0] [--episodes 20] [--out bench/motif_diagnose.json]
       OMP_NUM_THREADS=1 .venv/bin/python bench/motif_diagnose.py --offline
Needs results/motif/reward/{model.safetensors,stats.json} (`snakemake motif_reward`).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.motif.evaluate import evaluate, evaluation_seeds  # noqa: E402
from stages.motif.intrinsic import MotifReward  # noqa: E402
from stages.motif.policy import PolicyActor  # noqa: E402
from stages.motif.reward_model import RewardModel  # noqa: E402
from stages.motif.train_rl import N_ACTIONS, PPOConfig, train  # noqa: E402

REWARD_DIR = ROOT / "results/motif/reward"
VARIANTS = {
    "base": {},
    "eps_q0.85": {"intrinsic": {"threshold_quantile": 0.85}},
    "eps_q0.9": {"intrinsic": {"threshold_quantile": 0.9}},
    "eps_q0.95": {"intrinsic": {"threshold_quantile": 0.95}},
    "beta1": {"intrinsic": {"beta": 1.0}},
    "beta0": {"intrinsic": {"beta": 0.0}},
    "aint1": {"agent": {"a_int": 1.0}},
    "ent0.003": {"ppo": {"ent_coef": 0.003}},
    "lr3e-4": {"ppo": {"learning_rate": 0.0003}},
    "ext": {"agent": {"a_ext": 0.1, "a_int": 0.0}},
}


def merged(cfg: dict, variant: dict) -> dict:
    out = copy.deepcopy(cfg)
    for section, values in variant.items():
        out[section].update(values)
    return out


def summary(rows: list[dict]) -> dict:
    steps = np.array([r["steps"] for r in rows], float)
    ret = np.array([r["intrinsic_return"] for r in rows])
    return {"score": float(np.mean([r["score"] for r in rows])),
            "score_sem": float(np.std([r["score"] for r in rows], ddof=1) / np.sqrt(len(rows))),
            "max_depth": float(np.mean([r["max_depth"] for r in rows])),
            "steps": float(steps.mean()), "turns": float(np.mean([r["turns"] for r in rows])),
            "intrinsic_per_episode": float(ret.mean()), "intrinsic_per_step": float(np.mean(ret / steps))}


def offline(steps_path: Path, model: RewardModel) -> dict:
    """Replay the collected dataset through the intrinsic reward for several (eps quantile, beta)."""
    import pandas as pd

    from stages.motif.intrinsic import intrinsic_reward

    df = pd.read_parquet(steps_path, columns=["episode", "message", "reward"])
    gain = df.reward.clip(lower=0)
    df["score_gain"] = (gain + gain.groupby(df.episode).shift(-1).fillna(0)) > 0   # this step or the next
    ne = df[df.message != ""].copy()
    ne["n"] = ne.groupby(["episode", "message"]).cumcount() + 1
    distinct = ne.message.unique().tolist()
    ne["rhat"] = ne.message.map(dict(zip(distinct, model.normalized(distinct).tolist())))
    episodes = df.episode.nunique()
    # base rate: the share of captioned steps on which the score rises
    out = {"steps": len(df), "episodes": int(episodes),
           "captioned_steps_with_score_gain": round(float(ne.score_gain.mean()), 4), "settings": []}
    for q in (0.5, 0.75, 0.85, 0.95):
        for beta in (3.0, 1.0, 0.0):
            eps = model.threshold(q)
            r = intrinsic_reward(ne.rhat.to_numpy(), ne.n.to_numpy(), eps, beta)
            out["settings"].append({"threshold_quantile": q, "eps": round(eps, 3), "beta": beta,
                                    "paying_messages": round(float((ne.rhat > eps).mean()), 3),
                                    "per_step": round(float(r.sum() / len(df)), 4),
                                    "per_episode": round(float(r.sum() / episodes), 1),
                                    "share_on_score_gain":
                                        round(float(r[ne.score_gain.to_numpy()].sum() / r.sum()), 3)})
    ne["r"] = intrinsic_reward(ne.rhat.to_numpy(), ne.n.to_numpy(), model.threshold(0.5), 3.0)
    top = ne.groupby("message").agg(steps=("n", "size"), rhat=("rhat", "first"), r=("r", "sum"))
    top = top.sort_values("r", ascending=False).head(15)
    out["top_earners_default"] = [{"message": m, "steps": int(t.steps), "rhat": round(float(t.rhat), 2),
                                   "share": round(float(t.r / ne.r.sum()), 3)} for m, t in top.iterrows()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench/motif_diagnose.json"))
    ap.add_argument("--offline", action="store_true", help="replay the collected dataset; no training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.offline:
        print(json.dumps(offline(ROOT / "data/motif/steps.parquet",
                                 RewardModel.load(REWARD_DIR / "model.safetensors", REWARD_DIR / "stats.json")),
                         indent=1))
        return
    # only the motif block: other methods' blocks may be mid-edit in a shared checkout
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["motif"]
    base = {"intrinsic": params["intrinsic"], "agent": dict(params["agents"]["intrinsic"]),
            "ppo": {**params["ppo"], "total_steps": args.steps}}
    model_path, stats_path = REWARD_DIR / "model.safetensors", REWARD_DIR / "stats.json"
    max_steps, ev = params["env"]["max_episode_steps"], params["evaluate"]
    seeds = evaluation_seeds(ev["seed"], args.episodes)

    def measure(actor: PolicyActor) -> dict:
        return summary(evaluate(actor, seeds, RewardModel.load(model_path, stats_path), params["intrinsic"],
                                ev["parallel"], max_steps))

    results = {"steps": args.steps, "seed": args.seed, "episodes": args.episodes,
               "random": measure(PolicyActor(None, N_ACTIONS, seed=args.seed)), "variants": {}}
    print(json.dumps({"random": results["random"]}), flush=True)
    for name in args.variants.split(","):
        cfg = merged(base, VARIANTS[name])
        model = RewardModel.load(model_path, stats_path) if cfg["agent"]["a_int"] else None
        reward = MotifReward(model, cfg["ppo"]["num_envs"], cfg["agent"]["a_ext"], cfg["agent"]["a_int"],
                             cfg["intrinsic"]["threshold_quantile"], cfg["intrinsic"]["beta"])
        start = time.perf_counter()
        agent, curve, _ = train(PPOConfig.from_dict(cfg["ppo"]), params["policy"], reward, args.seed, max_steps)
        agent.eval()
        tenth = max(1, len(curve) // 10)
        row = {**measure(PolicyActor(agent, N_ACTIONS, seed=args.seed)),
               "train_s": round(time.perf_counter() - start, 1),
               **{f"train_{name}_tenth": {k: float(np.nanmean([c[k] for c in part]))
                                          for k in ("score", "intrinsic_per_step", "value_loss", "entropy")}
                  for name, part in (("first", curve[:tenth]), ("middle", curve[4 * tenth:6 * tenth]),
                                     ("last", curve[-tenth:]))},
               "overrides": VARIANTS[name]}
        results["variants"][name] = row
        print(json.dumps({name: row}), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
