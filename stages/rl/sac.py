"""Soft actor-critic (Haarnoja et al. 2018), compact and CleanRL-like, with the temperature as a strategy.

Actor: tanh-Gaussian in the agent's action box [low, high] (after ActionRescale: [-s, s]^d),
a = bias + scale * tanh(u), u ~ N(mean(s), std(s)); log-probabilities are in that box, tanh Jacobian and
scale included. Critic: twin Q on (obs, agent action) with EMA target nets; target
y = r + gamma (1 - terminated) (min Q'(s', a') - tau log pi(a' | s')).

Temperature strategies (`TemperatureConfig.kind`), H_max = sum_i log(high_i - low_i) of the agent's box,
H_min = d log(min_width) (the method note's 1e-3; when H_max <= H_min, H_min = H_max - 3):
  fixed      tau
  static     tau / (H_max - H_min)                       (decoupled, static)
  auto       learned log tau, target entropy -d          (SAC's default)
  decoupled  learned log tau, target alpha H_max + (1 - alpha) H_min
Learned temperatures minimise tau * E[-log pi - target] over log tau: tau rises while the policy's entropy is
below the target. The log pi in that loss is the one the actor's loss used, sampled before the actor's step
(as in stable-baselines3 and softlearning, where one sample serves both losses); CleanRL draws a fresh sample
after the actor's step. Kept because it costs no extra forward pass, it is what the awm baseline was run with,
and the two differ by one actor step of lr_pi, which moves the batch entropy far less than the gap between the
entropy and the target that drives tau. Under ActionRescale(s) the agent's log-density is the unit-box one
minus d log s, so a target of -d is unreachable for s < e^-1 / 2 (max entropy d log 2s < -d) and tau then
grows without bound.

Unit-box entropy: the entropy of the policy after mapping its actions affinely onto [-1, 1]^d,
-E[log pi + sum_i log((high_i - low_i) / 2)] (= the agent-box entropy - d log s under ActionRescale(s)),
comparable across scales. Every random draw (warm-up actions, policy noise, minibatches) comes from one
torch.Generator whose state is checkpointed, so a run is deterministic for a seed and resumes exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.common.resume import load_optimizer_tensors, optimizer_tensors

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
TEMPERATURE_KINDS = ("fixed", "static", "auto", "decoupled")


@dataclass
class SACConfig:
    hidden: int = 256
    """Units in each hidden layer of the actor and of both critics."""
    layers: int = 2
    """Hidden layers (ReLU) per network."""
    lr_q: float = 1e-3
    """Adam learning rate of the twin critics (paper: 1e-3)."""
    lr_pi: float = 3e-4
    """Adam learning rate of the actor (paper: 3e-4)."""
    lr_temperature: float = 1e-3
    """Adam learning rate of log tau for the learned temperatures (CleanRL: the critics' rate)."""
    gamma: float = 0.99
    """Discount."""
    target_ema: float = 0.995
    """Target critics <- target_ema * target + (1 - target_ema) * critics after every update (paper 0.995)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay capacity (oldest transitions overwritten)."""
    learning_starts: int = 10_000
    """Uniformly random actions and no updates for this many environment steps (paper: 10k)."""
    update_every: int = 1
    """One gradient update (critics, actor, temperature) every this many environment steps."""

    @classmethod
    def from_dict(cls, d: dict) -> SACConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown SAC setting(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class TemperatureConfig:
    kind: str = "auto"
    """fixed | static | auto | decoupled (see the module docstring)."""
    tau: float = 0.2
    """fixed: the temperature; static: its numerator, tau / (H_max - H_min)."""
    init: float = 1.0
    """auto / decoupled: initial temperature."""
    alpha: float = 0.1
    """decoupled: target entropy alpha * H_max + (1 - alpha) * H_min (the method note's 0.1)."""
    min_width: float = 1e-3
    """H_min = d * log(min_width): the entropy of a box of side min_width per dimension."""

    @classmethod
    def from_dict(cls, d: dict) -> TemperatureConfig:
        cfg = cls(**d)
        if cfg.kind not in TEMPERATURE_KINDS:
            raise ValueError(f"temperature kind '{cfg.kind}' is not one of {TEMPERATURE_KINDS}")
        return cfg


def entropy_range(low: np.ndarray, high: np.ndarray, min_width: float) -> tuple[float, float]:
    """(H_max, H_min) of a box: log-volume of the box and of a min_width-sided box, H_min < H_max."""
    h_max = float(np.sum(np.log(np.asarray(high, np.float64) - np.asarray(low, np.float64))))
    h_min = len(low) * math.log(min_width)
    return h_max, (h_min if h_max > h_min else h_max - 3.0)


def target_entropy(cfg: TemperatureConfig, low: np.ndarray, high: np.ndarray) -> float:
    """Target entropy (in the agent's box) of a learned temperature; NaN for fixed and static ones."""
    h_max, h_min = entropy_range(low, high, cfg.min_width)
    return {"auto": -float(len(low)),
            "decoupled": cfg.alpha * h_max + (1 - cfg.alpha) * h_min}.get(cfg.kind, math.nan)


class Temperature(nn.Module):
    """tau as a strategy: `value()` and `update(log_prob)` (a no-op unless learned). `target` is the target
    entropy (NaN when not learned)."""

    def __init__(self, cfg: TemperatureConfig, low: np.ndarray, high: np.ndarray, lr: float):
        super().__init__()
        self.kind = cfg.kind
        h_max, h_min = entropy_range(low, high, cfg.min_width)
        self.learned = cfg.kind in ("auto", "decoupled")
        if cfg.kind == "fixed":
            start = cfg.tau
        elif cfg.kind == "static":
            start = cfg.tau / (h_max - h_min)
        else:
            start = cfg.init
        self.target = target_entropy(cfg, low, high)
        self.log_tau = nn.Parameter(torch.tensor(math.log(start)), requires_grad=self.learned)
        self.opt = torch.optim.Adam([self.log_tau], lr=lr) if self.learned else None

    def value(self) -> torch.Tensor:
        return self.log_tau.detach().exp()

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """tau * E[-log pi - target]: its gradient raises log tau while the entropy is below the target."""
        return (self.log_tau.exp() * (-log_prob.detach() - self.target)).mean()

    def update(self, log_prob: torch.Tensor) -> None:
        if self.learned:
            self.opt.zero_grad()
            self.loss(log_prob).backward()
            self.opt.step()


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    dims = [n_in] + [hidden] * layers
    blocks = [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], n_out))


class Actor(nn.Module):
    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, cfg: SACConfig):
        super().__init__()
        self.net = mlp(obs_dim, 2 * len(low), cfg.hidden, cfg.layers)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mean, log_std

    def sample(self, obs: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Action in the agent's box and its log-density there (summed over dimensions)."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
        gauss = -0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log |d tanh(u)/du| = log(1 - tanh(u)^2), written stably; the box's half-width enters as log scale
        log_jac = 2 * (math.log(2) - u - F.softplus(-2 * u)) + self.scale.log()
        return self.bias + self.scale * torch.tanh(u), (gauss - log_jac).sum(-1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.bias + self.scale * torch.tanh(self(obs)[0])

    def unit_box_log_prob(self, log_prob: torch.Tensor) -> torch.Tensor:
        """log-density of the same action after mapping the box onto [-1, 1]^d."""
        return log_prob + self.scale.log().sum()


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, cfg.hidden, cfg.layers)
        self.q2 = mlp(obs_dim + act_dim, 1, cfg.hidden, cfg.layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], -1)
        return self.q1(x)[:, 0], self.q2(x)[:, 0]


class ReplayBuffer:
    """Preallocated ring buffer of (obs, action, reward, next_obs, terminated)."""

    FIELDS = ("obs", "act", "rew", "next_obs", "term")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.obs = torch.zeros(capacity, obs_dim)
        self.act = torch.zeros(capacity, act_dim)
        self.rew = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.term = torch.zeros(capacity)

    def add(self, obs, act, rew: float, next_obs, terminated: bool) -> None:
        i = self.pos
        self.obs[i], self.act[i], self.next_obs[i] = (torch.as_tensor(obs), torch.as_tensor(act),
                                                      torch.as_tensor(next_obs))
        self.rew[i], self.term[i] = rew, float(terminated)
        self.pos, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, self.size, (n,), generator=gen)
        return tuple(getattr(self, f)[idx] for f in self.FIELDS)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"buffer.{f}": getattr(self, f)[:self.size] for f in self.FIELDS}
        out["buffer.pos"] = torch.tensor(self.pos)
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.size, self.pos = len(state["buffer.rew"]), int(state["buffer.pos"])
        for f in self.FIELDS:
            getattr(self, f)[:self.size] = state[f"buffer.{f}"]


class SAC:
    """The agent: networks, optimizers, temperature, replay buffer and the generator of every random draw."""

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, cfg: SACConfig,
                 temperature: TemperatureConfig, seed: int):
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.cfg, self.act_dim = cfg, len(low)
        torch.manual_seed(seed)                      # network initialisation
        self.gen = torch.Generator().manual_seed(seed)
        self.actor = Actor(obs_dim, low, high, cfg)
        self.critic = TwinQ(obs_dim, len(low), cfg)
        self.critic_target = TwinQ(obs_dim, len(low), cfg)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.temperature = Temperature(temperature, low, high, cfg.lr_temperature)
        self.pi_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_pi, foreach=True)
        self.q_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_q, foreach=True)
        self.buffer = ReplayBuffer(obs_dim, len(low), cfg.buffer_size)
        self.updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool = True) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32)[None]
        a = self.actor.sample(o, self.gen)[0] if explore else self.actor.mode(o)
        return a[0].numpy()

    def random_action(self) -> np.ndarray:
        u = torch.rand(self.act_dim, generator=self.gen)
        return (self.actor.bias + self.actor.scale * (2 * u - 1)).numpy()

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        obs, act, rew, next_obs, term = self.buffer.sample(cfg.batch_size, self.gen)
        tau = self.temperature.value()
        with torch.no_grad():
            next_act, next_logp = self.actor.sample(next_obs, self.gen)
            q_next = torch.min(*self.critic_target(next_obs, next_act)) - tau * next_logp
            target = rew + cfg.gamma * (1 - term) * q_next
        q1, q2 = self.critic(obs, act)
        q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        new_act, logp = self.actor.sample(obs, self.gen)
        self.critic.requires_grad_(False)            # the actor's loss needs no critic gradients
        pi_loss = (tau * logp - torch.min(*self.critic(obs, new_act))).mean()
        self.pi_opt.zero_grad()
        pi_loss.backward()
        self.pi_opt.step()
        self.critic.requires_grad_(True)
        self.temperature.update(logp)

        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()),
                                 1 - cfg.target_ema)
        self.updates += 1
        return {"q_loss": q_loss.item(), "pi_loss": pi_loss.item(), "log_prob": logp.mean().item()}

    @torch.no_grad()
    def entropies(self, obs: np.ndarray | torch.Tensor) -> tuple[float, float]:
        """(unit-box entropy, agent-box entropy) of the policy, one-sample Monte Carlo per state, averaged."""
        logp = self.actor.sample(torch.as_tensor(obs, dtype=torch.float32), self.gen)[1]
        return -self.actor.unit_box_log_prob(logp).mean().item(), -logp.mean().item()

    # --- checkpointing: every tensor that the next step depends on -------------------------------
    def policy_state(self) -> dict[str, torch.Tensor]:
        return {f"actor.{k}": v for k, v in self.actor.state_dict().items()}

    def state(self) -> dict[str, torch.Tensor]:
        out = {**self.policy_state(),
               **{f"critic.{k}": v for k, v in self.critic.state_dict().items()},
               **{f"critic_target.{k}": v for k, v in self.critic_target.state_dict().items()},
               "temperature.log_tau": self.temperature.log_tau.detach().clone(),
               "rng": self.gen.get_state(), "updates": torch.tensor(self.updates),
               **optimizer_tensors(self.pi_opt, "pi_opt"), **optimizer_tensors(self.q_opt, "q_opt"),
               **self.buffer.state()}
        if self.temperature.learned:
            out.update(optimizer_tensors(self.temperature.opt, "temperature_opt"))
        return out

    def load_policy(self, tensors: dict[str, torch.Tensor]) -> None:
        self.actor.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("actor.")})

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_policy(tensors)
        for name in ("critic", "critic_target"):
            getattr(self, name).load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items()
                                                 if k.startswith(name + ".")})
        with torch.no_grad():
            self.temperature.log_tau.copy_(tensors["temperature.log_tau"])
        self.gen.set_state(tensors["rng"])
        self.updates = int(tensors["updates"])
        load_optimizer_tensors(self.pi_opt, tensors, "pi_opt")
        load_optimizer_tensors(self.q_opt, tensors, "q_opt")
        if self.temperature.learned:
            load_optimizer_tensors(self.temperature.opt, tensors, "temperature_opt")
        self.buffer.load(tensors)


# --- the loop ---------------------------------------------------------------------------------------
CURVE_COLUMNS = ("step", "episode", "return", "length", "temperature", "entropy_unit", "entropy_agent",
                 "updates")


@dataclass
class Progress:
    """Where training stands at an episode boundary; `rows` is the curve so far (one row per episode)."""

    step: int = 0
    episode: int = 0
    rows: list = field(default_factory=list)

    def state(self) -> dict[str, torch.Tensor]:
        table = torch.tensor([[r[c] for c in CURVE_COLUMNS] for r in self.rows], dtype=torch.float64)
        return {"progress.step": torch.tensor(self.step), "progress.episode": torch.tensor(self.episode),
                "progress.rows": table.reshape(len(self.rows), len(CURVE_COLUMNS))}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> Progress:
        rows = [{c: (int(v) if c in ("step", "episode", "length", "updates") else float(v))
                 for c, v in zip(CURVE_COLUMNS, row)} for row in tensors["progress.rows"].tolist()]
        return cls(int(tensors["progress.step"]), int(tensors["progress.episode"]), rows)


def train_reset_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode `episode` of run `seed` (evaluation uses its own, shared seeds)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def train(env, agent: SAC, total_steps: int, seed: int, progress: Progress | None = None,
          checkpoint_every: int = 0, on_checkpoint: Callable[[Progress], None] | None = None,
          on_episode: Callable[[dict], None] | None = None) -> Progress:
    """Run SAC for `total_steps` environment steps (a last, unfinished episode is not logged).

    Checkpoints are taken at episode boundaries, at the first one at or after each multiple of
    `checkpoint_every` steps: there the whole state is the agent plus `progress` (the next episode starts
    from its own reset seed), so a run resumed from `on_checkpoint`'s state continues exactly as if it had
    never stopped."""
    p = progress or Progress()
    cfg = agent.cfg
    next_ckpt = (p.step // checkpoint_every + 1) * checkpoint_every if checkpoint_every else math.inf
    while p.step < total_steps:
        obs, _ = env.reset(seed=train_reset_seed(seed, p.episode))
        visited, ret, done = [], 0.0, False
        while not done and p.step < total_steps:
            act = agent.random_action() if p.step < cfg.learning_starts else agent.act(obs)
            next_obs, rew, terminated, truncated, _ = env.step(act)
            agent.buffer.add(obs, act, rew, next_obs, terminated)
            visited.append(obs)
            obs, ret, done = next_obs, ret + float(rew), terminated or truncated
            p.step += 1
            if p.step >= cfg.learning_starts and p.step % cfg.update_every == 0:
                agent.update()
        if not done:
            break
        ent_unit, ent_agent = agent.entropies(np.stack(visited))
        p.rows.append({"step": p.step, "episode": p.episode, "return": ret, "length": len(visited),
                       "temperature": agent.temperature.value().item(), "entropy_unit": ent_unit,
                       "entropy_agent": ent_agent, "updates": agent.updates})
        p.episode += 1
        if on_episode is not None:
            on_episode(p.rows[-1])
        if p.step >= next_ckpt and p.step < total_steps:
            next_ckpt = (p.step // checkpoint_every + 1) * checkpoint_every
            if on_checkpoint is not None:
                on_checkpoint(p)
    return p


def greedy_policy(actor: Actor) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy bias + scale * tanh(mean) that evaluation runs."""

    @torch.no_grad()
    def policy(obs: np.ndarray) -> np.ndarray:
        return actor.mode(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()

    return policy


def evaluate(env, policy: Callable[[np.ndarray], np.ndarray], reset_seeds: list[int]) -> list[dict]:
    """Return and length of one episode of `policy` from each reset seed."""
    out = []
    for s in reset_seeds:
        obs, _ = env.reset(seed=int(s))
        ret, length, done = 0.0, 0, False
        while not done:
            obs, rew, terminated, truncated, _ = env.step(policy(obs))
            ret, length, done = ret + float(rew), length + 1, terminated or truncated
        out.append({"reset_seed": int(s), "return": ret, "length": length})
    return out


def config_dict(cfg: SACConfig | TemperatureConfig) -> dict:
    return asdict(cfg)
