"""Train a Koopman autoencoder on windows of length T cut at random from the train trajectories.

Loss = w_recon ||x - psi(phi(x))||^2 + w_align ||K^s phi(x_t) - phi(x_{t+s})||^2
     + w_pred ||x_{t+s} - psi(K^s phi(x_t))||^2,  s = 1..T  (states standardised with train stats).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from stages.common.stage import StageContext
from stages.koopman.model import KoopmanAE, window_losses
from stages.koopman.simulate import load_splits

log = logging.getLogger(__name__)

CURVE_COLUMNS = ("step", "loss", "recon", "align", "pred")


def run(ctx: StageContext) -> None:
    system, model_cfg, cfg = ctx.params["system"], ctx.params["model"], ctx.params["train"]
    states, _ = load_splits(ctx.inputs["trajectories"])["train"]
    data = torch.tensor(states, dtype=torch.float32)         # (n_traj, train_steps + 1, d)
    n_traj, length, d = data.shape
    T = cfg["window"]
    if T >= length:
        raise ValueError(f"train.window {T} needs trajectories longer than {length - 1} steps")

    model = KoopmanAE.from_params(d, model_cfg, system)
    flat = data.reshape(-1, d)
    model.state_mean.copy_(flat.mean(0))
    model.state_std.copy_(flat.std(0))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["steps"])
    w = cfg["loss_weights"]
    offsets = torch.arange(T + 1)

    rows, start = [], time.perf_counter()
    for step in ctx.progress(range(1, cfg["steps"] + 1), total=cfg["steps"], desc="train"):
        traj = torch.randint(n_traj, (cfg["batch_size"],))
        t0 = torch.randint(length - T, (cfg["batch_size"],))
        x = data[traj[:, None], t0[:, None] + offsets]     # (batch, T + 1, d)
        parts = window_losses(model, x)
        loss = sum(w[name] * value for name, value in parts.items())
        opt.zero_grad()
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        sched.step()
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            rows.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
            if not np.isfinite(rows[-1]["loss"]):
                raise FloatingPointError(f"training loss is {rows[-1]['loss']} at step {step}")
    log.info("trained %d steps in %.1f s; final loss %.3g (recon %.3g, align %.3g, pred %.3g)",
             cfg["steps"], time.perf_counter() - start, *(rows[-1][c] for c in CURVE_COLUMNS[1:]))

    ctx.save_checkpoint("model", model.state_dict())
    ctx.write_curve("curve", rows, CURVE_COLUMNS)
