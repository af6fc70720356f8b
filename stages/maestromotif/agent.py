"""The skill-conditioned actor-critic and the per-step runtime shared by training and evaluation.

`SkillAgent`: a crop of the map characters around the hero, eight status numbers and the one-hot id of
the active skill -> MLP -> action logits and a value (one policy for every skill, as in the paper).

`SkillRuntime` is both the `observe` and the `StepReward` of stages/rl/ppo_nethack.py: `observe` sees
each step's observations (and keeps them, because the reward needs the stat differences: the shared loop
passes the same list `venv.obs` that `venv.step` updates in place), `__call__` pays the active skill's
reward model - count-normalised, 1[r > eps] * r / N^beta, times a_int, no extrinsic reward - and then
applies the termination / initiation conditions (stages/maestromotif/skills.py) to pick the next skill:
uniformly among the trainable skills that may start (training), or by a `chooser` (evaluation: the
policy over skills). With `fixed_goal` it is the single Motif-style agent: one goal, skill id 0.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from nle import nethack
from torch import nn

from stages.maestromotif.reward import SkillRewards
from stages.maestromotif.skills import DIFF_STATS, SKILL_ID, SKILLS, can_start, game_state, should_end

N_ACTIONS = 23
N_STATS = 8
_BL = nethack


def stats_features(bl: np.ndarray) -> np.ndarray:
    bl = bl.astype(np.float32)
    hp_max = np.maximum(bl[:, _BL.NLE_BL_HPMAX], 1.0)
    return np.stack([bl[:, _BL.NLE_BL_HP] / hp_max, hp_max / 50.0, bl[:, _BL.NLE_BL_DEPTH] / 10.0,
                     np.log1p(np.maximum(bl[:, _BL.NLE_BL_GOLD], 0)) / 5.0, bl[:, _BL.NLE_BL_XP] / 10.0,
                     bl[:, _BL.NLE_BL_HUNGER] / 4.0, np.log1p(np.maximum(bl[:, _BL.NLE_BL_TIME], 0)) / 10.0,
                     bl[:, _BL.NLE_BL_DNUM] / 2.0], axis=1)


def crop_chars(chars: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    r = size // 2
    pad = np.full((chars.shape[0] + 2 * r, chars.shape[1] + 2 * r), 32, np.uint8)
    pad[r:r + chars.shape[0], r:r + chars.shape[1]] = chars
    return pad[y:y + size, x:x + size]


def _init(layer: nn.Linear, std: float = 2 ** 0.5) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class SkillAgent(nn.Module):
    def __init__(self, crop: int, embed_dim: int, hidden: int, n_skills: int = len(SKILLS)):
        super().__init__()
        self.crop, self.n_skills = crop, n_skills
        self.embed = nn.Embedding(256, embed_dim)
        self.trunk = nn.Sequential(_init(nn.Linear(crop * crop * embed_dim + N_STATS + n_skills, hidden)),
                                   nn.ReLU(), _init(nn.Linear(hidden, hidden)), nn.ReLU())
        self.actor = _init(nn.Linear(hidden, N_ACTIONS), 0.01)
        self.critic = _init(nn.Linear(hidden, 1), 1.0)

    @classmethod
    def from_params(cls, cfg: dict) -> SkillAgent:
        return cls(cfg["crop"], cfg["embed_dim"], cfg["hidden"])

    def hidden(self, crops, stats, skill):
        onehot = nn.functional.one_hot(skill, self.n_skills).float()
        return self.trunk(torch.cat([self.embed(crops).flatten(1), stats, onehot], 1))

    def value(self, crops, stats, skill):
        return self.critic(self.hidden(crops, stats, skill))[:, 0]

    def forward(self, crops, stats, skill):
        h = self.hidden(crops, stats, skill)
        return self.actor(h), self.critic(h)[:, 0]


class SkillRuntime:
    def __init__(self, rewards: SkillRewards | None, n_envs: int, crop: int, skills: list[str], budget: int,
                 beta: float, a_int: float, seed: int, fixed_goal: str | None = None,
                 chooser: Callable[[int, dict], str] | None = None):
        self.rewards, self.n, self.crop, self.skills = rewards, n_envs, crop, list(skills)
        self.budget, self.beta, self.a_int, self.fixed_goal, self.chooser = budget, beta, a_int, fixed_goal, chooser
        self.rng = np.random.default_rng(seed)
        self.keep = rewards.keep if rewards is not None else []
        self.obs: list[dict] = []
        self.skill = [""] * n_envs
        self.start: list[dict | None] = [None] * n_envs
        self.before: list[dict | None] = [None] * n_envs
        self.steps = [0] * n_envs
        self.explored = [False] * n_envs
        self.counts = [Counter() for _ in range(n_envs)]
        self.switches = [0] * n_envs
        self.log = Counter()   # skill steps, switches, depth changes per skill

    # -- skills --
    def _state(self, i: int) -> dict:
        o = self.obs[i]
        return game_state(o["blstats"], o["chars"])

    def _pick(self, i: int, state: dict) -> None:
        if self.fixed_goal is not None:
            skill = SKILLS[0]
        elif self.chooser is not None:
            skill = self.chooser(i, {**state, "steps_in_skill": self.steps[i], "current_skill": self.skill[i],
                                     "level_explored": self.explored[i]})
        else:
            allowed = [s for s in self.skills if can_start(s, state)]
            skill = allowed[int(self.rng.integers(len(allowed)))]
        self.skill[i], self.start[i], self.steps[i] = skill, state, 0
        self.log[f"switches.{skill}"] += 1
        self.switches[i] += 1

    def observe(self, obs: list[dict]) -> tuple[torch.Tensor, ...]:
        self.obs = obs
        for i in range(self.n):
            if self.before[i] is None:
                self.before[i] = self._state(i)
                self._pick(i, self.before[i])
        bl = np.stack([o["blstats"] for o in obs])
        crops = np.stack([crop_chars(o["chars"], int(b[_BL.NLE_BL_X]), int(b[_BL.NLE_BL_Y]), self.crop)
                          for o, b in zip(obs, bl)])
        skill = torch.tensor([SKILL_ID[s] for s in self.skill], dtype=torch.long)
        return torch.from_numpy(crops.astype(np.int64)), torch.from_numpy(stats_features(bl)), skill

    # -- reward --
    def __call__(self, messages: list[str], r_ext: np.ndarray, dones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r_int = np.zeros(self.n)
        afters = [None if dones[i] else self._state(i) for i in range(self.n)]
        diffs = np.zeros((self.n, len(DIFF_STATS)), np.float32)
        for i, after in enumerate(afters):
            if after is not None:
                diffs[i] = [np.clip(after[s] - self.before[i][s], -1, 1) if s in self.keep else 0.0 for s in DIFF_STATS]
        if self.rewards is not None:
            by_goal: dict[str, list[int]] = {}
            for i in range(self.n):
                if messages[i] or diffs[i].any():
                    by_goal.setdefault(self.fixed_goal or self.skill[i], []).append(i)
            for goal, idx in by_goal.items():
                rhat = self.rewards.normalized(goal, [messages[i] for i in idx], diffs[idx])
                eps = self.rewards.threshold(goal)
                for i, r in zip(idx, rhat):
                    key = f"{goal}|{messages[i]}|{diffs[i].tolist()}"
                    self.counts[i][key] += 1
                    if r > eps:
                        r_int[i] = r / self.counts[i][key] ** self.beta
        for i in range(self.n):
            self.log[f"steps.{self.skill[i]}"] += 1
            self.steps[i] += 1
            if dones[i]:
                self.counts[i].clear()
                self.explored[i] = False
                self.before[i] = None   # the new episode's first observation: set up on the next observe
                continue
            after = afters[i]
            if after["depth"] != self.before[i]["depth"]:
                self.log[f"depth_changes.{self.skill[i]}"] += 1
                self.log[f"descents.{self.skill[i]}"] += int(after["depth"] > self.before[i]["depth"])
                self.explored[i] = False
            self.before[i] = after
            if self.fixed_goal is None and should_end(self.skill[i], self.start[i], after, self.steps[i], self.budget):
                if self.skill[i] == "discoverer" and after["depth"] == self.start[i]["depth"]:
                    self.explored[i] = True
                self._pick(i, after)
        return self.a_int * r_int, r_int

    def state_dict(self) -> dict:
        return {"skill": self.skill, "start": self.start, "before": self.before, "steps": self.steps,
                "explored": self.explored, "switches": self.switches,
                "counts": [dict(c) for c in self.counts], "log": dict(self.log),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.skill, self.start, self.before = state["skill"], state["start"], state["before"]
        self.steps, self.explored, self.switches = state["steps"], state["explored"], state["switches"]
        self.counts = [Counter(c) for c in state["counts"]]
        self.log = Counter(state["log"])
        self.rng.bit_generator.state = state["rng"]
