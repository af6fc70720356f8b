"""Stage advtrain: adversarial training in rounds, as in the reference (robust-llm).

Each round: attack `examples_per_round` fresh clean training examples with the current model (the
training attack, its iterations ramped linearly from `iterations_start` to `iterations_end` over the
rounds), add them with their true labels to a pool (the newest `pool_size` kept), draw a training set
of `examples_per_epoch` prompts with at most `max_adv_fraction` adversarial ones (sampled without
replacement, weights mixing recency exp(-decay * age) and loss rank, `loss_rank_weight`), and train one
epoch on it. The learning rate ramps up linearly over the first `warmup` steps: the optimizer starts
with empty moments, and a full-size first step knocks a trained classifier off (measured: README).
Defence FLOPs = the attacks' FLOPs + the training FLOPs. Resumable per finished round.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from stages.common import artifacts
from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.robustness import attacks as A
from stages.robustness import model as M
from stages.robustness import tok as T
from stages.robustness import training as TR
from stages.robustness.attack import attack_setup

log = logging.getLogger(__name__)
CURVE_COLUMNS = [
    "step",
    "round",
    "iterations",
    "attack_asr",
    "train_loss",
    "val_accuracy",
    "attack_flops",
    "train_flops",
    "defence_flops",
]


def sample_weights(ages: np.ndarray, losses: np.ndarray, decay: float, rank_weight: float) -> np.ndarray:
    """Probability of drawing each pool entry: recency and loss rank (higher loss, higher weight)."""
    recency = np.exp(-decay * ages)
    recency /= recency.sum()
    rank = np.argsort(np.argsort(losses)) + 1.0
    rank /= rank.sum()
    return (1 - rank_weight) * recency + rank_weight * rank


@torch.no_grad()
def pool_losses(model, seqs: list[list[int]], labels: list[int], pad: int) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(seqs), 64):
        logits = M.logits_of(model, seqs[i : i + 64], pad)
        out.append(F.cross_entropy(logits, torch.tensor(labels[i : i + 64]), reduction="none"))
    return torch.cat(out).numpy()


def run(ctx: StageContext) -> None:
    cfg = ctx.params["advtrain"]
    acfg = dict(ctx.params["attack"])
    tok = T.load(ctx.inputs["tokenizer"])
    pad = T.pad_id(tok)
    path = str(ctx.inputs["examples"])
    train_rows, val_rows = TR.load_split(path, "train"), TR.load_split(path, "val")
    segs = TR.encode_split(tok, train_rows, path)
    labels = [r["label"] for r in train_rows]
    xv = [TR.clean_ids(s) for s in TR.encode_split(tok, val_rows, path)]
    yv = [r["label"] for r in val_rows]
    config_json = json.loads(ctx.inputs["config"].read_text())
    model = M.from_state(config_json, artifacts.load_checkpoint(ctx.inputs["model"]))
    config = M.config_dict(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0)
    allowed, survives, init_id = attack_setup(tok, acfg["n_tokens"])
    order = np.random.default_rng(ctx.seed).permutation(len(segs))
    steps_per_round = math.ceil(cfg["examples_per_epoch"] / cfg["batch_size"])
    need = cfg["rounds"] * cfg["examples_per_round"]
    if need > len(segs):
        raise ValueError(
            f"advtrain: rounds x examples_per_round = {need} exceeds the {len(segs)} training examples in {path}"
        )

    resume = ResumeState.for_output(ctx, "model_out")
    start, pool, rows = (
        0,
        [],
        [
            {
                "step": 0,
                "round": 0,
                "iterations": 0,
                "attack_asr": math.nan,
                "train_loss": math.nan,
                "val_accuracy": TR.accuracy(model, xv, yv, pad),
                "attack_flops": 0,
                "train_flops": 0,
                "defence_flops": 0,
            }
        ],
    )
    saved = resume.load()
    if saved is not None:
        tensors, progress = saved
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        TR.load_optimizer_tensors(opt, model, tensors)
        start, pool, rows = progress["round"], progress["pool"], progress["rows"]
    for rnd in range(start + 1, cfg["rounds"] + 1):
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + rnd)
        rng = np.random.default_rng([ctx.seed, rnd])
        frac = (rnd - 1) / max(1, cfg["rounds"] - 1)
        iters = round(cfg["iterations_start"] + frac * (cfg["iterations_end"] - cfg["iterations_start"]))
        attack_cfg = A.AttackConfig(**{**acfg, "iterations": iters})
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        batch = order[(rnd - 1) * cfg["examples_per_round"] : rnd * cfg["examples_per_round"]]
        attack_flops, flipped = 0, []
        for i in batch.tolist():
            before, after = A.split_prompt(segs[i], attack_cfg.position)
            init = A.init_attack(attack_cfg.n_tokens, init_id, allowed, survives, gen)
            res = A.run_attack(
                model,
                before,
                after,
                labels[i],
                attack_cfg,
                allowed,
                init,
                survives,
                gen,
                where=f"advtrain attack n_tokens = {attack_cfg.n_tokens}",
            )
            attack_flops += res.flops
            flipped.append(res.success_iter > 0)
            pool.append({"example": i, "attack": res.attack_ids, "round": rnd})
        pool = pool[-cfg["pool_size"] :]
        for p in model.parameters():
            p.requires_grad_(True)

        adv_seqs = [TR.attacked_ids(segs[e["example"]], e["attack"], attack_cfg.position) for e in pool]
        adv_labels = [labels[e["example"]] for e in pool]
        n_adv = min(len(pool), int(cfg["max_adv_fraction"] * cfg["examples_per_epoch"]))
        weights = sample_weights(
            np.arange(len(pool))[::-1].astype(float),
            pool_losses(model, adv_seqs, adv_labels, pad),
            cfg["sampling_decay"],
            cfg["loss_rank_weight"],
        )
        pick_adv = rng.choice(len(pool), size=n_adv, replace=False, p=weights)
        pick_clean = rng.choice(len(segs), size=cfg["examples_per_epoch"] - n_adv, replace=False)
        seqs = [adv_seqs[j] for j in pick_adv] + [TR.clean_ids(segs[j]) for j in pick_clean]
        ys = [adv_labels[j] for j in pick_adv] + [labels[j] for j in pick_clean]
        perm = rng.permutation(len(seqs))
        train_flops, losses = 0, []
        for b in range(0, len(seqs), cfg["batch_size"]):
            idx = perm[b : b + cfg["batch_size"]]
            bs = [seqs[j] for j in idx]
            step = (rnd - 1) * steps_per_round + b // cfg["batch_size"]
            lr = cfg["lr"] * min(1.0, (step + 1) / (cfg["warmup"] + 1))
            losses.append(TR.train_step(model, opt, bs, [ys[j] for j in idx], pad, lr, 1.0, step))
            train_flops += M.train_step_flops(config, [len(s) for s in bs])
        prev = rows[-1]
        rows.append(
            {
                "step": rnd,
                "round": rnd,
                "iterations": iters,
                "attack_asr": sum(flipped) / len(flipped),
                "train_loss": float(np.mean(losses)),
                "val_accuracy": TR.accuracy(model, xv, yv, pad),
                "attack_flops": prev["attack_flops"] + attack_flops,
                "train_flops": prev["train_flops"] + train_flops,
                "defence_flops": prev["defence_flops"] + attack_flops + train_flops,
            }
        )
        log.info(
            "round %d: %d GCG iterations, batch ASR %.2f, %d adversarial of %d, val acc %.3f",
            rnd,
            iters,
            rows[-1]["attack_asr"],
            n_adv,
            len(seqs),
            rows[-1]["val_accuracy"],
        )
        resume.save(
            {**{f"model.{k}": v for k, v in model.state_dict().items()}, **TR.optimizer_tensors(opt, model)},
            {"round": rnd, "pool": pool, "rows": rows},
        )
    ctx.save_checkpoint("model_out", model.state_dict())
    with open(ctx.outputs["config_out"], "w") as fh:
        json.dump(config_json, fh, indent=1, sort_keys=True)
    ctx.write_curve("curve", rows, CURVE_COLUMNS)
    ctx.write_json(
        "metrics",
        {"rounds": cfg["rounds"], "defence_flops": rows[-1]["defence_flops"], "val_accuracy": rows[-1]["val_accuracy"]},
    )
    resume.clear()
