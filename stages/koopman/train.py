"""Train a Koopman autoencoder on windows of length T cut at random from the train trajectories.

Loss = w_recon ||x - psi(phi(x))||^2 + w_align ||K^s phi(x_t) - phi(x_{t+s})||^2
     + w_pred ||x_{t+s} - psi(K^s phi(x_t))||^2,  s = 1..T  (states standardised with train stats).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from stages.common.artifacts import atomic_path
from stages.common.stage import StageContext
from stages.koopman.model import KoopmanAE, window_losses
from stages.koopman.simulate import load_splits

log = logging.getLogger(__name__)


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
            rows.append((step, loss.item(), *(parts[k].item() for k in ("recon", "align", "pred"))))
            if not np.isfinite(rows[-1][1]):
                raise FloatingPointError(f"training loss is {rows[-1][1]} at step {step}")
    log.info("trained %d steps in %.1f s; final loss %.3g (recon %.3g, align %.3g, pred %.3g)",
             cfg["steps"], time.perf_counter() - start, *rows[-1][1:])

    ctx.save_checkpoint("model", model.state_dict())
    with atomic_path(ctx.outputs["curve"]) as tmp:
        lines = ["step,loss,recon,align,pred"] + [f"{s},{a:.6g},{b:.6g},{c:.6g},{e:.6g}"
                                                  for s, a, b, c, e in rows]
        tmp.write_text("\n".join(lines) + "\n")
