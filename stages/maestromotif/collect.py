"""NLE rollouts for MaestroMotif's captions: Motif's collector (stages/envs/nethack_collect.py, shared),
uniform random actions, the "train" seed split; one row per step with the message and blstats
(depth, dungeon number, gold, HP/max HP, XP level, hunger...). The previous message of a row is the
message of the row before it in the same episode (the captions stage reads it from there)."""
from __future__ import annotations

import logging

import numpy as np

from stages.common.stage import StageContext
from stages.envs.nethack import episode_seed, make_env
from stages.envs.nethack_collect import N_ACTIONS, STEPS_SCHEMA, collect

log = logging.getLogger(__name__)


class RandomActor:
    """Uniform random actions (the collector draws them up front from `rng`)."""

    agent = None

    def __init__(self, seed: int):
        self.n_actions, self.rng = N_ACTIONS, np.random.default_rng(seed)

    def __call__(self, obs: list[dict]) -> np.ndarray:
        return self.rng.integers(self.n_actions, size=len(obs))


def run(ctx: StageContext) -> None:
    cfg, env_cfg = ctx.params["collect"], ctx.params["env"]
    table = collect(cfg["steps"], lambda k: episode_seed("train", cfg["seed"], k), RandomActor(cfg["seed"]),
                    lambda: make_env(env_cfg["max_episode_steps"]))
    depth = table.column("depth").to_numpy()
    log.info("collected %d steps, %d episodes, max depth %d", table.num_rows,
             int(table.column("episode").to_numpy().max()) + 1, int(depth.max()))
    ctx.write_table("steps", table, STEPS_SCHEMA)
