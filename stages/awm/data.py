"""Rollout tables of the AWM study: one Parquet row per episode (flattened states and actions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from stages.common import artifacts

ROLLOUT_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("episode", pa.int64()),
        ("steps", pa.int64()),
        ("obs_dim", pa.int64()),
        ("act_dim", pa.int64()),
        ("control", pa.string()),
        ("states", pa.list_(pa.float32())),
        ("actions", pa.list_(pa.float32())),
    ]
)


def rollout_table(split: str, states: torch.Tensor, actions: torch.Tensor, control: list[str]) -> pa.Table:
    B, T1, ds = states.shape
    return pa.table(
        {
            "split": [split] * B,
            "episode": np.arange(B),
            "steps": [T1 - 1] * B,
            "obs_dim": [ds] * B,
            "act_dim": [actions.shape[-1]] * B,
            "control": control,
            "states": [r.reshape(-1).tolist() for r in states.float().numpy()],
            "actions": [r.reshape(-1).tolist() for r in actions.float().numpy()],
        },
        schema=ROLLOUT_SCHEMA,
    )


def load_rollouts(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (states (B, T+1, ds), actions (B, T, da))}."""
    df = artifacts.read_table(path).to_pandas()
    out = {}
    for split, part in df.groupby("split", sort=True):
        part = part.sort_values("episode")
        T, ds, da = int(part.steps.iloc[0]), int(part.obs_dim.iloc[0]), int(part.act_dim.iloc[0])
        s = torch.tensor(np.stack(part.states.to_list()), dtype=torch.float32).view(-1, T + 1, ds)
        a = torch.tensor(np.stack(part.actions.to_list()), dtype=torch.float32).view(-1, T, da)
        out[split] = (s, a)
    return out
