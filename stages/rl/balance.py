"""GFlowNet balance losses on padded trajectory batches: trajectory, detailed and sub-trajectory balance.

A batch of B trajectories s_0 -> ... -> s_n -> stop is laid out with positions t = 0..T (T = longest
trajectory's number of actions - 1), trajectory b using t <= n_b:
  log_pf[b, t] = log P_F(a_t | s_t)        (a_{n_b} = stop)
  log_pb[b, t] = log P_B(s_t | s_{t+1})    (0 for the stop action)
  log_flow[b, t] = log F(s_t)              (DB / SubTB; for TB only t = 0 is read, as log Z)
  log_reward[b] = log R(s_{n_b})
All balance conditions are differences of the "potential" u_t = log F(s_t) (u_{n+1} = log R) and the
cumulative c_t = sum_{k<t} (log P_F - log P_B): u_i + c_j - c_i - u_j = 0 for a sub-trajectory i -> j.
"""
from __future__ import annotations

import torch


def _potentials(log_pf, log_pb, log_flow, log_reward, n):
    B, T1 = log_pf.shape
    t = torch.arange(T1 + 1)
    valid_step = t[None, :T1] <= n[:, None]                         # actions 0..n
    step = torch.where(valid_step, log_pf - log_pb, torch.zeros_like(log_pf))
    c = torch.cat([torch.zeros(B, 1, dtype=step.dtype), step.cumsum(1)], dim=1)   # (B, T1 + 1)
    u = torch.cat([log_flow, torch.zeros(B, 1, dtype=log_flow.dtype)], dim=1)
    u = torch.where(t[None] == (n + 1)[:, None], log_reward[:, None].to(u.dtype), u)
    return u, c, t


def trajectory_balance(log_pf, log_pb, log_Z, log_reward, n) -> torch.Tensor:
    """Mean over trajectories of (log Z + sum log P_F - log R - sum log P_B)^2."""
    valid = torch.arange(log_pf.shape[1])[None] <= n[:, None]
    total = torch.where(valid, log_pf - log_pb, torch.zeros_like(log_pf)).sum(1)
    return (log_Z + total - log_reward).pow(2).mean()


def subtrajectory_balance(log_pf, log_pb, log_flow, log_reward, n, lam: float) -> torch.Tensor:
    """SubTB(lambda): every sub-trajectory i -> j weighted lambda^(j - i), weights normalised within each
    trajectory (torchgfn's "geometric_within"), then averaged over trajectories."""
    u, c, t = _potentials(log_pf, log_pb, log_flow, log_reward, n)
    i, j = t[:, None], t[None, :]
    res = u[:, :, None] - u[:, None, :] + c[:, None, :] - c[:, :, None]  # (B, i, j)
    ok = (i < j)[None] & (j[None] <= (n + 1)[:, None, None])
    w = torch.where(ok, lam ** (j - i).to(res.dtype)[None], torch.zeros_like(res))
    return ((w * res.pow(2)).sum((1, 2)) / w.sum((1, 2))).mean()


def detailed_balance(log_pf, log_pb, log_flow, log_reward, n) -> torch.Tensor:
    """Mean over transitions of (log F(s) + log P_F(s'|s) - log F(s') - log P_B(s|s'))^2, the stop
    transition reading log F(s') = log R(s)."""
    u, c, t = _potentials(log_pf, log_pb, log_flow, log_reward, n)
    res = u[:, :-1] - u[:, 1:] + (c[:, 1:] - c[:, :-1])
    valid = t[None, :-1] <= n[:, None]
    return res.pow(2)[valid].mean()
