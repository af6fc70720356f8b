"""Shared by the NetHack reward models (Motif, MaestroMotif): the byte encoding of messages their
networks read, and the weighted normalisation statistics of a model's rewards over the dataset."""
from __future__ import annotations

import numpy as np
import torch

QUANTILES = [round(0.05 * k, 2) for k in range(1, 20)]


def encode(messages: list[str], max_len: int) -> torch.Tensor:
    """(n, max_len) byte codes, 0-padded (0 never occurs in a decoded NetHack message)."""
    out = np.zeros((len(messages), max_len), np.int64)
    for i, m in enumerate(messages):
        data = np.frombuffer(m.encode("latin-1", errors="replace")[:max_len], np.uint8)
        out[i, :len(data)] = data
    return torch.from_numpy(out)


def weighted_stats(values: np.ndarray, weights: np.ndarray,
                   quantiles: list[float] = QUANTILES) -> tuple[float, float, dict[str, float]]:
    """Mean, std and `quantiles` (of the normalised values) of a weighted sample."""
    w = weights / weights.sum()
    mean = float(np.sum(w * values))
    std = float(np.sqrt(np.sum(w * (values - mean) ** 2))) or 1.0
    z = (values - mean) / std
    order = np.argsort(z, kind="stable")
    cdf = np.cumsum(w[order])
    return mean, std, {f"{q:.2f}": float(z[order][min(np.searchsorted(cdf, q), len(z) - 1)]) for q in quantiles}
