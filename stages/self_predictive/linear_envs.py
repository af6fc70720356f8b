"""Datasets of the linear collapse study (Ni et al. 2024, reference linear_code/): MountainCar with 10x10 RBF
features and the LoadUnload POMDP with truncated histories, each rolled out by a fixed behaviour policy.

`rollout_dataset(env, n_traj, max_len, rng)` returns (h_t, a_t, h_{t+1}) as float64 arrays: h is the
history feature (observation features of the last `history` steps and the actions between them, zero
padded before the start, as the reference's TruncatedHistoryEncoder), a the one-hot action. Both envs
are small NumPy re-implementations of the reference's dm_env classes (same constants and quirks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class MountainCar:
    """Sutton & Barto (2018) Example 10.1 constants. Like the reference, the position moves by the
    unclipped velocity; the episode ends at the goal (position >= 0.5)."""

    n_actions = 3
    low = np.array([-1.2, -0.07])
    high = np.array([0.6, 0.07])

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.pos, self.vel = 0.0, 0.0

    def reset(self) -> np.ndarray:
        self.pos, self.vel = self.rng.uniform(-0.6, -0.4), 0.0
        return np.array([self.pos, self.vel])

    def step(self, action: int) -> tuple[np.ndarray, bool]:
        next_vel = self.vel + 0.001 * (action - 1) - 0.0025 * np.cos(3 * self.pos)
        self.vel = float(np.clip(next_vel, -0.07, 0.07))
        self.pos = float(np.clip(self.pos + next_vel, -1.2, 0.6))
        return np.array([self.pos, self.vel]), self.pos >= 0.5


class MountainCarPolicy:
    """Epsilon-greedy around 'push along the velocity' (left if v < 0 else right)."""

    def __init__(self, epsilon: float, rng: np.random.Generator):
        self.epsilon, self.rng = epsilon, rng

    def __call__(self, obs: np.ndarray) -> int:
        greedy = 0 if obs[1] < 0 else 2
        probs = np.full(3, self.epsilon / 3)
        probs[greedy] += 1 - self.epsilon
        return int(self.rng.choice(3, p=probs))


def rbf_features(obs: np.ndarray, per_dim: int = 10, width: float = 0.15) -> np.ndarray:
    """Unnormalised Gaussian RBFs on a per_dim x per_dim grid over MountainCar's box (reference
    features.RBFEncoder with uniform_centers / normalized_scales)."""
    grids = np.meshgrid(*[np.linspace(lo, hi, per_dim) for lo, hi in zip(MountainCar.low, MountainCar.high)])
    centers = np.stack([g.ravel() for g in grids])                      # (2, per_dim^2)
    scales = (MountainCar.high - MountainCar.low) * width
    diff = (obs[..., :, None] - centers) / scales[:, None]
    return np.exp(-np.sum(diff ** 2, axis=-2))


class LoadUnload:
    """Chain 0..load_position; observation 0 at the unload end, 2 at the load end, 1 between (the load
    state is hidden). Episodes never end; reset draws the position uniformly from 0..load_position-1."""

    n_actions = 2

    def __init__(self, rng: np.random.Generator, load_position: int = 6):
        self.rng, self.load = rng, load_position
        self.pos, self.loaded = 0, False

    def _obs(self) -> int:
        return 0 if self.pos == 0 else 2 if self.pos == self.load else 1

    def reset(self) -> int:
        self.pos = int(self.rng.integers(self.load))
        self.loaded = self.pos == self.load
        return self._obs()

    def step(self, action: int) -> tuple[int, bool]:
        self.pos = max(self.pos - 1, 0) if action == 0 else min(self.pos + 1, self.load)
        if self.pos == 0:
            self.loaded = False
        elif self.pos == self.load:
            self.loaded = True
        return self._obs(), False


class LoadUnloadPolicy:
    """Right at the unload end, left at the load end, elsewhere repeat the last action but switch it with
    probability `switch_prob`. The last action persists across episodes (as in the reference)."""

    def __init__(self, switch_prob: float, rng: np.random.Generator):
        self.switch_prob, self.rng, self.last = switch_prob, rng, 0

    def __call__(self, obs: int) -> int:
        if obs == 0:
            self.last = 1
        elif obs == 2:
            self.last = 0
        elif self.rng.uniform() < self.switch_prob:
            self.last = 1 - self.last
        return self.last


@dataclass(frozen=True)
class LinearTask:
    """One environment of the study: env name, features, history length and behaviour policy knobs."""

    env: str
    history: int
    epsilon: float = 0.1
    switch_prob: float = 0.2
    load_position: int = 6
    rbf_per_dim: int = 10
    rbf_width: float = 0.15


def _histories(obs_feats: np.ndarray, act_feats: np.ndarray, horizon: int) -> np.ndarray:
    """Row i: observation features i-H+1..i and action features i-H+1..i-1 (zeros before the start)."""
    obs = np.concatenate([np.zeros((horizon - 1, obs_feats.shape[1])), obs_feats])
    act = np.concatenate([np.zeros((horizon - 1, act_feats.shape[1])), act_feats])
    return np.stack([np.concatenate([obs[i:i + horizon].ravel(), act[i:i + horizon - 1].ravel()])
                     for i in range(len(obs_feats))])


def rollout_dataset(task: LinearTask, n_traj: int, max_len: int,
                    seq: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h_t, a_t, h_{t+1}) from `n_traj` trajectories of at most `max_len` steps."""
    env_seq, policy_seq = seq.spawn(2)
    env_rng, policy_rng = np.random.default_rng(env_seq), np.random.default_rng(policy_seq)
    if task.env == "mountaincar":
        env, policy = MountainCar(env_rng), MountainCarPolicy(task.epsilon, policy_rng)
        featurize = lambda o: rbf_features(np.asarray(o), task.rbf_per_dim, task.rbf_width)  # noqa: E731
    elif task.env == "loadunload":
        env, policy = LoadUnload(env_rng, task.load_position), LoadUnloadPolicy(task.switch_prob, policy_rng)
        featurize = lambda o: np.eye(3)[np.asarray(o)]  # noqa: E731
    else:
        raise ValueError(f"unknown linear env '{task.env}' (mountaincar or loadunload)")
    data = []
    for _ in range(n_traj):
        obs, done = env.reset(), False
        observations, actions = [obs], []
        while not done and len(actions) < max_len:
            a = policy(obs)
            obs, done = env.step(a)
            observations.append(obs)
            actions.append(a)
        act = np.eye(env.n_actions)[actions]
        hist = _histories(featurize(np.array(observations)), act, task.history)
        data.append((hist[:-1], act, hist[1:]))
    return tuple(np.concatenate(x).astype(np.float64) for x in zip(*data))
