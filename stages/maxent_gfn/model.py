"""The network every objective trains, trajectory sampling, and what each objective reads off it.

One MLP on the one-hot grid encoding (torchgfn's HyperGrid setup) with D + 2 outputs: D + 1 action
logits (P_F logits for the balance objectives, Q(s, .) for soft Q-learning) and log F(s) for DB / SubTB.
TB adds a scalar log Z; the learned-n objective adds a second MLP for log n(s).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages.envs.hypergrid import HyperGrid
from stages.rl.soft_q import masked

BALANCE_LOSSES = ("tb", "db", "subtb")


def mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    layers, width = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, n_out))


class GFNModel(nn.Module):
    def __init__(self, env: HyperGrid, hidden: int, depth: int, learned_n: bool):
        super().__init__()
        self.env = env
        self.net = mlp(env.ndim * env.height, hidden, depth, env.n_actions + 1)
        self.log_Z = nn.Parameter(torch.zeros(()))
        self.log_n_net = mlp(env.ndim * env.height, hidden, depth, 1) if learned_n else None

    @classmethod
    def from_params(cls, env: HyperGrid, model_cfg: dict, objective: dict) -> GFNModel:
        return cls(env, model_cfg["hidden"], model_cfg["depth"], objective["backward"] == "learned_n")

    def forward(self, x: torch.Tensor, dedupe: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits (invalid actions -inf) and log F(s)."""
        out = self._apply(self.net, x) if dedupe else self.net(self.env.encode(x))
        return masked(out[..., :-1], self.env.forward_mask(x)), out[..., -1]

    def _apply(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # A batch of trajectories revisits the same few states (all start at s0): one MLP row per
        # distinct state cuts the loss's forward + backward cost ~2x on small grids.
        uniq, inverse = torch.unique(self.env.index(x), return_inverse=True)
        return net(self.env.encode(self.env.from_index(uniq)))[inverse]

    def log_n(self, x: torch.Tensor) -> torch.Tensor:
        """Learned log n(s); pinned to 0 at s0, which has exactly one path."""
        out = self._apply(self.log_n_net, x)[..., 0]
        return torch.where((x == 0).all(-1), torch.zeros_like(out), out)

    def log_n_parents(self, x: torch.Tensor) -> torch.Tensor:
        """Learned log n of each parent x - e_i, (..., D); -inf where x_i = 0 (no such parent)."""
        eye = torch.eye(self.env.ndim, dtype=torch.long)
        parents = (x[..., None, :] - eye).clamp(min=0)
        return torch.where(x > 0, self.log_n(parents), torch.full_like(x, float("-inf"), dtype=torch.float))

    def log_Z_estimate(self, loss: str) -> float:
        """The model's own estimate of log Z: the TB parameter, log F(s0), or V(s0) = logsumexp Q(s0)."""
        with torch.no_grad():
            logits, log_flow = self(self.env.s0(1))
        if loss == "tb":
            return self.log_Z.item()
        if loss in ("db", "subtb"):
            return log_flow[0].item()
        return torch.logsumexp(logits[0], 0).item()

    def log_pf_all(self) -> torch.Tensor:
        """log P_F(. | s) for every state of the grid, (S, D + 1); softmax of Q for soft Q-learning."""
        with torch.no_grad():
            logits, _ = self(self.env.all_states)
        return torch.log_softmax(logits.double(), -1)


@dataclass
class Batch:
    """B trajectories, padded: states (B, T + 2, D) with s_{t} for t <= n + 1 (repeated after stop),
    actions (B, T + 1) with stop at t = n, n (B,) = number of increments."""
    states: torch.Tensor
    actions: torch.Tensor
    n: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return torch.arange(self.actions.shape[1])[None] <= self.n[:, None]

    @property
    def terminal(self) -> torch.Tensor:
        return self.states[torch.arange(len(self.n)), self.n]


@torch.no_grad()
def sample(model: GFNModel, batch_size: int, epsilon: float, generator: torch.Generator) -> Batch:
    """Roll out batch_size trajectories in parallel from (1 - epsilon) P_F + epsilon uniform(valid)."""
    env = model.env
    x = env.s0(batch_size)
    done = torch.zeros(batch_size, dtype=torch.bool)
    states, actions = [x], []
    while not done.all():
        logits, _ = model(x)
        probs = torch.softmax(logits, -1)
        if epsilon > 0:
            valid = env.forward_mask(x).float()
            probs = (1 - epsilon) * probs + epsilon * valid / valid.sum(-1, keepdim=True)
        a = torch.multinomial(probs, 1, generator=generator)[:, 0]
        a = torch.where(done, env.stop, a)                 # finished rows keep "stopping" (padding)
        x = env.step(x, a)
        done = done | (a == env.stop)
        states.append(x)
        actions.append(a)
    actions = torch.stack(actions, 1)
    n = (actions != env.stop).sum(1)
    return Batch(torch.stack(states, 1), actions, n)
