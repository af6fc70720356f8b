"""Exact evaluation of a trained sampler: its terminal distribution by DP over the grid (no sampling).

Metrics: L1 = sum_x |P_T(x) - R(x)/Z|; |log Z estimate - log Z| (TB: the log Z parameter, DB/SubTB: log F(s0),
soft Q-learning: V(s0)); trajectory entropy of P_F against its maximum H(X) + E[log n(X)] under R/Z;
modes visited during training (last curve row) and the probability mass the sampler puts on the modes.
"""
from __future__ import annotations

import csv
import logging

import pyarrow as pa
import torch

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.maxent_gfn.model import GFNModel
from stages.maxent_gfn.train import make_env

log = logging.getLogger(__name__)

DISTRIBUTION_SCHEMA = pa.schema([
    ("state", pa.int64()),              # index of x (lexicographic over coordinates)
    ("coords", pa.list_(pa.int32())),
    ("log_reward", pa.float64()),
    ("target", pa.float64()),           # R(x)/Z
    ("model", pa.float64()),            # P_T(x), exact
    ("is_mode", pa.bool_()),
])


def evaluate(model: GFNModel, loss: str) -> tuple[dict, torch.Tensor]:
    env = model.env
    log_pf = model.log_pf_all()
    p = env.terminal_distribution(log_pf)
    est = model.log_Z_estimate(loss)
    h, h_max = env.trajectory_entropy(log_pf), env.max_trajectory_entropy()
    metrics = {
        "l1": float((p - env.target).abs().sum()),
        "log_Z": env.log_Z, "log_Z_estimate": est, "logz_error": abs(est - env.log_Z),
        "trajectory_entropy": h, "max_trajectory_entropy": h_max, "entropy_gap": h_max - h,
        "uniform_pb_trajectory_entropy": env.uniform_pb_trajectory_entropy(),
        "mode_mass": float(p[env.mode_mask].sum()), "target_mode_mass": float(env.target[env.mode_mask].sum()),
        "n_modes": int(env.mode_mask.sum()),
    }
    if model.log_n_net is not None:
        with torch.no_grad():
            err = model.log_n(env.all_states).double() - env.log_n_paths(env.all_states)
        metrics["log_n_max_abs_error"] = float(err.abs().max())
    return metrics, p


def run(ctx: StageContext) -> None:
    env = make_env(ctx.params["grid"])
    objective = ctx.params["objective"]
    model = GFNModel.from_params(env, ctx.params["model"], objective)
    model.load_state_dict(load_checkpoint(ctx.inputs["model"], list(model.state_dict())))
    metrics, p = evaluate(model, objective["loss"])
    with open(ctx.inputs["curve"]) as fh:
        last = list(csv.DictReader(fh))[-1]
    metrics.update(loss=objective["loss"], backward=objective["backward"], iterations=int(last["step"]),
                   modes_found=int(last["modes_found"]), states_visited=int(last["states_visited"]),
                   ndim=env.ndim, height=env.height)
    log.info("exact L1 %.4f, |logZ err| %.4f, entropy %.4f / max %.4f, modes %d/%d", metrics["l1"],
             metrics["logz_error"], metrics["trajectory_entropy"], metrics["max_trajectory_entropy"],
             metrics["modes_found"], metrics["n_modes"])
    x = env.all_states
    table = pa.table({
        "state": env.index(x).numpy(),
        "coords": pa.array(x.int().tolist(), pa.list_(pa.int32())),
        "log_reward": env.log_reward(x).numpy(),
        "target": env.target.numpy(),
        "model": p.numpy(),
        "is_mode": env.mode_mask.numpy(),
    })
    ctx.write_table("distribution", table, DISTRIBUTION_SCHEMA)
    ctx.write_json("metrics", metrics)
