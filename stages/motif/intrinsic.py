"""Motif's per-step reward (method note, stage 5):

    r_t = a_ext * r_ext + a_int * 1[rhat(m_t) > eps] * rhat(m_t) / N(m_t)^beta

rhat = (r_phi(m) - mu) / sigma with the reward stage's mean and std, eps a quantile of rhat over the
dataset's messages, N(m_t) the number of times message m_t has been seen in the current episode, this
step included (so the first sighting pays in full), beta = 3 in the paper.
An empty message (no caption this step) earns no intrinsic reward and is not counted: the reward model
never saw one in training.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from stages.motif.reward_model import RewardModel


def intrinsic_reward(rhat: np.ndarray, counts: np.ndarray, eps: float, beta: float) -> np.ndarray:
    """1[rhat > eps] * rhat / N^beta, elementwise."""
    rhat = np.asarray(rhat, np.float64)
    counts = np.asarray(counts, np.float64)
    return np.where(rhat > eps, rhat / np.maximum(counts, 1.0) ** beta, 0.0)


def combined_reward(r_ext: np.ndarray, r_int: np.ndarray, a_ext: float, a_int: float) -> np.ndarray:
    return a_ext * np.asarray(r_ext, np.float64) + a_int * np.asarray(r_int, np.float64)


class EpisodeMessageCounts:
    """N(m): per env, how often each message was seen in its current episode."""

    def __init__(self, n_envs: int):
        self.counts = [Counter() for _ in range(n_envs)]

    def see(self, messages: list[str]) -> np.ndarray:
        """Count this step's message of every env; returns N including this sighting (0 for empty)."""
        out = np.zeros(len(messages), np.int64)
        for i, m in enumerate(messages):
            if m:
                self.counts[i][m] += 1
                out[i] = self.counts[i][m]
        return out

    def end_episode(self, env_index: int) -> None:
        self.counts[env_index].clear()


class MotifReward:
    """The whole per-step reward for a vector of envs (a stages.rl.ppo_nethack.StepReward);
    `reward_model` may be None when a_int = 0."""

    def __init__(self, reward_model: RewardModel | None, n_envs: int, a_ext: float, a_int: float,
                 threshold_quantile: float, beta: float):
        if a_int != 0 and reward_model is None:
            raise ValueError("a_int != 0 needs a reward model")
        self.model, self.a_ext, self.a_int, self.beta = reward_model, a_ext, a_int, beta
        self.eps = reward_model.threshold(threshold_quantile) if reward_model is not None else 0.0
        self.counts = EpisodeMessageCounts(n_envs)

    def __call__(self, messages: list[str], r_ext: np.ndarray, dones: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(total reward, intrinsic term before a_int) for one step of every env; episodes that ended
        at this step start their counts afresh."""
        n = self.counts.see(messages)
        r_int = np.zeros(len(messages))
        if self.model is not None:
            nonempty = n > 0
            if nonempty.any():
                msgs = [m for m, keep in zip(messages, nonempty) if keep]
                r_int[nonempty] = intrinsic_reward(self.model.normalized(msgs), n[nonempty], self.eps,
                                                   self.beta)
        for i in np.flatnonzero(dones):
            self.counts.end_episode(int(i))
        return combined_reward(r_ext, r_int, self.a_ext, self.a_int), r_int

    def state_dict(self) -> dict:
        """Per-env message counts of the current episodes (resume), and the reward model's score cache,
        which only spares recomputation: a score does not depend on what is cached."""
        return {"counts": [dict(c) for c in self.counts.counts],
                "cache": dict(self.model.cache) if self.model is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.counts.counts = [Counter(c) for c in state["counts"]]
        if self.model is not None:
            self.model.cache = dict(state["cache"])
