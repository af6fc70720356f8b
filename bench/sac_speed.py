"""SAC speed on one thread: environment steps/s of the training loop (one gradient update per
`update_every` steps after `learning_starts`) vs a plain random-action loop on the same env, in one process.

Settings come from params.yaml (`decoupled.sac`), overridable on the command line; prints one JSON object
with wall-clock and per-CPU-second rates (on a shared machine the CPU rate is the uncontended estimate).
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/sac_speed.py [--env pendulum] [--steps 3000] [--hidden 64]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.params import load_params  # noqa: E402
from stages.decoupled.sac_train import build  # noqa: E402


def random_loop(env, steps: int, seed: int) -> tuple[float, float]:
    """(wall, CPU) steps/s of env.step with uniformly random actions (resets included)."""
    env.action_space.seed(seed)
    env.reset(seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def main() -> None:
    p = load_params(ROOT / "params.yaml")["decoupled"]["sac"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=p["run_envs"][0], choices=sorted(p["envs"]))
    ap.add_argument("--temperature", default=p["aggregate"]["baseline"], choices=sorted(p["temperatures"]))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=3000, help="timed steps with updates (after warm-up)")
    ap.add_argument("--hidden", type=int, default=p["agent"]["hidden"])
    ap.add_argument("--update-every", type=int, default=p["agent"]["update_every"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    env_cfg = p["envs"][args.env]
    warmup = min(env_cfg["learning_starts"], 1000)
    agent_cfg = {**p["agent"], "hidden": args.hidden, "update_every": args.update_every}
    env, agent = build({**env_cfg, "learning_starts": warmup}, agent_cfg, p["temperatures"][args.temperature],
                       args.scale, seed=0)
    from stages.rl.sac import train

    progress = train(env, agent, warmup, seed=0)             # fill the buffer with random actions
    wall, cpu, updates0 = time.perf_counter(), time.process_time(), agent.updates
    train(env, agent, warmup + args.steps, seed=0, progress=progress)
    sac_sps, sac_cpu_sps = args.steps / (time.perf_counter() - wall), args.steps / (time.process_time() - cpu)
    plain_sps, plain_cpu_sps = random_loop(env, args.steps, seed=0)
    print(json.dumps({"env": env_cfg["id"], "scale": args.scale, "hidden": args.hidden,
                      "batch_size": agent_cfg["batch_size"], "update_every": args.update_every,
                      "threads": args.threads, "steps": args.steps, "updates": agent.updates - updates0,
                      "sac_steps_per_s": round(sac_sps, 1), "random_steps_per_s": round(plain_sps, 1),
                      "ms_per_sac_step": round(1000 / sac_sps, 3),
                      "slowdown_vs_random": round(plain_sps / sac_sps, 1),
                      # per CPU second of this process: what an uncontended core gives (shared machines)
                      "sac_steps_per_cpu_s": round(sac_cpu_sps, 1),
                      "random_steps_per_cpu_s": round(plain_cpu_sps, 1),
                      "load_average_1min": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
