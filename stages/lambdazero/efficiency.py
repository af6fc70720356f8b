"""Oracle efficiency of a docking sequence: how many docking calls it took to find a molecule at least as
good as a threshold X (Vina score <= X), how many such molecules a budget bought, and the best found.

A sequence is the list of Vina scores (None for a failed docking) in the order the calls were made; each
entry is one call. The method's sequence is the molecules it chose to dock (active-learning acquisitions,
then the final policy's top-k); random screening is distinct random MDP molecules docked in the order
they were drawn, with the same number of calls.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

EFFICIENCY_SCHEMA = pa.schema([
    ("sequence", pa.string()),            # method | screen
    ("threshold_name", pa.string()),      # initial_best | a fixed kcal/mol value
    ("threshold", pa.float64()),          # X, kcal/mol: a hit scores <= X
    ("budget", pa.int32()),               # docking calls in the sequence
    ("calls_to_reach", pa.int32()),       # 1-based index of the first hit; null when none within the budget
    ("calls_to_reach_censored", pa.int32()),   # the same with budget + 1 for "not reached" (for averages)
    ("hits", pa.int32()),                 # calls with a score <= X
    ("hit_rate", pa.float64()),           # hits / budget
    ("best_score", pa.float64()),
    ("mean_score", pa.float64()),
    ("best_le", pa.float64()),            # best ligand efficiency -score / heavy atoms
    ("mean_le", pa.float64()),
])


def calls_to_reach(scores: Sequence[float | None], threshold: float) -> int | None:
    """1-based number of calls until the first score <= threshold (None if never)."""
    for i, s in enumerate(scores):
        if s is not None and s <= threshold:
            return i + 1
    return None


def efficiency_rows(name: str, scores: Sequence[float | None], le: Sequence[float | None],
                    thresholds: dict[str, float]) -> list[dict]:
    """One EFFICIENCY_SCHEMA row per threshold for the sequence `name`."""
    ok = np.array([s for s in scores if s is not None], float)
    le_ok = np.array([x for x in le if x is not None], float)
    rows = []
    for tname, x in thresholds.items():
        reached = calls_to_reach(scores, x)
        hits = int((ok <= x).sum())
        rows.append({
            "sequence": name, "threshold_name": tname, "threshold": float(x), "budget": len(scores),
            "calls_to_reach": reached, "calls_to_reach_censored": reached if reached is not None else len(scores) + 1,
            "hits": hits, "hit_rate": hits / len(scores) if len(scores) else float("nan"),
            "best_score": float(ok.min()) if ok.size else float("nan"),
            "mean_score": float(ok.mean()) if ok.size else float("nan"),
            "best_le": float(le_ok.max()) if le_ok.size else float("nan"),
            "mean_le": float(le_ok.mean()) if le_ok.size else float("nan")})
    return rows
