"""Train policies by backpropagating the imagined return through each world model and the simulator.

For every kind (sim = the true differentiable simulator, and each world model the checkpoint holds)
and every horizon H of the task: a fresh policy (same initial weights for every kind, so kinds are
paired), Adam on the imagined discounted cost sum_t gamma^t c(s_hat_t, a_t) (+ terminal), the
policy's observation detached by default (gradients flow only through the actions). Gradients are
clipped to `grad_clip` (the authors' 100). A non-finite cost or gradient is recorded with its step;
`on_nonfinite: skip` drops that update, `stop` restores the last finite policy and ends that run.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from stages.awm.models import Policy, SimulatorModel, imagine
from stages.awm.tasks import Task, make_task
from stages.awm.train_world_model import load_world_models
from stages.common.resume import ResumeState
from stages.common.stage import StageContext

log = logging.getLogger(__name__)


def policy_init_seed(seed: int, horizon: int) -> int:
    return 7919 * seed + horizon


def train_one(task: Task, model, horizon: int, cfg: dict, seed: int, rows: list, failures: list, label: str) -> Policy:
    torch.manual_seed(policy_init_seed(seed, horizon))
    policy = Policy(task.obs_dim, task.act_dim, task.obs_scale, task.max_horizon, cfg["hidden"])
    opt = torch.optim.Adam(policy.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(seed)
    good = copy.deepcopy(policy.state_dict())
    batch = cfg["batch_size"] if task.name == "pendulum" else 1  # the ODEs start from one fixed x0
    for step in range(1, cfg["steps"] + 1):
        s0 = task.eval_initial(batch, g)
        states, actions = imagine(model, task, s0, policy, horizon, cfg["detach_obs"])
        cost = task.episode_cost(states, actions, cfg["gamma"]).mean()
        opt.zero_grad()
        cost.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg["grad_clip"])
        if not (torch.isfinite(cost) and torch.isfinite(gnorm)):
            failures.append(
                {
                    "run": label,
                    "step": step,
                    "event": f"non-finite imagined cost {cost.item()} / grad norm {gnorm.item()}",
                    "action": cfg["on_nonfinite"],
                }
            )
            if cfg["on_nonfinite"] == "stop":
                policy.load_state_dict(good)
                break
            continue
        opt.step()
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            rows.append({"step": step, "run": label, "imagined_cost": cost.item(), "grad_norm": gnorm.item()})
            good = copy.deepcopy(policy.state_dict())
    return policy


def run(ctx: StageContext) -> None:
    name, cfg, wm_cfg = ctx.wildcards["task"], ctx.params["policy"], ctx.params["world_model"]
    task_cfg = ctx.params["task"]
    task = make_task(name, task_cfg)
    models = {"sim": SimulatorModel(task)}
    models.update(load_world_models(ctx.inputs["models"], task, wm_cfg, task.max_horizon))
    kinds = [k for k in cfg["kinds"] if k in models]
    missing = [k for k in cfg["kinds"] if k not in models]

    resume = ResumeState.for_output(ctx, "policies")
    tensors, progress = {}, {"done": [], "rows": [], "failures": [], "seconds": {}}
    saved = resume.load()
    if saved is not None:
        tensors, progress = saved
    for kind in kinds:
        for p in getattr(models[kind], "parameters", lambda: [])():
            p.requires_grad_(False)
        for H in task_cfg["horizons"]:
            label = f"{kind}.H{H}"
            if label in progress["done"]:
                continue
            start = time.perf_counter()
            policy = train_one(task, models[kind], H, cfg, ctx.seed, progress["rows"], progress["failures"], label)
            state = policy.state_dict()
            if all(torch.isfinite(v).all() for v in state.values()):
                tensors.update({f"{label}.{k}": v for k, v in state.items()})
            else:
                progress["failures"].append(
                    {
                        "run": label,
                        "step": cfg["steps"],
                        "event": "non-finite policy",
                        "action": "left out of the checkpoint",
                    }
                )
            progress["seconds"][label] = time.perf_counter() - start
            progress["done"].append(label)
            last = [r for r in progress["rows"] if r["run"] == label]
            log.info(
                "%s %s: %.1f s, imagined cost %.4g",
                name,
                label,
                progress["seconds"][label],
                last[-1]["imagined_cost"] if last else float("nan"),
            )
            resume.save(tensors, progress)

    ctx.save_checkpoint("policies", tensors)
    ctx.write_curve("curve", progress["rows"], ["step", "run", "imagined_cost", "grad_norm"])
    ctx.write_json(
        "metrics",
        {
            "task": name,
            "seed": ctx.seed,
            "failures": progress["failures"],
            "missing_world_models": missing,
            "train_seconds": progress["seconds"],
        },
    )
    resume.clear()


def load_policies(path, task: Task, cfg: dict) -> dict[str, Policy]:
    """{"<kind>.H<H>": policy} for every run the checkpoint holds."""
    from stages.common import artifacts

    tensors = artifacts.load_checkpoint(path)
    out = {}
    for label in sorted({".".join(k.split(".")[:2]) for k in tensors}):
        policy = Policy(task.obs_dim, task.act_dim, task.obs_scale, task.max_horizon, cfg["hidden"])
        policy.load_state_dict({k[len(label) + 1 :]: v for k, v in tensors.items() if k.startswith(label + ".")})
        out[label] = policy.eval()
    return out
