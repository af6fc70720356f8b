"""PPO for episodic tasks with a masked discrete action space and a reward at the end of the episode.

CleanRL's ppo.py, reorganised around whole episodes: every update samples `episodes_per_update`
episodes with the current policy (all running side by side until each stops), scores the terminal
states with `reward_fn`, computes GAE advantages over each episode (reward only on the last step), and
runs `update_epochs` passes of clipped-surrogate minibatch updates. Invalid actions get logit -inf, so
they are never sampled and carry no probability in the ratio or the entropy.

An environment is anything with
  n_actions, obs_dim
  reset(n) -> list of states
  observe(states) -> (obs float32 (n, obs_dim), mask bool (n, n_actions))
  step(states, actions) -> (next states, done bool (n,))
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class MaskedEpisodicEnv(Protocol):
    n_actions: int
    obs_dim: int

    def reset(self, n: int) -> list: ...

    def observe(self, states: Sequence) -> tuple[np.ndarray, np.ndarray]: ...

    def step(self, states: Sequence, actions: np.ndarray) -> tuple[list, np.ndarray]: ...


@dataclass
class PPOConfig:
    """PPO hyperparameters (CleanRL names)."""

    episodes_per_update: int = 64
    """Episodes sampled with the current policy per update (the rollout batch)."""
    update_epochs: int = 4
    """Passes over the rollout batch per update (K epochs)."""
    minibatch_size: int = 256
    """Transitions per gradient step."""
    learning_rate: float = 1e-3
    """Adam learning rate (constant)."""
    gamma: float = 1.0
    """Discount; 1 = the episode-end reward counts fully for every step."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """Surrogate clipping epsilon."""
    ent_coef: float = 0.01
    """Entropy bonus weight (keeps the policy from collapsing onto one molecule)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    norm_adv: bool = True
    """Standardise advantages per minibatch."""
    hidden: int = 128
    """Width of the two hidden layers of actor and critic."""
    max_steps: int = 64
    """Safety cap on episode length: an episode still running after this many steps is an error."""

    @classmethod
    def from_params(cls, p: dict) -> PPOConfig:
        unknown = set(p) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown PPO hyperparameter(s) {sorted(unknown)}")
        return cls(**p)


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs (CleanRL's layout); the actor's last layer starts near zero so the
    first policy is close to uniform over the valid actions."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 128):
        super().__init__()
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, 1), std=1.0))
        self.actor = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, n_actions), std=0.01))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs)[:, 0]

    def masked_logits(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.actor(obs).masked_fill(~mask, -torch.inf)

    def evaluate(self, obs, mask, actions):
        """log pi(a|s), entropy, V(s) for given actions."""
        logp_all = torch.log_softmax(self.masked_logits(obs, mask), -1)
        logp = logp_all.gather(1, actions[:, None])[:, 0]
        p_all = logp_all.exp()
        entropy = -(p_all * torch.where(mask, logp_all, 0.0)).sum(-1)
        return logp, entropy, self.value(obs)


@dataclass
class Rollout:
    """Flat transitions of a batch of finished episodes, in time order within each episode."""

    obs: torch.Tensor
    mask: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    episode: torch.Tensor          # episode index of each transition
    terminals: list                # final state of each episode
    rewards: np.ndarray            # episode-end reward of each episode
    lengths: np.ndarray
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    returns: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


@torch.no_grad()
def sample_episodes(env: MaskedEpisodicEnv, agent: Agent, n: int, gen: torch.Generator,
                    max_steps: int = 64, greedy: bool = False) -> tuple[list, dict[str, list]]:
    """Run n episodes side by side; returns the terminal states and per-step records."""
    states = env.reset(n)
    active = np.arange(n)
    terminals: list[Any] = [None] * n
    rec: dict[str, list] = {k: [] for k in ("obs", "mask", "actions", "logprobs", "values", "episode")}
    for _ in range(max_steps):
        if len(active) == 0:
            break
        obs_np, mask_np = env.observe(states)
        obs, mask = torch.from_numpy(np.asarray(obs_np, np.float32)), torch.from_numpy(np.asarray(mask_np, bool))
        if not mask.any(1).all():
            raise RuntimeError("environment returned a non-terminal state with no valid action")
        logits = agent.masked_logits(obs, mask)
        if greedy:
            actions = logits.argmax(1)
        else:
            actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        logp = torch.log_softmax(logits, -1).gather(1, actions[:, None])[:, 0]
        for key, val in (("obs", obs), ("mask", mask), ("actions", actions), ("logprobs", logp),
                         ("values", agent.value(obs)), ("episode", torch.from_numpy(active))):
            rec[key].append(val)
        states, done = env.step(states, actions.numpy())
        done = np.asarray(done, bool)
        for k in np.flatnonzero(done):
            terminals[active[k]] = states[k]
        keep = np.flatnonzero(~done)
        states = [states[k] for k in keep]
        active = active[keep]
    if len(active):
        raise RuntimeError(f"{len(active)} episode(s) still running after max_steps={max_steps}")
    return terminals, rec


def collect(env: MaskedEpisodicEnv, agent: Agent, reward_fn: Callable[[list], np.ndarray], cfg: PPOConfig,
            gen: torch.Generator) -> Rollout:
    terminals, rec = sample_episodes(env, agent, cfg.episodes_per_update, gen, cfg.max_steps)
    cat = {k: torch.cat(v) for k, v in rec.items()}
    order = torch.argsort(cat["episode"], stable=True)      # group by episode, keep time order
    cat = {k: v[order] for k, v in cat.items()}
    rewards = np.asarray(reward_fn(terminals), dtype=np.float64)
    if rewards.shape != (len(terminals),) or not np.isfinite(rewards).all():
        raise ValueError(f"reward_fn must return {len(terminals)} finite values, got shape {rewards.shape}")
    lengths = np.bincount(cat["episode"].numpy(), minlength=len(terminals))
    ro = Rollout(cat["obs"], cat["mask"], cat["actions"], cat["logprobs"], cat["values"], cat["episode"],
                 terminals, rewards, lengths)
    ro.advantages, ro.returns = gae(ro, cfg.gamma, cfg.gae_lambda)
    return ro


def gae(ro: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates; the only reward of an episode is on its last transition."""
    adv = torch.zeros(len(ro.actions))
    values = ro.values.double().numpy()
    end = np.cumsum(ro.lengths)
    for e, (stop, length) in enumerate(zip(end, ro.lengths)):
        last_gae, next_value = 0.0, 0.0
        for t in range(stop - 1, stop - length - 1, -1):
            reward = ro.rewards[e] if t == stop - 1 else 0.0
            delta = reward + gamma * next_value - values[t]
            last_gae = delta + gamma * lam * last_gae
            adv[t] = last_gae
            next_value = values[t]
    return adv, adv + ro.values


def update(agent: Agent, opt: torch.optim.Optimizer, ro: Rollout, cfg: PPOConfig,
           gen: torch.Generator) -> dict[str, float]:
    n = len(ro.actions)
    stats: dict[str, list] = {"pg_loss": [], "v_loss": [], "entropy": [], "approx_kl": [], "clipfrac": []}
    for _ in range(cfg.update_epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.minibatch_size):
            mb = perm[start:start + cfg.minibatch_size]
            logp, entropy, value = agent.evaluate(ro.obs[mb], ro.mask[mb], ro.actions[mb])
            log_ratio = logp - ro.logprobs[mb]
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean()
                clipfrac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
            adv = ro.advantages[mb]
            if cfg.norm_adv and len(mb) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            v_loss = 0.5 * (value - ro.returns[mb]).pow(2).mean()
            loss = pg_loss - cfg.ent_coef * entropy.mean() + cfg.vf_coef * v_loss
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            opt.step()
            for key, val in (("pg_loss", pg_loss), ("v_loss", v_loss), ("entropy", entropy.mean()),
                             ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                stats[key].append(float(val.detach()))
    return {k: float(np.mean(v)) for k, v in stats.items()}


class PPO:
    """Agent + optimiser + sampler state; `train(reward_fn, updates)` can be called repeatedly (active
    learning changes the reward between calls and keeps the policy)."""

    def __init__(self, env: MaskedEpisodicEnv, cfg: PPOConfig, seed: int):
        self.env, self.cfg = env, cfg
        torch.manual_seed(seed)
        self.agent = Agent(env.obs_dim, env.n_actions, cfg.hidden)
        self.opt = torch.optim.Adam(self.agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.gen = torch.Generator().manual_seed(seed)
        self.updates_done = 0

    def train(self, reward_fn: Callable[[list], np.ndarray], updates: int,
              on_update: Callable[[int, Rollout, dict], None] | None = None) -> list[dict]:
        history = []
        for _ in range(updates):
            ro = collect(self.env, self.agent, reward_fn, self.cfg, self.gen)
            stats = update(self.agent, self.opt, ro, self.cfg, self.gen)
            self.updates_done += 1
            stats.update(update_index=self.updates_done, mean_reward=float(ro.rewards.mean()),
                         max_reward=float(ro.rewards.max()), mean_length=float(ro.lengths.mean()))
            history.append(stats)
            if on_update is not None:
                on_update(self.updates_done, ro, stats)
        return history

    def sample(self, n: int, greedy: bool = False) -> list:
        """n terminal states from the current policy."""
        return sample_episodes(self.env, self.agent, n, self.gen, self.cfg.max_steps, greedy)[0]
