"""Train one network, dense or with Demon Pruning.

DemP (when the rule passes the `demon` and `sweep` params; lambda_max is entry <i> of the sweep,
<i> the job's {lam} wildcard, variant demp_l<i>): loss = CE + lambda(t) R(theta) with a one-cycle lambda(t);
after every optimizer step, Gaussian noise of one-cycle scale sigma(t) on the parameters of live units;
every `pruning_freq` steps the units that are dead on the probe set are removed for real (weights,
BN, next layer's inputs, optimizer state) and training goes on with the smaller network.
The dense run is the same loop with lambda = sigma = 0 and no pruning.

The checkpoint holds the network at its final widths and the optimizer state; the final prune is the
next stage's job. The log (curve.csv) has the live-unit fraction on the probe set every `log_every` steps,
and the training speed: `elapsed_s`, wall seconds spent in training steps so far (the optimizer step,
noise and in-training pruning; not the logging probe pass), and `steps_per_s` since the previous row.
These two columns are wall-clock measurements and vary between re-runs; everything else in the curve and
the checkpoint is deterministic. The evaluate stage turns them into steps/s per pruning period.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from stages.common.stage import StageContext
from stages.demp import demon, nets
from stages.demp.data import load_splits

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["step", "loss", "ce", "reg", "lam", "sigma", "lr", "batch_acc", "live_fraction",
                 "live_units", "width", "elapsed_s", "steps_per_s"]


def make_opt(model: nn.Module, cfg: Mapping) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])


def lr_at(cfg: Mapping, step: int, total: int) -> float:
    if cfg["lr_schedule"] == "cosine":
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
    return cfg["lr"]


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random shifts by up to `pad` pixels (zero padded) and horizontal flips, per example."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    j = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (i[:, None] + torch.arange(h))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w))[:, None, None, :]
    out = xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class Batches:
    """Indices of each step's minibatch: a fresh permutation of the train set every epoch."""

    def __init__(self, n: int, size: int, gen: torch.Generator):
        self.n, self.size, self.gen, self.perm, self.pos = n, min(size, n), gen, None, n

    def next(self) -> torch.Tensor:
        if self.pos + self.size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        self.pos += self.size
        return self.perm[self.pos - self.size:self.pos]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Mapping, criterion: Mapping, steps: int,
        seed: int, *, demp: Mapping | None = None, reg: str = "l2", lam_max: float = 0.0, do_augment: bool = False,
        opt_state: Mapping | None = None, full_width: int | None = None,
        on_step: Callable | None = None, progress=iter) -> tuple[nn.Module, dict, list[dict]]:
    """Train for `steps` steps; returns the (possibly pruned) network, its optimizer state by
    parameter name, and the log rows. Live fractions are relative to `full_width` units (default:
    the network's width at the start). `on_step(step, model)` runs after every step (timing hooks)."""
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)   # noise draws must not shift the batches
    probe = demon.probe_set(x, criterion["probe_size"], seed)
    eps = criterion["eps"]
    full = full_width or sum(model.widths)
    model.train()
    opt = make_opt(model, cfg)
    nets.load_opt_state(model, opt, opt_state or {})
    batches, rows = Batches(len(x), cfg["batch_size"], gen), []
    elapsed, logged = 0.0, (0, 0.0)   # seconds in training steps; (step, elapsed) at the previous row

    for step in progress(range(1, steps + 1)):
        start = time.perf_counter()
        lr = lr_at(cfg, step - 1, steps)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = batches.next()
        xb = augment(x[idx], gen) if do_augment else x[idx]
        lam = demon.schedule(demp, lam_max, step - 1, steps) if demp else 0.0
        sigma = demon.schedule(demp, demp["noise_peak"], step - 1, steps) if demp else 0.0
        batch_live = demp is not None and demp["noise_mask"] == "batch_live" and sigma > 0
        taps = nets.acts(model)
        if batch_live:
            for a, width in zip(taps, model.widths):
                a.acc = torch.zeros(width)
        logits = model(xb)
        ce = F.cross_entropy(logits, y[idx])
        r = demon.regularizer(model, reg) if lam > 0 else torch.zeros(())
        loss = ce + lam * r
        opt.zero_grad()
        loss.backward()
        opt.step()
        if batch_live:
            live = [a.acc > 0 for a in taps]
            for a in taps:
                a.acc = None
        if sigma > 0:
            demon.add_noise(model, sigma, live if batch_live else None, noise_gen)

        if demp and step % demp["pruning_freq"] == 0 and step < steps:
            sums = demon.activation_sums(model, probe)
            keep = demon.keep_indices(demon.dead_units(sums, eps), sums)
            if sum(len(k) for k in keep) < sum(model.widths):
                before = model.widths
                model, state = nets.prune(model, keep, nets.opt_state_by_name(model, opt))
                opt = make_opt(model, cfg)
                nets.load_opt_state(model, opt, state)
                log.info("step %d: pruned %s -> %s", step, before, model.widths)
        elapsed += time.perf_counter() - start
        if step % cfg["log_every"] == 0 or step == steps:
            sums = demon.activation_sums(model, probe)
            live_units = int(sum((s > eps).sum() for s in sums))
            rows.append({"step": step, "loss": loss.item(), "ce": ce.item(), "reg": r.item(), "lam": lam,
                         "sigma": sigma, "lr": lr,
                         "batch_acc": (logits.argmax(1) == y[idx]).float().mean().item(),
                         "live_fraction": live_units / full, "live_units": live_units,
                         "width": sum(model.widths), "elapsed_s": elapsed,
                         "steps_per_s": (step - logged[0]) / max(elapsed - logged[1], 1e-9)})
            logged = (step, elapsed)
            if not math.isfinite(rows[-1]["loss"]):
                raise FloatingPointError(f"training loss is {rows[-1]['loss']} at step {step}")
        if on_step is not None:
            on_step(step, model)
    return model, nets.opt_state_by_name(model, opt), rows


def run(ctx: StageContext) -> None:
    cfg, model_cfg = ctx.params["train"], ctx.params["model"]
    data = load_splits(ctx.inputs["dataset"])
    x, y = data["train"]
    model = nets.build(model_cfg, x.shape[1:], int(y.max()) + 1)
    demp, sweep = ctx.params.get("demon"), ctx.params.get("sweep", {"reg": "l2"})
    # the dense rule has no {lam} wildcard and passes no `demon` params
    variant = f"demp_l{ctx.wildcards['lam']}" if demp else "dense"
    lam_max = sweep["lambda_max"][int(ctx.wildcards["lam"])] if demp else 0.0
    model, opt_state, rows = fit(
        model, x, y, cfg, ctx.params["criterion"], cfg["steps"], ctx.seed, demp=demp, reg=sweep["reg"],
        lam_max=lam_max, do_augment=ctx.params["dataset"].get("augment", False),
        progress=lambda it: ctx.progress(it, total=cfg["steps"], desc="train"))
    last = rows[-1]
    log.info("%s (lambda_max %g): widths %s, live fraction %.3f, final batch acc %.3f",
             variant, lam_max, model.widths, last["live_fraction"], last["batch_acc"])
    ctx.save_checkpoint("model", nets.to_tensors(model, opt_state))
    ctx.write_curve("curve", rows, CURVE_COLUMNS)
