"""Play `evaluate.episodes` episodes on held-out levels (the "eval" seed split, the same levels for every
agent) with a trained policy (input `policy`, actions sampled from it) or uniformly random actions (no
`policy` input), and write one row per episode: final score, deepest dungeon level, game turns, steps,
extrinsic return, Motif's intrinsic return (a_int = 1, the training formula, computed with the frozen
reward model for every agent, the extrinsic-only and random ones included) and task success (reached
dungeon level 2, the staircase task). Output `messages`: one row per distinct message the agent saw over
its episodes (the empty message, steps without a caption, included): steps showing it, episodes in which
it appeared, its normalized reward rhat and the intrinsic reward it paid. Envs run `evaluate.parallel` at
a time so the policy sees batches.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa

from stages.common.stage import StageContext
from stages.envs.nethack import NetHackVecEnv, episode_seed, seed_split
from stages.motif.intrinsic import MotifReward
from stages.motif.policy import PolicyActor, load_agent
from stages.motif.reward_model import RewardModel

log = logging.getLogger(__name__)

N_ACTIONS = 23
EPISODES_SCHEMA = pa.schema([
    ("episode", pa.int32()), ("seed", pa.int64()), ("score", pa.int32()), ("max_depth", pa.int32()),
    ("turns", pa.int32()), ("steps", pa.int32()), ("ext_return", pa.float64()),
    ("intrinsic_return", pa.float64()), ("reached_depth2", pa.bool_()), ("crashed", pa.bool_())])
MESSAGES_SCHEMA = pa.schema([("message", pa.string()), ("steps", pa.int64()), ("episodes", pa.int32()),
                             ("rhat", pa.float64()), ("intrinsic", pa.float64())])


class MessageTally:
    """What an agent reads: per distinct message, the steps showing it, the episodes it appeared in,
    its normalized reward and the intrinsic reward it paid (a_int = 1)."""

    def __init__(self):
        self.steps, self.episodes, self.intrinsic = Counter(), Counter(), defaultdict(float)

    def add(self, messages: list[str], r_int: np.ndarray, active: np.ndarray, seen: list[set]) -> None:
        for i in np.flatnonzero(active):
            m = messages[i]
            self.steps[m] += 1
            self.intrinsic[m] += float(r_int[i])
            if m not in seen[i]:
                seen[i].add(m)
                self.episodes[m] += 1

    def rows(self, reward_model: RewardModel | None) -> list[dict]:
        msgs = sorted(self.steps, key=lambda m: (-self.steps[m], m))
        nonempty = [m for m in msgs if m]
        rhat = dict(zip(nonempty, reward_model.normalized(nonempty).tolist())) if reward_model and nonempty else {}
        return [{"message": m, "steps": self.steps[m], "episodes": self.episodes[m],
                 "rhat": rhat.get(m, float("nan")), "intrinsic": self.intrinsic[m]} for m in msgs]


def evaluation_seeds(base: int, episodes: int) -> list[int]:
    seeds = [episode_seed("eval", base, k) for k in range(episodes)]
    if any(seed_split(s) != "eval" for s in seeds):
        raise AssertionError("evaluation seeds left the eval split")
    return seeds


def evaluate(actor: PolicyActor, seeds: list[int], reward_model: RewardModel | None, intrinsic: dict,
             parallel: int, max_episode_steps: int | None, tally: MessageTally | None = None) -> list[dict]:
    """One row per episode (EPISODES_SCHEMA's columns); `tally`, when given, counts the messages."""
    rows = []
    for first in range(0, len(seeds), parallel):
        chunk = seeds[first:first + parallel]
        venv = NetHackVecEnv(len(chunk), lambda k, chunk=chunk: chunk[k % len(chunk)], max_episode_steps)
        motif = MotifReward(reward_model, len(chunk), 0.0, 1.0 if reward_model else 0.0,
                            intrinsic["threshold_quantile"], intrinsic["beta"])
        obs = venv.reset()
        active = np.ones(len(chunk), bool)
        intrinsic_return = np.zeros(len(chunk))
        seen: list[set] = [set() for _ in chunk]
        while active.any():
            actions = actor(obs)
            obs, r_ext, done, messages, ended = venv.step(actions, active)
            _, r_int = motif(messages, r_ext, done)
            intrinsic_return += np.where(active, r_int, 0.0)
            if tally is not None:
                tally.add(messages, r_int, active, seen)
            for e in ended:
                rows.append({"episode": first + e.env_index, "seed": e.seed, "score": e.score,
                             "max_depth": e.max_depth, "turns": e.turns, "steps": e.steps,
                             "ext_return": e.ext_return, "intrinsic_return": intrinsic_return[e.env_index],
                             "reached_depth2": e.max_depth >= 2, "crashed": e.crashed})
                active[e.env_index] = False
        venv.close()
    return sorted(rows, key=lambda r: r["episode"])


def run(ctx: StageContext) -> None:
    cfg = ctx.params["evaluate"]
    agent = None
    if "policy" in ctx.inputs:
        agent = load_agent(ctx.inputs["policy"], N_ACTIONS, ctx.params["policy"])
    actor = PolicyActor(agent, N_ACTIONS, seed=ctx.seed)
    model = RewardModel.load(ctx.inputs["reward_model"], ctx.inputs["reward_stats"])
    tally = MessageTally()
    rows = evaluate(actor, evaluation_seeds(cfg["seed"], cfg["episodes"]), model, ctx.params["intrinsic"],
                    cfg["parallel"], ctx.params["env"]["max_episode_steps"], tally)
    table = pa.Table.from_pylist(rows, EPISODES_SCHEMA)
    ctx.write_table("episodes", table, EPISODES_SCHEMA)
    ctx.write_table("messages", pa.Table.from_pylist(tally.rows(model), MESSAGES_SCHEMA), MESSAGES_SCHEMA)
    log.info("%s agent: %d episodes, mean score %.1f, mean max depth %.2f, mean turns %.0f, "
             "intrinsic return %.2f", "trained" if agent else "random", len(rows),
             np.mean([r["score"] for r in rows]), np.mean([r["max_depth"] for r in rows]),
             np.mean([r["turns"] for r in rows]), np.mean([r["intrinsic_return"] for r in rows]))
