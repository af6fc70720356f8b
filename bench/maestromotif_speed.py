"""MaestroMotif speed, one process, one torch thread (rates per wall second and per CPU second of this
process; on a shared machine the CPU rate is the uncontended estimate). Prints one JSON object.

(a) PPO env steps/s over the same `NetHackVecEnv` (same envs, truncation and steps):
    random-policy loop (the ceiling) / Motif's PPO (stages.motif.train_rl.train, intrinsic agent, an
    untrained reward model) / MaestroMotif's skill-conditioned PPO (SkillRuntime: skill switching, per-skill
    reward models, stat diffs). Untrained reward networks of the params' architectures: speed only.
(b) sandbox overhead of the policy over skills: check + worker start + load, and one warm call of
    `choose_skill` (what every skill switch costs), against calling the same function in-process.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/maestromotif_speed.py [--total-steps 4096] [--calls 2000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.params import load_params  # noqa: E402
from stages.envs.nethack import NetHackVecEnv, episode_seed  # noqa: E402
from stages.maestromotif.agent import SkillAgent, SkillRuntime  # noqa: E402
from stages.maestromotif.codegen import REFERENCE_POLICY, SimDungeon  # noqa: E402
from stages.maestromotif.reward import SkillRewardNet, SkillRewards  # noqa: E402
from stages.maestromotif.sandbox import Sandbox  # noqa: E402
from stages.rl.ppo_nethack import PPOConfig  # noqa: E402
from stages.rl.ppo_nethack import train as ppo_train  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total-steps", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(ROOT / "params.yaml")
    mm, motif = params["maestromotif"], params["motif"]
    cfg = PPOConfig.from_dict({**mm["ppo"], "total_steps": args.total_steps, "checkpoint_every": 10 ** 6})
    steps = cfg.num_updates * cfg.batch_size
    out = {"env_steps": steps, "num_envs": cfg.num_envs}

    def random_loop():
        venv = NetHackVecEnv(cfg.num_envs, lambda k: episode_seed("train", 0, k), mm["rl"]["max_episode_steps"])
        venv.reset()
        rng = np.random.default_rng(0)
        for _ in range(steps // cfg.num_envs):
            venv.step(rng.integers(23, size=cfg.num_envs))
        venv.close()

    _, w, c = timed(random_loop)
    out["random"] = {"steps_per_s": steps / w, "steps_per_cpu_s": steps / c}

    from stages.motif.intrinsic import MotifReward
    from stages.motif.reward_model import CaptionRewardNet, RewardModel
    from stages.motif.train_rl import train as motif_train
    q = {f"{0.05 * k:.2f}": 0.0 for k in range(1, 20)}
    model = RewardModel(CaptionRewardNet.from_params(motif["reward"]["model"]), 0.0, 1.0, q)
    reward = MotifReward(model, cfg.num_envs, 0.0, 0.1, 0.5, 3.0)
    _, w, c = timed(lambda: motif_train(cfg, motif["policy"], reward, 0, mm["rl"]["max_episode_steps"]))
    out["motif_ppo"] = {"steps_per_s": steps / w, "steps_per_cpu_s": steps / c}

    nets = {g: SkillRewardNet.from_params(mm["reward"]["model"]) for g in mm["rl"]["train_skills"]}
    stats = {"model": mm["reward"]["model"], "diff_stats": ["depth"],
             "goals": {g: {"mean": 0.0, "std": 1.0, "quantiles": q, "threshold_quantile": 0.85} for g in nets}}
    rt = SkillRuntime(SkillRewards(nets, stats), cfg.num_envs, mm["policy"]["crop"], mm["rl"]["train_skills"],
                      mm["rl"]["discoverer_budget"], 3.0, 0.1, 0)
    _, w, c = timed(lambda: ppo_train(cfg, partial(SkillAgent.from_params, mm["policy"]), rt.observe, rt, 0,
                                      mm["rl"]["max_episode_steps"]))
    out["skill_ppo"] = {"steps_per_s": steps / w, "steps_per_cpu_s": steps / c}
    out["skill_ppo_vs_motif_ppo"] = out["skill_ppo"]["steps_per_s"] / out["motif_ppo"]["steps_per_s"]
    out["skill_ppo_vs_random"] = out["skill_ppo"]["steps_per_s"] / out["random"]["steps_per_s"]

    states = [dict(SimDungeon(k, {"kind": "mines", "target_depth": 3, "target_gold": 0}).s) for k in range(16)]
    box = Sandbox(REFERENCE_POLICY)
    _, w_load, _ = timed(box.load)
    _, w, _ = timed(lambda: [box.call("choose_skill", states[i % 16]) for i in range(args.calls)])
    box.close()
    env: dict = {}
    exec(REFERENCE_POLICY, env)   # the trusted reference, in-process, for the baseline only
    _, w_direct, _ = timed(lambda: [env["choose_skill"](states[i % 16]) for i in range(args.calls)])
    out["sandbox"] = {"check_start_load_ms": 1e3 * w_load, "call_ms": 1e3 * w / args.calls,
                      "direct_call_ms": 1e3 * w_direct / args.calls,
                      "overhead_per_call_ms": 1e3 * (w - w_direct) / args.calls}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
