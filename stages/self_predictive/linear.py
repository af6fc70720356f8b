"""Linear collapse study (method note, reference linear_code/learn.py): a 2-D linear encoder phi (no bias,
orthogonal init) trained by SGD on the ZP loss 0.5 * mean ||W^T [phi(h), a] - phi_bar(h')||^2, where W is
the least-squares transition refitted on the whole dataset at every step and held fixed (stop-gradient)
inside the step. The target phi_bar is phi itself (online), phi with a stop-gradient (detached), or an EMA
copy (tau 0.005). Collapse shows as the two encoder columns turning parallel: |cos| -> 1.

All seeds of one env and target train together as one batch (data padded with zero rows, which change
neither the least-squares fit nor the loss sums; the loss mean divides by each seed's own count).
Output: one row per (seed, target, logged step): |cos|, loss and the two column norms; the curve CSV holds
the median and quartiles of |cos| over seeds per target.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from stages.common.stage import StageContext
from stages.self_predictive.linear_envs import LinearTask, rollout_dataset

log = logging.getLogger(__name__)
TARGETS = ("online", "detached", "ema")
COLLAPSE_SCHEMA = pa.schema([("seed", pa.int64()), ("target", pa.string()), ("step", pa.int64()),
                             ("abs_cos", pa.float64()), ("loss", pa.float64()),
                             ("norm_min", pa.float64()), ("norm_max", pa.float64())])


def seed_sequences(seed: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(data, init) streams of a seed, split as in the reference (SeedSequence(seed).spawn(2))."""
    data, init = np.random.SeedSequence(seed).spawn(2)
    return data, init


def padded_data(task: LinearTask, seeds: list[int], n_traj: int, max_len: int):
    """(H, A, H', counts): datasets of every seed stacked along dim 0, zero padded to the longest."""
    sets = [rollout_dataset(task, n_traj, max_len, seed_sequences(seed)[0]) for seed in seeds]
    n_max = max(len(s[0]) for s in sets)
    out = []
    for k in range(3):
        stacked = np.zeros((len(sets), n_max, sets[0][k].shape[1]))
        for i, s in enumerate(sets):
            stacked[i, :len(s[k])] = s[k]
        out.append(torch.from_numpy(stacked))
    return (*out, torch.tensor([len(s[0]) for s in sets], dtype=torch.float64))


def orthogonal_init(n_seeds: int, dim: int, latent: int, seeds: list[int]) -> torch.Tensor:
    """(n_seeds, dim, latent) weights with orthonormal columns, each from its seed's own generator."""
    w = torch.empty(n_seeds, dim, latent, dtype=torch.float64)
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed_sequences(seed)[1].generate_state(1)[0]))
        q, r = torch.linalg.qr(torch.randn(dim, latent, generator=g, dtype=torch.float64))
        w[i] = q * torch.sign(torch.diagonal(r))  # Haar-distributed orthonormal columns
    return w


def column_stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|cos| between the two encoder columns, and the smaller and larger column norm, per seed."""
    norms = w.norm(dim=1)
    cos = (w[:, :, 0] * w[:, :, 1]).sum(1) / (norms[:, 0] * norms[:, 1])
    return cos.abs(), norms.min(1).values, norms.max(1).values


def gram_blocks(h: torch.Tensor, a: torch.Tensor, h_next: torch.Tensor) -> dict[str, torch.Tensor]:
    """Second moments of the data per seed. The loss is quadratic in the features, so every step needs
    only these (D x D) blocks, not the (N x D) data: ~10x cheaper than two passes over the data."""
    t = lambda x: x.mT  # noqa: E731
    return {"hh": t(h) @ h, "hn": t(h) @ h_next, "nn": t(h_next) @ h_next, "ah": t(a) @ h,
            "an": t(a) @ h_next, "aa": t(a) @ a}


def zp_loss(g: dict[str, torch.Tensor], w: torch.Tensor, w_target: torch.Tensor,
            counts: torch.Tensor) -> torch.Tensor:
    """Per-seed 0.5 * mean_t ||T^T [z_t, a_t] - z'_t||^2 with z = H w, z' = H' w_target and T the
    least-squares transition (held fixed), all from the Gram blocks."""
    zz = w.mT @ g["hh"] @ w                                         # Z^T Z
    za = w.mT @ g["ah"].mT                                          # Z^T A
    xx = torch.cat([torch.cat([zz, za], -1), torch.cat([za.mT, g["aa"]], -1)], -2)   # X^T X, X = [Z, A]
    xz = torch.cat([w.mT @ g["hn"] @ w_target, g["an"] @ w_target], -2)               # X^T Z'
    tt = w_target.mT @ g["nn"] @ w_target                                             # Z'^T Z'
    with torch.no_grad():  # the transition is refitted on the full data and held fixed
        trans = torch.linalg.lstsq(xx, xz, driver="gelsd").solution
    sq = ((trans.mT @ xx @ trans).diagonal(dim1=-2, dim2=-1).sum(-1)
          - 2 * (trans.mT @ xz).diagonal(dim1=-2, dim2=-1).sum(-1) + tt.diagonal(dim1=-2, dim2=-1).sum(-1))
    return 0.5 * sq / counts


def train_target(g: dict[str, torch.Tensor], counts: torch.Tensor, w0: torch.Tensor, target: str,
                 steps: int, lr: float, tau: float, log_every: int) -> list[dict]:
    """SGD on the ZP loss for every seed at once; rows at steps 0, log_every, ..., steps."""
    if target not in TARGETS:
        raise ValueError(f"linear target '{target}' is not one of {TARGETS}")
    w, w_ema = w0.clone().requires_grad_(True), w0.clone()
    opt = torch.optim.SGD([w], lr=lr)
    rows: list[dict] = []

    def record(step: int, loss: torch.Tensor) -> None:
        cos, nmin, nmax = column_stats(w.detach())
        for i in range(len(w)):
            rows.append({"seed": i, "target": target, "step": step, "abs_cos": float(cos[i]),
                         "loss": float(loss[i]), "norm_min": float(nmin[i]), "norm_max": float(nmax[i])})

    for step in range(steps + 1):
        w_target = {"online": w, "detached": w.detach(), "ema": w_ema}[target]
        loss = zp_loss(g, w, w_target, counts)
        if not torch.isfinite(loss).all():
            raise FloatingPointError(f"linear study, target {target}: non-finite loss at step {step}")
        if step % log_every == 0 or step == steps:
            record(step, loss.detach())
        if step == steps:
            break
        opt.zero_grad()
        loss.sum().backward()  # seeds are independent: the sum's gradient is each seed's own
        opt.step()
        with torch.no_grad():
            w_ema.mul_(1 - tau).add_(tau * w)
    return rows


def curve_rows(rows: list[dict], quantiles: list[float]) -> list[dict]:
    """Per logged step: median and quantiles of |cos| over seeds for each target."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for step, at in df.groupby("step", sort=True):
        row = {"step": int(step)}
        for target in TARGETS:
            vals = at.loc[at.target == target, "abs_cos"].to_numpy()
            if not len(vals):
                continue
            row[f"{target}_median"] = float(np.median(vals))
            for q in quantiles:
                row[f"{target}_q{round(q * 100):02d}"] = float(np.quantile(vals, q))
        out.append(row)
    return out


def run(ctx: StageContext) -> None:
    cfg, task_cfg = ctx.params["linear"], ctx.params["task"]
    torch.set_num_threads(ctx.threads)
    task = LinearTask(env=ctx.wildcards["sp_env"], **task_cfg)
    seeds = list(range(cfg["n_seeds"]))
    h, a, h_next, counts = padded_data(task, seeds, cfg["n_traj"], cfg["max_len"])
    log.info("%s: %d seeds, %d-%d transitions of %d features", task.env, len(seeds), int(counts.min()),
             int(counts.max()), h.shape[-1])
    w0 = orthogonal_init(len(seeds), h.shape[-1], cfg["latent"], seeds)
    g, rows = gram_blocks(h, a, h_next), []
    for target in cfg["targets"]:
        rows += train_target(g, counts, w0, target, cfg["steps"], cfg["lr"], cfg["tau"], cfg["log_every"])
        final = [r["abs_cos"] for r in rows if r["target"] == target and r["step"] == cfg["steps"]]
        log.info("%s %s: median |cos| at step %d = %.3g", task.env, target, cfg["steps"], np.median(final))
    ctx.write_table("collapse", pa.Table.from_pylist(rows, schema=COLLAPSE_SCHEMA), COLLAPSE_SCHEMA)
    ctx.write_curve("curve", curve_rows(rows, cfg["quantiles"]))
