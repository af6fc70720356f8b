"""AWM speed: world-model training steps/s and policy-gradient steps/s per model kind at H = 200,
each against a plain forward + backward of the same network on the same batch (same process).

World-model step: teacher-forced loss + backward + Adam. Policy-gradient step: an imagined H-step
rollout under the policy (observation detached), the episode cost, backward into the policy, Adam.
Plain: the network's own forward over the same (B, H) batch as one call + backward of its sum; the
ratio says what the training recipe (loss, normalisation) and the sequential unroll cost on top.
Task: the cancer ODE with N = 200 steps (every action acts); world models at the default width.
Usage: OMP_NUM_THREADS=1 python bench/awm_speed.py [--batch 32] [--horizon 200] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from stages.awm.models import KINDS, Policy, SimulatorModel, imagine, make_world_model
from stages.awm.tasks import make_task

CFG = {"d_model": 32, "layers": 2, "heads": 2, "hidden": 64}


def rate(fn, seconds: float, min_reps: int = 3) -> float:
    fn()  # warm-up
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return reps / (time.perf_counter() - start)


def plain_fn(model, z: torch.Tensor, a: torch.Tensor):
    """The network alone: one call over the whole (B, H) batch, backward of its sum."""
    x = torch.cat([z[:, :-1], a], -1)
    if model.kind == "markov":
        return lambda: model.net(x).sum().backward()
    if model.kind in ("history", "awm"):
        return lambda: model.gpt(x).sum().backward()

    def lstm():
        out, _ = model.lstm(a)
        out.sum().backward()

    return lstm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    H, B = args.horizon, args.batch
    task = make_task("cancer", {"max_horizon": H})
    g = torch.Generator().manual_seed(0)
    s0 = task.explore_initial(B, g)
    actions = 2 * torch.rand(B, H, 1, generator=g) - 1
    with torch.no_grad():
        states = task.rollout(s0, actions)
    out = {
        "batch": B,
        "horizon": H,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "note": "shared 2-core machine under load from other jobs",
        "kinds": {},
    }
    policy = Policy(1, 1, task.obs_scale, H, 32)
    popt = torch.optim.Adam(policy.parameters(), lr=1e-3)

    def pg_step(model):
        def step():
            st, ac = imagine(model, task, s0, policy, H, detach_obs=True)
            loss = task.episode_cost(st, ac).mean()
            popt.zero_grad()
            loss.backward()
            popt.step()

        return step

    for kind in KINDS:
        model = make_world_model(kind, 1, 1, CFG, H)
        model.norm.fit(states)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step(model=model, opt=opt):
            loss = model.loss(states, actions)
            opt.zero_grad()
            loss.backward()
            opt.step()

        z = model.norm.norm(states)
        plain = rate(plain_fn(model, z, actions), args.seconds)
        train = rate(train_step, args.seconds)
        for p in model.parameters():
            p.requires_grad_(False)
        pg = rate(pg_step(model), args.seconds, min_reps=2)
        out["kinds"][kind] = {
            "plain_fwd_bwd_per_s": plain,
            "train_steps_per_s": train,
            "train_vs_plain": train / plain,
            "policy_steps_per_s": pg,
            "policy_vs_plain": pg / plain,
        }
        print(kind, json.dumps(out["kinds"][kind]), flush=True)
    out["kinds"]["sim"] = {"policy_steps_per_s": rate(pg_step(SimulatorModel(task)), args.seconds, min_reps=2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
