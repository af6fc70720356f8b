"""Networks whose hidden units can be removed for real, and the surgery that removes them.

A *unit* is one neuron of a hidden Linear layer or one channel of a hidden conv layer, followed by an
optional BatchNorm and a ReLU. Every network here lists its unit layers and, for every tensor of its
state, which dimension is indexed by which unit layer (`unit_dims`). Pruning is then the same slicing
for weights, biases, BatchNorm parameters and statistics, the next layer's inputs and the optimizer's
per-parameter state: keep the surviving indices along each of those dimensions and rebuild the
network at the smaller widths.

Architectures:
  seq       conv units (3x3, padding 1) with 2x2 max-pools after the layers listed in `pool_after`,
            global average pooling, then `fc` Linear units and a Linear head. With `conv: []` it is an
            MLP; with the VGG-16 widths it is the CIFAR VGG-16.
  resnet18  CIFAR ResNet-18 (3x3 stem, four stages of two BasicBlocks). Only the channel between the
            two convs of each block is a unit: the residual stream is shared by every block of a
            stage, so a channel of it can only go if it is dead in all of them (not attempted).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

UnitDims = dict[str, list[tuple[int, int]]]   # state key -> [(tensor dim, unit layer index), ...]


class Act(nn.Module):
    """ReLU that, while `acc` is a tensor, adds each unit's activation summed over batch and space."""

    def __init__(self):
        super().__init__()
        self.acc: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(x)
        if self.acc is not None:
            self.acc += y.detach().sum(dim=[d for d in range(y.dim()) if d != 1])
        return y


class Unit(nn.Module):
    """conv-or-linear -> BatchNorm (optional) -> ReLU -> 2x2 max-pool (optional)."""

    def __init__(self, n_in: int, n_out: int, conv: bool, bn: bool, pool: bool = False):
        super().__init__()
        self.lin = nn.Conv2d(n_in, n_out, 3, padding=1, bias=not bn) if conv else \
            nn.Linear(n_in, n_out, bias=not bn)   # a bias before BN is redundant with BN's shift
        self.bn = (nn.BatchNorm2d(n_out) if conv else nn.BatchNorm1d(n_out)) if bn else None
        self.act = Act()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        if self.bn is not None:
            x = self.bn(x)
        x = self.act(x)
        return F.max_pool2d(x, 2) if self.pool else x


def unit_param_dims(prefix: str, unit: Unit, idx: int, prev: int | None) -> UnitDims:
    """Dims of one Unit's state: its outputs are unit layer `idx`, its inputs unit layer `prev`."""
    dims: UnitDims = {f"{prefix}.lin.weight": [(0, idx)] + ([(1, prev)] if prev is not None else [])}
    if unit.lin.bias is not None:
        dims[f"{prefix}.lin.bias"] = [(0, idx)]
    if unit.bn is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            dims[f"{prefix}.bn.{name}"] = [(0, idx)]
    return dims


class SeqNet(nn.Module):
    def __init__(self, in_shape: Sequence[int], n_classes: int, conv: Sequence[int],
                 pool_after: Sequence[int], fc: Sequence[int], bn: bool):
        super().__init__()
        c, h, w = in_shape
        self.cfg = dict(in_shape=list(in_shape), n_classes=n_classes, pool_after=list(pool_after),
                        bn=bn, n_conv=len(conv))
        units, n_in = [], c
        for i, width in enumerate(conv):
            units.append(Unit(n_in, width, conv=True, bn=bn, pool=i in pool_after))
            n_in = width
        if not conv:
            n_in = c * h * w   # an MLP sees the flattened image
        for width in fc:
            units.append(Unit(n_in, width, conv=False, bn=bn))
            n_in = width
        self.units = nn.ModuleList(units)
        self.head = nn.Linear(n_in, n_classes)

    @property
    def widths(self) -> list[int]:
        return [u.lin.out_channels if isinstance(u.lin, nn.Conv2d) else u.lin.out_features
                for u in self.units]

    def with_widths(self, widths: Sequence[int]) -> SeqNet:
        n = self.cfg["n_conv"]
        return SeqNet(self.cfg["in_shape"], self.cfg["n_classes"], widths[:n], self.cfg["pool_after"],
                      widths[n:], self.cfg["bn"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_conv = self.cfg["n_conv"]
        if n_conv == 0:
            x = x.flatten(1)
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i == n_conv - 1:
                x = x.mean(dim=(2, 3))   # global average pooling: conv channel c -> feature c
        return self.head(x)

    def unit_dims(self) -> UnitDims:
        dims: UnitDims = {}
        for i, unit in enumerate(self.units):
            dims |= unit_param_dims(f"units.{i}", unit, i, i - 1 if i > 0 else None)
        if self.units:
            dims["head.weight"] = [(1, len(self.units) - 1)]
        return dims


class BasicBlock(nn.Module):
    def __init__(self, n_in: int, mid: int, n_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = Act()
        self.conv2 = nn.Conv2d(mid, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.short = nn.Sequential()
        if stride != 1 or n_in != n_out:
            self.short = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    def __init__(self, in_shape: Sequence[int], n_classes: int, stages: Sequence[int],
                 mids: Sequence[int] | None = None):
        super().__init__()
        self.cfg = dict(in_shape=list(in_shape), n_classes=n_classes, stages=list(stages))
        mids = list(mids) if mids is not None else [w for w in stages for _ in range(2)]
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], stages[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stages[0]), nn.ReLU())
        blocks, n_in = [], stages[0]
        for s, width in enumerate(stages):
            for b in range(2):
                blocks.append(BasicBlock(n_in, mids[2 * s + b], width, 2 if (s > 0 and b == 0) else 1))
                n_in = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(n_in, n_classes)
        self.units = [blk for blk in self.blocks]   # plain list: the unit of block b is its mid channel

    @property
    def widths(self) -> list[int]:
        return [blk.conv1.out_channels for blk in self.blocks]

    def with_widths(self, widths: Sequence[int]) -> ResNet18:
        return ResNet18(self.cfg["in_shape"], self.cfg["n_classes"], self.cfg["stages"], widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(dim=(2, 3)))

    def unit_dims(self) -> UnitDims:
        dims: UnitDims = {}
        for b in range(len(self.blocks)):
            dims[f"blocks.{b}.conv1.weight"] = [(0, b)]
            for name in ("weight", "bias", "running_mean", "running_var"):
                dims[f"blocks.{b}.bn1.{name}"] = [(0, b)]
            dims[f"blocks.{b}.conv2.weight"] = [(1, b)]
        return dims


def build(model_cfg: Mapping, in_shape: Sequence[int], n_classes: int) -> nn.Module:
    if model_cfg["arch"] == "resnet18":
        return ResNet18(in_shape, n_classes, model_cfg["conv"])
    return SeqNet(in_shape, n_classes, model_cfg["conv"], model_cfg["pool_after"], model_cfg["fc"],
                  model_cfg["bn"])


def acts(model: nn.Module) -> list[Act]:
    """The ReLU of each unit layer, in unit order."""
    return [u.act if isinstance(u, Unit) else u.act1 for u in model.units]


def unit_bn(model: nn.Module, i: int) -> nn.BatchNorm1d | nn.BatchNorm2d | None:
    u = model.units[i]
    return u.bn if isinstance(u, Unit) else u.bn1


def unit_weight(model: nn.Module, i: int) -> torch.Tensor:
    """Incoming weights of unit layer i, one row (or filter) per unit."""
    u = model.units[i]
    return u.lin.weight if isinstance(u, Unit) else u.conv1.weight


# --- surgery -----------------------------------------------------------------------------------------

def slice_units(t: torch.Tensor, dims: list[tuple[int, int]], keep: Sequence[torch.Tensor]
                ) -> torch.Tensor:
    for dim, layer in dims:
        t = t.index_select(dim, keep[layer])
    return t.clone()


def prune(model: nn.Module, keep: Sequence[torch.Tensor],
          opt_state: Mapping[str, Mapping[str, torch.Tensor]] | None = None
          ) -> tuple[nn.Module, dict[str, dict[str, torch.Tensor]]]:
    """A new network holding only the `keep` indices of each unit layer, and the optimizer state
    sliced the same way (`opt_state`: parameter name -> {state key: tensor})."""
    keep = [k.to(torch.long) for k in keep]
    new = model.with_widths([len(k) for k in keep])
    dims = model.unit_dims()
    new.load_state_dict({name: slice_units(t, dims.get(name, []), keep)
                         for name, t in model.state_dict().items()})
    new.train(model.training)
    new_state = {}
    for name, state in (opt_state or {}).items():
        shape = dict(model.named_parameters())[name].shape
        # per-parameter moments have the parameter's shape; scalars such as Adam's `step` do not
        new_state[name] = {k: slice_units(v, dims.get(name, []), keep) if v.shape == shape else v.clone()
                           for k, v in state.items()}
    return new, new_state


def opt_state_by_name(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    return {name: dict(opt.state[p]) for name, p in model.named_parameters() if p in opt.state}


def load_opt_state(model: nn.Module, opt: torch.optim.Optimizer,
                   state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    for name, p in model.named_parameters():
        if name in state:
            opt.state[p] = {k: v.clone() for k, v in state[name].items()}


# --- checkpoints: weights, widths and optimizer state in one flat dict of tensors ---------------------

def to_tensors(model: nn.Module, opt_state: Mapping[str, Mapping[str, torch.Tensor]] | None = None
               ) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    out["meta.widths"] = torch.tensor(model.widths, dtype=torch.int64)
    for name, state in (opt_state or {}).items():
        for key, v in state.items():
            out[f"opt.{name}.{key}"] = torch.as_tensor(v)
    return out


def from_tensors(tensors: Mapping[str, torch.Tensor], model_cfg: Mapping, in_shape: Sequence[int],
                 n_classes: int) -> tuple[nn.Module, dict[str, dict[str, torch.Tensor]]]:
    model = build(model_cfg, in_shape, n_classes).with_widths(tensors["meta.widths"].tolist())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[str, dict[str, torch.Tensor]] = {}
    params = dict(model.named_parameters())
    for k, v in tensors.items():
        if k.startswith("opt."):
            name, key = k[4:].rsplit(".", 1)
            if name not in params:
                raise KeyError(f"optimizer state for unknown parameter {name}")
            opt_state.setdefault(name, {})[key] = v
    return model, opt_state


# --- cost --------------------------------------------------------------------------------------------

def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Forward FLOPs of one example: 2 x multiply-accumulates of every conv and Linear layer
    (BatchNorm, ReLU and pooling are left out: they are a few percent and scale the same way)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            total += 2 * k * out[0].numel()
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *in_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
