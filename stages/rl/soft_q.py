"""Soft Q-learning pieces shared by max-ent GFlowNets and decoupled regularization.

Conventions: Q has one column per action, invalid actions are masked with -inf, and tau is the
temperature (a scalar or one value per state). V(s) = tau * logsumexp_a Q(s, a) / tau and
pi(a | s) = exp((Q(s, a) - V(s)) / tau).
"""
from __future__ import annotations

import math

import numpy as np
import torch

NEG_INF = float("-inf")


def masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~mask, NEG_INF)


def soft_value(q: torch.Tensor, tau: float | torch.Tensor = 1.0) -> torch.Tensor:
    """V(s) = tau logsumexp(Q(s, .) / tau) over the last axis (masked entries are -inf)."""
    tau = torch.as_tensor(tau, dtype=q.dtype)
    if tau.ndim:
        tau = tau[..., None]
    return (tau * torch.logsumexp(q / tau, dim=-1, keepdim=True))[..., 0]


def soft_bellman_residual(q_sa: torch.Tensor, reward: torch.Tensor, v_next: torch.Tensor,
                          terminal: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Q(s, a) - (r + gamma V(s')), with no bootstrap after a terminal action.

    Pass a detached (or target-network) v_next for semi-gradient soft Q-learning."""
    target = reward + gamma * torch.where(terminal, torch.zeros_like(v_next), v_next)
    return q_sa - target


def decoupled_temperature(n_actions: np.ndarray | torch.Tensor | int, tau: float,
                          min_log_actions: float = 1.0):
    """tau(s) = tau / max(log |A(s)|, min_log_actions): the static decoupled rule for discrete actions.

    The guard keeps states with one or two actions (log|A| <= ~0.7) from getting a huge temperature."""
    if isinstance(n_actions, torch.Tensor):
        return tau / torch.clamp(torch.log(n_actions.double()), min=min_log_actions)
    return tau / np.maximum(np.log(np.asarray(n_actions, dtype=np.float64)), min_log_actions)


def soft_value_iteration(next_state: np.ndarray, reward: float | np.ndarray, tau: np.ndarray,
                         absorbing: np.ndarray, gamma: float = 1.0, tol: float = 1e-11,
                         max_iters: int = 1_000_000) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact soft value iteration on a deterministic tabular MDP.

    next_state: (S, A) successor of each action; reward: per-step reward (scalar or (S, A));
    tau: (S,) temperature per state; absorbing: (S,) bool, V = 0 there.
    Returns V (S,), pi (S, A) and the number of sweeps. Raises if it has not converged, which with
    gamma = 1 means the entropy bonus outweighs the step cost somewhere (V diverges).
    """
    from scipy.special import logsumexp

    tau = np.asarray(tau, dtype=np.float64)[:, None]
    v = np.zeros(len(next_state))
    for sweep in range(1, max_iters + 1):  # noqa: B007 - returned after the loop
        q = reward + gamma * v[next_state]
        new = np.where(absorbing, 0.0, tau[:, 0] * logsumexp(q / tau, axis=1))
        delta = np.max(np.abs(new - v))
        v = new
        if delta < tol:
            break
        if not math.isfinite(delta):
            raise FloatingPointError("soft value iteration diverged")
    else:
        raise RuntimeError(f"soft value iteration did not converge in {max_iters} sweeps "
                           f"(last change {delta:.3g})")
    q = reward + gamma * v[next_state]
    pi = np.exp(q / tau - logsumexp(q / tau, axis=1, keepdims=True))
    return v, pi, sweep
