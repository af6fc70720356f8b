"""Evaluate one trained SAC policy (deterministic, bias + scale * tanh(mean)) on the shared start states.

The evaluation reset seeds are `first_reset_seed + i`, i < episodes, the same for every run of the sweep,
so returns are compared episode by episode: same env, same initial state, only the agent differs.
Outputs: returns.parquet (one row per episode) and metrics.json (median / mean return, failures).
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.decoupled.sac_train import run_of, sac_config
from stages.envs.control import make_control_env
from stages.rl.sac import Actor, evaluate, greedy_policy

log = logging.getLogger(__name__)

RETURNS_SCHEMA = pa.schema([
    ("env", pa.string()),
    ("scale", pa.float64()),
    ("temperature", pa.string()),       # name in decoupled.sac.temperatures
    ("seed", pa.int32()),
    ("episode", pa.int32()),            # index of the shared start state
    ("reset_seed", pa.int64()),
    ("return", pa.float64()),
    ("length", pa.int32()),
    ("action_dim", pa.int32()),
])


def eval_reset_seeds(cfg: dict) -> list[int]:
    return [cfg["first_reset_seed"] + i for i in range(cfg["episodes"])]


def run(ctx: StageContext) -> None:
    torch.set_num_threads(ctx.threads)
    rid = run_of(ctx.wildcards)
    env_cfg, cfg = ctx.params["env"], ctx.params["evaluate"]
    env = make_control_env(env_cfg["id"], rid["scale"], env_cfg.get("max_episode_steps"))
    actor = Actor(env.observation_space.shape[0], env.action_space.low.astype(np.float64),
                  env.action_space.high.astype(np.float64), sac_config(ctx.params["agent"], env_cfg))
    tensors = load_checkpoint(ctx.inputs["model"])
    actor.load_state_dict({k[len("actor."):]: v for k, v in tensors.items() if k.startswith("actor.")})
    episodes = evaluate(env, greedy_policy(actor), eval_reset_seeds(cfg))
    rows = [{"env": rid["env"], "scale": rid["scale"], "temperature": rid["temperature"], "seed": rid["seed"],
             "episode": i, "action_dim": env.action_space.shape[0], **e} for i, e in enumerate(episodes)]
    ctx.write_table("returns", pa.Table.from_pylist(rows, RETURNS_SCHEMA), RETURNS_SCHEMA)
    returns = np.array([e["return"] for e in episodes])
    fail_below = env_cfg["fail_below"]
    metrics = {**rid, "episodes": len(returns), "median_return": float(np.median(returns)),
               "mean_return": float(returns.mean()), "min_return": float(returns.min()),
               "fail_below": fail_below, "failures": int((returns < fail_below).sum())}
    log.info("%s s=%g %s seed %d: median return %.1f, %d/%d episodes below %g", rid["env"], rid["scale"],
             rid["temperature"], rid["seed"], metrics["median_return"], metrics["failures"], len(returns),
             fail_below)
    ctx.write_json("metrics", metrics)
