"""The exact toy of "Decoupling regularization from the action space" (Mohammadpour et al., ICLR 2024).

A d-dimensional grid of side `width`: start at the origin, goal (absorbing, V = 0) at the far corner,
2d actions (one step along +-e_i; a step off the grid leaves the agent in place), reward `step_reward`
per step, no discount. Soft value iteration gives the optimal soft policy for a temperature; its expected
episode length from the start is solved exactly from the policy's absorbing Markov chain.

standard:  one temperature tau for every d. The entropy bonus tau * H(pi) <= tau log(2d) grows with d, so
           the soft-optimal agent dawdles more and more (the shortest path is (width - 1) d).
decoupled: tau(s) = tau / max(log|A(s)|, min_log_actions), the static rule, which keeps the largest
           possible bonus at tau per step whatever d.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pyarrow as pa

from stages.common.stage import StageContext
from stages.rl.soft_q import decoupled_temperature, soft_value_iteration

log = logging.getLogger(__name__)

LENGTHS_SCHEMA = pa.schema([
    ("d", pa.int32()),
    ("regularizer", pa.string()),       # standard / decoupled
    ("tau", pa.float64()),              # temperature actually used (all states have 2d actions)
    ("expected_length", pa.float64()),  # exact, from the start state
    ("shortest_path", pa.int32()),
    ("ratio", pa.float64()),            # expected_length / shortest_path
    ("sweeps", pa.int32()),             # soft value iteration sweeps to convergence
])
REGULARIZERS = ("standard", "decoupled")


def grid(d: int, width: int) -> np.ndarray:
    """(S, 2d) successor of each action; state index = lexicographic over coordinates, goal = S - 1."""
    coords = np.array(list(itertools.product(range(width), repeat=d)))
    strides = width ** np.arange(d - 1, -1, -1)
    nxt = np.empty((len(coords), 2 * d), dtype=np.int64)
    for i in range(d):
        for j, delta in enumerate((-1, 1)):
            moved = coords.copy()
            moved[:, i] = np.clip(moved[:, i] + delta, 0, width - 1)
            nxt[:, 2 * i + j] = moved @ strides
    return nxt


def expected_length(nxt: np.ndarray, pi: np.ndarray, goal: int, start: int = 0) -> float:
    """Expected steps to absorption: solve (I - P_TT) L = 1 over the transient states."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    S, A = nxt.shape
    P = sp.csr_matrix((pi.ravel(), (np.repeat(np.arange(S), A), nxt.ravel())), shape=(S, S))
    keep = np.flatnonzero(np.arange(S) != goal)
    L = spsolve((sp.eye(len(keep)) - P[keep][:, keep]).tocsc(), np.ones(len(keep)))
    return float(L[np.searchsorted(keep, start)])


def solve(d: int, cfg: dict, regularizer: str) -> dict:
    nxt = grid(d, cfg["width"])
    S, A = nxt.shape
    if regularizer == "standard":
        tau = np.full(S, cfg["tau"])
    else:
        tau = decoupled_temperature(np.full(S, A), cfg["tau"], cfg["min_log_actions"])
    absorbing = np.arange(S) == S - 1
    _, pi, sweeps = soft_value_iteration(nxt, cfg["step_reward"], tau, absorbing, tol=cfg["tol"],
                                         max_iters=cfg["max_sweeps"])
    length = expected_length(nxt, pi, goal=S - 1)
    shortest = (cfg["width"] - 1) * d
    return {"d": d, "regularizer": regularizer, "tau": float(tau[0]), "expected_length": length,
            "shortest_path": shortest, "ratio": length / shortest, "sweeps": sweeps}


def run(ctx: StageContext) -> None:
    cfg = ctx.params["toy"]
    rows = []
    for d in cfg["dims"]:
        for regularizer in REGULARIZERS:
            rows.append(solve(d, cfg, regularizer))
            log.info("d=%d %-9s tau=%.4f expected length %.2f (shortest %d, %d sweeps)", d, regularizer,
                     rows[-1]["tau"], rows[-1]["expected_length"], rows[-1]["shortest_path"],
                     rows[-1]["sweeps"])
    ctx.write_table("lengths", pa.Table.from_pylist(rows, LENGTHS_SCHEMA), LENGTHS_SCHEMA)
