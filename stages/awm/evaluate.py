"""Evaluate every trained policy in the true environment: cost per horizon against the direct-shooting optimum.

The evaluation initial states are the optimum stage's (the ODEs' fixed x0; the pendulum's n_states
draws), so each policy's cost and the reference are on the same states. rel_gap = (cost - optimum) /
|optimum| (NaN where the optimum is ~0, as on the pendulum, whose optimum cost is 0).
"""

from __future__ import annotations

import math

import pyarrow as pa
import torch

from stages.awm.models import SimulatorModel, imagine
from stages.awm.optimum import eval_states
from stages.awm.tasks import make_task
from stages.awm.train_policy import load_policies
from stages.common import artifacts
from stages.common.stage import StageContext

EVALUATION_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("horizon", pa.int64()),
        ("cost", pa.float64()),
        ("optimum", pa.float64()),
        ("rel_gap", pa.float64()),
        ("finite", pa.bool_()),
    ]
)


def run(ctx: StageContext) -> None:
    name, ev = ctx.wildcards["task"], ctx.params["evaluate"]
    task = make_task(name, ctx.params["task"])
    optimum = {int(r["horizon"]): r["cost"] for r in artifacts.read_table(ctx.inputs["optimum"]).to_pylist()}
    policies = load_policies(ctx.inputs["policies"], task, ctx.params["policy"])
    s0 = eval_states(task, ev["n_states"], ev["seed"])
    sim = SimulatorModel(task)
    rows = []
    for label in sorted(policies):
        kind, h = label.split(".")
        H = int(h[1:])
        with torch.no_grad():
            states, actions = imagine(sim, task, s0, policies[label], H)
            cost = float(task.episode_cost(states, actions).mean())
        opt = optimum[H]
        rows.append(
            {
                "kind": kind,
                "horizon": H,
                "cost": cost,
                "optimum": opt,
                "rel_gap": (cost - opt) / abs(opt) if abs(opt) > 1e-8 else math.nan,
                "finite": math.isfinite(cost),
            }
        )
    ctx.write_table("evaluation", pa.Table.from_pylist(rows, schema=EVALUATION_SCHEMA), EVALUATION_SCHEMA)
