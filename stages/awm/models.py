"""World models of the AWM study and the policy, with one stepping interface for imagined rollouts.

Every model (and the true simulator, `SimulatorModel`) exposes `start(s0) -> carry` and
`step(carry, a_t, t) -> (s_{t+1}, carry)`, so one loop (`imagine`) unrolls any of them under a policy
and the gradient of J reaches the policy through exactly the paths the model has:
- markov:   s_{t+1} = s_t + MLP(s_t, a_t), fed its own predictions (gradient through every state);
- history:  s_{t+1} = s_t + GPT(s_1..t, a_1..t)_t, autoregressive over its own predictions;
- awm:      s_{t+1} = s_1 + GPT(s_1, a_1..t)_t, only the initial state and the actions (causal attention:
            every action has a direct path to every later prediction);
- awm_lstm: s_{t+1} = s_1 + head(LSTM(a_1..t; h_0 = enc(s_1))) (the authors' default AWM core).
States are standardised with the training data's mean/std inside the model; inputs and outputs are raw.
The GPTs decode with a key/value cache, so a rollout of H steps costs H incremental calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("markov", "history", "awm", "awm_lstm")
POLICY_KINDS = ("sim",) + KINDS


class Normalizer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp(min=1e-6))

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denorm(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    mods, d = [], inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    return nn.Sequential(*mods, nn.Linear(d, out))


class Block(nn.Module):
    """Pre-norm causal self-attention block with an optional key/value cache for incremental decoding."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, cache: tuple | None = None, use_cache: bool = False):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        # with a cache the single new query sees every cached key: causal by construction
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and T > 1)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        x = x + self.mlp(self.ln2(x))
        return (x, (k, v)) if use_cache else (x, None)


class GPT(nn.Module):
    def __init__(self, inp: int, out: int, d: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Linear(inp, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, out)
        self.max_len = max_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h, _ = blk(h)
        return self.head(self.ln(h))

    def step(self, x_t: torch.Tensor, t: int, caches: list | None):
        """Output at position t given the input token x_t (B, inp) and the caches of positions < t."""
        if t >= self.max_len:
            raise ValueError(f"rollout step {t} beyond the transformer's context {self.max_len}")
        h = (self.embed(x_t) + self.pos[t])[:, None]
        new = []
        for i, blk in enumerate(self.blocks):
            h, kv = blk(h, None if caches is None else caches[i], use_cache=True)
            new.append(kv)
        return self.head(self.ln(h))[:, 0], new


class WorldModel(nn.Module):
    kind = "base"

    def __init__(self, ds: int, da: int) -> None:
        super().__init__()
        self.ds, self.da = ds, da
        self.norm = Normalizer(ds)

    def start(self, s0: torch.Tensor):
        raise NotImplementedError

    def step(self, carry, a: torch.Tensor, t: int):
        raise NotImplementedError

    def loss(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Teacher-forced MSE (standardised units) of the next-state predictions on (B, T+1, ds) states."""
        raise NotImplementedError

    def predict(self, s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Open-loop predicted states (B, T+1, ds) under given actions (autoregressive where it is)."""
        carry, states = self.start(s0), [s0]
        for t in range(actions.shape[1]):
            s, carry = self.step(carry, actions[:, t], t)
            states.append(s)
        return torch.stack(states, 1)


class MarkovMLP(WorldModel):
    kind = "markov"

    def __init__(self, ds, da, hidden: int = 64, layers: int = 2, **_):
        super().__init__(ds, da)
        self.net = mlp(ds + da, hidden, ds, layers)

    def _next(self, z, a):
        return z + self.net(torch.cat([z, a], -1))

    def loss(self, states, actions):
        z = self.norm.norm(states)
        return F.mse_loss(self._next(z[:, :-1], actions), z[:, 1:])

    def start(self, s0):
        return self.norm.norm(s0)

    def step(self, z, a, t):
        z = self._next(z, a)
        return self.norm.denorm(z), z


class HistoryGPT(WorldModel):
    kind = "history"

    def __init__(self, ds, da, d_model: int = 32, layers: int = 2, heads: int = 2, max_len: int = 200, **_):
        super().__init__(ds, da)
        self.gpt = GPT(ds + da, ds, d_model, layers, heads, max_len)

    def loss(self, states, actions):
        z = self.norm.norm(states)
        pred = z[:, :-1] + self.gpt(torch.cat([z[:, :-1], actions], -1))
        return F.mse_loss(pred, z[:, 1:])

    def start(self, s0):
        return self.norm.norm(s0), None

    def step(self, carry, a, t):
        z, caches = carry
        delta, caches = self.gpt.step(torch.cat([z, a], -1), t, caches)
        z = z + delta
        return self.norm.denorm(z), (z, caches)


class AWMGPT(WorldModel):
    kind = "awm"

    def __init__(self, ds, da, d_model: int = 32, layers: int = 2, heads: int = 2, max_len: int = 200, **_):
        super().__init__(ds, da)
        self.gpt = GPT(ds + da, ds, d_model, layers, heads, max_len)

    def loss(self, states, actions):
        z = self.norm.norm(states)
        z0 = z[:, :1].expand(-1, actions.shape[1], -1)
        pred = z0 + self.gpt(torch.cat([z0, actions], -1))
        return F.mse_loss(pred, z[:, 1:])

    def predict(self, s0, actions):
        z0 = self.norm.norm(s0)[:, None].expand(-1, actions.shape[1], -1)
        z = z0 + self.gpt(torch.cat([z0, actions], -1))
        return torch.cat([s0[:, None], self.norm.denorm(z)], 1)

    def start(self, s0):
        return self.norm.norm(s0), None

    def step(self, carry, a, t):
        z0, caches = carry
        delta, caches = self.gpt.step(torch.cat([z0, a], -1), t, caches)
        return self.norm.denorm(z0 + delta), (z0, caches)


class AWMLSTM(WorldModel):
    kind = "awm_lstm"

    def __init__(self, ds, da, hidden: int = 64, **_):
        super().__init__(ds, da)
        self.enc = nn.Linear(ds, 2 * hidden)
        self.lstm = nn.LSTM(da, hidden, batch_first=True)
        self.head = mlp(hidden + ds, hidden, ds, 1)

    def _h0(self, z0):
        h, c = torch.tanh(self.enc(z0)).chunk(2, -1)
        return h.contiguous(), c.contiguous()

    def _out(self, h, z0):
        return z0 + self.head(torch.cat([h, z0], -1))

    def loss(self, states, actions):
        z = self.norm.norm(states)
        return F.mse_loss(self._fused(z[:, 0], actions), z[:, 1:])

    def _fused(self, z0, actions):
        h0, c0 = self._h0(z0)
        hs, _ = self.lstm(actions, (h0[None], c0[None]))
        return self._out(hs, z0[:, None].expand(-1, actions.shape[1], -1))

    def predict(self, s0, actions):
        z = self._fused(self.norm.norm(s0), actions)
        return torch.cat([s0[:, None], self.norm.denorm(z)], 1)

    def start(self, s0):
        z0 = self.norm.norm(s0)
        h0, c0 = self._h0(z0)
        return z0, (h0[None], c0[None])

    def step(self, carry, a, t):
        z0, hc = carry
        out, hc = self.lstm(a[:, None], hc)
        return self.norm.denorm(self._out(out[:, 0], z0)), (z0, hc)


class SimulatorModel:
    """The true differentiable simulator behind the same stepping interface."""

    kind = "sim"

    def __init__(self, task) -> None:
        self.task = task

    def start(self, s0):
        return s0

    def step(self, s, a, t):
        s = self.task.step(s, a, t)
        return s, s


MODEL_CLASSES = {"markov": MarkovMLP, "history": HistoryGPT, "awm": AWMGPT, "awm_lstm": AWMLSTM}


def make_world_model(kind: str, ds: int, da: int, cfg: dict, max_len: int) -> WorldModel:
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown world-model kind '{kind}'; known: {', '.join(KINDS)}")
    return MODEL_CLASSES[kind](
        ds, da, d_model=cfg["d_model"], layers=cfg["layers"], heads=cfg["heads"], hidden=cfg["hidden"], max_len=max_len
    )


class Policy(nn.Module):
    """a_t = tanh(MLP(obs_t / obs_scale, t / H_max)); the last layer starts small (a ~ 0 at init)."""

    def __init__(self, ds: int, da: int, obs_scale, max_horizon: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = mlp(ds + 1, hidden, da, 2)
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()
        self.register_buffer("scale", torch.tensor(obs_scale, dtype=torch.float32))
        self.max_horizon = max_horizon

    def forward(self, obs: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((obs.shape[0], 1), t / self.max_horizon, dtype=obs.dtype)
        return torch.tanh(self.net(torch.cat([obs / self.scale, tt], -1)))

    def forward_seq(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions (B, H, da) for observations (B, H, ds) at steps 0..H-1, in one call."""
        B, H, _ = obs.shape
        tt = (torch.arange(H, dtype=obs.dtype) / self.max_horizon).view(1, H, 1).expand(B, H, 1)
        return torch.tanh(self.net(torch.cat([obs / self.scale, tt], -1)))


def imagine(
    model,
    task,
    s0: torch.Tensor,
    act: Callable[[torch.Tensor, int], torch.Tensor],
    horizon: int,
    detach_obs: bool = True,
    probe: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unroll `model` from s0 for `horizon` steps under act(obs, t): (states (B, H+1, ds), actions (B, H, da)).
    With detach_obs the policy sees its observation as a constant, so dJ/dtheta flows only through the
    actions into the model (the authors' default)."""
    carry, s, states, actions = model.start(s0), s0, [s0], []
    for t in range(horizon):
        obs = s.detach() if detach_obs else s
        a = task.mask_action(act(obs, t), t)
        if probe is not None:
            a = a + probe[:, t]
        s, carry = model.step(carry, a, t)
        states.append(s)
        actions.append(a)
    return torch.stack(states, 1), torch.stack(actions, 1)


def first_nonfinite(*tensors: torch.Tensor) -> bool:
    return any(not bool(torch.isfinite(x).all()) for x in tensors)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def log_linear_fits(h: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares fits of log y against H (exponential growth) and against log H (polynomial):
    slopes and R^2 of each."""
    import numpy as np

    h, ly = np.asarray(h, float), np.log(np.asarray(y, float))
    out = {}
    for name, x in (("exp", h), ("poly", np.log(h))):
        A = np.stack([x, np.ones_like(x)], 1)
        coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
        resid = ly - A @ coef
        ss = float(((ly - ly.mean()) ** 2).sum())
        out[f"{name}_slope"] = float(coef[0])
        out[f"{name}_r2"] = 1.0 - float((resid**2).sum()) / ss if ss > 0 else math.nan
    return out
