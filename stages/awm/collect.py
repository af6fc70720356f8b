"""Exploratory rollouts of one task through the true simulator: random and perturbed controls.

Controls (agent units, [-1, 1]): `uniform` i.i.d. per step, `smooth` (an AR(1) walk), `perturbed` (a
constant level plus noise); the pendulum draws its one action (a_0) uniformly and holds the rest at 0.
Initial states come from the task's wider exploration law. The test split uses its own seed, shared by
every training seed, so every world model is scored on the same held-out episodes.
"""

from __future__ import annotations

import logging

import torch

from stages.awm.data import rollout_table
from stages.awm.tasks import Task, make_task
from stages.common.stage import StageContext

log = logging.getLogger(__name__)
CONTROLS = ("uniform", "smooth", "perturbed")


def random_controls(task: Task, n: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    H, da = task.max_horizon, task.act_dim
    kinds = [CONTROLS[i % len(CONTROLS)] for i in range(n)]
    a = torch.empty(n, H, da)
    for i, kind in enumerate(kinds):
        if kind == "uniform":
            a[i] = 2 * torch.rand(H, da, generator=g) - 1
        elif kind == "smooth":
            x, rho = 2 * torch.rand(da, generator=g) - 1, 0.9
            for t in range(H):
                x = (rho * x + (1 - rho**2) ** 0.5 * torch.randn(da, generator=g)).clamp(-1, 1)
                a[i, t] = x
        else:
            level = 2 * torch.rand(da, generator=g) - 1
            a[i] = (level + 0.3 * torch.randn(H, da, generator=g)).clamp(-1, 1)
    if task.act_steps is not None:
        a[:, task.act_steps :] = 0.0
        a[:, : task.act_steps] = 2 * torch.rand(n, task.act_steps, da, generator=g) - 1
        kinds = ["uniform"] * n
    return a, kinds


def simulate(task: Task, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    s0 = task.explore_initial(n, g)
    actions, kinds = random_controls(task, n, g)
    with torch.no_grad():
        states = task.rollout(s0, actions)
    if not torch.isfinite(states).all():
        raise FloatingPointError(f"{task.name}: the simulator produced non-finite states while collecting")
    return states, actions, kinds


def run(ctx: StageContext) -> None:
    name, cfg = ctx.wildcards["task"], ctx.params["collect"]
    task = make_task(name, ctx.params["task"])
    import pyarrow as pa

    parts = []
    for split, n, seed in (("train", cfg["n_train"], cfg["train_seed"]), ("test", cfg["n_test"], cfg["test_seed"])):
        states, actions, kinds = simulate(task, n, seed)
        parts.append(rollout_table(split, states, actions, kinds))
        log.info(
            "%s %s: %d episodes of %d steps, state range [%.3g, %.3g]",
            name,
            split,
            n,
            task.max_horizon,
            states.min().item(),
            states.max().item(),
        )
    table = pa.concat_tables(parts)
    ctx.write_table("rollouts", table, table.schema)
