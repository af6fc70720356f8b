"""Direct-shooting reference: Adam over an open-loop control sequence through the true simulator.

Per task and horizon H: `restarts` random initial sequences (pre-tanh, a = tanh(u)) for each evaluation
initial state (the pendulum's single decision a_0: a grid of `grid_points` values, then `polish_steps`
of Adam from the best), `steps` Adam steps on the undiscounted episode cost, the best restart kept per
state. The
mean over evaluation states is the reference every policy's true cost is compared with (evaluate).
"""

from __future__ import annotations

import logging

import pyarrow as pa
import torch

from stages.awm.tasks import Task, make_task
from stages.common.stage import StageContext

log = logging.getLogger(__name__)
OPTIMUM_SCHEMA = pa.schema(
    [
        ("horizon", pa.int64()),
        ("cost", pa.float64()),
        ("restart_spread", pa.float64()),
        ("restarts", pa.int64()),
        ("steps", pa.int64()),
        ("controls", pa.list_(pa.float32())),
    ]
)


def eval_states(task: Task, n: int, seed: int) -> torch.Tensor:
    """The evaluation initial states shared by optimum, evaluate and (for the pendulum) train_policy."""
    return task.eval_initial(n if task.name == "pendulum" else 1, torch.Generator().manual_seed(seed))


def grid_shoot(task: Task, s0: torch.Tensor, horizon: int, points: int, steps: int, lr: float):
    """One decision (the pendulum's a_0): a grid over [-1, 1], then Adam from the best grid point."""
    n = s0.shape[0]
    grid = torch.linspace(-1, 1, points)
    with torch.no_grad():
        a = torch.zeros(points * n, horizon, task.act_dim)
        a[:, 0, :] = grid.repeat_interleave(n)[:, None]
        cost = task.episode_cost(task.rollout(s0.repeat(points, 1), a), a).view(points, n)
        cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
    u = torch.atanh(grid[cost.argmin(0)].clamp(-0.999, 0.999))[:, None].clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        a = torch.zeros(n, horizon, task.act_dim)
        a = a.index_put((torch.arange(n), torch.zeros(n, dtype=torch.long)), torch.tanh(u))
        c = task.episode_cost(task.rollout(s0, a), a)
        opt.zero_grad()
        c.sum().backward()
        u.grad.nan_to_num_(0.0)
        opt.step()
    with torch.no_grad():
        a = torch.zeros(n, horizon, task.act_dim)
        a[:, 0] = torch.tanh(u)
        polished = task.episode_cost(task.rollout(s0, a), a)
        best_grid = cost.min(0).values
        take = polished < best_grid
        a_grid = torch.zeros_like(a)
        a_grid[:, 0, 0] = grid[cost.argmin(0)]
        controls = torch.where(take[:, None, None], a, a_grid)
        return torch.minimum(polished, best_grid), controls, cost


def shoot(
    task: Task, s0: torch.Tensor, horizon: int, restarts: int, steps: int, lr: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best cost per state (n,), best controls (n, H, da)) over restarts."""
    g = torch.Generator().manual_seed(seed)
    n = s0.shape[0]
    x0 = s0.repeat(restarts, 1)
    u = (1.5 * (2 * torch.rand(restarts * n, horizon, task.act_dim, generator=g) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        cost = task.episode_cost(task.rollout(x0, torch.tanh(u)), torch.tanh(u))
        opt.zero_grad()
        cost.sum().backward()
        u.grad.nan_to_num_(0.0)  # a restart that blows up must not poison the others
        opt.step()
    with torch.no_grad():
        a = task.mask_action_seq(torch.tanh(u))
        cost = task.episode_cost(task.rollout(x0, a), a).view(restarts, n)
        cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
        best = cost.argmin(0)
        controls = a.view(restarts, n, horizon, -1)[best, torch.arange(n)]
        return cost[best, torch.arange(n)], controls, cost


def run(ctx: StageContext) -> None:
    name, cfg, ev = ctx.wildcards["task"], ctx.params["optimum"], ctx.params["evaluate"]
    task_cfg = ctx.params["task"]
    task = make_task(name, task_cfg)
    s0 = eval_states(task, ev["n_states"], ev["seed"])
    rows = []
    for H in task_cfg["horizons"]:
        if task.act_steps == 1:
            best, controls, all_costs = grid_shoot(task, s0, H, cfg["grid_points"], cfg["polish_steps"], cfg["lr"])
        else:
            best, controls, all_costs = shoot(task, s0, H, cfg["restarts"], cfg["steps"], cfg["lr"], seed=H)
        if not torch.isfinite(best).all():
            raise FloatingPointError(f"{name} H={H}: every direct-shooting restart diverged")
        spread = float((all_costs.min(0).values - all_costs.median(0).values).abs().mean())
        rows.append(
            {
                "horizon": H,
                "cost": float(best.mean()),
                "restart_spread": spread,
                "restarts": cfg["restarts"],
                "steps": cfg["steps"],
                "controls": controls[0].reshape(-1).tolist(),
            }
        )
        log.info("%s H=%d: direct-shooting cost %.6g", name, H, rows[-1]["cost"])
    ctx.write_table("optimum", pa.Table.from_pylist(rows, schema=OPTIMUM_SCHEMA), OPTIMUM_SCHEMA)
