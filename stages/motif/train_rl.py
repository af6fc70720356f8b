"""Motif's RL stage: PPO on NetHackScore-v0 (stages/rl/ppo_nethack.py) with Motif's reward and policy.

Per-step reward (stages/motif/intrinsic.py): r = a_ext * r_ext + a_int * 1[rhat > eps] * rhat / N(m)^beta,
with (a_ext, a_int) from the agent mode: extrinsic-only (a_int = 0), intrinsic-only (a_ext = 0), both.
The policy sees a crop of the map characters and a few stats (stages/motif/policy.py). The paper trains
APPO with a GRU for 2B steps; this is the small-budget stand-in.

A killed run resumes from `<policy>.resume.safetensors` (see ppo_nethack) when re-run under the same
params, seed, code and reward model; the file is removed once the outputs exist.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.motif.intrinsic import MotifReward
from stages.motif.policy import Agent, features
from stages.motif.reward_model import RewardModel
from stages.rl.ppo_nethack import CURVE_COLUMNS, PPOConfig
from stages.rl.ppo_nethack import train as ppo_train

N_ACTIONS = 23


def train(cfg: PPOConfig, policy: dict, reward: MotifReward, seed: int, max_episode_steps: int | None,
          resume: ResumeState | None = None, **kwargs):
    """PPO with Motif's agent and reward; returns (agent, curve rows, finished episodes)."""
    # the params do not identify the reward model's weights (an input), so the resume file must
    fingerprint = reward.model.fingerprint() if reward.model is not None else "none"
    return ppo_train(cfg, partial(Agent.from_params, N_ACTIONS, policy),
                     partial(features, crop=policy["crop"]), reward, seed, max_episode_steps, resume,
                     resume_key=fingerprint, **kwargs)


def run(ctx: StageContext) -> None:
    cfg = PPOConfig.from_dict(ctx.params["ppo"])
    mode, intrinsic = ctx.params["agent"], ctx.params["intrinsic"]
    model = None
    if mode["a_int"] != 0:
        model = RewardModel.load(ctx.inputs["reward_model"], ctx.inputs["reward_stats"])
    reward = MotifReward(model, cfg.num_envs, mode["a_ext"], mode["a_int"], intrinsic["threshold_quantile"],
                         intrinsic["beta"])
    resume = ResumeState.for_output(ctx, "policy")
    agent, curve, episodes = train(cfg, ctx.params["policy"], reward, ctx.seed,
                                   ctx.params["env"]["max_episode_steps"], resume, progress=ctx.progress)
    ctx.save_checkpoint("policy", agent.state_dict())
    ctx.write_curve("curve", curve, CURVE_COLUMNS)
    last = episodes[-max(1, len(episodes) // 5):] if episodes else []
    ctx.write_json("metrics", {
        "env_steps": curve[-1]["step"], "updates": len(curve), "episodes": len(episodes),
        "crashed_episodes": sum(e["crashed"] for e in episodes),
        "last_fifth": {k: float(np.mean([e[k] for e in last])) if last else None
                       for k in ("score", "max_depth", "turns", "ext_return")},
        "a_ext": mode["a_ext"], "a_int": mode["a_int"]})
    resume.clear()
