"""PPO on NetHackScore-v0 with Motif's reward (CleanRL's ppo.py, specialised: synchronous in-process
vector env, feed-forward actor-critic on a character crop + stats, GAE, clipped objective).

Per-step reward (stages/motif/intrinsic.py): r = a_ext * r_ext + a_int * 1[rhat > eps] * rhat / N(m)^beta,
with (a_ext, a_int) from the agent mode: extrinsic-only (a_int = 0), intrinsic-only (a_ext = 0), both.
The paper trains APPO with a GRU for 2B steps; this is the small-budget stand-in.

Resume: every `checkpoint_every` updates the whole training state (network, optimizer, update counter,
torch RNG, every env's episode seed and actions so far, message counts, the reward cache, curve) goes to
`<policy>.resume.pt` beside the output. A re-run after a kill restores it (the envs replay their current
episodes from seed and actions, NetHack being deterministic under a seed) and continues exactly as the
uninterrupted run would have; the file is removed once the final artifacts exist, and ignored when it
was written under other params. Steps/s goes to the log only, so the artifacts stay deterministic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from stages.common.artifacts import atomic_path
from stages.common.stage import StageContext
from stages.envs.nethack import NetHackVecEnv, episode_seed, seed_split
from stages.motif.intrinsic import MotifReward
from stages.motif.policy import Agent, features
from stages.motif.reward_model import RewardModel

log = logging.getLogger(__name__)

N_ACTIONS = 23
CURVE_COLUMNS = ("step", "update", "episodes", "ext_return", "score", "max_depth", "intrinsic_per_step",
                 "policy_loss", "value_loss", "entropy", "approx_kl")


@dataclass
class PPOConfig:
    total_steps: int = 150_000
    """Environment steps summed over all envs; rounded down to whole updates."""
    num_envs: int = 16
    """Envs stepped in turn in this process; one env step of each per vector step."""
    num_steps: int = 64
    """Rollout length per env per update (batch = num_envs * num_steps)."""
    learning_rate: float = 3e-4
    """Adam learning rate (linearly annealed to 0 when anneal_lr)."""
    anneal_lr: bool = True
    """Linear decay of the learning rate over the updates."""
    gamma: float = 0.99
    """Discount (paper: 0.99)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 4
    """Minibatches per epoch of PPO updates."""
    update_epochs: int = 2
    """Passes over each rollout batch."""
    clip_coef: float = 0.1
    """PPO ratio clip (paper: 0.1); also clips the value update."""
    ent_coef: float = 0.01
    """Entropy bonus (paper: 0.003 over 2B steps; more exploration pressure for short runs)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    reward_clip: float = 10.0
    """Per-step rewards are clipped to [-reward_clip, reward_clip] (score jumps of 50+ on a new level)."""
    checkpoint_every: int = 10
    """Updates between resumable checkpoints."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.batch_size


@dataclass
class RewardConfig:
    a_ext: float
    """Weight of the extrinsic (score) reward."""
    a_int: float
    """Weight of Motif's intrinsic reward."""
    beta: float = 3.0
    """Exponent of the per-episode message count N(m)."""
    threshold_quantile: float = 0.5
    """eps = this quantile of the normalized reward over the dataset (paper: the median)."""


class Stopped(Exception):
    """Raised by `train(stop_after=k)`: simulates a kill after k updates (tests)."""


def resume_path(output: str | Path) -> Path:
    return Path(f"{output}.resume.pt")


def _state_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(cfg: PPOConfig, policy_cfg: dict, reward_cfg: RewardConfig, reward_model: RewardModel | None,
          seed: int, resume: Path | None = None, max_episode_steps: int | None = None,
          stop_after: int | None = None, progress: Callable = lambda it, **kw: it,
          make_env: Callable | None = None) -> tuple[Agent, list[tuple], list[dict]]:
    """Run PPO; returns the agent, one curve row per update and one dict per finished episode."""
    if cfg.num_updates < 1:
        raise ValueError(f"total_steps {cfg.total_steps} < one batch ({cfg.batch_size} steps)")
    if cfg.batch_size % cfg.num_minibatches:
        raise ValueError(f"batch {cfg.batch_size} not divisible into {cfg.num_minibatches} minibatches")
    torch.manual_seed(seed)

    def seed_fn(k: int) -> int:
        s = episode_seed("train", seed, k)
        assert seed_split(s) == "train"
        return s

    venv = NetHackVecEnv(cfg.num_envs, seed_fn, max_episode_steps,
                         **({"make": make_env} if make_env else {}))
    agent = Agent.from_params(N_ACTIONS, policy_cfg)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    motif = MotifReward(reward_model, cfg.num_envs, reward_cfg.a_ext, reward_cfg.a_int,
                        reward_cfg.threshold_quantile, reward_cfg.beta)
    # a resume file only continues the run that wrote it: same hyperparameters, seed and reward model
    key = _state_hash(asdict(cfg), policy_cfg, asdict(reward_cfg), seed, max_episode_steps,
                      reward_model.fingerprint() if reward_model is not None else None)

    n, T, c = cfg.num_envs, cfg.num_steps, policy_cfg["crop"]
    crops = torch.zeros((T, n, c, c), dtype=torch.long)
    stats = torch.zeros((T, n, 8))
    actions = torch.zeros((T, n), dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros((T, n)) for _ in range(4))

    start_update, global_step, curve, episodes = 1, 0, [], []
    next_done = torch.zeros(n)
    if resume is not None and resume.exists():
        state = torch.load(resume, weights_only=False)
        if state["key"] != key:
            log.warning("%s was written under other params; starting afresh", resume)
        else:
            agent.load_state_dict(state["agent"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            start_update, global_step = state["update"] + 1, state["global_step"]
            curve, episodes, next_done = state["curve"], state["episodes"], state["next_done"]
            if reward_model is not None:
                reward_model.cache = dict(state["reward_cache"])
            for i, msgs in enumerate(venv.restore(state["venv"])):
                motif.counts.replay(i, msgs)
            log.info("resumed from %s at update %d (step %d)", resume, state["update"], global_step)
    if start_update == 1:
        venv.reset()

    timer, steps_timed = time.perf_counter(), 0
    for update in progress(range(start_update, cfg.num_updates + 1), total=cfg.num_updates,
                           initial=start_update - 1, desc="ppo"):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - (update - 1.0) / cfg.num_updates) * cfg.learning_rate
        ended_now, intrinsic_sum = [], 0.0
        for step in range(T):
            global_step += n
            crops[step], stats[step] = features(venv.obs, c)
            dones[step] = next_done
            with torch.no_grad():
                logits, value = agent(crops[step], stats[step])
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
            values[step], actions[step], logprobs[step] = value, action, dist.log_prob(action)
            _, r_ext, done, messages, ended = venv.step(action.numpy())
            total, r_int = motif(messages, r_ext, done)
            intrinsic_sum += float(r_int.sum())
            rewards[step] = torch.from_numpy(np.clip(total, -cfg.reward_clip, cfg.reward_clip)).float()
            next_done = torch.from_numpy(done.astype(np.float32))
            ended_now += [{"update": update, "env": e.env_index, "seed": e.seed, "steps": e.steps,
                           "score": e.score, "max_depth": e.max_depth, "turns": e.turns,
                           "ext_return": e.ext_return, "crashed": e.crashed} for e in ended]
        steps_timed += n * T

        with torch.no_grad():   # GAE (CleanRL): dones[t] marks obs t as the first of a new episode
            next_value = agent.value(*features(venv.obs, c))
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(n)
            for t in reversed(range(T)):
                nonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
                next_v = next_value if t == T - 1 else values[t + 1]
                delta = rewards[t] + cfg.gamma * next_v * nonterminal - values[t]
                last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
                advantages[t] = last
            returns = advantages + values

        b_crops, b_stats = crops.reshape(-1, c, c), stats.reshape(-1, 8)
        b_actions, b_logprobs = actions.reshape(-1), logprobs.reshape(-1)
        b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        mb = cfg.batch_size // cfg.num_minibatches
        for _ in range(cfg.update_epochs):
            order = torch.randperm(cfg.batch_size)
            for start in range(0, cfg.batch_size, mb):
                idx = order[start:start + mb]
                logits, new_value = agent(b_crops[idx], b_stats[idx])
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
        mean = (lambda k: float(np.mean([e[k] for e in ended_now])) if ended_now else math.nan)
        curve.append((global_step, update, len(ended_now), mean("ext_return"), mean("score"),
                      mean("max_depth"), intrinsic_sum / (n * T), pg_loss.item(), v_loss.item(),
                      entropy.item(), approx_kl))
        if update % 10 == 0 or update == cfg.num_updates:
            sps = steps_timed / (time.perf_counter() - timer)
            log.info("update %d/%d step %d: %.0f steps/s; last update: %d episodes, score %.1f, "
                     "intrinsic/step %.4f", update, cfg.num_updates, global_step, sps, len(ended_now),
                     curve[-1][4], curve[-1][6])
        if resume is not None and update % cfg.checkpoint_every == 0 and update < cfg.num_updates:
            state = {"key": key, "update": update, "global_step": global_step, "agent": agent.state_dict(),
                     "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                     "venv": venv.state(), "next_done": next_done, "curve": curve, "episodes": episodes,
                     "reward_cache": dict(reward_model.cache) if reward_model is not None else {}}
            with atomic_path(resume) as tmp:
                torch.save(state, tmp)
        if stop_after is not None and update >= stop_after:
            venv.close()
            raise Stopped(f"stopped after update {update}")
    venv.close()
    sps = steps_timed / max(time.perf_counter() - timer, 1e-9)
    log.info("PPO: %d updates, %d env steps, %.0f steps/s (this process's updates)", cfg.num_updates,
             global_step, sps)
    return agent, curve, episodes


def run(ctx: StageContext) -> None:
    cfg = PPOConfig(**ctx.params["ppo"])
    mode = ctx.params["agent"]
    reward_cfg = RewardConfig(a_ext=mode["a_ext"], a_int=mode["a_int"], **ctx.params["intrinsic"])
    model = None
    if reward_cfg.a_int != 0:
        model = RewardModel.load(ctx.inputs["reward_model"], ctx.inputs["reward_stats"])
    resume = resume_path(ctx.outputs["policy"])
    agent, curve, episodes = train(cfg, ctx.params["policy"], reward_cfg, model, ctx.seed, resume,
                                   ctx.params["env"]["max_episode_steps"], progress=ctx.progress)
    ctx.save_checkpoint("policy", agent.state_dict())
    with atomic_path(ctx.outputs["curve"]) as tmp:
        tmp.write_text("\n".join([",".join(CURVE_COLUMNS)] + [
            ",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) for row in curve]) + "\n")
    last = episodes[-max(1, len(episodes) // 5):] if episodes else []
    ctx.write_json("metrics", {
        "env_steps": curve[-1][0], "updates": len(curve), "episodes": len(episodes),
        "crashed_episodes": sum(e["crashed"] for e in episodes),
        "last_fifth": {k: float(np.mean([e[k] for e in last])) if last else None
                       for k in ("score", "max_depth", "turns", "ext_return")},
        "a_ext": reward_cfg.a_ext, "a_int": reward_cfg.a_int})
    resume.unlink(missing_ok=True)
