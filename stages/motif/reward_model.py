"""r_phi(caption): a character-level CNN over the message bytes -> MLP -> scalar (the paper's encoder
reads the 256-byte message; here it is cut at `max_len` characters, which keeps every message we have
seen whole). `RewardModel` wraps the network with the normalization of the reward stage and a cache of
message -> r_phi, because the RL loop asks for the same few hundred messages millions of times.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.common.artifacts import load_checkpoint
from stages.rl.message_reward import encode


def trim(codes: torch.Tensor) -> torch.Tensor:
    """Cut a padded batch to its longest message (cheaper training; same rewards up to rounding)."""
    return codes[:, :max(int((codes != 0).sum(1).max()), 1)] if len(codes) else codes


class CaptionRewardNet(nn.Module):
    """Embedding of the 256 byte values -> two 1D convolutions -> max over positions -> MLP -> scalar."""

    def __init__(self, max_len: int = 128, embed_dim: int = 32, channels: int = 64, kernel: int = 5,
                 hidden: int = 64):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(256, embed_dim, padding_idx=0)
        self.conv1 = nn.Conv1d(embed_dim, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @classmethod
    def from_params(cls, cfg: dict) -> CaptionRewardNet:
        return cls(cfg["max_len"], cfg["embed_dim"], cfg["channels"], cfg["kernel"], cfg["hidden"])

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        # padding is zeroed after every layer: a message's reward does not depend on how much padding
        # its batch carries (up to float rounding, which depends on the batch's shape)
        mask = (codes != 0)[:, None, :]                                   # (n, 1, L)
        h = torch.relu(self.conv1(self.embed(codes).transpose(1, 2))) * mask
        h = torch.relu(self.conv2(h)).masked_fill(~mask, float("-inf")).amax(dim=2)
        h = torch.where(mask.any(2), h, torch.zeros_like(h))             # empty message: no feature
        return self.head(h)[:, 0]


class RewardModel:
    """Batched, cached r_phi for the RL loop: `score(messages)` -> raw r_phi, `normalized(messages)` ->
    (r_phi - mean) / std with the reward stage's statistics.

    Uncached messages go through the network in chunks of exactly `batch_size` rows of `max_len`
    codes (short chunks are padded with empty rows): with one fixed input shape a message's score is
    the same float whatever else is in its chunk, so rewards, thresholds and RL runs do not depend on
    the cache's history. The cache maps message -> score; past `cache_size` entries the oldest
    entries this call does not need are dropped."""

    def __init__(self, net: CaptionRewardNet, mean: float = 0.0, std: float = 1.0,
                 quantiles: dict[str, float] | None = None, cache_size: int = 100_000,
                 batch_size: int = 16):
        self.net = net.eval()
        self.mean, self.std, self.quantiles = float(mean), float(std), dict(quantiles or {})
        self.cache_size, self.batch_size = cache_size, batch_size
        self.cache: dict[str, float] = {}

    @classmethod
    def load(cls, model_path: str | Path, stats_path: str | Path, **kwargs) -> RewardModel:
        stats = json.loads(Path(stats_path).read_text())
        net = CaptionRewardNet.from_params(stats["model"])
        net.load_state_dict(load_checkpoint(model_path, expected_keys=list(net.state_dict())))
        return cls(net, stats["mean"], stats["std"], stats["quantiles"], **kwargs)

    def fingerprint(self) -> str:
        """Hash of the weights and the normalization (identifies the reward a run was trained with)."""
        digest = hashlib.sha256(json.dumps([self.mean, self.std, self.quantiles], sort_keys=True).encode())
        for name, tensor in sorted(self.net.state_dict().items()):
            digest.update(name.encode() + tensor.numpy().tobytes())
        return digest.hexdigest()[:16]

    def threshold(self, quantile: float) -> float:
        """eps: the `quantile` of the normalized reward over the dataset's messages."""
        key = f"{quantile:.2f}"
        if key not in self.quantiles:
            raise ValueError(f"threshold quantile {quantile} not stored by the reward stage "
                             f"(available: {sorted(self.quantiles)})")
        return self.quantiles[key]

    @torch.no_grad()
    def score(self, messages: list[str]) -> np.ndarray:
        needed = dict.fromkeys(messages)
        missing = [m for m in needed if m not in self.cache]
        overflow = len(self.cache) + len(missing) - self.cache_size
        if overflow > 0:   # drop the oldest entries this call does not need
            victims = [k for k in self.cache if k not in needed][:max(overflow, len(self.cache) // 4)]
            for key in victims:
                del self.cache[key]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            padded = chunk + [""] * (self.batch_size - len(chunk))
            self.cache.update(zip(chunk, self.net(encode(padded, self.net.max_len)).tolist()))
        return np.asarray([self.cache[m] for m in messages], np.float32)

    def normalized(self, messages: list[str]) -> np.ndarray:
        return ((self.score(messages) - self.mean) / self.std).astype(np.float32)
