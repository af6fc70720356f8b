"""Load one dataset (digits / synthetic / user-supplied CIFAR-10), hold out a validation split from its
training data, standardise every split with train-split statistics, and store it as one Parquet table
of flattened images.

The dataset's name is the last part of its params key (demp.datasets.<name>).
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.demp import datasets

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

DATASET_SCHEMA = pa.schema([
    ("split", pa.string()),          # train / val (held out from the training data) / test
    ("label", pa.int32()),
    ("channels", pa.int32()),        # image shape, the same on every row
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("x", pa.list_(pa.float32())),   # standardised pixels, flattened (c, h, w)
])


def split_table(split: str, x: np.ndarray, y: np.ndarray) -> pa.Table:
    n, c, h, w = x.shape
    return pa.table({
        "split": pa.array([split] * n, pa.string()),
        "label": y.astype(np.int32),
        "channels": np.full(n, c, np.int32), "height": np.full(n, h, np.int32),
        "width": np.full(n, w, np.int32),
        "x": pa.FixedSizeListArray.from_arrays(x.reshape(-1), c * h * w).cast(pa.list_(pa.float32())),
    })


def run(ctx: StageContext) -> None:
    key, cfg = ctx.param_keys["dataset"], ctx.params["dataset"]
    splits = datasets.split_validation(datasets.load(key.rsplit(".", 1)[1], cfg, key), cfg["val_fraction"],
                                       cfg["data_seed"])
    splits = datasets.standardize(splits)
    for split, (x, y) in splits.items():
        log.info("%s: %d examples of shape %s, %d classes", split, len(y), x.shape[1:], len(np.unique(y)))
    ctx.write_table("dataset", pa.concat_tables([split_table(s, *splits[s]) for s in SPLITS]), DATASET_SCHEMA)


def load_splits(path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (x (n, c, h, w) float32, y (n,) int64)} in stored order."""
    table = read_table(path, DATASET_SCHEMA)
    shape = tuple(table[k][0].as_py() for k in ("channels", "height", "width"))
    out = {}
    for split in SPLITS:
        part = table.filter(pc.equal(table["split"], split))
        x = pc.list_flatten(part["x"]).to_numpy().reshape(-1, *shape)
        out[split] = (torch.from_numpy(x.copy()), torch.from_numpy(part["label"].to_numpy().astype(np.int64)))
    return out
