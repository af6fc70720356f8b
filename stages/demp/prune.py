"""Final structural prune: remove every unit that is dead on the probe set (summed post-ReLU
activation <= criterion.eps), for real, and export the smaller dense network with its optimizer
state sliced to match (so training could resume from it).

Runs on every variant: DemP's last in-training prune is up to `pruning_freq` steps old, and the dense
network may have a few dead units of its own. The magnitude baseline is the exception: it was cut to
DemP's final widths and fine-tuned, and units that died during its fine-tuning are kept (they are
counted in `live`), so that the two networks compared have equal widths; removing them would compare
DemP against a smaller network.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import torch

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.demp import demon, nets
from stages.demp.data import load_splits

log = logging.getLogger(__name__)

WIDTHS_SCHEMA = pa.schema([
    ("layer", pa.int32()),          # unit layer, input side first
    ("full", pa.int32()),           # width in the model params (before any pruning)
    ("trained", pa.int32()),        # width the training stage ended with
    ("pruned", pa.int32()),         # width after this final prune (= trained for magnitude runs)
    ("live", pa.int32()),           # units of the trained network alive on the probe set
])


def run(ctx: StageContext) -> None:
    model_cfg, crit = ctx.params["model"], ctx.params["criterion"]
    x, y = load_splits(ctx.inputs["dataset"])["train"]
    model, opt_state = nets.from_tensors(load_checkpoint(ctx.inputs["model"]), model_cfg, x.shape[1:],
                                         int(y.max()) + 1)
    sums = demon.activation_sums(model, demon.probe_set(x, crit["probe_size"], ctx.seed))
    dead = demon.dead_units(sums, crit["eps"])
    live = [int((~d).sum()) for d in dead]
    if ctx.wildcards["variant"].startswith("magnitude"):
        keep = [torch.arange(w) for w in model.widths]   # equal widths to DemP: see the module docstring
    else:
        keep = demon.keep_indices(dead, sums)
    pruned, opt_state = nets.prune(model, keep, opt_state)
    full = nets.build(model_cfg, x.shape[1:], int(y.max()) + 1).widths
    log.info("final prune: %s -> %s (full %s, live %s)", model.widths, pruned.widths, full, live)
    ctx.save_checkpoint("model", nets.to_tensors(pruned, opt_state))
    ctx.write_table("widths", pa.table({"layer": list(range(len(full))), "full": full,
                                        "trained": model.widths, "pruned": pruned.widths, "live": live}),
                    WIDTHS_SCHEMA)
