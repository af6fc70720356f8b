"""Train SAC on one (env, action scale, temperature, seed): the agent acts in [-s, s]^d through
ActionRescale, so only its action scale differs between runs of a sweep.

The job's wildcards name the env, the scale and the temperature; their settings are params
decoupled.sac.envs.<env> and decoupled.sac.temperatures.<temperature>. Outputs: the final agent (no replay
buffer) and curve.csv, one row per training episode: step, return, temperature and its log, the policy's
entropy on that episode's states in the unit box and in the agent's box, the learned temperature's target
entropy (agent's box; NaN for fixed and static ones) and the entropy gap, agent-box entropy minus target: a
learned temperature falls while the gap is positive and has converged only where the gap is ~0.
A run killed mid-way resumes: every `train.checkpoint_every` steps (at the next episode boundary) the whole
training state, replay buffer and random generator included, goes to <model>.resume.safetensors
(stages.common.resume); a restarted run with the same params, seed and code continues from it and ends bit-
identical to an uninterrupted one. The file is removed when the run completes.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import torch

from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.envs.control import make_control_env
from stages.rl.sac import CURVE_COLUMNS, SAC, Progress, SACConfig, TemperatureConfig, train

log = logging.getLogger(__name__)

TRAIN_CURVE_COLUMNS = (*CURVE_COLUMNS, "log_temperature", "target_entropy", "entropy_gap")


def run_of(wildcards: Mapping[str, str]) -> dict:
    """{env, scale, temperature, seed} of a run from its job's wildcards (strings)."""
    try:
        scale = float(wildcards["scale"])
    except ValueError:
        raise ValueError(f"action scale wildcard '{wildcards['scale']}' is not a number") from None
    if not scale > 0:
        raise ValueError(f"action scale must be positive, got {scale}")
    return {"env": wildcards["env"], "scale": scale, "temperature": wildcards["temperature"],
            "seed": int(wildcards["seed"])}


def sac_config(agent: dict, env: dict) -> SACConfig:
    return SACConfig.from_dict({**agent, "learning_starts": env["learning_starts"]})


def build(env_cfg: dict, agent_cfg: dict, temperature_cfg: dict, scale: float, seed: int):
    env = make_control_env(env_cfg["id"], scale, env_cfg.get("max_episode_steps"))
    agent = SAC(env.observation_space.shape[0], env.action_space.low, env.action_space.high,
                sac_config(agent_cfg, env_cfg), TemperatureConfig.from_dict(temperature_cfg), seed)
    return env, agent


def save_resume(state: ResumeState, agent: SAC, progress: Progress) -> None:
    # the curve so far travels as a float64 tensor (Progress.state), so it survives bit-exact
    state.save({**agent.state(), **progress.state()}, {"step": progress.step, "episode": progress.episode})


def load_resume(state: ResumeState, agent: SAC) -> Progress | None:
    """Progress restored into `agent`, or None (start afresh): no file, or one of another run."""
    saved = state.load()
    if saved is None:
        return None
    agent.load(saved[0])
    progress = Progress.from_state(saved[0])
    log.info("resuming at step %d (episode %d)", progress.step, progress.episode)
    return progress


def with_gap(rows: list[dict], target: float) -> list[dict]:
    """Curve rows with log temperature, target entropy and entropy gap (agent-box entropy - target)."""
    return [{**r, "log_temperature": math.log(r["temperature"]), "target_entropy": target,
             "entropy_gap": r["entropy_agent"] - target} for r in rows]


def run(ctx: StageContext) -> None:
    torch.set_num_threads(ctx.threads)
    rid = run_of(ctx.wildcards)
    env_cfg, train_cfg = ctx.params["env"], ctx.params["train"]
    env, agent = build(env_cfg, ctx.params["agent"], ctx.params["temperature"], rid["scale"], ctx.seed)
    log.info("%s at scale %g, temperature %s (target entropy %.3f in the agent's box), seed %d: %d steps",
             env_cfg["id"], rid["scale"], rid["temperature"], agent.temperature.target, ctx.seed,
             env_cfg["total_steps"])
    resume = ResumeState.for_output(ctx, "model")
    progress = load_resume(resume, agent)
    start, first_step = time.perf_counter(), progress.step if progress else 0

    def on_episode(row: dict) -> None:
        if row["episode"] % 10 == 9:
            log.info("step %d: return %.1f, temperature %.4g, unit-box entropy %.3f (%.0f steps/s)",
                     row["step"], row["return"], row["temperature"], row["entropy_unit"],
                     (row["step"] - first_step) / (time.perf_counter() - start))

    progress = train(env, agent, env_cfg["total_steps"], ctx.seed, progress,
                     checkpoint_every=train_cfg["checkpoint_every"],
                     on_checkpoint=lambda p: save_resume(resume, agent, p), on_episode=on_episode)
    if not progress.rows:
        raise ValueError(f"decoupled.sac.envs.{rid['env']}.total_steps = {env_cfg['total_steps']} "
                         "finishes no episode")
    last = progress.rows[-1]
    log.info("done: %d episodes, last return %.1f, temperature %.4g, unit-box entropy %.3f",
             len(progress.rows), last["return"], last["temperature"], last["entropy_unit"])
    ctx.save_checkpoint("model", {k: v for k, v in agent.state().items() if not k.startswith("buffer.")})
    ctx.write_curve("curve", with_gap(progress.rows, agent.temperature.target), TRAIN_CURVE_COLUMNS)
    resume.clear()
