"""Per-skill reward models (stage 4): r_skill(message, clipped stat differences) -> scalar, one network per
goal (the skills and the single-agent tasks), all in one safetensors file under `<goal>.` prefixes.

Network: the message's bytes (padded to `max_len`) -> embedding -> 1D convolution -> max over positions,
concatenated with the stat differences clipped to [-1, 1] (only those in `diff_stats` survive; the
reference keeps depth alone) -> MLP -> scalar. Loss: Bradley-Terry, p(a > b) = sigmoid(r_a - r_b), with
ties as 0.5 and unknown labels left out. Held-out pairs are split by caption: a `heldout_fraction` of the
pooled captions is held out, held-out pairs use only those, training pairs never see them, mixed pairs
are dropped. Normalisation: mean and std of r over every captioned step of the dataset, then the
quantiles of the normalised reward; the RL threshold is the 0.95 quantile for the first skill and 0.85
for the others (`thresholds`). Probes: hand-written (message, diffs) pairs checked against each skill's
description (stored in metrics, turned into claims by the aggregate).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from stages.common.artifacts import load_checkpoint, read_table
from stages.common.stage import StageContext
from stages.maestromotif.annotate import ANNOTATIONS_SCHEMA
from stages.maestromotif.captions import CAPTIONS_SCHEMA, PAIRS_SCHEMA
from stages.maestromotif.skills import DIFF_STATS
from stages.rl.message_reward import encode, weighted_stats

log = logging.getLogger(__name__)

# (name, message, diffs): compared within each message, so only the stat change differs
PROBE_MESSAGES = ["", "You see here a dagger.", "It's a wall.", "You hear some noises in the distance.",
                  "You climb up the stairs.", "You kill the newt!", "The door opens.", "You feel hungry."]
DOWN, UP, SAME = {"depth": 1}, {"depth": -1}, {}
# each skill's expected preferences: (better diffs, worse diffs, better message, worse message)
EXPECTED = {
    "descender": [(DOWN, SAME, None, None), (DOWN, UP, None, None)],
    "ascender": [(UP, SAME, None, None), (UP, DOWN, None, None)],
    "discoverer": [(SAME, DOWN, "$ - 12 gold pieces.", None), (SAME, DOWN, "You kill the newt!", None),
                   ({"gold": 1}, SAME, None, None)],
}


class SkillRewardNet(nn.Module):
    def __init__(self, max_len: int, embed_dim: int, channels: int, kernel: int, hidden: int):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(256, embed_dim, padding_idx=0)
        self.conv = nn.Conv1d(embed_dim, channels, kernel, padding=kernel // 2)
        self.head = nn.Sequential(nn.Linear(channels + len(DIFF_STATS), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @classmethod
    def from_params(cls, cfg: dict) -> SkillRewardNet:
        return cls(cfg["max_len"], cfg["embed_dim"], cfg["channels"], cfg["kernel"], cfg["hidden"])

    def forward(self, codes: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
        mask = (codes != 0)[:, None, :]
        h = torch.relu(self.conv(self.embed(codes).transpose(1, 2))).masked_fill(~mask, float("-inf")).amax(2)
        h = torch.where(mask.any(2), h, torch.zeros_like(h))   # empty message: no message feature
        return self.head(torch.cat([h, diffs], 1))[:, 0]


def diff_matrix(d: dict[str, np.ndarray], keep: list[str]) -> np.ndarray:
    return np.stack([np.clip(d[s], -1, 1) * (s in keep) for s in DIFF_STATS], 1).astype(np.float32)


def train_goal(codes: torch.Tensor, diffs: torch.Tensor, a: np.ndarray, b: np.ndarray, labels: np.ndarray,
               heldout_caption: np.ndarray, model_cfg: dict, cfg: dict, seed: int) -> tuple[SkillRewardNet, dict]:
    use = labels >= 0
    y = np.select([labels == 1, labels == 2], [1.0, 0.0], 0.5).astype(np.float32)   # P(a better)
    test = use & heldout_caption[a] & heldout_caption[b]
    train = use & ~heldout_caption[a] & ~heldout_caption[b]
    torch.manual_seed(seed)
    net = SkillRewardNet.from_params(model_cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    idx = np.flatnonzero(train)
    if len(idx) == 0:
        raise ValueError("no training pairs left after the held-out split by caption")
    gen = np.random.default_rng(seed)
    at, bt, yt = torch.from_numpy(a.copy()), torch.from_numpy(b.copy()), torch.from_numpy(y)
    for _ in range(cfg["epochs"]):
        for start in range(0, len(idx), cfg["batch_size"]):
            if start == 0:
                order = idx[gen.permutation(len(idx))]
            batch = torch.from_numpy(order[start:start + cfg["batch_size"]])
            # each distinct caption of the batch through the network once
            uniq, inv = torch.unique(torch.cat([at[batch], bt[batch]]), return_inverse=True)
            r = net(codes[uniq], diffs[uniq])
            loss = F.binary_cross_entropy_with_logits(r[inv[:len(batch)]] - r[inv[len(batch):]], yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        r = net(codes, diffs).numpy()

    def agree(mask):
        decided = mask & (labels > 0)
        if not decided.any():
            return float("nan"), 0
        pred = np.where(r[a] > r[b], 1, 2)
        return float(np.mean(pred[decided] == labels[decided])), int(decided.sum())

    (held, n_held), (tr, n_tr) = agree(test), agree(train)
    return net, {"heldout_agreement": held, "heldout_decided": n_held, "train_agreement": tr,
                 "train_decided": n_tr, "train_pairs": int(train.sum()), "heldout_pairs": int(test.sum()),
                 "ties_used": int(np.sum(train & (labels == 0)))}


def probe_comparisons(score, skill: str, keep: list[str]) -> list[dict]:
    """Each expected preference of `skill`, checked on every probe message: rows (better, worse, ok)."""
    rows = []
    for better, worse, msg_better, msg_worse in EXPECTED.get(skill, []):
        for m in PROBE_MESSAGES:
            mb, mw = msg_better or m, msg_worse or m
            db = diff_matrix({s: np.array([better.get(s, 0)]) for s in DIFF_STATS}, keep)
            dw = diff_matrix({s: np.array([worse.get(s, 0)]) for s in DIFF_STATS}, keep)
            rb, rw = score([mb], db)[0], score([mw], dw)[0]
            rows.append({"better": f"{mb!r} {better}", "worse": f"{mw!r} {worse}", "ok": bool(rb > rw),
                         "margin": float(rb - rw)})
    return rows


class SkillRewards:
    """All goals' reward models for RL and evaluation: `normalized(goal, messages, diffs)` with a cache
    keyed by (message, diffs), and each goal's threshold."""

    def __init__(self, nets: dict[str, SkillRewardNet], stats: dict):
        self.nets, self.stats = nets, stats
        self.keep = stats["diff_stats"]
        self.cache: dict[tuple, float] = {}

    @classmethod
    def load(cls, model_path: str | Path, stats_path: str | Path) -> SkillRewards:
        stats = json.loads(Path(stats_path).read_text())
        tensors = load_checkpoint(model_path)
        nets = {}
        for goal in stats["goals"]:
            net = SkillRewardNet.from_params(stats["model"])
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == goal})
            nets[goal] = net.eval()
        return cls(nets, stats)

    def threshold(self, goal: str) -> float:
        g = self.stats["goals"][goal]
        return g["quantiles"][f"{g['threshold_quantile']:.2f}"]

    @torch.no_grad()
    def normalized(self, goal: str, messages: list[str], diffs: np.ndarray) -> np.ndarray:
        keys = [(goal, m, tuple(d)) for m, d in zip(messages, diffs.tolist())]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            codes = encode([messages[i] for i in missing], self.stats["model"]["max_len"])
            r = self.nets[goal](codes, torch.from_numpy(np.asarray(diffs[missing], np.float32))).numpy()
            g = self.stats["goals"][goal]
            for i, v in zip(missing, r):
                self.cache[keys[i]] = float((v - g["mean"]) / g["std"])
        return np.array([self.cache[k] for k in keys], np.float32)

    def fingerprint(self) -> str:
        import hashlib
        digest = hashlib.sha256(json.dumps(self.stats, sort_keys=True).encode())
        for goal in sorted(self.nets):
            for name, t in sorted(self.nets[goal].state_dict().items()):
                digest.update(f"{goal}.{name}".encode() + t.numpy().tobytes())
        return digest.hexdigest()[:16]


def run(ctx: StageContext) -> None:
    model_cfg, cfg = ctx.params["model"], ctx.params["train"]
    captions = read_table(ctx.inputs["captions"], CAPTIONS_SCHEMA)
    pairs = read_table(ctx.inputs["pairs"], PAIRS_SCHEMA)
    ann = read_table(ctx.inputs["annotations"], ANNOTATIONS_SCHEMA)
    keep = list(cfg["diff_stats"])
    d = {s: captions.column(f"d_{s}").to_numpy() for s in DIFF_STATS}
    codes = encode(captions.column("message").to_pylist(), model_cfg["max_len"])
    diffs = torch.from_numpy(diff_matrix(d, keep))
    pooled = captions.column("pooled").to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(cfg["seed"])
    pool = np.flatnonzero(pooled)   # exactly round(fraction x pooled) captions are held out
    heldout_caption = np.zeros(captions.num_rows, bool)
    heldout_caption[rng.choice(pool, size=int(round(cfg["heldout_fraction"] * len(pool))), replace=False)] = True
    counts = captions.column("count").to_numpy().astype(np.float64)
    a, b = pairs.column("a").to_numpy(), pairs.column("b").to_numpy()
    goal_names = list(dict.fromkeys(ann.column("goal").to_pylist()))
    tensors, stats, metrics = {}, {"model": model_cfg, "diff_stats": keep, "goals": {}}, {}
    for k, goal in enumerate(goal_names):
        sel = ann.filter(pc.equal(ann.column("goal"), goal)).sort_by("pair_id")
        labels = sel.column("label").to_numpy().astype(np.int64)
        labels[sel.column("masked").to_numpy(zero_copy_only=False)] = -1
        net, result = train_goal(codes, diffs, a, b, labels, heldout_caption, model_cfg, cfg, cfg["seed"] + k)
        with torch.no_grad():
            r = net(codes, diffs).numpy().astype(np.float64)
        mean, std, quantiles = weighted_stats(r, counts)   # over every captioned step (counts)
        q = cfg["thresholds"]["first"] if k == 0 else cfg["thresholds"]["others"]
        stats["goals"][goal] = {"mean": mean, "std": std, "quantiles": quantiles, "threshold_quantile": q}
        tensors |= {f"{goal}.{n}": t for n, t in net.state_dict().items()}
        probes = probe_comparisons(lambda m, dd, net=net: net(encode(m, model_cfg["max_len"]),
                                                               torch.from_numpy(dd)).detach().numpy(), goal, keep)
        z = (r - mean) / std
        top = np.argsort(-z)[:5]
        metrics[goal] = {**result, "probes": probes, "probes_ok": sum(p["ok"] for p in probes),
                         "probes_n": len(probes),
                         "top_captions": [captions.column("caption")[int(i)].as_py() for i in top]}
        log.info("%s: held-out agreement %.3f (%d decided), probes %d/%d", goal, result["heldout_agreement"],
                 result["heldout_decided"], metrics[goal]["probes_ok"], len(probes))
    ctx.save_checkpoint("model", tensors)
    ctx.write_json("stats", stats)
    ctx.write_json("metrics", {"heldout_captions": int(heldout_caption.sum()), "goals": metrics})
