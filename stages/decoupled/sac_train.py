"""Train SAC on one (env, action scale, temperature, seed): the agent acts in [-s, s]^d through
ActionRescale, so only its action scale differs between runs of a sweep.

The run folder names the env, the scale and the temperature (results/decoupled/sac/<env>/s<scale>/
<temperature>/seed<seed>); their settings are params decoupled.sac.envs.<env> and
decoupled.sac.temperatures.<temperature>. Outputs: the final agent (no replay buffer) and curve.csv, one row
per training episode: step, return, temperature, the policy's entropy on that episode's states in the unit
box and in the agent's box. A run killed mid-way resumes: every `train.checkpoint_every` steps (at the next
episode boundary) the whole training state, replay buffer and random generator included, goes to
resume.safetensors beside the outputs; a restarted run with the same params, seed and code continues from
it and ends bit-identical to an uninterrupted one. The file is removed when the run completes.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

from stages.common import artifacts
from stages.common.stage import StageContext
from stages.envs.control import make_control_env
from stages.rl.sac import CURVE_COLUMNS, SAC, Progress, SACConfig, TemperatureConfig, train

log = logging.getLogger(__name__)

RUN_PATTERN = re.compile(r"(?P<env>[^/]+)/s(?P<scale>[^/]+)/(?P<temperature>[^/]+)/seed(?P<seed>\d+)/[^/]+$")


def run_id(path: str | Path) -> dict:
    """{env, scale, temperature, seed} of a file inside a run folder."""
    m = RUN_PATTERN.search(Path(path).as_posix())
    if m is None:
        raise ValueError(f"{path}: not inside a <env>/s<scale>/<temperature>/seed<seed>/ run folder")
    try:
        scale = float(m["scale"])
    except ValueError:
        raise ValueError(f"{path}: action scale 's{m['scale']}' is not a number") from None
    if not scale > 0:
        raise ValueError(f"{path}: action scale must be positive, got {scale}")
    return {"env": m["env"], "scale": scale, "temperature": m["temperature"], "seed": int(m["seed"])}


def sac_config(agent: dict, env: dict) -> SACConfig:
    return SACConfig.from_dict({**agent, "learning_starts": env["learning_starts"]})


def build(env_cfg: dict, agent_cfg: dict, temperature_cfg: dict, scale: float, seed: int):
    env = make_control_env(env_cfg["id"], scale, env_cfg.get("max_episode_steps"))
    agent = SAC(env.observation_space.shape[0], env.action_space.low, env.action_space.high,
                sac_config(agent_cfg, env_cfg), TemperatureConfig.from_dict(temperature_cfg), seed)
    return env, agent


def resume_path(ctx: StageContext) -> Path:
    return ctx.outputs["model"].parent / "resume.safetensors"


def save_resume(path: Path, agent: SAC, progress: Progress, provenance: dict) -> None:
    artifacts.save_checkpoint(path, {**agent.state(), **progress.state()}, provenance)


def load_resume(path: Path, agent: SAC, provenance: dict) -> Progress | None:
    """Progress restored from `path`, or None (start afresh) when there is none or it belongs to other
    params, seed or code."""
    if not path.exists():
        return None
    try:
        saved = artifacts.read_provenance(path)
        same = all(saved.get(k) == provenance[k] for k in ("params_hash", "seed", "code_sha256"))
        if not same:
            log.warning("%s: left by a run with other params, seed or code; starting afresh", path)
            return None
        tensors = artifacts.load_checkpoint(path)
    except artifacts.ArtifactError as exc:
        log.warning("unusable resume checkpoint, starting afresh: %s", exc)
        return None
    agent.load(tensors)
    progress = Progress.from_state(tensors)
    log.info("resuming from %s at step %d (episode %d)", path, progress.step, progress.episode)
    return progress


def write_curve(path: Path, rows: list[dict]) -> None:
    with artifacts.atomic_path(path) as tmp:
        lines = [",".join(CURVE_COLUMNS)] + [",".join(repr(r[c]) for c in CURVE_COLUMNS) for r in rows]
        tmp.write_text("\n".join(lines) + "\n")


def run(ctx: StageContext) -> None:
    torch.set_num_threads(ctx.threads)
    rid = run_id(ctx.outputs["model"])
    env_cfg, train_cfg = ctx.params["env"], ctx.params["train"]
    env, agent = build(env_cfg, ctx.params["agent"], ctx.params["temperature"], rid["scale"], ctx.seed)
    log.info("%s at scale %g, temperature %s (target entropy %.3f in the agent's box), seed %d: %d steps",
             env_cfg["id"], rid["scale"], rid["temperature"], agent.temperature.target, ctx.seed,
             env_cfg["total_steps"])
    resume, provenance = resume_path(ctx), ctx.provenance()
    progress = load_resume(resume, agent, provenance)
    start, first_step = time.perf_counter(), progress.step if progress else 0

    def on_episode(row: dict) -> None:
        if row["episode"] % 10 == 9:
            log.info("step %d: return %.1f, temperature %.4g, unit-box entropy %.3f (%.0f steps/s)",
                     row["step"], row["return"], row["temperature"], row["entropy_unit"],
                     (row["step"] - first_step) / (time.perf_counter() - start))

    progress = train(env, agent, env_cfg["total_steps"], ctx.seed, progress,
                     checkpoint_every=train_cfg["checkpoint_every"],
                     on_checkpoint=lambda p: save_resume(resume, agent, p, provenance), on_episode=on_episode)
    if not progress.rows:
        raise ValueError(f"decoupled.sac.envs.{rid['env']}.total_steps = {env_cfg['total_steps']} "
                         "finishes no episode")
    last = progress.rows[-1]
    log.info("done: %d episodes, last return %.1f, temperature %.4g, unit-box entropy %.3f",
             len(progress.rows), last["return"], last["temperature"], last["entropy_unit"])
    ctx.save_checkpoint("model", {k: v for k, v in agent.state().items() if not k.startswith("buffer.")})
    write_curve(ctx.outputs["curve"], progress.rows)
    resume.unlink(missing_ok=True)
    artifacts.sidecar_path(resume).unlink(missing_ok=True)
