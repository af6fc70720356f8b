"""Simulate train / val / test trajectories of one system from initial states uniform in a box.

The data seed comes from the system's params, not the run seed, so every training seed sees the same
trajectories. Train trajectories are short (windows are cut from them); val and test ones run to the
evaluation horizon.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.koopman import systems

log = logging.getLogger(__name__)

TRAJECTORIES_SCHEMA = pa.schema([
    ("split", pa.string()),
    ("traj", pa.int32()),
    ("step", pa.int32()),
    ("state", pa.list_(pa.float64())),
    ("basin", pa.int8()),   # well of the trajectory's final state (+1/-1 Duffing, 0 not scored)
])


def split_table(split: str, states: np.ndarray, basins: np.ndarray) -> pa.Table:
    n, length, d = states.shape
    return pa.table({
        "split": pa.array([split] * (n * length), pa.string()),
        "traj": np.repeat(np.arange(n, dtype=np.int32), length),
        "step": np.tile(np.arange(length, dtype=np.int32), n),
        "state": pa.FixedSizeListArray.from_arrays(states.reshape(-1), d).cast(pa.list_(pa.float64())),
        "basin": np.repeat(basins, length),
    })


def run(ctx: StageContext) -> None:
    cfg = ctx.params["system"]
    rng = np.random.default_rng(cfg["data_seed"])
    low, high = np.asarray(cfg["init_low"], float), np.asarray(cfg["init_high"], float)
    f = systems.vector_field(cfg)

    tables = []
    for split, n, steps in [("train", cfg["n_train"], cfg["train_steps"]),
                            ("val", cfg["n_val"], cfg["eval_horizon"]),
                            ("test", cfg["n_test"], cfg["eval_horizon"])]:
        s0 = rng.uniform(low, high, size=(n, low.size))
        states = systems.rk4(f, s0, cfg["dt"], steps, cfg["rk4_substeps"])
        basins = systems.basin(cfg["kind"], states[:, -1])
        if cfg["kind"] == "duffing":
            log.info("%s: %d trajectories x %d steps, %.2f end in the x > 0 well",
                     split, n, steps, float((basins > 0).mean()))
        tables.append(split_table(split, states, basins))
    ctx.write_table("trajectories", pa.concat_tables(tables), TRAJECTORIES_SCHEMA)


def load_splits(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (states (n, steps + 1, d), basin (n,))}, each ordered by traj and step."""
    table = read_table(path, TRAJECTORIES_SCHEMA).sort_by([("split", "ascending"), ("traj", "ascending"),
                                                           ("step", "ascending")])
    out = {}
    for split in pc.unique(table["split"]).to_pylist():
        part = table.filter(pc.equal(table["split"], split))
        n, length = len(pc.unique(part["traj"])), len(pc.unique(part["step"]))
        states = pc.list_flatten(part["state"]).to_numpy().reshape(n, length, -1)
        out[split] = (states, part["basin"].to_numpy()[::length])
    return out
