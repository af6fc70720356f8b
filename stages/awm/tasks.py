"""Differentiable torch tasks of the AWM study: the double-pendulum shooting problem and Myriad-style ODEs.

Every task maps an agent action a in [-1, 1]^da and a state s to the next state with a pure torch step,
so the true simulator's gradient exists (the "simulator" baseline backpropagates through `step`).

Double pendulum (the authors' shooting problem; note: shared/methods/awm.md): unit masses and lengths,
g 9.8, dt 0.05, integrated by `substeps` RK4 steps of dt / substeps (one RK4 step of 0.05 loses ~80% of
the energy over 200 steps at theta1 = 144 degrees; 4 substeps keep the drift near 1%). State (theta1,
theta2, omega1, omega2), angles from the downward vertical,
unwrapped. s_0 = (0, theta2_0, 0, 0); the transition is s_{t+1} = RK4(s_t + a_t * pi * e_1), so the action
at t = 0 sets theta1 = a * 180 degrees, and every later action is held at 0 (the system evolves freely).
Writing the "set" as an impulse on theta1 makes the transition one stationary map, which a Markovian model
can learn. Only the end state is scored: cost = mean((s_H - goal)^2), the goal being s_0 simulated H steps
from the goal angle. theta2_0 ~ U(center +- spread) gives the "initial states" of the gradient study
(spread 0 is the authors' fixed setting; ours otherwise).

Myriad ODEs (nikihowe/myriad, Lenhart & Workman): Euler x <- clip(x + f(x, u) dt, state bounds),
dt = T / N with N = 100, u = the action rescaled from [-1, 1] to the control bounds, stage cost c(x, u) dt
summed over the steps (no terminal cost in these three).
- cancer:     x' = r x ln(1/x) - u delta x;  c = a x^2 + u^2;  r .3, a 3, delta .45, x0 .975, T 20,
              x in [1e-3, 1], u in [0, 2].
- bioreactor: x' = G u x - D x^2;  c = -(K x - u) (maximise the integral);  K 2, G 1, D 1, x0 .5, T 2,
              u in [0, M = 1] (Myriad's M), x in [0, 10] (ours: Myriad leaves x unbounded; never reached).
- glucose:    x0' = -a x0 - b x1, x1' = -c x1 + u;  c = 1e5 (A (x0 - l)^2 + u^2);  a = b = c = 1, A 2,
              l .4 (the note; Myriad's default is .5), x0 (.75, 0), T .2, x in [0, 1]^2, u in [0, .01]
              (Myriad's bounds). With u <= .01 the control moves x0 by ~2e-4: nearly every policy is
              within a fraction of a percent of the optimum, so this task cannot separate the methods.
A horizon H <= N truncates the episode to its first H steps (same dt), so the optimum depends on H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TASKS = ("pendulum", "cancer", "bioreactor", "glucose")


@dataclass
class Task:
    """Base: subclasses define `step`, `stage_cost`, `terminal_cost` and the initial-state laws."""

    name: str
    obs_dim: int
    act_dim: int
    max_horizon: int
    obs_scale: tuple[float, ...]
    """Per-dimension scale dividing the policy's observation (keeps the policy's input O(1))."""
    act_steps: int | None = None
    """Only the first `act_steps` actions act (pendulum: 1); later ones are forced to 0."""

    def step(self, s: torch.Tensor, a: torch.Tensor, t: int) -> torch.Tensor:
        raise NotImplementedError

    def stage_cost(self, s: torch.Tensor, a: torch.Tensor, t: int) -> torch.Tensor:
        """Cost of taking a in s at step t (dt included), shape (batch,)."""
        raise NotImplementedError

    def terminal_cost(self, s_end: torch.Tensor, s0: torch.Tensor, horizon: int) -> torch.Tensor:
        return torch.zeros(s_end.shape[0], dtype=s_end.dtype)

    def eval_initial(self, n: int, g: torch.Generator) -> torch.Tensor:
        """Initial states the policies are trained and evaluated on."""
        raise NotImplementedError

    def explore_initial(self, n: int, g: torch.Generator) -> torch.Tensor:
        """Wider initial states for the world models' training data."""
        raise NotImplementedError

    def mask_action(self, a: torch.Tensor, t: int) -> torch.Tensor:
        if self.act_steps is not None and t >= self.act_steps:
            return torch.zeros_like(a)
        return a

    def mask_action_seq(self, actions: torch.Tensor) -> torch.Tensor:
        if self.act_steps is None:
            return actions
        out = actions.clone()
        out[:, self.act_steps :] = 0.0
        return out

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """States (batch, H + 1, ds) under the action sequence (batch, H, da)."""
        states = [s0]
        for t in range(actions.shape[1]):
            states.append(self.step(states[-1], self.mask_action(actions[:, t], t), t))
        return torch.stack(states, 1)

    def episode_cost(self, states: torch.Tensor, actions: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
        """sum_t gamma^t c(s_t, a_t) + gamma^H terminal, per batch row; states (B, H+1, ds)."""
        H = actions.shape[1]
        total = torch.zeros(states.shape[0], dtype=states.dtype)
        for t in range(H):
            total = total + gamma**t * self.stage_cost(states[:, t], self.mask_action(actions[:, t], t), t)
        return total + gamma**H * self.terminal_cost(states[:, H], states[:, 0], H)


# ----------------------------------------------------------------------------- double pendulum
G_ACC, DT_PENDULUM = 9.8, 0.05


def pendulum_derivs(s: torch.Tensor) -> torch.Tensor:
    """d/dt (theta1, theta2, omega1, omega2), unit masses and lengths (the matplotlib demo's equations)."""
    th1, th2, w1, w2 = s.unbind(-1)
    d = th2 - th1
    sd, cd = torch.sin(d), torch.cos(d)
    den1 = 2.0 - cd * cd
    dw1 = (w1 * w1 * sd * cd + G_ACC * torch.sin(th2) * cd + w2 * w2 * sd - 2.0 * G_ACC * torch.sin(th1)) / den1
    dw2 = (
        -w2 * w2 * sd * cd + 2.0 * G_ACC * torch.sin(th1) * cd - 2.0 * w1 * w1 * sd - 2.0 * G_ACC * torch.sin(th2)
    ) / den1
    return torch.stack([w1, w2, dw1, dw2], -1)


def rk4(s: torch.Tensor, dt: float) -> torch.Tensor:
    k1 = pendulum_derivs(s)
    k2 = pendulum_derivs(s + 0.5 * dt * k1)
    k3 = pendulum_derivs(s + 0.5 * dt * k2)
    k4 = pendulum_derivs(s + dt * k3)
    return s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


class Pendulum(Task):
    def __init__(
        self,
        horizon: int = 200,
        goal_fraction: float = 0.6,
        theta2_center: float = 0.0,
        theta2_spread: float = 0.2,
        explore_spread: float = 0.5,
        substeps: int = 4,
    ) -> None:
        super().__init__("pendulum", 4, 1, horizon, (math.pi, math.pi, 10.0, 10.0), act_steps=1)
        self.goal_fraction, self.center = goal_fraction, theta2_center
        self.spread, self.explore_spread = theta2_spread, explore_spread
        self.substeps = substeps

    def step(self, s, a, t):
        kick = torch.zeros_like(s)
        kick[:, 0] = math.pi * a[:, 0]
        s = s + kick
        for _ in range(self.substeps):
            s = rk4(s, DT_PENDULUM / self.substeps)
        return s

    def stage_cost(self, s, a, t):
        return torch.zeros(s.shape[0], dtype=s.dtype)

    def goal(self, s0: torch.Tensor, horizon: int) -> torch.Tensor:
        with torch.no_grad():
            a = torch.full((s0.shape[0], horizon, 1), self.goal_fraction, dtype=s0.dtype)
            return self.rollout(s0, a)[:, -1]

    def terminal_cost(self, s_end, s0, horizon):
        return ((s_end - self.goal(s0, horizon)) ** 2).mean(-1)

    def _initial(self, n, g, spread):
        s = torch.zeros(n, 4)
        s[:, 1] = self.center + spread * (2 * torch.rand(n, generator=g) - 1)
        return s

    def eval_initial(self, n, g):
        return self._initial(n, g, self.spread)

    def explore_initial(self, n, g):
        return self._initial(n, g, max(self.spread, self.explore_spread))


# ----------------------------------------------------------------------------- Myriad ODEs
class MyriadODE(Task):
    T: float
    x0: tuple[float, ...]
    x_bounds: tuple[tuple[float, float], ...]
    u_bounds: tuple[float, float]

    def __init__(self, name: str, steps: int = 100, explore_spread: float = 0.3) -> None:
        d = len(self.x0)
        super().__init__(
            name,
            d,
            1,
            steps,
            tuple(max(abs(lo), abs(hi), 1e-3) if math.isfinite(hi) else 1.0 for lo, hi in self.x_bounds),
        )
        self.dt = self.T / steps
        self.explore_spread = explore_spread
        self.lo = torch.tensor([b[0] for b in self.x_bounds])
        self.hi = torch.tensor([b[1] for b in self.x_bounds])

    def control(self, a: torch.Tensor) -> torch.Tensor:
        lo, hi = self.u_bounds
        return lo + (a.clamp(-1, 1) + 1) * 0.5 * (hi - lo)

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def c(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, s, a, t):
        return torch.clamp(s + self.f(s, self.control(a)) * self.dt, self.lo, self.hi)

    def stage_cost(self, s, a, t):
        return self.c(s, self.control(a)) * self.dt

    def eval_initial(self, n, g):
        return torch.tensor(self.x0, dtype=torch.float32).expand(n, -1).clone()

    def explore_initial(self, n, g):
        """x0 scaled by U(1 - spread, 1 + spread) per dimension (absolute jitter where x0 is 0), clipped."""
        x0 = torch.tensor(self.x0, dtype=torch.float32)
        scale = 1 + self.explore_spread * (2 * torch.rand(n, len(self.x0), generator=g) - 1)
        width = (self.hi - self.lo).clamp(max=1.0)
        jitter = torch.where(x0 == 0, 0.05 * width * torch.rand(n, len(self.x0), generator=g), 0 * x0)
        return torch.clamp(x0 * scale + jitter, self.lo, self.hi)


class Cancer(MyriadODE):
    T, x0, x_bounds, u_bounds = 20.0, (0.975,), ((1e-3, 1.0),), (0.0, 2.0)
    r, a, delta = 0.3, 3.0, 0.45

    def f(self, x, u):
        return self.r * x * torch.log(1 / x) - u * self.delta * x

    def c(self, x, u):
        return self.a * x[:, 0] ** 2 + u[:, 0] ** 2


class Bioreactor(MyriadODE):
    T, x0, x_bounds, u_bounds = 2.0, (0.5,), ((0.0, 10.0),), (0.0, 1.0)
    K, G, D = 2.0, 1.0, 1.0

    def f(self, x, u):
        return self.G * u * x - self.D * x**2

    def c(self, x, u):
        return -(self.K * x[:, 0] - u[:, 0])


class Glucose(MyriadODE):
    T, x0, x_bounds, u_bounds = 0.2, (0.75, 0.0), ((0.0, 1.0), (0.0, 1.0)), (0.0, 0.01)
    a_, b_, c_, A, level = 1.0, 1.0, 1.0, 2.0, 0.4

    def f(self, x, u):
        return torch.stack([-self.a_ * x[:, 0] - self.b_ * x[:, 1], -self.c_ * x[:, 1] + u[:, 0]], -1)

    def c(self, x, u):
        return 1e5 * (self.A * (x[:, 0] - self.level) ** 2 + u[:, 0] ** 2)


def make_task(name: str, cfg: dict | None = None) -> Task:
    """The task `name` with its params block (`awm.tasks.<name>`; only the keys it knows are read)."""
    cfg = cfg or {}
    if name == "pendulum":
        return Pendulum(
            horizon=cfg.get("max_horizon", 200),
            goal_fraction=cfg.get("goal_fraction", 0.6),
            theta2_center=cfg.get("theta2_center", 0.0),
            theta2_spread=cfg.get("theta2_spread", 0.2),
            explore_spread=cfg.get("explore_spread", 0.5),
            substeps=cfg.get("substeps", 4),
        )
    classes = {"cancer": Cancer, "bioreactor": Bioreactor, "glucose": Glucose}
    if name not in classes:
        raise ValueError(f"unknown AWM task '{name}'; known: {', '.join(TASKS)}")
    return classes[name](name, steps=cfg.get("max_horizon", 100), explore_spread=cfg.get("explore_spread", 0.3))
