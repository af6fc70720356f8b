"""Stage 7: play every task on held-out levels (the "eval" seed split, the same levels for every agent):
  composed  the skill-conditioned policy, skills chosen by the policy over skills of the codegen stage
            (LLM-written, or the reference when no round passed), called in the sandbox at every switch;
  single_*  the Motif-style agent trained on one task's words at the same budget;
  random    uniform random actions.
One row per (task, episode): success (the task's goal reached), max depth, score, turns, steps, gold,
reached dungeon_num; episodes end at success or at `max_episode_steps`. Policy-over-skills failures at
run time (sandbox errors, an unknown skill) are counted and replaced by the Discoverer.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import torch

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.envs.nethack import NetHackVecEnv, episode_seed
from stages.maestromotif.agent import N_ACTIONS, SkillAgent, SkillRuntime
from stages.maestromotif.codegen import task_solved
from stages.maestromotif.sandbox import Limits, Sandbox
from stages.maestromotif.skills import SKILLS, can_start, game_state

log = logging.getLogger(__name__)

EPISODES_SCHEMA = pa.schema([
    ("task", pa.string()), ("episode", pa.int32()), ("seed", pa.int64()), ("success", pa.bool_()),
    ("max_depth", pa.int32()), ("score", pa.int32()), ("turns", pa.int32()), ("steps", pa.int32()),
    ("gold", pa.int32()), ("reached_mines", pa.bool_()), ("skill_switches", pa.int32()),
    ("policy_errors", pa.int32()), ("crashed", pa.bool_())])


class OverSkills:
    """The policy over skills in the sandbox, with the task's fields added to the state."""

    def __init__(self, code: str, task_name: str, task: dict, limits: Limits):
        self.box = Sandbox(code, limits)
        loaded = self.box.load()
        if not loaded.ok:
            raise RuntimeError(f"policy over skills for {task_name} does not load: {loaded.reason}")
        self.extra = {"task": task["kind"], "target_depth": task["target_depth"], "target_gold": task["target_gold"],
                      "skills": list(SKILLS)}
        self.errors = np.zeros(0, np.int64)

    def __call__(self, i: int, state: dict) -> str:
        res = self.box.call("choose_skill", {**state, **self.extra})
        if res.ok and res.value in SKILLS and can_start(res.value, state):
            return res.value
        self.errors[i] += 1
        return "discoverer"


def play(agent: SkillAgent | None, make_runtime, task_name: str, task: dict, seeds: list[int],
         max_steps: int, parallel: int, rng_seed: int, over: OverSkills | None) -> list[dict]:
    rows, gen = [], torch.Generator().manual_seed(rng_seed)
    rng = np.random.default_rng(rng_seed)
    for first in range(0, len(seeds), parallel):
        chunk = seeds[first:first + parallel]
        n = len(chunk)
        venv = NetHackVecEnv(n, lambda k, chunk=chunk: chunk[k % len(chunk)], max_steps)
        obs = venv.reset()
        runtime = make_runtime(n) if agent is not None else None
        if over is not None:
            over.errors = np.zeros(n, np.int64)
        active = np.ones(n, bool)
        best = [{"depth": 1, "gold": 0, "dnum": 0, "success": False} for _ in range(n)]
        steps = np.zeros(n, np.int64)
        while active.any():
            if agent is None:
                actions = rng.integers(N_ACTIONS, size=n)
            else:
                with torch.no_grad():
                    logits, _ = agent(*runtime.observe(obs))
                actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0].numpy()
            obs, r_ext, done, messages, ended = venv.step(actions, active)
            if runtime is not None:
                runtime(messages, r_ext, done)
            steps += active
            for i in np.flatnonzero(active & ~done):
                s = game_state(obs[i]["blstats"])
                b = best[i]
                b["depth"], b["gold"] = max(b["depth"], s["depth"]), max(b["gold"], s["gold"])
                b["dnum"] = 2 if s["dungeon_num"] == 2 else b["dnum"]
                b["success"] = b["success"] or task_solved(task, b["depth"], b["dnum"], b["gold"])
            stop = list(ended)
            for i in np.flatnonzero(active):
                if best[i]["success"] and not done[i]:   # success: end the episode here
                    slot = venv.slots[i]
                    stop.append(type("E", (), {"env_index": int(i), "seed": slot.seed, "steps": len(slot.actions),
                                               "score": slot.score, "max_depth": slot.max_depth,
                                               "turns": slot.turns, "crashed": False})())
            for e in stop:
                i = e.env_index
                if not active[i]:
                    continue
                switches = runtime.switches[i] if runtime else 0
                rows.append({"task": task_name, "episode": first + i, "seed": e.seed, "success": best[i]["success"],
                             "max_depth": max(e.max_depth, best[i]["depth"]), "score": e.score, "turns": e.turns,
                             "steps": int(steps[i]), "gold": best[i]["gold"], "reached_mines": best[i]["dnum"] == 2,
                             "skill_switches": switches, "policy_errors": int(over.errors[i]) if over else 0,
                             "crashed": e.crashed})
                active[i] = False
        venv.close()
    return sorted(rows, key=lambda r: r["episode"])


def run(ctx: StageContext) -> None:
    cfg, params = ctx.params["evaluate"], ctx.params
    kind = ctx.wildcards["agent"]
    agent = rewards = goal = None
    if kind != "random":
        from stages.maestromotif.reward import SkillRewards

        agent = SkillAgent.from_params(params["policy"])
        agent.load_state_dict(load_checkpoint(ctx.inputs["policy"], expected_keys=list(agent.state_dict())))
        agent.eval()
        rewards = SkillRewards.load(ctx.inputs["reward_model"], ctx.inputs["reward_stats"])
        goal = None if kind == "composed" else f"task:{kind.removeprefix('single_')}"
    policies = json.loads(ctx.inputs["policies"].read_text())["tasks"] if kind == "composed" else {}
    limits = Limits(cpu_s=params["codegen"]["cpu_s"], wall_s=params["codegen"]["wall_s"],
                    memory_mb=params["codegen"]["memory_mb"])
    rows = []
    for k, (name, task) in enumerate(params["tasks"].items()):
        over = OverSkills(policies[name]["code"], name, task, limits) if kind == "composed" else None

        def make_runtime(n: int, over=over, k=k) -> SkillRuntime:
            return SkillRuntime(rewards, n, params["policy"]["crop"], [], params["rl"]["discoverer_budget"],
                                params["rl"]["beta"], params["rl"]["a_int"], ctx.seed * 1000 + k,
                                fixed_goal=goal, chooser=over)
        seeds = [episode_seed("eval", cfg["seed"] + k, j) for j in range(cfg["episodes"])]
        try:
            rows += play(agent, make_runtime, name, task, seeds, cfg["max_episode_steps"], cfg["parallel"],
                         ctx.seed * 1000 + k, over)
        finally:
            if over is not None:
                over.box.close()
        done = [r for r in rows if r["task"] == name]
        log.info("%s on %s: success %.2f, max depth %.2f", kind, name, np.mean([r["success"] for r in done]),
                 np.mean([r["max_depth"] for r in done]))
    ctx.write_table("episodes", pa.Table.from_pylist(rows, EPISODES_SCHEMA), EPISODES_SCHEMA)
