"""NetHack through NLE (`gymnasium.make("NetHackScore-v0")`): seeded episodes, decoded messages, blstats
fields, disjoint train/eval seed ranges, and a small in-process vector env for PPO.

Determinism: NetHack's core and display RNGs are seeded before every reset with `reseed=False` (no
anti-TAS reseeding) and `fix_moon_phase=True` (moon phase / Friday 13th from the seed, not the clock), so
an episode is a pure function of its seed and its actions. The vector env relies on that to resume a
killed run: it replays each env's current episode from its seed and actions.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import nle  # noqa: F401  (registers the NetHack* ids with gymnasium)
import numpy as np
from nle import nethack

log = logging.getLogger(__name__)

ENV_ID = "NetHackScore-v0"
OBS_KEYS = ("chars", "blstats", "message")   # the policy's crop, stats and the caption; nothing else is copied

# blstats columns kept in the collected tables: name -> index into obs["blstats"]
BLSTATS = {
    "x": nethack.NLE_BL_X, "y": nethack.NLE_BL_Y, "hp": nethack.NLE_BL_HP, "hp_max": nethack.NLE_BL_HPMAX,
    "depth": nethack.NLE_BL_DEPTH, "dlvl": nethack.NLE_BL_DLEVEL, "gold": nethack.NLE_BL_GOLD,
    "score": nethack.NLE_BL_SCORE, "turn": nethack.NLE_BL_TIME, "xlvl": nethack.NLE_BL_XP,
    "hunger": nethack.NLE_BL_HUNGER, "dnum": nethack.NLE_BL_DNUM,   # dnum 2 = the Gnomish Mines (MaestroMotif)
}

# Episode seeds: split index * 2^40 + base * 2^20 + k. Each split owns a disjoint 2^40 block, so a train
# seed can never equal an eval seed whatever the bases; k < 2^20 episodes and base < 2^20 per split.
SPLITS = {"train": 0, "eval": 1}
_BLOCK, _BASE, _K = 1 << 40, 1 << 20, 1 << 20


def episode_seed(split: str, base: int, k: int) -> int:
    """Seed of the k-th episode of stream `base` in `split` ("train" for collection and RL, "eval")."""
    if split not in SPLITS:
        raise ValueError(f"unknown seed split '{split}' (known: {sorted(SPLITS)})")
    if not (0 <= base < _BASE and 0 <= k < _K):
        raise ValueError(f"seed stream base {base} / episode {k} out of range [0, {_BASE})")
    return SPLITS[split] * _BLOCK + base * _BASE + k


def seed_split(seed: int) -> str:
    return next(name for name, i in SPLITS.items() if seed // _BLOCK == i)


def assert_disjoint(train_seeds, eval_seeds) -> None:
    """Raise if an evaluation episode would replay a training level."""
    shared = set(map(int, train_seeds)) & set(map(int, eval_seeds))
    if shared:
        raise ValueError(f"{len(shared)} episode seed(s) used for both training and evaluation, "
                         f"e.g. {sorted(shared)[:3]}")


def make_env(max_episode_steps: int | None = None) -> gym.Env:
    """NetHackScore-v0 with the observation keys we read; `max_episode_steps` adds gymnasium's
    TimeLimit (NLE itself ends an episode after 5000 steps)."""
    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    return gym.make(ENV_ID, observation_keys=OBS_KEYS, fix_moon_phase=True, **kwargs)


def reset_seeded(env: gym.Env, seed: int) -> dict:
    env.unwrapped.seed(core=seed, disp=seed, reseed=False)
    obs, _ = env.reset()
    return obs


def decode_message(raw: np.ndarray | bytes) -> str:
    """obs["message"] (256 bytes, NUL-padded) -> text without padding or surrounding blanks."""
    data = raw.tobytes() if isinstance(raw, np.ndarray) else raw
    end = data.find(b"\x00")
    return (data if end < 0 else data[:end]).decode("latin-1").strip()


def decode_messages(raw: list[bytes]) -> list[str]:
    """Decode many raw messages, each distinct one once (a few hundred among 10^5 steps)."""
    cache: dict[bytes, str] = {}
    return [cache[r] if r in cache else cache.setdefault(r, decode_message(r)) for r in raw]


# ---- vectorized, resumable env for PPO ---------------------------------------------------------------


@dataclass
class EpisodeEnd:
    """What an env reports when an episode ends."""
    env_index: int
    seed: int
    steps: int
    score: int
    max_depth: int
    turns: int
    ext_return: float
    crashed: bool


@dataclass
class _Slot:
    env: gym.Env
    seed: int = -1
    actions: list[int] = field(default_factory=list)
    max_depth: int = 1
    ext_return: float = 0.0
    score: int = 0
    turns: int = 0

    def track(self, blstats: np.ndarray) -> None:
        """Remember the last live stats: NLE zeroes blstats in the observation that ends a game."""
        if blstats.any():
            self.score = int(blstats[nethack.NLE_BL_SCORE])
            self.turns = int(blstats[nethack.NLE_BL_TIME])
            self.max_depth = max(self.max_depth, int(blstats[nethack.NLE_BL_DEPTH]))


class NetHackVecEnv:
    """`n` NetHack envs stepped in turn in this process (NetHack is single-threaded and cheap to step, so
    subprocesses would cost more in pickling than they save on two cores). Auto-resets: the k-th episode
    of env i uses `seed_fn(k * n + i)`. An episode whose env raises is ended (marked crashed, logged)
    and the env rebuilt, so a crash costs one episode, never the run."""

    def __init__(self, n: int, seed_fn: Callable[[int], int], max_episode_steps: int | None = None,
                 make: Callable[[], gym.Env] | None = None):
        self.n, self.seed_fn, self.max_episode_steps = n, seed_fn, max_episode_steps
        self._make = make or (lambda: make_env(max_episode_steps))
        self.slots = [_Slot(self._make()) for _ in range(n)]
        self.episodes_started = [0] * n
        self.obs: list[dict] = [{} for _ in range(n)]

    def _new_episode(self, i: int) -> dict:
        k = self.episodes_started[i] * self.n + i
        self.episodes_started[i] += 1
        slot = self.slots[i]
        slot.seed, slot.actions, slot.max_depth, slot.ext_return = self.seed_fn(k), [], 1, 0.0
        slot.score, slot.turns = 0, 0
        for _attempt in range(2):
            try:
                obs = reset_seeded(slot.env, slot.seed)
                break
            except Exception:  # noqa: BLE001  NLE raises assorted errors from its C core
                log.exception("NLE reset crashed (env %d, seed %d); rebuilding the env", i, slot.seed)
                slot.env = self._make()
        else:
            raise RuntimeError(f"NLE reset failed twice for seed {slot.seed}")
        slot.track(obs["blstats"])
        return obs

    def reset(self) -> list[dict]:
        self.obs = [self._new_episode(i) for i in range(self.n)]
        return self.obs

    def step(self, actions: np.ndarray, active: np.ndarray | None = None
             ) -> tuple[list[dict], np.ndarray, np.ndarray, list[str], list[EpisodeEnd]]:
        """Step every env (or those `active`); returns (next observations, extrinsic rewards, dones,
        messages of the step's observation, episodes that ended). On done the next observation is the new
        episode's first one and the message is the final observation's (the caption the step earned)."""
        rewards = np.zeros(self.n, np.float32)
        dones = np.zeros(self.n, bool)
        messages, ended = [], []
        for i, slot in enumerate(self.slots):
            if active is not None and not active[i]:
                messages.append("")
                continue
            a = int(actions[i])
            crashed = False
            try:
                obs, r, term, trunc, _ = slot.env.step(a)
            except Exception:  # noqa: BLE001
                log.exception("NLE step crashed (env %d, seed %d, step %d); episode marked crashed",
                              i, slot.seed, len(slot.actions))
                slot.env, obs, r, term, trunc, crashed = self._make(), self.obs[i], 0.0, True, False, True
            slot.actions.append(a)
            rewards[i] = r
            slot.ext_return += r
            slot.track(obs["blstats"])
            messages.append(decode_message(obs["message"]))
            if term or trunc:
                dones[i] = True
                ended.append(EpisodeEnd(i, slot.seed, len(slot.actions), slot.score, slot.max_depth,
                                        slot.turns, slot.ext_return, crashed))
                obs = self._new_episode(i)
            self.obs[i] = obs
        return self.obs, rewards, dones, messages, ended

    # -- resume: an env's state is (episode counter, seed, actions so far); replaying restores it -----

    def state(self) -> dict:
        return {"episodes_started": list(self.episodes_started),
                "slots": [{"seed": s.seed, "actions": list(s.actions)} for s in self.slots]}

    def restore(self, state: dict) -> list[list[str]]:
        """Rebuild every env's current episode by replaying its actions from its seed; returns the
        messages seen so far in each current episode (for the per-episode message counts)."""
        if len(state["slots"]) != self.n:
            raise ValueError(f"resume state has {len(state['slots'])} envs, this run has {self.n}")
        self.episodes_started = list(state["episodes_started"])
        seen = []
        for i, (slot, saved) in enumerate(zip(self.slots, state["slots"])):
            slot.seed, slot.actions, slot.ext_return, slot.max_depth = saved["seed"], [], 0.0, 1
            obs = reset_seeded(slot.env, slot.seed)
            slot.track(obs["blstats"])
            msgs = []
            for a in saved["actions"]:
                obs, r, term, trunc, _ = slot.env.step(int(a))
                slot.actions.append(int(a))
                slot.ext_return += r
                slot.track(obs["blstats"])
                msgs.append(decode_message(obs["message"]))
                if term or trunc:
                    raise RuntimeError(f"replaying env {i} (seed {slot.seed}) ended the episode early: "
                                       "NLE is not deterministic here, cannot resume exactly")
            self.obs[i] = obs
            seen.append(msgs)
        return seen

    def close(self) -> None:
        for slot in self.slots:
            slot.env.close()
