"""HyperGrid (Bengio et al. 2021; torchgfn's `HyperGrid`): a D-dimensional grid of side H.

A trajectory starts at the origin s0, each action adds 1 to one coordinate (while it stays < H) or stops,
and every state can be terminal. Actions are indexed 0..D-1 (increment dimension i) and D (stop).
The standard ("original") reward is R(x) = R0 + R1 * prod_i 1[|x_i/(H-1) - 0.5| > 0.25]
                                             + R2 * prod_i 1[0.3 < |x_i/(H-1) - 0.5| < 0.4].

The state space is a DAG small enough to enumerate on the grids we train on, so everything a GFlowNet is
judged by is computed exactly here, by dynamic programming over the levels sum(x) = 0, 1, ...:
the terminal distribution of a forward policy, its trajectory entropy, path counts n(x) and the largest
trajectory entropy any sampler of R/Z can have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

# torchgfn compares with a 1e-12 margin so that float rounding at the band edges cannot flip a state
_EPS = 1e-12


@dataclass(frozen=True)
class HyperGrid:
    ndim: int
    height: int
    R0: float = 0.1
    R1: float = 0.5
    R2: float = 2.0

    @property
    def n_actions(self) -> int:
        return self.ndim + 1

    @property
    def stop(self) -> int:
        return self.ndim

    @property
    def max_len(self) -> int:
        """Most increments in one trajectory (the stop action comes on top)."""
        return self.ndim * (self.height - 1)

    # --- states ---------------------------------------------------------------------------------
    def s0(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.ndim, dtype=torch.long)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot per coordinate, concatenated (torchgfn's KHot preprocessor): (..., D*H) floats."""
        return torch.nn.functional.one_hot(x, self.height).flatten(-2).float()

    def forward_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Valid actions: increments that stay inside the grid, and stop (always)."""
        inc = x < self.height - 1
        return torch.cat([inc, torch.ones_like(inc[..., :1])], dim=-1)

    def step(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Apply increments; rows whose action is stop (or padding) are left unchanged."""
        inc = torch.nn.functional.one_hot(a.clamp(max=self.ndim), self.n_actions)[..., :self.ndim]
        return x + inc

    def index(self, x: torch.Tensor) -> torch.Tensor:
        strides = self.height ** torch.arange(self.ndim - 1, -1, -1)
        return (x * strides).sum(-1)

    def from_index(self, idx: torch.Tensor) -> torch.Tensor:
        strides = self.height ** torch.arange(self.ndim - 1, -1, -1)
        return (idx[..., None] // strides) % self.height

    @cached_property
    def all_states(self) -> torch.Tensor:
        """Every state, (H^D, D), row r being the state with index r (lexicographic order)."""
        grids = torch.meshgrid(*[torch.arange(self.height)] * self.ndim, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)

    # --- reward ---------------------------------------------------------------------------------
    def log_reward(self, x: torch.Tensor) -> torch.Tensor:
        ax = (x.double() / (self.height - 1) - 0.5).abs()
        outer = (ax > 0.25 + _EPS).all(-1).double()
        band = ((ax > 0.3 + _EPS) & (ax < 0.4 - _EPS)).all(-1).double()
        return torch.log(self.R0 + self.R1 * outer + self.R2 * band)

    @cached_property
    def log_Z(self) -> float:
        return torch.logsumexp(self.log_reward(self.all_states), 0).item()

    @cached_property
    def target(self) -> torch.Tensor:
        """R(x)/Z over all states, float64."""
        return torch.exp(self.log_reward(self.all_states) - self.log_Z)

    @cached_property
    def mode_mask(self) -> torch.Tensor:
        """Modes: states with the largest reward R0 + R1 + R2 (2^D of them)."""
        lr = self.log_reward(self.all_states)
        return lr >= math.log(self.R0 + self.R1 + self.R2) - 1e-9

    # --- path counts and backward policies ------------------------------------------------------
    def log_n_paths(self, x: torch.Tensor) -> torch.Tensor:
        """log n(x), n(x) = (sum x)! / prod x_i!: the number of trajectories from s0 to x."""
        xf = x.double()
        return torch.lgamma(xf.sum(-1) + 1) - torch.lgamma(xf + 1).sum(-1)

    def n_parents(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).sum(-1)

    def log_pb_maxent(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log P_B(x | x + e_a) = log n(x) - log n(x + e_a) = log((x_a + 1) / (sum x + 1))."""
        xa = x.gather(-1, a.clamp(max=self.ndim - 1)[..., None])[..., 0]
        return torch.log((xa + 1).double() / (x.sum(-1) + 1).double())

    def log_pb_uniform(self, x_next: torch.Tensor) -> torch.Tensor:
        """log P_B(. | x') = -log(number of parents of x')."""
        return -torch.log(self.n_parents(x_next).clamp(min=1).double())

    # --- exact evaluation by dynamic programming ------------------------------------------------
    @cached_property
    def _levels(self) -> list[torch.Tensor]:
        level = self.all_states.sum(-1)
        return [torch.nonzero(level == k)[:, 0] for k in range(self.max_len + 1)]

    @cached_property
    def _children(self) -> torch.Tensor:
        """(S, D) index of the child along each increment; -1 where it leaves the grid."""
        x = self.all_states
        out = torch.full((len(x), self.ndim), -1, dtype=torch.long)
        for i in range(self.ndim):
            ok = x[:, i] < self.height - 1
            out[ok, i] = self.index(x[ok] + torch.nn.functional.one_hot(torch.tensor(i), self.ndim))
        return out

    def visit_probs(self, log_pf: torch.Tensor) -> torch.Tensor:
        """P(trajectory passes through s) for every state, given log P_F (S, D+1) (invalid = -inf)."""
        pf = log_pf.double().exp()
        visit = torch.zeros(len(pf), dtype=torch.float64)
        visit[0] = 1.0
        children = self._children
        for idx in self._levels[:-1]:
            flow = visit[idx, None] * pf[idx, :self.ndim]               # (n_level, D)
            ch = children[idx]
            ok = ch >= 0
            visit.index_add_(0, ch[ok], flow[ok])
        return visit

    def terminal_distribution(self, log_pf: torch.Tensor) -> torch.Tensor:
        """P_T(x) = P(visit x) * P_F(stop | x), exactly."""
        return self.visit_probs(log_pf) * log_pf[:, self.stop].double().exp()

    def trajectory_entropy(self, log_pf: torch.Tensor) -> float:
        """H(tau) = sum_s P(visit s) * H(P_F(. | s)) (stop included), exactly."""
        lp = log_pf.double()
        p = lp.exp()
        step_entropy = -(p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum(-1)
        return float((self.visit_probs(log_pf) * step_entropy).sum())

    def max_trajectory_entropy(self) -> float:
        """H(X) + E[log n(X)] under R/Z: the trajectory entropy of the max-ent GFlowNet for R."""
        p = self.target
        return float(-(p * p.log()).sum() + (p * self.log_n_paths(self.all_states)).sum())

    def uniform_pb_trajectory_entropy(self) -> float:
        """Trajectory entropy of the GFlowNet whose backward policy is uniform over parents:
        H(X) + E_x[H(P_B(. | x))], the backward path entropy computed level by level."""
        x = self.all_states
        hb = torch.zeros(len(x), dtype=torch.float64)
        children = self._children
        for idx in self._levels[:-1]:
            # every child of a level-k state sits at level k+1: push (H_B(s) - log P_B(s|s')) P_B
            for i in range(self.ndim):
                ch = children[idx, i]
                ok = ch >= 0
                npar = self.n_parents(x[ch[ok]]).double()
                hb.index_add_(0, ch[ok], (hb[idx[ok]] + npar.log()) / npar)
        p = self.target
        return float(-(p * p.log()).sum() + (p * hb).sum())
