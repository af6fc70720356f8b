"""Stage 5: ONE skill-conditioned policy trained with PPO (stages/rl/ppo_nethack.py) on the "train" seed
split; the active skill's reward model pays (a_int x count-normalised reward, beta from params, no
extrinsic reward), skills switch by their termination / initiation conditions and a new one is drawn
uniformly among the trainable skills that may start. Agent `single` is the Motif-style baseline at the
same budget: the same network and loop with one goal, the task's words (`task:<name>`), skill id 0.
Resumable with the shared resume helper (the key includes the reward models' fingerprint)."""
from __future__ import annotations

import logging
from functools import partial

from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.maestromotif.agent import SkillAgent, SkillRuntime
from stages.maestromotif.reward import SkillRewards
from stages.rl.ppo_nethack import CURVE_COLUMNS, PPOConfig
from stages.rl.ppo_nethack import train as ppo_train

log = logging.getLogger(__name__)


def make_runtime(agent_kind: str, rewards: SkillRewards, n_envs: int, params: dict, seed: int) -> SkillRuntime:
    cfg = params["rl"]
    if agent_kind == "skills":
        return SkillRuntime(rewards, n_envs, params["policy"]["crop"], cfg["train_skills"], cfg["discoverer_budget"],
                            cfg["beta"], cfg["a_int"], seed)
    if agent_kind.startswith("single_"):
        goal = f"task:{agent_kind.removeprefix('single_')}"
        if goal not in rewards.nets:
            raise ValueError(f"agent {agent_kind}: no reward model for {goal} (single_agent_tasks)")
        return SkillRuntime(rewards, n_envs, params["policy"]["crop"], [], cfg["discoverer_budget"], cfg["beta"],
                            cfg["a_int"], seed, fixed_goal=goal)
    raise ValueError(f"unknown agent {agent_kind!r}: 'skills' or 'single_<task>'")


def run(ctx: StageContext) -> None:
    cfg = PPOConfig.from_dict(ctx.params["ppo"])
    rewards = SkillRewards.load(ctx.inputs["reward_model"], ctx.inputs["reward_stats"])
    kind = ctx.wildcards["agent"]
    runtime = make_runtime(kind, rewards, cfg.num_envs, ctx.params, ctx.seed)
    resume = ResumeState.for_output(ctx, "policy")
    agent, curve, episodes = ppo_train(cfg, partial(SkillAgent.from_params, ctx.params["policy"]), runtime.observe,
                                       runtime, ctx.seed, ctx.params["rl"]["max_episode_steps"], resume,
                                       resume_key=f"{kind}:{rewards.fingerprint()}", progress=ctx.progress)
    ctx.save_checkpoint("policy", agent.state_dict())
    ctx.write_curve("curve", curve, CURVE_COLUMNS)
    log_ = dict(runtime.log)
    ctx.write_json("metrics", {"agent": kind, "env_steps": curve[-1]["step"], "episodes": len(episodes),
                               "mean_max_depth": sum(e["max_depth"] for e in episodes) / max(len(episodes), 1),
                               "skill_log": log_})
    log.info("%s: %d episodes; skill log %s", kind, len(episodes), log_)
    resume.clear()
