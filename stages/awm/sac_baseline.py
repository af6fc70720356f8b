"""Model-free baseline: SAC (stages/rl/sac.py) on a Myriad ODE, evaluated like the gradient-based policies.

The ODE becomes an episodic gymnasium-style env: observation (x, t / H), action in [-1, 1] (rescaled to the
control bounds by the task), reward = -stage cost, terminated after H = the task's longest horizon (the
time feature keeps it Markov; no bootstrapping past the end). The greedy policy's true cost at H goes in
the same evaluation table as the other kinds (kind "sac"), against the same direct-shooting optimum.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import torch

from stages.awm.evaluate import EVALUATION_SCHEMA
from stages.awm.tasks import MyriadODE, make_task
from stages.common import artifacts
from stages.common.stage import StageContext
from stages.rl.sac import SAC, SACConfig, TemperatureConfig, greedy_policy, train

log = logging.getLogger(__name__)


class ODEEnv:
    """reset(seed) / step(action) over a MyriadODE from its fixed x0, horizon H."""

    def __init__(self, task: MyriadODE, horizon: int) -> None:
        self.task, self.H = task, horizon
        self.low, self.high = np.full(task.act_dim, -1.0), np.full(task.act_dim, 1.0)

    def _obs(self) -> np.ndarray:
        return np.append(self.x[0].numpy() / np.asarray(self.task.obs_scale), self.t / self.H).astype(np.float32)

    def reset(self, seed: int | None = None):
        self.x, self.t = self.task.eval_initial(1, torch.Generator()), 0
        return self._obs(), {}

    def step(self, action):
        a = torch.as_tensor(np.asarray(action, np.float32)).view(1, -1)
        with torch.no_grad():
            cost = float(self.task.stage_cost(self.x, a, self.t))
            self.x = self.task.step(self.x, a, self.t)
        self.t += 1
        return self._obs(), -cost, self.t >= self.H, False, {}


def run(ctx: StageContext) -> None:
    name, cfg = ctx.wildcards["task"], ctx.params["sac"]
    task = make_task(name, ctx.params["task"])
    if not isinstance(task, MyriadODE):
        raise ValueError(f"awm.sac runs on the Myriad ODE tasks, not '{name}'")
    H = max(ctx.params["task"]["horizons"])
    env = ODEEnv(task, H)
    agent = SAC(
        task.obs_dim + 1,
        env.low,
        env.high,
        SACConfig.from_dict(
            {
                "hidden": cfg["hidden"],
                "layers": 2,
                "batch_size": cfg["batch_size"],
                "learning_starts": cfg["learning_starts"],
                "gamma": cfg["gamma"],
                "buffer_size": cfg["episodes"] * H,
            }
        ),
        TemperatureConfig.from_dict({"kind": "auto"}),
        ctx.seed,
    )
    progress = train(env, agent, cfg["episodes"] * H, ctx.seed)
    returns = [r["return"] for r in progress.rows]
    policy = greedy_policy(agent.actor)
    obs, _ = env.reset()
    cost, done = 0.0, False
    while not done:
        obs, rew, done, _, _ = env.step(policy(obs))
        cost -= rew
    opt = {int(r["horizon"]): r["cost"] for r in artifacts.read_table(ctx.inputs["optimum"]).to_pylist()}[H]
    log.info(
        "%s SAC seed %d: %d episodes, last return %.4g, greedy cost %.4g (optimum %.4g)",
        name,
        ctx.seed,
        len(returns),
        returns[-1] if returns else math.nan,
        cost,
        opt,
    )
    finite = math.isfinite(cost) and all(torch.isfinite(v).all() for v in agent.policy_state().values())
    if finite:
        ctx.save_checkpoint("policy", agent.policy_state())
    else:
        raise FloatingPointError(f"SAC on {name}, seed {ctx.seed}: non-finite policy or cost {cost}")
    ctx.write_curve("curve", progress.rows)
    ctx.write_table(
        "evaluation",
        pa.Table.from_pylist(
            [
                {
                    "kind": "sac",
                    "horizon": H,
                    "cost": cost,
                    "optimum": opt,
                    "rel_gap": (cost - opt) / abs(opt),
                    "finite": finite,
                }
            ],
            schema=EVALUATION_SCHEMA,
        ),
        EVALUATION_SCHEMA,
    )
