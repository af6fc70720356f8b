"""Low-dimensional dynamical systems and a fixed-step RK4 integrator (numpy, float64).

Each vector field maps states of shape (n, d) to their time derivatives, so one call integrates a
whole batch of trajectories.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

VectorField = Callable[[np.ndarray], np.ndarray]


def duffing(delta: float) -> VectorField:
    """x'' = x - x^3 - delta x': two stable centres at x = +-1 split by a saddle at 0."""

    def f(s: np.ndarray) -> np.ndarray:
        x, v = s[:, 0], s[:, 1]
        return np.stack([v, x - x**3 - delta * v], axis=1)

    return f


def pendulum(delta: float) -> VectorField:
    """theta'' = -sin(theta) - delta theta'; theta is not wrapped, so going over the top shows."""

    def f(s: np.ndarray) -> np.ndarray:
        theta, omega = s[:, 0], s[:, 1]
        return np.stack([omega, -np.sin(theta) - delta * omega], axis=1)

    return f


SYSTEMS: dict[str, Callable[[float], VectorField]] = {"duffing": duffing, "pendulum": pendulum}


def vector_field(cfg: Mapping) -> VectorField:
    return SYSTEMS[cfg["kind"]](cfg["delta"])


def energy(kind: str, states: np.ndarray) -> np.ndarray:
    """Undamped energy; conserved when delta = 0 (used by the tests)."""
    q, p = states[..., 0], states[..., 1]
    if kind == "duffing":
        return 0.5 * p**2 - 0.5 * q**2 + 0.25 * q**4
    return 0.5 * p**2 + 1.0 - np.cos(q)


def rk4(f: VectorField, s0: np.ndarray, dt: float, steps: int, substeps: int = 1) -> np.ndarray:
    """Integrate from s0 (n, d); returns (n, steps + 1, d) sampled every dt.

    Substeps refine the ground truth without changing the sampling interval the model sees.
    """
    h = dt / substeps
    out = np.empty((s0.shape[0], steps + 1, s0.shape[1]), dtype=np.float64)
    s = out[:, 0] = np.asarray(s0, dtype=np.float64)
    for t in range(1, steps + 1):
        for _ in range(substeps):
            k1 = f(s)
            k2 = f(s + 0.5 * h * k1)
            k3 = f(s + 0.5 * h * k2)
            k4 = f(s + h * k3)
            s = s + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[:, t] = s
    return out


def basin(kind: str, final_states: np.ndarray) -> np.ndarray:
    """Well of each final state: sign of x for Duffing (+1/-1), 0 where wells are not scored."""
    if kind == "duffing":
        return np.where(final_states[..., 0] >= 0, 1, -1).astype(np.int8)
    return np.zeros(final_states.shape[:-1], dtype=np.int8)
