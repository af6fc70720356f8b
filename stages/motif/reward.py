"""Train r_phi(caption) on the annotator's preferences (method note, stage 4).

Loss (Bradley-Terry / soft cross-entropy): p = softmax([r(a), r(b)]), target [1 - y, y] with y = 0 when a
is better (label 1), 1 when b is better (label 2), 0.5 for a tie (label 0); unknown labels (-1) and
masked rows are skipped. Pairs are split `heldout_fraction` / rest (paper: 80/20) with the seed; the
reported agreement is on held-out pairs the annotator did not call a tie. That split is by pair: with a few
hundred distinct captions in thousands of pairs, every held-out caption was also seen in training. So a
second model of the same architecture and training is fitted on a split by CAPTION (`caption_split`):
`caption_heldout_fraction` of the distinct captions are held out (seed `caption_split_seed`), it trains
only on pairs whose two captions are both kept and is scored on pairs whose two captions are both held
out (pairs straddling the split are used by neither). That model only measures generalization to unseen
captions; the model the RL stages use is the by-pair one.

Outputs: the network (`model`), `stats` (architecture, mean and std of r_phi over the dataset's non-empty
messages weighted by how often they occur, and the 5%..95% quantiles of the normalized reward: the RL
threshold eps is one of them), `messages` (the most and least rewarded distinct messages), `metrics`
(agreement, counts, the normalized reward of a few hand-written probe captions) and `curve` (per epoch).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.motif.pairs import PAIRS_SCHEMA
from stages.motif.reward_model import CaptionRewardNet, encode, trim
from stages.rl.message_reward import weighted_stats

log = logging.getLogger(__name__)

ANNOTATIONS_SCHEMA = pa.schema([("pair_id", pa.int64()), ("label", pa.int8()), ("masked", pa.bool_())])
STEPS_COLUMNS = pa.schema([("message", pa.string())])
MESSAGES_SCHEMA = pa.schema([("kind", pa.string()), ("rank", pa.int32()), ("message", pa.string()),
                             ("count", pa.int64()), ("reward", pa.float32()),
                             ("reward_normalized", pa.float32())])
# Hand-written captions: the method note's "ranked sensibly" check (progress above bumping into walls).
PROBES_GOOD = ["You kill the newt!", "$ - 3 gold pieces.", "There is a staircase down here.",
               "Welcome to experience level 2."]
PROBES_BAD = ["It's a wall.", "It's solid stone.", "You can't go down here."]
CURVE_COLUMNS = ("step", "train_loss", "heldout_loss", "heldout_agreement")


def soft_targets(labels: np.ndarray) -> np.ndarray:
    """Annotator label -> y = P(b is better): 1 -> 0, 2 -> 1, 0 (tie) -> 0.5."""
    return np.select([labels == 1, labels == 2], [0.0, 1.0], 0.5).astype(np.float32)


def preference_loss(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax([r_a, r_b]) against [1 - y, y]."""
    return F.binary_cross_entropy_with_logits(r_a - r_b, 1.0 - y)


def agreement(r_a: np.ndarray, r_b: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of non-tie pairs where the model prefers the caption the annotator preferred."""
    decided = (labels == 1) | (labels == 2)
    if not decided.any():
        return float("nan")
    pred = np.where(r_a > r_b, 1, np.where(r_b > r_a, 2, 0))
    return float(np.mean(pred[decided] == labels[decided]))


@torch.no_grad()
def score_all(net: CaptionRewardNet, codes: torch.Tensor, batch: int = 1024) -> np.ndarray:
    net.eval()
    out = np.concatenate([net(trim(codes[i:i + batch])).numpy() for i in range(0, len(codes), batch)]) \
        if len(codes) else np.zeros(0, np.float32)
    net.train()
    return out


def caption_split(msg_a: list[str], msg_b: list[str], fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """Hold out round(fraction * distinct captions) captions, drawn with `seed`: (indices of the pairs whose
    two captions are both kept, indices of the pairs whose two captions are both held out, the held-out
    captions). A pair with one caption on each side is in neither."""
    vocab = sorted(set(msg_a) | set(msg_b))
    n_out = min(max(1, int(round(fraction * len(vocab)))), len(vocab) - 1) if len(vocab) > 1 else 0
    held = {vocab[i] for i in np.random.default_rng(seed).permutation(len(vocab))[:n_out]}
    out_a = np.array([m in held for m in msg_a], bool)
    out_b = np.array([m in held for m in msg_b], bool)
    return np.flatnonzero(~out_a & ~out_b), np.flatnonzero(out_a & out_b), held


def train_reward_model(msg_a: list[str], msg_b: list[str], labels: np.ndarray, model_cfg: dict,
                       cfg: dict, seed: int, progress=lambda it, **kw: it,
                       split: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> tuple[CaptionRewardNet, dict, list[dict]]:
    """Fit r_phi on labelled pairs (labels in {0, 1, 2}); returns the net, held-out results, curve.
    `split` = (train indices, held-out indices); None draws `heldout_fraction` of the pairs with `seed`."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        raise ValueError(f"{len(labels)} usable labelled pair(s): too few to train a reward model")
    vocab = sorted(set(msg_a) | set(msg_b))
    index = {m: i for i, m in enumerate(vocab)}
    codes = encode(vocab, model_cfg["max_len"])
    ia = np.array([index[m] for m in msg_a])
    ib = np.array([index[m] for m in msg_b])
    y = soft_targets(labels)
    if split is None:
        perm = np.random.default_rng(seed).permutation(len(labels))
        n_test = min(max(1, int(round(cfg["heldout_fraction"] * len(labels)))), len(labels) - 1)
        test, train = perm[:n_test], perm[n_test:]
    else:
        train, test = (np.asarray(s, np.int64) for s in split)
        if len(train) == 0:
            raise ValueError("the split leaves no training pair")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = CaptionRewardNet.from_params(model_cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    ia_t, ib_t, y_t = torch.from_numpy(ia), torch.from_numpy(ib), torch.from_numpy(y)
    curve = []
    for epoch in progress(range(1, cfg["epochs"] + 1), total=cfg["epochs"], desc="reward"):
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        losses = []
        for start in range(0, len(order), cfg["batch_size"]):
            b = order[start:start + cfg["batch_size"]]
            # encode each distinct caption of the batch once
            uniq, inv = torch.unique(torch.cat([ia_t[b], ib_t[b]]), return_inverse=True)
            r = net(trim(codes[uniq]))
            loss = preference_loss(r[inv[:len(b)]], r[inv[len(b):]], y_t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        r_all = score_all(net, codes)
        held_loss = math.nan if len(test) == 0 else preference_loss(
            torch.from_numpy(r_all[ia[test]]), torch.from_numpy(r_all[ib[test]]), y_t[test]).item()
        curve.append({"step": epoch, "train_loss": float(np.mean(losses)), "heldout_loss": held_loss,
                      "heldout_agreement": agreement(r_all[ia[test]], r_all[ib[test]], labels[test])})
    r_all = score_all(net, codes)
    result = {"n_train": int(len(train)), "n_heldout": int(len(test)),
              "heldout_decided": int(np.isin(labels[test], [1, 2]).sum()),
              "heldout_agreement": agreement(r_all[ia[test]], r_all[ib[test]], labels[test]),
              "train_agreement": agreement(r_all[ia[train]], r_all[ib[train]], labels[train]),
              "heldout_loss": curve[-1]["heldout_loss"], "distinct_captions": len(vocab)}
    return net, result, curve


def run(ctx: StageContext) -> None:
    model_cfg, cfg = ctx.params["model"], ctx.params["train"]
    pairs = read_table(ctx.inputs["pairs"], PAIRS_SCHEMA)
    ann = read_table(ctx.inputs["annotations"], ANNOTATIONS_SCHEMA)
    joined = pairs.select(["pair_id", "message_a", "message_b"]).join(
        ann.select(["pair_id", "label", "masked"]), "pair_id", join_type="inner").sort_by("pair_id")
    if joined.num_rows != pairs.num_rows:
        log.warning("%d of %d pairs have no annotation", pairs.num_rows - joined.num_rows, pairs.num_rows)
    labels = joined.column("label").to_numpy().astype(np.int64)
    usable = (~joined.column("masked").to_numpy(zero_copy_only=False)) & np.isin(labels, [0, 1, 2])
    if usable.sum() < 2:
        raise ValueError(f"{ctx.inputs['annotations']}: only {int(usable.sum())} usable (unmasked, known) "
                         f"labels among {joined.num_rows} pairs")
    msg_a = [m for m, u in zip(joined.column("message_a").to_pylist(), usable) if u]
    msg_b = [m for m, u in zip(joined.column("message_b").to_pylist(), usable) if u]
    net, result, curve = train_reward_model(msg_a, msg_b, labels[usable], model_cfg, cfg, cfg["seed"],
                                            ctx.progress)
    by_caption = caption_split_result(msg_a, msg_b, labels[usable], model_cfg, cfg)

    # normalization statistics over the messages of the collected dataset
    messages = [m for m in read_table(ctx.inputs["steps"], STEPS_COLUMNS).column("message").to_pylist() if m]
    distinct, counts = np.unique(np.asarray(messages, dtype=str), return_counts=True)
    r = score_all(net, encode(distinct.tolist(), model_cfg["max_len"])).astype(np.float64)
    mean, std, quantiles = weighted_stats(r, counts.astype(np.float64))
    z = (r - mean) / std
    ctx.save_checkpoint("model", net.state_dict())
    ctx.write_json("stats", {"model": model_cfg, "mean": mean, "std": std, "quantiles": quantiles,
                             "n_messages": int(counts.sum()), "n_distinct": int(len(distinct))})

    order = np.argsort(-z, kind="stable")
    k = min(cfg["report_top"], len(order))
    rows = [{"kind": kind, "rank": rank, "message": str(distinct[i]), "count": int(counts[i]),
             "reward": float(r[i]), "reward_normalized": float(z[i])}
            for kind, sel in (("top", order[:k]), ("bottom", order[::-1][:k]))
            for rank, i in enumerate(sel, 1)]
    ctx.write_table("messages", pa.Table.from_pylist(rows, MESSAGES_SCHEMA), MESSAGES_SCHEMA)

    probe_r = score_all(net, encode(PROBES_GOOD + PROBES_BAD, model_cfg["max_len"]))
    probes = {m: float((v - mean) / std) for m, v in zip(PROBES_GOOD + PROBES_BAD, probe_r)}
    good = np.mean([probes[m] for m in PROBES_GOOD])
    bad = np.mean([probes[m] for m in PROBES_BAD])
    labels_used = labels[usable]
    metrics = {**result, "pairs": int(joined.num_rows), "usable_pairs": int(usable.sum()),
               "label_counts": {name: int(np.sum(labels == v)) for name, v in
                                (("a_better", 1), ("b_better", 2), ("tie", 0), ("unknown", -1))},
               "masked": int(joined.num_rows - usable.sum()), "ties_used": int(np.sum(labels_used == 0)),
               "caption_split": by_caption, "mean": mean, "std": std, "probe_rewards_normalized": probes,
               "probes_progress_above_walls": bool(good > bad)}
    ctx.write_json("metrics", metrics)
    ctx.write_curve("curve", curve, CURVE_COLUMNS)
    log.info("reward model: held-out agreement %.3f on %d decided pairs (train %.3f); top: %s; "
             "bottom: %s", result["heldout_agreement"], result["heldout_decided"],
             result["train_agreement"], [rows[i]["message"] for i in range(min(3, k))],
             [rows[k + i]["message"] for i in range(min(3, k))])
    log.info("split by caption: agreement %s on %s decided pairs of unseen captions (%s training pairs)",
             by_caption["heldout_agreement"], by_caption["heldout_decided"], by_caption["n_train"])


def caption_split_result(msg_a: list[str], msg_b: list[str], labels: np.ndarray, model_cfg: dict,
                         cfg: dict) -> dict:
    """Train a model on the pairs of kept captions, score it on the pairs of held-out captions (see the
    module docstring); agreement is None when no held-out pair was decided."""
    train, test, held = caption_split(msg_a, msg_b, cfg["caption_heldout_fraction"], cfg["caption_split_seed"])
    out = {"fraction": cfg["caption_heldout_fraction"], "seed": cfg["caption_split_seed"],
           "heldout_captions": len(held), "distinct_captions": len(set(msg_a) | set(msg_b)),
           "n_train": int(len(train)), "n_heldout": int(len(test)), "straddling_pairs":
           int(len(labels) - len(train) - len(test)), "heldout_decided": 0, "heldout_agreement": None,
           "train_agreement": None}
    if len(train) < 2 or len(test) == 0:
        log.warning("caption split: %d training and %d held-out pairs, too few to measure", len(train), len(test))
        return out
    _, result, _ = train_reward_model(msg_a, msg_b, labels, model_cfg, cfg, cfg["seed"], split=(train, test))
    out.update({k: result[k] if math.isfinite(result[k]) else None
                for k in ("heldout_decided", "heldout_agreement", "train_agreement")})
    return out
