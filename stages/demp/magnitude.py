"""Structured magnitude pruning baseline at DemP's neuron count.

Start from the trained dense network, keep the units with the largest magnitude (|BN scale| or
incoming-weight norm, `magnitude.score`) until as many remain as in DemP's pruned network, remove the
others for real (optimizer state too), then fine-tune for `magnitude.finetune_steps` with the same
optimizer settings. With `allocation: per_layer` (default) every layer gets exactly DemP's width: the
neuron count matches layer by layer and the baseline borrows DemP's allocation across layers, which
makes it the strong, conservative comparison. `global` keeps DemP's total with one threshold over all
layers (network slimming). Either way the baseline also gets the dense run's full training on top of
its fine-tuning. The widths are final: the prune stage does not remove units that die during the
fine-tuning (it would leave the baseline smaller than DemP), and the aggregate checks they are equal.
"""
from __future__ import annotations

import logging

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.demp import demon, nets
from stages.demp.data import load_splits
from stages.demp.train import CURVE_COLUMNS, fit

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    cfg, model_cfg, mcfg = ctx.params["train"], ctx.params["model"], ctx.params["magnitude"]
    x, y = load_splits(ctx.inputs["dataset"])["train"]
    shape, n_classes = x.shape[1:], int(y.max()) + 1
    dense, opt_state = nets.from_tensors(load_checkpoint(ctx.inputs["dense"]), model_cfg, shape, n_classes)
    target = load_checkpoint(ctx.inputs["target"])["meta.widths"].tolist()
    scores = demon.magnitude_scores(dense, mcfg["score"])
    if mcfg["allocation"] == "global":
        target = demon.global_widths(scores, sum(target))
    keep = demon.top_k(scores, target)
    model, opt_state = nets.prune(dense, keep, opt_state)
    if model.widths != target:
        raise AssertionError(f"magnitude pruning gave widths {model.widths}, wanted {target}")
    log.info("magnitude-pruned %s -> %s; fine-tuning %d steps", dense.widths, model.widths,
             mcfg["finetune_steps"])
    ft_cfg = {**cfg, "log_every": min(cfg["log_every"], mcfg["finetune_steps"])}
    model, opt_state, rows = fit(
        model, x, y, ft_cfg, ctx.params["criterion"], mcfg["finetune_steps"], ctx.seed, opt_state=opt_state,
        full_width=sum(dense.widths),
        do_augment=ctx.params["dataset"].get("augment", False),
        progress=lambda it: ctx.progress(it, total=mcfg["finetune_steps"], desc="finetune"))
    ctx.save_checkpoint("model", nets.to_tensors(model, opt_state))
    ctx.write_curve("curve", rows, CURVE_COLUMNS)
