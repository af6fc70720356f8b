"""MDP study: the TD3-style agent (agent.py) with one auxiliary-loss variant on a gymnasium task whose
observation carries `distractors` extra dimensions of scale * N(0, 1) noise, redrawn every step.

Run identity from the job's wildcards: {distractors} (a count listed in self_predictive.mdp.distractors),
{variant} (zp_ema, zp_detached, zp_online, op, none) and {seed}. Outputs:
  curve    - every `log_every` env steps: latent rank, mean |cos| between latent dims, losses, noise std;
  evals    - every `eval_every` steps: the return of each evaluation episode (greedy actor, fixed reset
             seeds shared by every run, so runs pair on them);
  summary  - one row: status ("ok" or "diverged"), the step of a non-finite loss, final rank / |cos|, and
             the mean return of the last `tail_evals` evaluations.
A non-finite loss stops the run and is recorded with its step (status "diverged"); no agent weights are
written then. The run resumes from <summary>.resume.safetensors (stages.common.resume), replay buffer and
generators included, and ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import time

import gymnasium as gym
import numpy as np
import pyarrow as pa
import torch

from stages.common.resume import ResumeState, rng_state, set_rng_state
from stages.common.stage import StageContext
from stages.self_predictive.agent import VARIANTS, Agent, AgentConfig

log = logging.getLogger(__name__)
CURVE_COLUMNS = ["step", "rank", "srank", "abs_cos", "aux_loss", "critic_loss", "actor_loss", "std"]
EVALS_SCHEMA = pa.schema([("step", pa.int64()), ("episode", pa.int64()), ("return", pa.float64())])
SUMMARY_SCHEMA = pa.schema([("distractors", pa.int64()), ("variant", pa.string()), ("seed", pa.int64()),
                            ("status", pa.string()), ("failed_step", pa.int64()), ("steps", pa.int64()),
                            ("final_return", pa.float64()), ("final_rank", pa.float64()),
                            ("final_srank", pa.float64()), ("final_abs_cos", pa.float64()),
                            ("wall_s", pa.float64())])


class Distractors(gym.ObservationWrapper):
    """Append `n` i.i.d. scale * N(0, 1) dimensions to a Box observation (the paper's distracting MuJoCo)."""

    def __init__(self, env: gym.Env, n: int, scale: float, seed: int):
        super().__init__(env)
        if n < 0:
            raise ValueError(f"distractor count must be >= 0, got {n}")
        self.n, self.scale, self.rng = n, scale, np.random.default_rng(seed)
        box = env.observation_space
        high = np.concatenate([box.high, np.full(n, np.inf)]).astype(np.float32)
        low = np.concatenate([box.low, np.full(n, -np.inf)]).astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        noise = self.scale * self.rng.standard_normal(self.n)
        return np.concatenate([obs, noise]).astype(np.float32)


def make_env(env_id: str, distractors: int, scale: float, seed: int) -> gym.Env:
    return Distractors(gym.make(env_id), distractors, scale, seed)


def run_of(wildcards, cfg: dict) -> tuple[int, str, int]:
    n, variant = int(wildcards["sp_distractors"]), wildcards["sp_variant"]
    if n not in cfg["distractors"]:
        raise ValueError(f"distractor count {n} is not in self_predictive.mdp.distractors {cfg['distractors']}")
    if variant not in VARIANTS:
        raise ValueError(f"variant '{variant}' is not one of {sorted(VARIANTS)}")
    return n, variant, int(wildcards["seed"])


def evaluate(agent: Agent, env: gym.Env, episodes: int, first_seed: int, high: np.ndarray) -> list[float]:
    """Greedy-actor returns; episode i resets the task and the distractor noise from seed first_seed + i."""
    returns = []
    for ep in range(episodes):
        env.rng = np.random.default_rng(first_seed + ep)
        obs, _ = env.reset(seed=first_seed + ep)
        done, total = False, 0.0
        while not done:
            a = agent.act(obs, 0, explore=False).numpy() * high
            obs, r, term, trunc, _ = env.step(a)
            total, done = total + float(r), term or trunc
        returns.append(total)
    return returns


def train(agent: Agent, env: gym.Env, eval_env: gym.Env, tcfg: dict, seed: int, resume: ResumeState | None,
          progress: dict | None = None) -> dict:
    """The training loop; returns progress {step, curve, evals, failed_step, ...}. Resume state is saved at
    the first episode boundary after every `checkpoint_every` steps, just before the env's reset, so a
    resumed run restores the generators and replays that reset exactly."""
    high = env.action_space.high
    if progress is None:
        p = {"step": 0, "curve": [], "evals": [], "failed_step": None, "episode": 0,
             "next_checkpoint": tcfg["checkpoint_every"]}
        obs, _ = env.reset(seed=seed)
    else:
        p = progress
        obs, _ = env.reset()
    last_losses = {"aux_loss": math.nan, "critic_loss": math.nan, "actor_loss": math.nan}
    while p["step"] < tcfg["total_steps"]:
        step = p["step"]
        if step < tcfg["learning_starts"]:
            a = np.random.uniform(-1.0, 1.0, size=agent.act_dim).astype(np.float32)
        else:
            a = agent.act(obs, step).numpy()
        obs2, r, term, trunc, _ = env.step(a * high)
        agent.buffer.add(obs, a, r, obs2, term)
        obs = obs2
        if step >= tcfg["learning_starts"]:
            last_losses = agent.update(step)
            if not all(math.isfinite(v) for v in last_losses.values()):
                p["failed_step"] = step
                log.error("non-finite loss at step %d: %s; run recorded as diverged", step, last_losses)
                return p
        p["step"] = step + 1
        if p["step"] % tcfg["log_every"] == 0:
            p["curve"].append({"step": p["step"], **agent.probe(tcfg["probe_batch"]), **last_losses,
                               "std": agent.std(step)})
        if p["step"] % tcfg["eval_every"] == 0:
            rets = evaluate(agent, eval_env, tcfg["eval_episodes"], tcfg["eval_seed"], high)
            p["evals"] += [{"step": p["step"], "episode": i, "return": r} for i, r in enumerate(rets)]
            c = p["curve"][-1] if p["curve"] else {}
            log.info("step %d: eval return %.1f, rank %s, |cos| %.3f", p["step"], float(np.mean(rets)),
                     c.get("rank"), c.get("abs_cos", math.nan))
        if term or trunc:
            p["episode"] += 1
            if resume is not None and p["step"] >= p["next_checkpoint"] and p["step"] < tcfg["total_steps"]:
                p["next_checkpoint"] += tcfg["checkpoint_every"]
                resume.save(agent.state(), {**p, "rng": rng_state(), "env_rng": env_rng_state(env)})
            obs, _ = env.reset()
    return p


def env_rng_state(env: gym.Env) -> dict:
    """The train env's generators (the task's and the distractors'), JSON-able, for an exact resume."""
    return {"task": _jsonable(env.unwrapped.np_random.bit_generator.state),
            "distractors": _jsonable(env.rng.bit_generator.state)}


def set_env_rng_state(env: gym.Env, state: dict) -> None:
    env.unwrapped.np_random.bit_generator.state = state["task"]
    env.rng.bit_generator.state = state["distractors"]


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return int(x) if isinstance(x, (np.integer, int)) else x


def run(ctx: StageContext) -> None:
    cfg = ctx.params["mdp"]
    torch.set_num_threads(ctx.threads)
    n, variant, seed = run_of(ctx.wildcards, cfg)
    tcfg = cfg["train"]
    env = make_env(cfg["env_id"], n, cfg["distractor_scale"], seed)
    eval_env = make_env(cfg["env_id"], n, cfg["distractor_scale"], tcfg["eval_seed"])
    agent = Agent(env.observation_space.shape[0], env.action_space.shape[0], variant,
                  AgentConfig.from_dict(cfg["agent"]), seed)
    resume = ResumeState.for_output(ctx, "summary")
    progress, saved = None, resume.load()
    if saved is not None:
        agent.load(saved[0])
        progress = saved[1]
        env.reset(seed=seed)  # creates the task's generator, then overwritten with the saved one
        set_rng_state(progress.pop("rng"))
        set_env_rng_state(env, progress.pop("env_rng"))
        log.info("resuming at step %d", progress["step"])
    log.info("%s + %d distractors, variant %s, seed %d: %d steps", cfg["env_id"], n, variant, seed,
             tcfg["total_steps"])
    start = time.perf_counter()
    p = train(agent, env, eval_env, tcfg, seed, resume, progress)
    wall = time.perf_counter() - start
    diverged = p["failed_step"] is not None
    tail_steps = sorted({e["step"] for e in p["evals"]})[-tcfg["tail_evals"]:]
    tail = [e["return"] for e in p["evals"] if e["step"] in tail_steps]
    last = p["curve"][-1] if p["curve"] else {}
    summary = {"distractors": n, "variant": variant, "seed": seed, "status": "diverged" if diverged else "ok",
               "failed_step": p["failed_step"], "steps": p["step"],
               "final_return": float(np.mean(tail)) if tail and not diverged else math.nan,
               "final_rank": float(last.get("rank", math.nan)), "final_srank": float(last.get("srank", math.nan)),
               "final_abs_cos": float(last.get("abs_cos", math.nan)),
               "wall_s": wall}
    log.info("done: %s", summary)
    ctx.write_curve("curve", p["curve"] or [{c: math.nan for c in CURVE_COLUMNS}], CURVE_COLUMNS)
    ctx.write_table("evals", pa.Table.from_pylist(p["evals"], schema=EVALS_SCHEMA), EVALS_SCHEMA)
    ctx.write_table("summary", pa.Table.from_pylist([summary], schema=SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    resume.clear()
