"""Motif RL speed, in one process on `--threads` torch threads:

(a) reward-model inference: messages/s of `RewardModel.score` on `--messages` distinct NetHack-like
    captions, first uncached (every message goes through the network, in chunks of `batch_size`) then
    cached (the same call again: dictionary lookups only). The trained model of the reward stage is used
    when --model and --stats exist; otherwise an untrained net of the params' architecture
    (`motif.reward.model`), whose speed is the same (normalization and quantiles are then taken from its
    scores of the generated messages, so the PPO run below rewards about half of the messages).
(b) PPO env steps/s of `stages.motif.train_rl.train` (params `motif.ppo`, `motif.policy`, one agent mode of
    `motif.agents`) for a short run of `--total-steps`, against a random-policy loop over the same
    `NetHackVecEnv` (same number of envs, same episode truncation, same number of steps): the ceiling
    PPO's inference, reward and updates eat into. Env construction and the first reset are timed apart
    (a `progress` wrapper marks the start of the first update) and left out of both rates.

Rates are given per wall second and per CPU second of this process (`time.process_time`): on a shared
machine the CPU rate is the uncontended estimate. Prints one JSON object.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/motif_rl_speed.py [--messages 2000] [--total-steps 4096]
       [--agent combined] [--model results/motif/reward/model.safetensors]
       [--stats results/motif/reward/stats.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.envs.nethack import NetHackVecEnv, episode_seed, make_env, reset_seeded  # noqa: E402
from stages.motif.intrinsic import MotifReward  # noqa: E402
from stages.motif.reward_model import CaptionRewardNet, RewardModel  # noqa: E402
from stages.motif.train_rl import N_ACTIONS, PPOConfig, train  # noqa: E402

REWARD_DIR = "results/motif/reward"     # stages/motif/rules.smk: MOTIF_REWARD
MONSTERS = ("newt", "jackal", "sewer rat", "grid bug", "kobold", "gnome lord", "floating eye", "lichen",
            "hill orc", "giant bat", "kitten", "little dog", "fox", "coyote", "acid blob", "yellow mold")
ITEMS = ("dagger", "apple", "scroll labeled FOOBIE BLETCH", "potion", "ring mail", "wand", "food ration",
         "orcish helm", "blue gem", "flint stone", "spellbook", "fortune cookie", "tin", "arrow")
TEMPLATES = ("You kill the {m}!", "The {m} bites!", "You miss the {m}.", "You hit the {m}.",
             "The {m} misses!", "You see here {n} gold pieces.", "You see here a {i}.",
             "{n} gold pieces.", "You see here {n} {i}s.", "It's a wall.", "You hear some noises.",
             "There is a staircase down here.", "The {m} turns to flee.", "Welcome to experience level {n}.",
             "You find a hidden passage.", "{c} - a {i}.", "You feel hungry.", "The door opens.",
             "This door is locked.", "You hear the footsteps of a guard on patrol.",
             "You are hit by a {i}!", "The {m} hits! The {m} bites!", "You displaced your {m}.")


def nethack_messages(n: int, seed: int) -> list[str]:
    """`n` distinct captions from NetHack-like templates (monsters, items, counts, inventory letters)."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    while len(out) < n:
        t = TEMPLATES[rng.integers(len(TEMPLATES))]
        msg = t.format(m=MONSTERS[rng.integers(len(MONSTERS))], i=ITEMS[rng.integers(len(ITEMS))],
                       n=int(rng.integers(1, 500)), c=letters[rng.integers(len(letters))])
        if msg in out:   # fixed templates repeat: append a second sentence to keep every message distinct
            msg = f"{msg} {TEMPLATES[rng.integers(len(TEMPLATES))]}".format(
                m=MONSTERS[rng.integers(len(MONSTERS))], i=ITEMS[rng.integers(len(ITEMS))],
                n=int(rng.integers(1, 500)), c=letters[rng.integers(len(letters))])
        out[msg] = None
    return list(out)


def reward_model(model: Path, stats: Path, arch: dict, messages: list[str], seed: int
                 ) -> tuple[RewardModel, str]:
    """The trained reward model if its files exist, else an untrained net with stats from `messages`."""
    if model.exists() and stats.exists():
        return RewardModel.load(model, stats), f"trained ({model})"
    torch.manual_seed(seed)
    rm = RewardModel(CaptionRewardNet.from_params(arch))
    raw = rm.score(messages)
    rm.mean, rm.std = float(raw.mean()), float(max(raw.std(), 1e-6))
    z = (raw - rm.mean) / rm.std
    rm.quantiles = {f"{q:.2f}": float(np.quantile(z, q)) for q in np.round(np.arange(0.05, 0.96, 0.05), 2)}
    rm.cache.clear()
    missing = " and ".join(str(f) for f in (model, stats) if not f.exists())
    return rm, f"untrained {arch} ({missing} missing)"


def time_score(rm: RewardModel, messages: list[str]) -> dict:
    """messages/s of score(): a cold cache, then the same call again (all hits)."""
    rm.cache.clear()
    rm.cache_size = max(rm.cache_size, len(messages))
    out = {}
    for name in ("uncached", "cached"):
        wall, cpu = time.perf_counter(), time.process_time()
        rm.score(messages)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[f"{name}_msgs_per_s"] = round(len(messages) / wall, 1)
        out[f"{name}_msgs_per_cpu_s"] = round(len(messages) / max(cpu, 1e-9), 1)
    out["cached_speedup_cpu"] = round(out["cached_msgs_per_cpu_s"] / out["uncached_msgs_per_cpu_s"], 1)
    return out


class FirstUpdateMark:
    """`progress` for train(): records wall/CPU time when the first update starts (setup done)."""

    def __init__(self):
        self.wall = self.cpu = None

    def __call__(self, it, **kwargs):
        for k, item in enumerate(it):
            if k == 0:
                self.wall, self.cpu = time.perf_counter(), time.process_time()
            yield item


def ppo_rates(cfg: PPOConfig, policy_cfg: dict, reward: MotifReward, max_episode_steps: int, seed: int) -> dict:
    mark = FirstUpdateMark()
    wall = time.perf_counter()
    _, curve, episodes = train(cfg, policy_cfg, reward, seed, max_episode_steps, progress=mark)
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    steps = curve[-1]["step"]
    return {"steps": steps, "updates": len(curve), "episodes_ended": len(episodes),
            "setup_s": round(mark.wall - wall, 2),
            "steps_per_s": round(steps / (end_wall - mark.wall), 1),
            "steps_per_cpu_s": round(steps / max(end_cpu - mark.cpu, 1e-9), 1)}


def random_rates(n_envs: int, vec_steps: int, max_episode_steps: int, seed: int) -> dict:
    """The same vector env, uniformly random actions, nothing else."""
    wall = time.perf_counter()
    venv = NetHackVecEnv(n_envs, lambda k: episode_seed("train", seed, k), max_episode_steps)
    venv.reset()
    setup = time.perf_counter() - wall
    actions = np.random.default_rng(seed).integers(N_ACTIONS, size=(vec_steps, n_envs))
    wall, cpu, ended = time.perf_counter(), time.process_time(), 0
    for a in actions:
        ended += len(venv.step(a)[4])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    venv.close()
    steps = vec_steps * n_envs
    return {"steps": steps, "episodes_ended": ended, "setup_s": round(setup, 2),
            "steps_per_s": round(steps / wall, 1), "steps_per_cpu_s": round(steps / max(cpu, 1e-9), 1)}


def main() -> None:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())["motif"]   # other blocks may be mid-edit
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / REWARD_DIR / "model.safetensors")
    ap.add_argument("--stats", type=Path, default=ROOT / REWARD_DIR / "stats.json")
    ap.add_argument("--messages", type=int, default=2000, help="distinct messages scored in (a)")
    ap.add_argument("--total-steps", type=int, default=4096, help="PPO env steps in (b), whole updates")
    ap.add_argument("--agent", default="combined", choices=sorted(p["agents"]))
    ap.add_argument("--num-envs", type=int, default=p["ppo"]["num_envs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-ppo", action="store_true", help="only (a)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    messages = nethack_messages(args.messages, args.seed)
    rm, source = reward_model(args.model, args.stats, p["reward"]["model"], messages, args.seed)
    rm.score(nethack_messages(64, args.seed + 1))        # warm-up: first-call costs of torch's conv kernels
    out = {"reward_model": source, "messages": len(messages),
           "mean_message_chars": round(float(np.mean([len(m) for m in messages])), 1),
           "batch_size": rm.batch_size, "threads": args.threads, "score": time_score(rm, messages)}

    if not args.skip_ppo:
        mode = p["agents"][args.agent]
        cfg = PPOConfig(**{**p["ppo"], "total_steps": args.total_steps, "num_envs": args.num_envs})
        reward = MotifReward(rm if mode["a_int"] != 0 else None, cfg.num_envs, mode["a_ext"], mode["a_int"],
                             p["intrinsic"]["threshold_quantile"], p["intrinsic"]["beta"])
        rm.cache.clear()                                  # the run starts cold, as a real one does
        max_steps = p["env"]["max_episode_steps"]
        # warm-up: NLE's first load and torch's first optimizer (~1.8 s of lazy imports) are once per process
        env = make_env(max_steps)
        reset_seeded(env, 0)
        env.close()
        torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
        ppo = ppo_rates(cfg, p["policy"], reward, max_steps, args.seed)
        rnd = random_rates(cfg.num_envs, cfg.num_updates * cfg.num_steps, max_steps, args.seed)
        out.update({"agent": args.agent, "num_envs": cfg.num_envs, "num_steps": cfg.num_steps,
                    "update_epochs": cfg.update_epochs, "reward_cache_entries": len(rm.cache),
                    "ppo": ppo, "random": rnd,
                    "ppo_over_random": round(ppo["steps_per_s"] / rnd["steps_per_s"], 3),
                    "ppo_over_random_cpu": round(ppo["steps_per_cpu_s"] / rnd["steps_per_cpu_s"], 3)})
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
