"""Evaluate one pruned network: validation and test accuracy (the aggregate chooses lambda_max on
validation and reports test), widths, units, parameters, FLOPs, measured inference latency against the
unpruned dense network (same input, same process, interleaved), and from the training log the live-unit
fraction and the training speed in steps/s per pruning period (`demon.pruning_freq` steps; the dense
and magnitude runs are cut into periods of the same length).

Not byte-deterministic: the latency and steps/s columns are wall-clock measurements. Everything else in the
outputs is a deterministic function of the inputs; `evaluate.latency_repeats: 0` skips the timing
(NaN latencies) and makes the stage deterministic again (the tiny profile does this).
"""
from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.demp import nets
from stages.demp.data import load_splits

log = logging.getLogger(__name__)

EVAL_SCHEMA = pa.schema([
    ("dataset", pa.string()),
    ("model", pa.string()),
    ("variant", pa.string()),            # dense / demp_l<i> / magnitude_l<i>
    ("seed", pa.int32()),
    ("val_acc", pa.float64()),           # on the validation split (held out from the training data)
    ("test_acc", pa.float64()),
    ("widths", pa.list_(pa.int32())),    # hidden units per layer after the final prune
    ("units", pa.int64()),               # hidden units left after the final prune
    ("units_full", pa.int64()),          # hidden units of the unpruned architecture
    ("removed_fraction", pa.float64()),  # 1 - units / units_full
    ("params", pa.int64()),
    ("params_full", pa.int64()),
    ("flops", pa.int64()),               # forward FLOPs per example (2 x MACs of conv and linear layers)
    ("flops_full", pa.int64()),
    ("latency_ms", pa.float64()),        # median forward time of one batch, pruned network
    ("latency_dense_ms", pa.float64()),  # the same for the unpruned dense network, same input
    ("latency_ratio", pa.float64()),     # latency_ms / latency_dense_ms (< 1: pruned is faster)
    ("live_fraction_end", pa.float64()), # live units / units_full at the last training log row
    ("period_steps_per_s", pa.list_(pa.float64())),  # training steps/s in each pruning period (wall clock)
])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(x), batch))
    return correct / len(y)


@torch.no_grad()
def latency_ms(models: list[nn.Module], x: torch.Tensor, repeats: int, warmup: int = 3) -> list[float]:
    """Median milliseconds of one forward pass of each model on x. The models take turns in every
    repeat so that drift in machine load hits them alike."""
    for m in models:
        m.eval()
        for _ in range(warmup):
            m(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for m, t in zip(models, times):
            start = time.perf_counter()
            m(x)
            t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def read_curve(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def live_fraction_at(curve: list[dict], fractions=(0.25, 0.5, 0.75, 1.0)) -> dict[str, float]:
    """Live-unit fraction at the first log row at or after each fraction of training."""
    last = curve[-1]["step"]
    return {f"{int(f * 100)}%": next(r["live_fraction"] for r in curve if r["step"] >= f * last)
            for f in fractions}


def period_speeds(curve: list[dict], period: int) -> list[float]:
    """Steps/s in each window of `period` steps (the last one may be shorter), from the curve's
    cumulative `elapsed_s`; a boundary without its own log row uses the last row before it."""
    last = int(curve[-1]["step"])
    bounds = [0] + list(range(period, last, period)) + [last]
    at = [(0.0, 0.0)]
    for b in bounds[1:]:
        before = [r for r in curve if r["step"] <= b]
        if before:
            at.append((before[-1]["step"], before[-1]["elapsed_s"]))
    return [(s1 - s0) / max(t1 - t0, 1e-9) for (s0, t0), (s1, t1) in zip(at, at[1:]) if s1 > s0]


def run(ctx: StageContext) -> None:
    model_cfg, cfg = ctx.params["model"], ctx.params["evaluate"]
    data = load_splits(ctx.inputs["dataset"])
    xt, yt = data["test"]
    shape, n_classes = xt.shape[1:], int(data["train"][1].max()) + 1
    pruned, _ = nets.from_tensors(load_checkpoint(ctx.inputs["model"]), model_cfg, shape, n_classes)
    dense, _ = nets.from_tensors(load_checkpoint(ctx.inputs["reference"]), model_cfg, shape, n_classes)
    full = nets.build(model_cfg, shape, n_classes)

    if cfg["latency_repeats"] > 0:
        reps = math.ceil(cfg["latency_batch"] / len(xt))
        xb = xt.repeat(reps, *([1] * (xt.dim() - 1)))[:cfg["latency_batch"]]
        lat, lat_dense = latency_ms([pruned, dense], xb, cfg["latency_repeats"])
    else:
        lat = lat_dense = math.nan
    curve = read_curve(ctx.inputs["curve"])
    w = ctx.wildcards
    row = {"dataset": w["dataset"], "model": w["model"], "variant": w["variant"], "seed": int(w["seed"]),
           "val_acc": accuracy(pruned, *data["val"]), "test_acc": accuracy(pruned, xt, yt),
           "widths": pruned.widths, "units": sum(pruned.widths), "units_full": sum(full.widths),
           "params": nets.n_params(pruned), "params_full": nets.n_params(full),
           "flops": nets.flops(pruned, shape), "flops_full": nets.flops(full, shape),
           "latency_ms": lat, "latency_dense_ms": lat_dense, "latency_ratio": lat / lat_dense,
           "live_fraction_end": curve[-1]["live_fraction"],
           "period_steps_per_s": period_speeds(curve, ctx.params["demon"]["pruning_freq"])}
    row["removed_fraction"] = 1 - row["units"] / row["units_full"]
    log.info("%s", row)
    ctx.write_table("table", pa.Table.from_pylist([row], EVAL_SCHEMA), EVAL_SCHEMA)
    ctx.write_json("metrics", {**{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in row.items()},
                               "widths_full": full.widths,
                               "live_fraction_during_training": live_fraction_at(curve)})
