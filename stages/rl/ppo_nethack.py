"""PPO on NetHack (CleanRL's ppo.py, specialised: synchronous in-process vector env, feed-forward
actor-critic, GAE, clipped objective), shared by the NetHack methods. The method injects what is its own:

  make_agent  () -> nn.Module with `agent(*inputs) -> (logits, value)` and `agent.value(*inputs)`;
              called after seeding torch, so the initial weights follow from the seed.
  observe     the envs' observations (list of NLE obs dicts) -> the tuple of input tensors, batched over
              envs (Motif: a map crop and stats; MaestroMotif adds the skill id).
  reward      a `StepReward`: one vector step's messages, extrinsic rewards and dones -> the reward PPO
              optimises and its intrinsic part (logged). Motif: stages/motif/intrinsic.MotifReward.

Resume (with a stages.common.resume.ResumeState): every `checkpoint_every` updates the network, Adam's
moments, the torch RNG and the dones go to safetensors, and the update counter, each env's episode seed
and actions so far, the reward's state, the curve and the finished episodes to JSON. A restart replays
each env's current episode from its seed and actions (NetHack is deterministic under a seed) and goes on
exactly as the uninterrupted run would have. Steps/s goes to the log only, so outputs stay deterministic.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from stages.common.resume import ResumeState, load_optimizer_tensors, optimizer_tensors
from stages.envs.nethack import NetHackVecEnv, episode_seed, seed_split

log = logging.getLogger(__name__)

CURVE_COLUMNS = ("step", "update", "episodes", "ext_return", "score", "max_depth", "intrinsic_per_step",
                 "policy_loss", "value_loss", "entropy", "approx_kl")
Observe = Callable[[list[dict]], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (CleanRL names). No defaults: the values live in params.yaml (`<method>.ppo`,
    schema rl/ppo_nethack.schema.yaml); build with `from_dict`."""

    total_steps: int
    """Environment steps summed over all envs; rounded down to whole updates."""
    num_envs: int
    """Envs stepped in turn in this process; one env step of each per vector step."""
    num_steps: int
    """Rollout length per env per update (batch = num_envs * num_steps)."""
    learning_rate: float
    """Adam learning rate (linearly annealed to 0 when anneal_lr)."""
    anneal_lr: bool
    """Linear decay of the learning rate over the updates."""
    gamma: float
    """Discount."""
    gae_lambda: float
    """GAE lambda."""
    num_minibatches: int
    """Minibatches per epoch of PPO updates; must divide the batch."""
    update_epochs: int
    """Passes over each rollout batch."""
    clip_coef: float
    """PPO ratio clip; also clips the value update."""
    ent_coef: float
    """Entropy bonus weight."""
    vf_coef: float
    """Value loss weight."""
    max_grad_norm: float
    """Global gradient-norm clip."""
    reward_clip: float
    """Per-step rewards are clipped to [-reward_clip, reward_clip] (score jumps of 50+ on a new level)."""
    checkpoint_every: int
    """Updates between resumable checkpoints."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PPOConfig:
        return cls(**values)   # a missing or unknown key is a TypeError naming it

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.batch_size


class StepReward(Protocol):
    def __call__(self, messages: list[str], r_ext: np.ndarray, dones: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(reward to optimise, intrinsic part) of every env for one vector step; `dones` marks the envs
        whose episode ended at this step (per-episode state starts afresh for them)."""

    def state_dict(self) -> dict:
        """The reward's state between steps (per-episode counts, caches) as JSON-able values."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


class Stopped(Exception):
    """Raised by `train(stop_after=k)`: simulates a kill after k updates (tests)."""


def train(cfg: PPOConfig, make_agent: Callable[[], nn.Module], observe: Observe, reward: StepReward,
          seed: int, max_episode_steps: int | None, resume: ResumeState | None = None, resume_key: str = "",
          stop_after: int | None = None, progress: Callable = lambda it, **kw: it,
          make_env: Callable[[], gym.Env] | None = None) -> tuple[nn.Module, list[dict], list[dict]]:
    """Run PPO on episodes of the "train" seed split (stream `seed`); returns the agent, one curve row
    per update (CURVE_COLUMNS) and one dict per finished episode. `resume_key` names what the run
    depends on beyond the params, seed and code that `resume` checks (e.g. the reward model's weights):
    a resume file written under another key is ignored."""
    if cfg.num_updates < 1:
        raise ValueError(f"total_steps {cfg.total_steps} < one batch ({cfg.batch_size} steps)")
    if cfg.batch_size % cfg.num_minibatches:
        raise ValueError(f"batch {cfg.batch_size} not divisible into {cfg.num_minibatches} minibatches")
    torch.manual_seed(seed)

    def seed_fn(k: int) -> int:
        s = episode_seed("train", seed, k)
        assert seed_split(s) == "train"
        return s

    venv = NetHackVecEnv(cfg.num_envs, seed_fn, max_episode_steps, make_env)
    agent = make_agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)

    n, T = cfg.num_envs, cfg.num_steps
    inputs: list[tuple[torch.Tensor, ...]] = [()] * T
    actions = torch.zeros((T, n), dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros((T, n)) for _ in range(4))

    start_update, global_step, curve, episodes = 1, 0, [], []
    next_done = torch.zeros(n)
    saved = resume.load() if resume is not None else None
    if saved is not None and saved[1].get("key") != resume_key:
        log.warning("%s was written for another reward (key %s, now %s); starting afresh", resume.path,
                    saved[1].get("key"), resume_key)
        saved = None
    if saved is not None:
        tensors, state = saved
        agent.load_state_dict({k.removeprefix("agent."): v for k, v in tensors.items() if k.startswith("agent.")})
        load_optimizer_tensors(optimizer, tensors, "optimizer")
        torch.set_rng_state(tensors["torch_rng"])
        next_done = tensors["next_done"]
        start_update, global_step = state["update"] + 1, state["global_step"]
        curve, episodes = state["curve"], state["episodes"]
        venv.restore(state["venv"])
        reward.load_state_dict(state["reward"])
        log.info("resumed at update %d (step %d)", state["update"], global_step)
    else:
        venv.reset()

    timer, steps_timed = time.perf_counter(), 0
    for update in progress(range(start_update, cfg.num_updates + 1), total=cfg.num_updates,
                           initial=start_update - 1, desc="ppo"):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (update - 1.0) / cfg.num_updates) * cfg.learning_rate
        ended_now, intrinsic_sum = [], 0.0
        for step in range(T):
            global_step += n
            inputs[step] = observe(venv.obs)
            dones[step] = next_done
            with torch.no_grad():
                logits, value = agent(*inputs[step])
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
            values[step], actions[step], logprobs[step] = value, action, dist.log_prob(action)
            _, r_ext, done, messages, ended = venv.step(action.numpy())
            total, r_int = reward(messages, r_ext, done)
            intrinsic_sum += float(r_int.sum())
            rewards[step] = torch.from_numpy(np.clip(total, -cfg.reward_clip, cfg.reward_clip)).float()
            next_done = torch.from_numpy(done.astype(np.float32))
            ended_now += [{"update": update, "env": e.env_index, "seed": e.seed, "steps": e.steps,
                           "score": e.score, "max_depth": e.max_depth, "turns": e.turns,
                           "ext_return": float(e.ext_return), "crashed": e.crashed} for e in ended]
        steps_timed += n * T

        with torch.no_grad():   # GAE (CleanRL): dones[t] marks obs t as the first of a new episode
            next_value = agent.value(*observe(venv.obs))
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(n)
            for t in reversed(range(T)):
                nonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
                next_v = next_value if t == T - 1 else values[t + 1]
                delta = rewards[t] + cfg.gamma * next_v * nonterminal - values[t]
                last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
                advantages[t] = last
            returns = advantages + values

        b_inputs = tuple(torch.cat(parts) for parts in zip(*inputs))   # (T * n, ...), step-major
        b_actions, b_logprobs = actions.reshape(-1), logprobs.reshape(-1)
        b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        mb = cfg.batch_size // cfg.num_minibatches
        for _ in range(cfg.update_epochs):
            order = torch.randperm(cfg.batch_size)
            for start in range(0, cfg.batch_size, mb):
                idx = order[start:start + mb]
                logits, new_value = agent(*(x[idx] for x in b_inputs))
                dist = torch.distributions.Categorical(logits=logits)
                log_ratio = dist.log_prob(b_actions[idx]) - b_logprobs[idx]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean().item()
                adv = b_adv[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(-adv * ratio,
                                    -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                v_clipped = b_values[idx] + (new_value - b_values[idx]).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * torch.max((new_value - b_returns[idx]) ** 2,
                                         (v_clipped - b_returns[idx]) ** 2).mean()
                entropy = dist.entropy().mean()
                loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()

        episodes += ended_now
        means = {k: float(np.mean([e[k] for e in ended_now])) if ended_now else math.nan
                 for k in ("ext_return", "score", "max_depth")}
        curve.append({"step": global_step, "update": update, "episodes": len(ended_now), **means,
                      "intrinsic_per_step": intrinsic_sum / (n * T), "policy_loss": pg_loss.item(),
                      "value_loss": v_loss.item(), "entropy": entropy.item(), "approx_kl": approx_kl})
        if update % 10 == 0 or update == cfg.num_updates:
            log.info("update %d/%d step %d: %.0f steps/s; last update: %d episodes, score %.1f, "
                     "intrinsic/step %.4f", update, cfg.num_updates, global_step,
                     steps_timed / (time.perf_counter() - timer), len(ended_now), curve[-1]["score"],
                     curve[-1]["intrinsic_per_step"])
        if resume is not None and update % cfg.checkpoint_every == 0 and update < cfg.num_updates:
            resume.save({**{f"agent.{k}": v for k, v in agent.state_dict().items()},
                         **optimizer_tensors(optimizer, "optimizer"), "torch_rng": torch.get_rng_state(),
                         "next_done": next_done},
                        {"key": resume_key, "update": update, "global_step": global_step,
                         "venv": venv.state(), "reward": reward.state_dict(), "curve": curve,
                         "episodes": episodes})
        if stop_after is not None and update >= stop_after:
            venv.close()
            raise Stopped(f"stopped after update {update}")
    venv.close()
    log.info("PPO: %d updates, %d env steps, %.0f steps/s (this process's updates)", cfg.num_updates,
             global_step, steps_timed / max(time.perf_counter() - timer, 1e-9))
    return agent, curve, episodes
