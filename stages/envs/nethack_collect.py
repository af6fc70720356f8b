"""Roll out a policy in NetHackScore-v0 and keep one row per observation (moved here from
stages/motif/collect.py so that Motif and MaestroMotif share it; Motif's stage re-exports it).

Row `step` 0 of an episode is the observation after reset (action -1, reward 0); row t > 0 follows the
t-th action. NLE zeroes blstats (and the message) in the observation that ends a game, so the last row of
an episode that died has zero stats. An episode whose NLE core raises is logged, marked `crashed` and
ended; collection goes on with a rebuilt env. The loop only copies raw message bytes and blstats into
lists; decoding happens once at the end. `actor` is any object with `agent` (None = uniform random),
`rng` (numpy Generator), `n_actions` and `__call__(obs list) -> actions`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pyarrow as pa

from stages.envs.nethack import BLSTATS, decode_messages, make_env, reset_seeded

log = logging.getLogger(__name__)

STEPS_SCHEMA = pa.schema(
    [("episode", pa.int32()), ("step", pa.int32()), ("seed", pa.int64()), ("action", pa.int16()),
     ("message", pa.string()), ("reward", pa.float32()), ("done", pa.bool_()), ("crashed", pa.bool_())]
    + [(name, pa.int32()) for name in BLSTATS])
N_ACTIONS = 23   # NetHackScore's action set (nle.env.tasks.TASK_ACTIONS)
MAX_FAILED_RESETS = 5   # consecutive crashed resets (each with a rebuilt env) before giving up


def collect(n_steps: int, seed_fn: Callable[[int], int], actor,
            make: Callable[[], gym.Env] = make_env) -> pa.Table:
    """`n_steps` rows from consecutive episodes (the last one is cut at the budget, done=False)."""
    # per-step work is three appends of raw bytes/floats; everything else is derived at the end
    msgs, stats, rewards, actions = [], [], [], []
    starts, ends, seeds, crashed = [], [], [], []
    # a random policy's actions are drawn up front: one RNG call instead of one per step
    drawn = actor.rng.integers(actor.n_actions, size=n_steps).tolist() if actor.agent is None else None
    env, ep, failed_resets = make(), 0, 0
    while len(msgs) < n_steps:
        seed = seed_fn(ep)
        ep += 1   # a seed whose reset crashed is skipped, not retried: NLE would likely crash again
        try:
            obs = reset_seeded(env, seed)
        except Exception as exc:  # noqa: BLE001  NLE raises assorted errors from its C core
            log.exception("NLE reset crashed (seed %d); seed skipped", seed)
            failed_resets += 1
            if failed_resets == MAX_FAILED_RESETS:
                raise RuntimeError(f"NLE reset crashed {failed_resets} times in a row") from exc
            env = make()
            continue
        failed_resets = 0
        seeds.append(seed)
        starts.append(len(msgs))
        crashed.append(False)
        msgs.append(obs["message"].tobytes())
        stats.append(obs["blstats"].tobytes())
        rewards.append(0.0)
        while len(msgs) < n_steps:
            a = drawn[len(actions)] if drawn is not None else int(actor([obs])[0])
            try:
                obs, r, term, trunc, _ = env.step(a)
            except Exception:  # noqa: BLE001
                log.exception("NLE step crashed (seed %d, step %d); episode marked crashed",
                              seed, len(msgs) - starts[-1])
                crashed[-1] = True
                ends.append(len(msgs) - 1)
                env = make()
                break
            actions.append(a)
            msgs.append(obs["message"].tobytes())
            stats.append(obs["blstats"].tobytes())
            rewards.append(r)
            if term or trunc:
                ends.append(len(msgs) - 1)
                break
    env.close()

    n = len(msgs)
    starts_arr = np.asarray(starts)
    lengths = np.diff(np.append(starts_arr, n))
    episode = np.repeat(np.arange(len(starts), dtype=np.int32), lengths)
    step = np.arange(n) - starts_arr[episode]
    action = np.full(n, -1, np.int16)
    action[step > 0] = actions
    done = np.zeros(n, bool)
    done[ends] = True
    bl = np.frombuffer(b"".join(stats), np.int64).reshape(n, -1)
    columns = {"episode": episode, "step": step, "seed": np.asarray(seeds, np.int64)[episode],
               "action": action, "message": decode_messages(msgs),
               "reward": np.asarray(rewards, np.float32), "done": done,
               "crashed": np.asarray(crashed)[episode]}
    columns |= {name: bl[:, idx].astype(np.int32) for name, idx in BLSTATS.items()}
    return pa.table(columns, STEPS_SCHEMA)
