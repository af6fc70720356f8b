"""Our trajectory balance vs torchgfn's, in one process on one thread, on the same HyperGrid (2D H=8 by
default; `--ndim 4 --height 8` for the harder standard grid of 4096 states).

Same setup on both sides, torchgfn's HyperGrid tutorial (train_hypergrid_simple.py): original reward
(R0 0.1, R1 0.5, R2 2), one-hot input, MLP 2 x 256 ReLU, uniform P_B, batch 16, Adam lr 1e-3 and 0.1 for
log Z, gradient-norm clip 1, on-policy sampling, constant learning rates. torchgfn samples with
`save_logprobs=True` and computes the loss without recomputing them (its fastest path); ours samples
without gradients and recomputes log P_F in one batched forward over the distinct states of the batch.

The two run interleaved in chunks of `--chunk` iterations, so machine load hits both alike. Every chunk
ends with an exact L1 to R/Z, computed the same way for both (our DP over the grid on each sampler's
P_F over all states; no sampling noise); its cost is excluded from the training clock.
Output: time per iteration (median over chunks) and the L1 reached against training wall time. At a
constant learning rate the exact L1 of both keeps fluctuating by ~2x between chunks (the stage decays the
rate to 0 instead), so read the median of the last chunks rather than the final value.

torchgfn is not in requirements.txt (it declares numpy<2); install it beside the venv first:
  .venv/bin/pip install --no-deps --target .venv/torchgfn-2.4.1 -r bench/requirements-torchgfn.txt
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/gfn_vs_torchgfn.py [--ndim 2 --height 8] [--iterations 2000]
       [--plot out.png] [--json out.json]
Besides TB, `--ours-objectives` times our other objectives on the same grid (ms / iteration only, same
batch and network; GSQL uses the stage's lr 3e-3).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / ".venv" / "torchgfn-2.4.1"))

from stages.envs.hypergrid import HyperGrid  # noqa: E402
from stages.maxent_gfn.model import GFNModel, sample  # noqa: E402
from stages.maxent_gfn.train import objective_loss  # noqa: E402

R = {"R0": 0.1, "R1": 0.5, "R2": 2.0}


class Ours:
    name = "ours (stages/maxent_gfn)"

    def __init__(self, env: HyperGrid, seed: int):
        torch.manual_seed(seed)
        self.env, self.gen = env, torch.Generator().manual_seed(seed)
        self.model = GFNModel(env, hidden=256, depth=2, learned_n=False)
        others = [p for n, p in self.model.named_parameters() if n != "log_Z"]
        self.opt = torch.optim.Adam([{"params": others, "lr": 1e-3},
                                     {"params": [self.model.log_Z], "lr": 0.1}], fused=True)

    def step(self):
        batch = sample(self.model, 16, 0.0, self.gen)
        loss = objective_loss(self.model, batch, {"loss": "tb", "backward": "uniform"}, {})
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def log_pf_all(self):
        return self.model.log_pf_all()


class TorchGFN:
    name = "torchgfn 2.4.1 TBGFlowNet"

    def __init__(self, env: HyperGrid, seed: int):
        from gfn.estimators import DiscretePolicyEstimator
        from gfn.gflownet import TBGFlowNet
        from gfn.gym import HyperGrid as TGHyperGrid
        from gfn.preprocessors import KHotPreprocessor
        from gfn.samplers import Sampler
        from gfn.utils.modules import MLP, DiscreteUniform

        torch.manual_seed(seed)
        self.our_env = env
        self.env = TGHyperGrid(ndim=env.ndim, height=env.height, reward_fn_str="original",
                               reward_fn_kwargs=R, calculate_partition=True, store_all_states=True)
        pre = KHotPreprocessor(height=env.height, ndim=env.ndim)
        self.pf = DiscretePolicyEstimator(MLP(input_dim=pre.output_dim, output_dim=self.env.n_actions),
                                          self.env.n_actions, preprocessor=pre, is_backward=False)
        pb = DiscretePolicyEstimator(DiscreteUniform(output_dim=self.env.n_actions - 1), self.env.n_actions,
                                     preprocessor=pre, is_backward=True)
        self.gfn = TBGFlowNet(pf=self.pf, pb=pb, init_logZ=0.0)
        self.sampler = Sampler(estimator=self.pf)
        self.opt = torch.optim.Adam(self.gfn.pf_pb_parameters(), lr=1e-3)
        self.opt.add_param_group({"params": self.gfn.logz_parameters(), "lr": 0.1})
        assert abs(self.env.log_partition() - env.log_Z) < 1e-5, "reward differs from ours"

    def step(self):
        traj = self.sampler.sample_trajectories(self.env, n=16, save_logprobs=True,
                                                save_estimator_outputs=False, epsilon=0.0)
        self.opt.zero_grad()
        loss = self.gfn.loss(self.env, traj, recalculate_all_logprobs=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.gfn.parameters(), 1.0)
        self.opt.step()

    def log_pf_all(self):
        states = self.env.all_states
        with torch.no_grad():
            logits = self.pf(states).masked_fill(~states.forward_masks, float("-inf"))
        out = torch.empty(len(logits), logits.shape[1], dtype=torch.float64)
        out[self.our_env.index(states.tensor)] = torch.log_softmax(logits.double(), -1)
        return out


def time_objective(env: HyperGrid, loss: str, backward: str, iterations: int, seed: int) -> float:
    """Seconds per iteration of one of our objectives (sampling + loss + update), as the stage trains it."""
    from stages.maxent_gfn.model import GFNModel as Model

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    objective = {"loss": loss, "backward": backward}
    model = Model(env, hidden=256, depth=2, learned_n=backward == "learned_n")
    others = [p for n, p in model.named_parameters() if n != "log_Z"]
    opt = torch.optim.Adam([{"params": others, "lr": 3e-3}, {"params": [model.log_Z], "lr": 0.1}], fused=True)
    start = time.perf_counter()
    for _ in range(iterations):
        batch = sample(model, 16, 0.0, gen)
        value = objective_loss(model, batch, objective, {"subtb_lambda": 0.9})
        opt.zero_grad()
        value.backward()
        opt.step()
    return (time.perf_counter() - start) / iterations


def exact_l1(env: HyperGrid, log_pf: torch.Tensor) -> float:
    return float((env.terminal_distribution(log_pf) - env.target).abs().sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ndim", type=int, default=2)
    ap.add_argument("--height", type=int, default=8)
    ap.add_argument("--l1-target", type=float, default=0.02, help="report the first chunk with L1 below this")
    ap.add_argument("--ours-objectives", default="", help="comma list of loss:backward to time, e.g. sql:maxent")
    ap.add_argument("--plot", type=Path, default=None, help="write L1 vs wall time here (PNG)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = HyperGrid(args.ndim, args.height, **R)
    grid = f"{args.ndim}D H={args.height}"
    runners = [Ours(env, args.seed), TorchGFN(env, args.seed)]
    clock = {r.name: 0.0 for r in runners}
    per_it = {r.name: [] for r in runners}
    curve = {r.name: [(0, 0.0, exact_l1(env, r.log_pf_all()))] for r in runners}
    for done in range(args.chunk, args.iterations + 1, args.chunk):
        for r in runners:
            start = time.perf_counter()
            for _ in range(args.chunk):
                r.step()
            elapsed = time.perf_counter() - start
            clock[r.name] += elapsed
            per_it[r.name].append(elapsed / args.chunk)
            curve[r.name].append((done, clock[r.name], exact_l1(env, r.log_pf_all())))

    print(f"## TB on {grid} HyperGrid ({len(env.all_states)} states), {args.iterations} iterations of 16 "
          f"trajectories, one thread, interleaved chunks of {args.chunk}\n")
    print("| implementation | ms / iteration (median of chunks) | min | max | training time (s) | "
          f"exact L1 final | median L1, last 5 chunks | first iteration with L1 < {args.l1_target:g} | "
          "wall time to it (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runners:
        ms = [1e3 * t for t in per_it[r.name]]
        hit = next(((it, t) for it, t, l1 in curve[r.name] if l1 < args.l1_target), None)
        print(f"| {r.name} | {statistics.median(ms):.2f} | {min(ms):.2f} | {max(ms):.2f} | "
              f"{clock[r.name]:.1f} | {curve[r.name][-1][2]:.4f} | "
              f"{statistics.median(l1 for _, _, l1 in curve[r.name][-5:]):.4f} | {hit[0] if hit else 'never'} | "
              f"{f'{hit[1]:.1f}' if hit else '-'} |")
    a, b = (statistics.median(per_it[r.name]) for r in runners)
    print(f"\nspeed ratio torchgfn / ours: {b / a:.2f}x")
    others = {}
    for spec in filter(None, args.ours_objectives.split(",")):
        loss, backward = spec.split(":")
        others[spec] = 1e3 * time_objective(env, loss, backward, args.chunk, args.seed)
    if others:
        print("\n| ours, objective (loss:backward) | ms / iteration (one chunk) |\n|---|---|")
        for spec, ms in others.items():
            print(f"| {spec} | {ms:.2f} |")
    if args.json:
        out = {"grid": grid, "states": len(env.all_states), "iterations": args.iterations,
               "ms_per_iteration": {r.name: 1e3 * statistics.median(per_it[r.name]) for r in runners},
               "torchgfn_over_ours": b / a,
               "final_l1": {r.name: curve[r.name][-1][2] for r in runners},
               "median_l1_last5": {r.name: statistics.median(l1 for _, _, l1 in curve[r.name][-5:])
                                   for r in runners},
               "ours_other_objectives_ms_per_iteration": others}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    print("\n## exact L1 vs training wall time (s)\n\n| iteration | " +
          " | ".join(f"{r.name}: time, L1" for r in runners) + " |\n|---|---|---|")
    for rows in zip(*(curve[r.name] for r in runners)):
        if rows[0][0] % (5 * args.chunk) == 0:
            print(f"| {rows[0][0]} | " + " | ".join(f"{t:.1f}, {l1:.4f}" for _, t, l1 in rows) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for r in runners:
            ax.plot([t for _, t, _ in curve[r.name]], [l1 for _, _, l1 in curve[r.name]], label=r.name)
        ax.set(yscale="log", xlabel="training wall time (s, one thread)", ylabel="exact L1 to R/Z",
               title=f"TB, {grid} HyperGrid")
        ax.legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
