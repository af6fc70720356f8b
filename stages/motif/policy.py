"""The RL agent's network: a crop of the map characters around the hero plus a few status numbers ->
policy logits and a value. Small on purpose (CPU): the paper's agent is a 512-unit GRU over the full
screen, messages included; here a feed-forward MLP sees a `crop` x `crop` window and eight stats.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from nle import nethack
from torch import nn

from stages.common.artifacts import load_checkpoint

N_STATS = 8
_BL = nethack


def stats_features(blstats: np.ndarray) -> np.ndarray:
    """(n, 27) blstats -> (n, 8) roughly unit-scale features."""
    bl = blstats.astype(np.float32)
    hp_max = np.maximum(bl[:, _BL.NLE_BL_HPMAX], 1.0)
    return np.stack([
        bl[:, _BL.NLE_BL_HP] / hp_max,
        hp_max / 50.0,
        bl[:, _BL.NLE_BL_DEPTH] / 10.0,
        np.log1p(np.maximum(bl[:, _BL.NLE_BL_GOLD], 0)) / 5.0,
        bl[:, _BL.NLE_BL_XP] / 10.0,
        bl[:, _BL.NLE_BL_HUNGER] / 4.0,
        np.log1p(np.maximum(bl[:, _BL.NLE_BL_TIME], 0)) / 10.0,
        bl[:, _BL.NLE_BL_AC] / 10.0,
    ], axis=1)


def crop_chars(chars: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """size x size window of the (21, 79) map characters centred on (x, y), blank (' ') outside."""
    r = size // 2
    pad = np.full((chars.shape[0] + 2 * r, chars.shape[1] + 2 * r), 32, np.uint8)
    pad[r:r + chars.shape[0], r:r + chars.shape[1]] = chars
    return pad[y:y + size, x:x + size]


def features(obs: list[dict], crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch the observations of several envs into (crops (n, crop, crop) long, stats (n, 8) float)."""
    bl = np.stack([o["blstats"] for o in obs])
    crops = np.stack([crop_chars(o["chars"], int(b[_BL.NLE_BL_X]), int(b[_BL.NLE_BL_Y]), crop)
                      for o, b in zip(obs, bl)])
    return torch.from_numpy(crops.astype(np.int64)), torch.from_numpy(stats_features(bl))


def _init(layer: nn.Module, std: float = 2 ** 0.5) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class Agent(nn.Module):
    """Actor-critic: each crop character embedded, flattened with the stats, two-layer MLP, two heads.
    (A conv encoder of the same crop cost 3-4x more per update on CPU for no gain at this budget.)"""

    def __init__(self, n_actions: int, crop: int = 9, embed_dim: int = 8, hidden: int = 256):
        super().__init__()
        self.crop = crop
        self.embed = nn.Embedding(256, embed_dim)
        self.trunk = nn.Sequential(_init(nn.Linear(crop * crop * embed_dim + N_STATS, hidden)), nn.ReLU(),
                                   _init(nn.Linear(hidden, hidden)), nn.ReLU())
        self.actor = _init(nn.Linear(hidden, n_actions), 0.01)
        self.critic = _init(nn.Linear(hidden, 1), 1.0)

    @classmethod
    def from_params(cls, n_actions: int, cfg: dict) -> Agent:
        return cls(n_actions, cfg["crop"], cfg["embed_dim"], cfg["hidden"])

    def hidden(self, crops: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.trunk(torch.cat([self.embed(crops).flatten(1), stats], dim=1))

    def value(self, crops: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return self.critic(self.hidden(crops, stats))[:, 0]

    def forward(self, crops: torch.Tensor, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(crops, stats)
        return self.actor(h), self.critic(h)[:, 0]


def load_agent(path: str | Path, n_actions: int, cfg: dict) -> Agent:
    agent = Agent.from_params(n_actions, cfg)
    agent.load_state_dict(load_checkpoint(path, expected_keys=list(agent.state_dict())))
    agent.eval()
    return agent


class PolicyActor:
    """Callable obs list -> actions for collection and evaluation: a trained agent sampling from its
    policy with its own generator, or uniform random actions when `agent` is None."""

    def __init__(self, agent: Agent | None, n_actions: int, seed: int, crop: int = 9):
        self.agent, self.n_actions, self.crop = agent, n_actions, crop
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def __call__(self, obs: list[dict]) -> np.ndarray:
        if self.agent is None:
            return self.rng.integers(self.n_actions, size=len(obs))
        logits, _ = self.agent(*features(obs, self.agent.crop))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.gen)[:, 0].numpy()
