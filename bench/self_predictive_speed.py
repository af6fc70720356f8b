"""Self-predictive agent throughput: env steps/s of the learning phase (act + one update per step) with each
auxiliary loss, against the same agent with none (the aux loss's overhead) and a random-action loop on the
same env (the ceiling), all in one process at the params.yaml default scale.

  PYTHONPATH=. python bench/self_predictive_speed.py [--steps 500] [--distractors 64] [--threads 1]

Prints JSON: steps/s per variant, ratio to none and to the random loop. Each variant's agent is warmed
with `--warmup` random transitions first (not timed).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from stages.common.code import ROOT
from stages.common.params import load_params
from stages.self_predictive.agent import VARIANTS, Agent, AgentConfig
from stages.self_predictive.mdp import make_env


def random_loop(env, steps: int) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def agent_loop(env, variant: str, cfg: AgentConfig, steps: int, warmup: int) -> float:
    agent = Agent(env.observation_space.shape[0], env.action_space.shape[0], variant, cfg, seed=0)
    high = env.action_space.high
    obs, _ = env.reset(seed=0)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        a = np.random.uniform(-1, 1, agent.act_dim).astype(np.float32) if i < warmup else agent.act(obs, i).numpy()
        obs2, r, term, trunc, _ = env.step(a * high)
        agent.buffer.add(obs, a, r, obs2, term)
        obs = env.reset()[0] if term or trunc else obs2
        if i >= warmup:
            agent.update(i)
    return steps / (time.perf_counter() - start)


def main() -> None:
    params = load_params(ROOT / "params.yaml")["self_predictive"]["mdp"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--distractors", type=int, default=params["distractors"][-1])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    env = make_env(params["env_id"], args.distractors, params["distractor_scale"], seed=0)
    cfg = AgentConfig.from_dict(params["agent"])
    out = {"env": params["env_id"], "distractors": args.distractors, "steps": args.steps,
           "threads": args.threads, "agent": {k: params["agent"][k] for k in ("latent", "hidden", "batch_size")}}
    random_sps = random_loop(env, 20 * args.steps)
    sps = {v: agent_loop(env, v, cfg, args.steps, args.warmup) for v in VARIANTS}
    out["random_actions_steps_per_s"] = round(random_sps, 1)
    out["agent_steps_per_s"] = {v: round(x, 1) for v, x in sps.items()}
    out["ratio_to_none"] = {v: round(x / sps["none"], 3) for v, x in sps.items()}
    out["ratio_to_random_loop"] = {v: round(x / random_sps, 5) for v, x in sps.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
