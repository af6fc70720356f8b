"""Gradient study: norm and variance of dJ/dtheta through the simulator and each world model, per H.

One policy initialisation shared by every seed (`policy_init_seed`; its output bias set so the initial
action is `init_action`, for the pendulum theta1 = init_action * 180 degrees, in the chaotic regime), so
gradient vectors of different seeds live in one space; the seed draws the initial states and picked the
world models. For each kind and H: per-initial-state gradients g_i = dJ_i/dtheta with the observation
detached (dJ/da from one backward pass, then one policy vector-Jacobian product per state), their norms,
the mean vector and the within-seed variance (mean over parameters of the variance over states); the
aggregate adds the between-seed part. Non-finite gradients are counted and recorded, never averaged in.
"""

from __future__ import annotations

import logging
import math

import pyarrow as pa
import torch

from stages.awm.models import Policy, SimulatorModel, imagine
from stages.awm.tasks import make_task
from stages.awm.train_world_model import load_world_models
from stages.common.stage import StageContext

log = logging.getLogger(__name__)
GRADIENT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("horizon", pa.int64()),
        ("n", pa.int64()),
        ("n_nonfinite", pa.int64()),
        ("norm_mean", pa.float64()),
        ("norm_of_mean", pa.float64()),
        ("var_within", pa.float64()),
        ("cost_mean", pa.float64()),
        ("sample_norms", pa.list_(pa.float64())),
        ("mean_grad", pa.list_(pa.float32())),
    ]
)


def study_policy(task, cfg: dict, hidden: int) -> Policy:
    torch.manual_seed(cfg["policy_init_seed"])
    policy = Policy(task.obs_dim, task.act_dim, task.obs_scale, task.max_horizon, hidden)
    with torch.no_grad():
        policy.net[-1].bias.fill_(math.atanh(cfg["init_action"]))
    return policy


def per_state_gradients(
    model, task, policy: Policy, s0: torch.Tensor, horizon: int, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradients (n, n_params), costs (n,)) of J_i = cost of initial state i."""
    params = list(policy.parameters())
    probe = torch.zeros(s0.shape[0], horizon, task.act_dim, requires_grad=True)
    states, actions = imagine(model, task, s0, policy, horizon, detach_obs=True, probe=probe)
    costs = task.episode_cost(states, actions, gamma)
    (g_actions,) = torch.autograd.grad(costs.sum(), probe, retain_graph=True)  # rows are independent
    grads = []
    for i in range(s0.shape[0]):
        gi = torch.autograd.grad(actions[i], params, grad_outputs=g_actions[i], retain_graph=True, allow_unused=True)
        grads.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gi, params)]))
    return torch.stack(grads), costs.detach()


def run(ctx: StageContext) -> None:
    name, cfg = ctx.wildcards["task"], ctx.params["gradients"]
    task = make_task(name, ctx.params["task"])
    models = {"sim": SimulatorModel(task)}
    models.update(load_world_models(ctx.inputs["models"], task, ctx.params["world_model"], task.max_horizon))
    policy = study_policy(task, cfg, ctx.params["policy"]["hidden"])
    s0 = task.eval_initial(cfg["n_states"], torch.Generator().manual_seed(10_000 + ctx.seed))
    rows = []
    for kind in [k for k in cfg["kinds"] if k in models]:
        for p in getattr(models[kind], "parameters", lambda: [])():
            p.requires_grad_(False)
        for H in cfg["horizons"]:
            if H > task.max_horizon:
                raise ValueError(f"gradients.horizons: H={H} exceeds the task's max_horizon {task.max_horizon}")
            g, costs = per_state_gradients(models[kind], task, policy, s0, H, ctx.params["policy"]["gamma"])
            ok = torch.isfinite(g).all(1)
            norms = g.norm(dim=1)
            gf = g[ok].double()
            rows.append(
                {
                    "kind": kind,
                    "horizon": H,
                    "n": int(ok.sum()),
                    "n_nonfinite": int((~ok).sum()),
                    "norm_mean": float(norms[ok].mean()) if ok.any() else math.nan,
                    "norm_of_mean": float(gf.mean(0).norm()) if ok.any() else math.nan,
                    "var_within": float(gf.var(0).mean()) if ok.sum() > 1 else math.nan,
                    "cost_mean": float(costs[ok].mean()) if ok.any() else math.nan,
                    "sample_norms": norms.double().tolist(),
                    "mean_grad": gf.mean(0).float().tolist() if ok.any() else [],
                }
            )
            if not ok.all():
                log.warning("%s %s H=%d: %d non-finite gradients", name, kind, H, int((~ok).sum()))
            log.info("%s %-8s H=%3d: |g| %.4g  var %.4g", name, kind, H, rows[-1]["norm_mean"], rows[-1]["var_within"])
    ctx.write_table("gradients", pa.Table.from_pylist(rows, schema=GRADIENT_SCHEMA), GRADIENT_SCHEMA)
