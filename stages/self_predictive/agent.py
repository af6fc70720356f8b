"""TD3-style agent with a state encoder and one auxiliary loss (the minimalist algorithm of Ni et al. 2024,
reference mujoco_code/agents/alm.py with aux in {l2, op-l2, None}, disable_reward, freeze_critic).

  encoder phi: s -> z, latent model g: (z, a) -> z' (ZP) or s' (OP), twin critic Q(z, a), actor pi(z).
Each update computes, from one replay batch, the reference's three objectives:
  1. encoder + model: aux_coef * aux(z, a, s') + actor loss through z (actor and Q held fixed:
     -Q(z.detach(), pi(z))), ZP: ||g(phi(s), a) - phi_bar(s')||^2 with phi_bar = EMA copy / phi under
     stop-gradient / phi itself, OP: ||g(phi(s), a) - s'||^2, none: no auxiliary term;
  2. critic (and encoder through z): TD3 clipped double-Q target from the EMA encoder and EMA critic;
  3. actor on z.detach();
then steps all three optimizers from one backward pass and moves both EMA copies by tau. The reference
draws a second batch for 2-3 and steps the encoder between 1 and 2; one batch and one backward make an
update about twice as cheap on a CPU, each network still receiving only its own objective's gradient.
Collapse probes: rank of a latent batch (torch.linalg.matrix_rank with atol = rtol = 1e-3, the reference's
"rank-3") and the mean |cos| between latent dimensions over the batch (1 when every dimension is one
direction up to scale).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from stages.common.resume import load_optimizer_tensors, optimizer_tensors

VARIANTS = {"zp_ema": ("zp", "ema"), "zp_detached": ("zp", "detached"), "zp_online": ("zp", "online"),
            "op": ("op", None), "none": (None, None)}


@dataclass
class AgentConfig:
    """Hyperparameters of the agent (params key self_predictive.mdp.agent)."""

    latent: int = 16
    """Latent size of the encoder output z (paper 50)."""
    hidden: int = 128
    """Width of encoder, actor and critic layers (paper 512)."""
    model_hidden: int = 128
    """Width of the latent / observation model g (paper 1024)."""
    lr: float = 1e-3
    """Adam learning rate of every network (paper 1e-4)."""
    batch_size: int = 128
    """Transitions per update batch (paper 512)."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """EMA rate of the target encoder and target critic."""
    aux_coef: float = 10.0
    """Weight of the auxiliary loss in the encoder's objective (paper 10 for l2)."""
    expl_start: float = 1.0
    """Exploration noise std at the first learning step."""
    expl_end: float = 0.1
    """Exploration noise std after expl_duration steps."""
    expl_duration: int = 5000
    """Env steps over which the noise std decays linearly (paper 100k)."""
    stddev_clip: float = 0.3
    """Clip of the target-policy smoothing noise."""
    max_grad_norm: float = 100.0
    """Gradient-norm clip of every update."""
    buffer_size: int = 100000
    """Replay capacity (transitions)."""
    rank_atol: float = 1e-3
    """Absolute tolerance of the latent rank (torch.linalg.matrix_rank)."""
    rank_rtol: float = 1e-3
    """Relative tolerance of the latent rank (the reference passes both)."""

    @classmethod
    def from_dict(cls, d: Mapping) -> AgentConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown agent keys {sorted(unknown)}")
        return cls(**d)


def _p(t: torch.Tensor, frozen: bool) -> torch.Tensor:
    return t.detach() if frozen else t


class MLP(nn.Module):
    """Linear-ELU-Linear-ELU-Linear. `frozen=True` uses detached weights: the output still carries
    gradient to the input, none to the weights (the net only scores another network's objective)."""

    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, n_out)])

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.linear(x, _p(layer.weight, frozen), _p(layer.bias, frozen))
            if i < len(self.layers) - 1:
                x = F.elu(x)
        return x


class QNet(nn.Module):
    """The reference's critic head: Linear-LayerNorm-tanh-Linear-ELU-Linear."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.l1, self.norm = nn.Linear(n_in, hidden), nn.LayerNorm(hidden)
        self.l2, self.l3 = nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        x = F.linear(x, _p(self.l1.weight, frozen), _p(self.l1.bias, frozen))
        x = torch.tanh(F.layer_norm(x, x.shape[-1:], _p(self.norm.weight, frozen), _p(self.norm.bias, frozen)))
        x = F.elu(F.linear(x, _p(self.l2.weight, frozen), _p(self.l2.bias, frozen)))
        return F.linear(x, _p(self.l3.weight, frozen), _p(self.l3.bias, frozen))


class Critic(nn.Module):
    def __init__(self, latent: int, hidden: int, act_dim: int):
        super().__init__()
        self.q1, self.q2 = QNet(latent + act_dim, hidden), QNet(latent + act_dim, hidden)

    def forward(self, z: torch.Tensor, a: torch.Tensor, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        za = torch.cat([z, a], -1)
        return self.q1(za, frozen), self.q2(za, frozen)


class Replay:
    """Flat float32 ring buffer of (s, a, r, s', terminated)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.s = torch.zeros(capacity, obs_dim)
        self.a = torch.zeros(capacity, act_dim)
        self.r = torch.zeros(capacity)
        self.s2 = torch.zeros(capacity, obs_dim)
        self.done = torch.zeros(capacity)
        self.capacity, self.n, self.i = capacity, 0, 0

    def add(self, s, a, r, s2, done) -> None:
        self.s[self.i], self.a[self.i] = torch.as_tensor(s), torch.as_tensor(a)
        self.r[self.i], self.s2[self.i], self.done[self.i] = float(r), torch.as_tensor(s2), float(done)
        self.i, self.n = (self.i + 1) % self.capacity, min(self.n + 1, self.capacity)

    def sample(self, batch: int, g: torch.Generator):
        idx = torch.randint(self.n, (batch,), generator=g)
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.done[idx]

    def state(self) -> dict[str, torch.Tensor]:
        return {"buffer.s": self.s[:self.n], "buffer.a": self.a[:self.n], "buffer.r": self.r[:self.n],
                "buffer.s2": self.s2[:self.n], "buffer.done": self.done[:self.n],
                "buffer.ptr": torch.tensor([self.i, self.n])}

    def load(self, t: Mapping[str, torch.Tensor]) -> None:
        self.i, self.n = (int(x) for x in t["buffer.ptr"])
        for k in ("s", "a", "r", "s2", "done"):
            getattr(self, k)[:self.n] = t[f"buffer.{k}"]


def latent_rank(z: torch.Tensor, atol: float, rtol: float) -> int:
    return int(torch.linalg.matrix_rank(z, atol=atol, rtol=rtol))


def srank(z: torch.Tensor, delta: float = 0.01) -> int:
    """Effective rank (Kumar et al. 2021): singular values needed for 1 - delta of their sum."""
    sv = torch.linalg.svdvals(z)
    return int((torch.cumsum(sv, 0) / sv.sum() < 1 - delta).sum()) + 1


def mean_abs_cos(z: torch.Tensor) -> float:
    """Mean |cos| between the latent dimensions (columns of a batch of latents), over pairs."""
    cols = F.normalize(z.T, dim=1)
    c = (cols @ cols.T).abs()
    d = len(c)
    return float((c.sum() - c.diagonal().sum()) / (d * (d - 1)))


class Agent:
    def __init__(self, obs_dim: int, act_dim: int, variant: str, cfg: AgentConfig, seed: int):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}'; one of {sorted(VARIANTS)}")
        self.aux, self.target = VARIANTS[variant]
        self.cfg, self.act_dim = cfg, act_dim
        torch.manual_seed(seed)
        self.encoder = MLP(obs_dim, cfg.hidden, cfg.latent)
        self.encoder_target = copy.deepcopy(self.encoder).requires_grad_(False)
        out = obs_dim if self.aux == "op" else cfg.latent
        self.model = MLP(cfg.latent + act_dim, cfg.model_hidden, out)
        self.critic = Critic(cfg.latent, cfg.hidden, act_dim)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor = MLP(cfg.latent, cfg.hidden, act_dim)
        # parameter lists cached once: module traversal costs as much as the small matmuls here
        self.groups = {"model_opt": [*self.encoder.parameters(), *self.model.parameters()],
                       "critic_opt": list(self.critic.parameters()), "actor_opt": list(self.actor.parameters())}
        self.model_opt, self.critic_opt, self.actor_opt = (
            torch.optim.Adam(self.groups[k], lr=cfg.lr, foreach=True) for k in self.groups)
        self.ema_pairs = ([*self.encoder.parameters(), *self.critic.parameters()],
                          [*self.encoder_target.parameters(), *self.critic_target.parameters()])
        self.buffer = Replay(cfg.buffer_size, obs_dim, act_dim)
        self.gen = torch.Generator().manual_seed(seed + 7919)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "encoder_target": self.encoder_target, "model": self.model,
                "critic": self.critic, "critic_target": self.critic_target, "actor": self.actor}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model_opt": self.model_opt, "critic_opt": self.critic_opt, "actor_opt": self.actor_opt}

    def std(self, step: int) -> float:
        frac = min(step / self.cfg.expl_duration, 1.0)
        return self.cfg.expl_start + frac * (self.cfg.expl_end - self.cfg.expl_start)

    def _policy(self, z: torch.Tensor, std: float, clip: float | None, frozen: bool = False) -> torch.Tensor:
        mean = torch.tanh(self.actor(z, frozen))
        noise = torch.randn(mean.shape, generator=self.gen) * std
        if clip is not None:
            noise = noise.clamp(-clip, clip)
        return (mean + noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs, step: int, explore: bool = True) -> torch.Tensor:
        z = self.encoder(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
        if not explore:
            return torch.tanh(self.actor(z))[0]
        return self._policy(z, self.std(step), None)[0]

    def aux_loss(self, z: torch.Tensor, a: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        pred = self.model(torch.cat([z, a], -1))
        if self.aux == "op":
            return ((pred - s2) ** 2).sum(-1).mean()
        if self.target == "ema":
            with torch.no_grad():
                z2 = self.encoder_target(s2)
        elif self.target == "detached":
            with torch.no_grad():
                z2 = self.encoder(s2)
        else:
            z2 = self.encoder(s2)
        return ((pred - z2) ** 2).sum(-1).mean()

    def update(self, step: int) -> dict[str, float]:
        """One update of every network from one replay batch and one backward pass; returns the losses
        (a non-finite one stops the run upstream). Each network gets exactly the gradient the reference
        gives it: networks that only score a term enter it with frozen (detached) weights."""
        cfg, std = self.cfg, self.std(step)
        s, a, r, s2, done = self.buffer.sample(cfg.batch_size, self.gen)
        z = self.encoder(s)
        # encoder + model: aux loss and the actor objective through z (actor and critic held fixed)
        pi_z = self._policy(z, std, cfg.stddev_clip, frozen=True)
        encoder_actor_term = -torch.min(*self.critic(z.detach(), pi_z, frozen=True)).mean()
        aux = self.aux_loss(z, a, s2) if self.aux else torch.zeros(())
        # critic (and encoder through z): clipped double-Q TD target from the EMA encoder and critic
        with torch.no_grad():
            z2 = self.encoder_target(s2)
            q_next = torch.min(*self.critic_target(z2, self._policy(z2, std, cfg.stddev_clip)))
            target = r.unsqueeze(-1) + cfg.gamma * (1 - done.unsqueeze(-1)) * q_next
        q1, q2 = self.critic(z, a)
        critic_loss = (F.mse_loss(q1, target) + F.mse_loss(q2, target)) / 2
        # actor on z.detach() against the fixed critic
        zd = z.detach()
        actor_loss = -torch.min(*self.critic(zd, self._policy(zd, std, cfg.stddev_clip), frozen=True)).mean()

        for opt in self.optimizers().values():
            opt.zero_grad()
        (cfg.aux_coef * aux + encoder_actor_term + critic_loss + actor_loss).backward()
        for name, opt in self.optimizers().items():
            nn.utils.clip_grad_norm_(self.groups[name], cfg.max_grad_norm, foreach=True)
            opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_pairs[1], self.ema_pairs[0], cfg.tau)
        return {"aux_loss": aux.item(), "critic_loss": critic_loss.item(), "actor_loss": actor_loss.item()}

    @torch.no_grad()
    def probe(self, batch: int) -> dict[str, float]:
        """Collapse probes on a replay batch (does not touch the sampling generator)."""
        idx = torch.linspace(0, self.buffer.n - 1, min(batch, self.buffer.n)).long()
        z = self.encoder(self.buffer.s[idx])
        return {"rank": latent_rank(z, self.cfg.rank_atol, self.cfg.rank_rtol), "srank": srank(z),
                "abs_cos": mean_abs_cos(z)}

    def state(self, with_buffer: bool = True) -> dict[str, torch.Tensor]:
        out = {f"{name}.{k}": v for name, m in self.modules().items() for k, v in m.state_dict().items()}
        for name, opt in self.optimizers().items():
            out.update(optimizer_tensors(opt, f"opt_{name}"))
        out["gen"] = self.gen.get_state()
        return {**out, **(self.buffer.state() if with_buffer else {})}

    def load(self, t: Mapping[str, torch.Tensor]) -> None:
        for name, m in self.modules().items():
            m.load_state_dict({k.removeprefix(f"{name}."): v for k, v in t.items() if k.startswith(f"{name}.")
                               and not k.startswith(f"{name}_")})
        for name, opt in self.optimizers().items():
            load_optimizer_tensors(opt, t, f"opt_{name}")
        self.gen.set_state(t["gen"])
        self.buffer.load(t)

    def config(self) -> dict:
        return asdict(self.cfg)
