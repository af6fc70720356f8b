"""The pieces of Demon Pruning: one-cycle schedule, dead-unit criterion, regularizer, asymmetric noise,
and the structured magnitude score of the baseline."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from stages.demp.nets import acts, unit_bn, unit_weight


def one_cycle(t: int, total: int, peak: float, span: float, warmup: float, div: float,
              final_div: float) -> float:
    """Cosine rise from peak/div to peak over the first `warmup` of the span, cosine decay to
    peak/div/final_div at its end, flat afterwards (optax's cosine_onecycle_schedule shape).
    The span is `span` x `total` steps."""
    length = max(1, round(span * total))
    rise = max(1, round(warmup * length))
    lo, end = peak / div, peak / div / final_div
    if t < rise:
        return lo + (peak - lo) * (1 - math.cos(math.pi * t / rise)) / 2
    if t < length:
        return end + (peak - end) * (1 + math.cos(math.pi * (t - rise) / (length - rise))) / 2
    return end


def schedule(cfg: Mapping, peak: float, t: int, total: int) -> float:
    return one_cycle(t, total, peak, cfg["span"], cfg["warmup"], cfg["div_factor"],
                     cfg["final_div_factor"])


@torch.no_grad()
def activation_sums(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> list[torch.Tensor]:
    """Post-ReLU activation of every unit, summed over the examples of x and spatial positions.
    BatchNorm runs in eval mode (running statistics): the pruned network is used that way."""
    was_training = model.training
    model.eval()
    taps = acts(model)
    for a, width in zip(taps, model.widths):
        a.acc = torch.zeros(width, dtype=torch.float64)
    try:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
        return [a.acc.clone() for a in taps]
    finally:
        for a in taps:
            a.acc = None
        model.train(was_training)


def probe_set(x: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The probe examples: a fixed random slice of the train set (the same in training and final prune)."""
    gen = torch.Generator().manual_seed(seed + 2)
    return x[torch.randperm(len(x), generator=gen)[:size]]


def dead_units(sums: list[torch.Tensor], eps: float) -> list[torch.Tensor]:
    """Boolean mask per unit layer: a unit is dead when its summed activation is <= eps."""
    return [s <= eps for s in sums]


def keep_indices(dead: list[torch.Tensor], sums: list[torch.Tensor]) -> list[torch.Tensor]:
    """Indices of the surviving units; a layer keeps at least its most active unit, so the network
    stays a valid (if constant) function instead of losing a whole layer."""
    keep = []
    for d, s in zip(dead, sums):
        idx = torch.nonzero(~d).flatten()
        if idx.numel() == 0:
            idx = torch.argmax(s).reshape(1)
        keep.append(idx)
    return keep


def regularizer(model: nn.Module, kind: str) -> torch.Tensor:
    """l1_bn: L1 on the BatchNorm scales of the unit layers (shrinks a unit's output towards its shift,
    which the noise and gradients then push below zero). l2: squared L2 on every parameter."""
    if kind == "l1_bn":
        bns = [unit_bn(model, i) for i in range(len(model.widths))]
        if any(bn is None for bn in bns):
            raise ValueError("regularizer l1_bn needs BatchNorm in every unit layer (model bn: true)")
        return sum(bn.weight.abs().sum() for bn in bns)
    return sum((p ** 2).sum() for p in model.parameters())


def unit_param_rows(model: nn.Module) -> dict[str, int]:
    """Parameters whose dim 0 is a unit layer (the unit's incoming weights, bias, BN scale and shift)."""
    return {name: dims[0][1] for name, dims in model.unit_dims().items()
            if dims and dims[0][0] == 0 and name in dict(model.named_parameters())}


@torch.no_grad()
def add_noise(model: nn.Module, sigma: float, live: list[torch.Tensor] | None,
              gen: torch.Generator) -> None:
    """p += sigma * N(0, I). With `live` masks, rows belonging to units that are not live get none,
    so the noise cannot revive a unit that has died; parameters of no unit (the head, the residual
    stream) always get it."""
    if sigma <= 0:
        return
    rows = unit_param_rows(model) if live is not None else {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen) * sigma
        if name in rows:
            mask = live[rows[name]].to(p.dtype)
            noise *= mask.reshape(-1, *([1] * (p.dim() - 1)))
        p.add_(noise)


def magnitude_scores(model: nn.Module, score: str) -> list[torch.Tensor]:
    """Per unit: |BN scale| (network slimming) or the L2 norm of its incoming weights (filter norm).
    `auto` takes the BN scale where the layer has BatchNorm: behind BN the weight norm is arbitrary."""
    out = []
    for i in range(len(model.widths)):
        bn = unit_bn(model, i)
        if score == "bn_scale" or (score == "auto" and bn is not None):
            if bn is None:
                raise ValueError("magnitude score bn_scale needs BatchNorm (model bn: true)")
            out.append(bn.weight.detach().abs())
        else:
            out.append(unit_weight(model, i).detach().flatten(1).norm(dim=1))
    return out


def top_k(scores: list[torch.Tensor], widths: list[int]) -> list[torch.Tensor]:
    """Indices of the `widths[i]` highest-scoring units of each layer, in their original order."""
    return [torch.sort(torch.topk(s, w, sorted=False).indices).values for s, w in zip(scores, widths)]


def global_widths(scores: list[torch.Tensor], total: int) -> list[int]:
    """Per-layer widths when the `total` highest scores over all layers are kept (network slimming's
    global threshold); every layer keeps at least one unit, taken from the others' lowest."""
    flat = torch.cat(scores)
    layer = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    order = torch.argsort(flat, descending=True, stable=True)
    widths = torch.bincount(layer[order[:total]], minlength=len(scores))
    for i in range(len(scores)):
        if widths[i] == 0:
            widths[i] = 1
            widths[torch.argmax(widths)] -= 1
    return widths.tolist()
