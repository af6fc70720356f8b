"""Continuous-control tasks behind one gymnasium interface, and the action-rescaling wrapper.

`make_control_env(spec)` builds
  "Pendulum-v1" (any gymnasium id)           -> gymnasium.make(spec)
  "dm_control:<domain>-<task>"               -> a DeepMind Control Suite task through `DMControlEnv`
and `ActionRescale(env, s)` lets the agent act in [-s, s]^d while the task still receives actions in its own
box: only the agent's action scale changes (the experiment of "Decoupling regularization from the action
space", Mohammadpour et al., ICLR 2024). Nothing here renders (MUJOCO_GL defaults to 'disable').
"""
from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

DM_CONTROL_PREFIX = "dm_control:"


class ActionRescale(gym.ActionWrapper):
    """Agent actions in [-scale, scale]^d, mapped affinely onto the wrapped env's box [low, high].

    Actions outside [-scale, scale] are clipped first, so the task never sees an action outside its box."""

    def __init__(self, env: gym.Env, scale: float):
        super().__init__(env)
        box = env.action_space
        if not isinstance(box, gym.spaces.Box) or not (np.all(np.isfinite(box.low))
                                                       and np.all(np.isfinite(box.high))):
            raise ValueError(f"ActionRescale needs a bounded Box action space, got {box}")
        if not scale > 0:
            raise ValueError(f"action scale must be positive, got {scale}")
        self.scale = float(scale)
        self.low, self.high = box.low.astype(np.float64), box.high.astype(np.float64)
        self.action_space = gym.spaces.Box(-self.scale, self.scale, box.shape, np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(action, dtype=np.float64), -self.scale, self.scale)
        unit = (a + self.scale) / (2 * self.scale)                 # in [0, 1]
        return (self.low + unit * (self.high - self.low)).astype(self.env.action_space.dtype)


class DMControlEnv(gym.Env):
    """A dm_control suite task as a gymnasium env: observations flattened (in the task's key order) to one
    float32 vector, reward None -> 0. DMC tasks only end by their time limit (truncated); a step with
    discount 0 (none of the standard tasks) is reported as terminated. `reset(seed=...)` reseeds the task's
    random state, so a reset seed fixes the initial state."""

    metadata = {"render_modes": []}

    def __init__(self, domain: str, task: str, time_limit: float | None = None):
        # no rendering here: without this dm_control probes GLFW / EGL / OSMesa at import and warns
        os.environ.setdefault("MUJOCO_GL", "disable")
        from dm_control import suite

        kwargs = {} if time_limit is None else {"time_limit": time_limit}
        try:
            self._env = suite.load(domain, task, task_kwargs={"random": 0}, environment_kwargs=kwargs)
        except ValueError as exc:
            raise ValueError(f"unknown dm_control task '{domain}-{task}' ({exc})") from exc
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32),
                                           spec.shape, np.float32)
        n_obs = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n_obs,), np.float32)

    @staticmethod
    def _flat(observation) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._flat(self._env.reset().observation), {}

    def step(self, action):
        ts = self._env.step(np.asarray(action, dtype=np.float64))
        last = ts.last()
        terminated = bool(last and ts.discount == 0)
        return self._flat(ts.observation), float(ts.reward or 0.0), terminated, bool(last and not terminated), {}


def make_control_env(spec: str, scale: float | None = None, max_episode_steps: int | None = None) -> gym.Env:
    """Env for `spec` (a gymnasium id or "dm_control:<domain>-<task>"), optionally time-limited to
    `max_episode_steps` and wrapped in ActionRescale(scale)."""
    if spec.startswith(DM_CONTROL_PREFIX):
        domain, sep, task = spec[len(DM_CONTROL_PREFIX):].partition("-")
        if not sep:
            raise ValueError(f"env '{spec}': expected dm_control:<domain>-<task>, e.g. dm_control:cartpole-swingup")
        env: gym.Env = DMControlEnv(domain, task)
        if max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, max_episode_steps)
    else:
        kwargs: dict[str, Any] = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        try:
            env = gym.make(spec, **kwargs)
        except gym.error.Error as exc:
            raise ValueError(f"env '{spec}': not a gymnasium id ({exc})") from exc
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"env '{spec}' has action space {env.action_space}, not a continuous Box")
    return env if scale is None else ActionRescale(env, scale)
