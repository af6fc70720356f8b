"""Roll out a policy in NetHackScore-v0 and store one row per observation: the caption (decoded message),
the blstats fields later stages read, the extrinsic reward and the episode structure.

Row `step` 0 of an episode is the observation after reset (action -1, reward 0); row t > 0 follows the
t-th action. NLE zeroes blstats (and the message) in the observation that ends a game, so the last row of
an episode that died has zero stats; read score and depth from the row before it. Episodes use seeds of
the "train" split (stream `collect.seed`), so evaluation levels are never collected. The policy is uniform
random or a train_rl checkpoint (input `policy`). An episode whose NLE core raises is logged, marked
`crashed` and ended; collection goes on with a rebuilt env (a reset that raises skips its seed). The loop
only copies the raw message bytes and blstats into preallocated arrays; decoding happens once at the end
(bench/motif_collect_speed.py checks the overhead against bare env.step). The rollout itself, `collect`,
lives in stages/envs/nethack_collect.py (shared with MaestroMotif) and is re-exported here.
"""
from __future__ import annotations

import logging

import numpy as np

from stages.common.stage import StageContext
from stages.envs.nethack import episode_seed, make_env, seed_split
from stages.envs.nethack_collect import MAX_FAILED_RESETS, N_ACTIONS, STEPS_SCHEMA, collect  # noqa: F401
from stages.motif.policy import PolicyActor, load_agent

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    cfg, env_cfg = ctx.params["collect"], ctx.params["env"]
    agent = None
    if "policy" in ctx.inputs:
        agent = load_agent(ctx.inputs["policy"], N_ACTIONS, ctx.params["policy"])
    actor = PolicyActor(agent, N_ACTIONS, seed=cfg["seed"])

    def seed_fn(k: int) -> int:
        seed = episode_seed("train", cfg["seed"], k)
        assert seed_split(seed) == "train"
        return seed

    table = collect(cfg["steps"], seed_fn, actor, lambda: make_env(env_cfg["max_episode_steps"]))
    messages = table.column("message").to_pylist()
    n_eps = int(table.column("episode").to_numpy().max()) + 1
    log.info("collected %d steps, %d episodes (%d crashed) with a %s policy; %d non-empty captions, "
             "%d distinct", table.num_rows, n_eps,
             len(set(np.asarray(table.column("episode"))[np.asarray(table.column("crashed"))])),
             "trained" if agent else "random", sum(map(bool, messages)), len(set(messages) - {""}))
    ctx.write_table("steps", table, STEPS_SCHEMA)
