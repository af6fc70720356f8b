"""DemP speed, measured in one process on one thread:

1. Training wall time, dense vs DemP with the same data, steps and optimizer: steps/s in every
   pruning period (DemP gets faster as dead units are removed) and the total-time ratio.
2. Inference latency of the final pruned network vs the dense one, same input batch, interleaved.

Settings come from params.yaml (`demp:`), overridable on the command line.
Usage: .venv/bin/python bench/demp_speed.py [--dataset digits] [--model mlp] [--lam 0.1] [--steps 2000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.params import load_params  # noqa: E402
from stages.demp import datasets, demon, nets  # noqa: E402
from stages.demp.evaluate import accuracy, latency_ms  # noqa: E402
from stages.demp.train import fit  # noqa: E402


def timed_fit(model, x, y, p, steps, demp, reg, lam, period):
    """Train and return (model, total seconds, [(first step, last step, steps/s, width)] per period)."""
    marks, windows, last = [time.perf_counter()], [], [0]

    def on_step(step, m):
        if step % period == 0 or step == steps:
            marks.append(time.perf_counter())
            windows.append((last[0] + 1, step, (step - last[0]) / (marks[-1] - marks[-2]), sum(m.widths)))
            last[0] = step

    model, _, _ = fit(model, x, y, p["train"], p["criterion"], steps, 0, demp=demp, reg=reg, lam_max=lam,
                      on_step=on_step)
    return model, marks[-1] - marks[0], windows


def main() -> None:
    p = load_params(ROOT / "params.yaml")["demp"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    ap.add_argument("--model", default="mlp", choices=sorted(p["models"]))
    ap.add_argument("--lam", type=float, default=None, help="lambda_max (default: the model's largest)")
    ap.add_argument("--steps", type=int, default=p["train"]["steps"])
    ap.add_argument("--repeats", type=int, default=200, help="timed forward passes per network")
    ap.add_argument("--batch", type=int, default=256, help="examples in the timed inference batch")
    args = ap.parse_args()
    torch.set_num_threads(1)

    splits = datasets.standardize(datasets.load(args.dataset, p["datasets"][args.dataset], args.dataset))
    (x, y), (xt, yt) = [tuple(map(torch.as_tensor, splits[s])) for s in ("train", "test")]
    sweep = p["sweep"][args.model]
    lam = args.lam if args.lam is not None else max(sweep["lambda_max"])
    demp = {**p["demon"], **p["criterion"]}
    period = p["demon"]["pruning_freq"]

    runs = {}
    for name, kw in (("dense", dict(demp=None, reg="l2", lam=0.0)),
                     ("demp", dict(demp=demp, reg=sweep["reg"], lam=lam))):
        torch.manual_seed(0)
        model = nets.build(p["models"][args.model], x.shape[1:], int(y.max()) + 1)
        runs[name] = timed_fit(model, x, y, p, args.steps, period=period, **kw)
    dense, t_dense, w_dense = runs["dense"]
    demp_model, t_demp, w_demp = runs["demp"]
    sums = demon.activation_sums(demp_model, demon.probe_set(x, p["criterion"]["probe_size"], 0))
    pruned, _ = nets.prune(demp_model, demon.keep_indices(demon.dead_units(sums, 0.0), sums))

    print(f"# {args.dataset} / {args.model}, lambda_max {lam:g}, {args.steps} steps, 1 thread")
    print("\n## training: steps/s per pruning period")
    print(f"{'steps':>11} {'dense':>8} {'demp':>8} {'ratio':>6} {'demp units':>10}")
    for (a, b, s_dense, _), (_, _, s_demp, width) in zip(w_dense, w_demp):
        print(f"{a:>5}-{b:<5} {s_dense:8.1f} {s_demp:8.1f} {s_demp / s_dense:6.2f} {width:>10}")
    print(f"total wall: dense {t_dense:.1f} s, demp {t_demp:.1f} s, speedup x{t_dense / t_demp:.2f}")

    xb = xt.repeat(-(-args.batch // len(xt)), *([1] * (xt.dim() - 1)))[:args.batch]
    lat_p, lat_d = latency_ms([pruned, dense], xb, args.repeats)
    print(f"\n## inference, batch {args.batch}, median of {args.repeats}")
    print(f"{'network':>8} {'units':>6} {'params':>8} {'MFLOPs':>7} {'ms':>7} {'test acc':>8}")
    for name, m, ms in (("dense", dense, lat_d), ("pruned", pruned, lat_p)):
        print(f"{name:>8} {sum(m.widths):>6} {nets.n_params(m):>8} {nets.flops(m, x.shape[1:]) / 1e6:7.3f} "
              f"{ms:7.3f} {accuracy(m, xt, yt):8.4f}")
    print(f"latency ratio pruned/dense {lat_p / lat_d:.3f} (speedup x{lat_d / lat_p:.2f})")


if __name__ == "__main__":
    main()
