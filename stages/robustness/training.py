"""Encoding examples and the classifier's training loop, shared by train and advtrain."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from stages.common import artifacts
from stages.robustness import model as M
from stages.robustness import tok as T
from stages.robustness.tasks import EXAMPLES_SCHEMA


@dataclass
class TrainConfig:
    """Hyperparameters of the (clean) classifier training (params `train`)."""

    steps: int  # optimizer steps
    batch_size: int  # prompts per step
    lr: float  # AdamW peak learning rate (linear warmup, cosine decay to 10%)
    warmup: int  # warmup steps
    weight_decay: float  # AdamW weight decay
    log_every: int  # steps between curve rows and resume saves
    max_grad_norm: float = 1.0  # gradient clipping
    lm_steps: int = 0  # language-model pretraining steps on the training texts before the classifier (0: none)


def load_split(path: str | Path, split: str) -> list[dict[str, Any]]:
    rows = artifacts.read_table(path, EXAMPLES_SCHEMA).to_pylist()
    return [r for r in rows if r["split"] == split]


def segments(tok: Tokenizer, row: dict[str, Any], where: str) -> dict[str, list[int]]:
    """The three segments of one example (see tok.py)."""
    return {
        "head": T.encode(tok, row["instructions"] + row["content"], where),
        "chunk": T.encode(tok, row["chunk"], where),
        "answer": T.encode(tok, row["answer"], where),
    }


def clean_ids(seg: dict[str, list[int]]) -> list[int]:
    return seg["head"] + seg["chunk"] + seg["answer"]


def attacked_ids(seg: dict[str, list[int]], attack: Sequence[int], position: str) -> list[int]:
    if position == "suffix":
        return seg["head"] + seg["chunk"] + list(attack) + seg["answer"]
    return seg["head"] + list(attack) + seg["chunk"] + seg["answer"]


def encode_split(tok: Tokenizer, rows: list[dict[str, Any]], path: str) -> list[dict[str, list[int]]]:
    """`segments` of every row; batch-encoded (tens of thousands of rows), with `segments`' error for a
    text the tokenizer cannot encode."""
    if not rows:
        return []
    unk = tok.token_to_id(T.UNK)
    texts = {
        "head": [r["instructions"] + r["content"] for r in rows],
        "chunk": [r["chunk"] for r in rows],
        "answer": [r["answer"] for r in rows],
    }
    ids = {k: [e.ids for e in tok.encode_batch(v, add_special_tokens=False)] for k, v in texts.items()}
    out = []
    for i, r in enumerate(rows):
        seg = {k: list(ids[k][i]) if texts[k][i] else [] for k in ids}
        if unk is not None and any(unk in v for v in seg.values()):
            seg = segments(tok, r, f"{path}: split {r['split']} example {r['example']}")  # raises, naming it
        out.append(seg)
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


class DivergedError(RuntimeError):
    """A NaN or infinite loss: the run stops at that step and no checkpoint is written."""


def train_step(
    model, opt, seqs: list[list[int]], labels: list[int], pad_id: int, lr: float, max_grad_norm: float, step: int
) -> float:
    model.train()
    for group in opt.param_groups:
        group["lr"] = lr
    logits = M.logits_of(model, seqs, pad_id)
    loss = F.cross_entropy(logits, torch.tensor(labels))
    if not torch.isfinite(loss):
        raise DivergedError(f"loss is {loss.item()} at step {step}")
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return float(loss.detach())


def lm_pretrain(model, seqs: list[list[int]], pad_id: int, cfg: TrainConfig, gen: torch.Generator) -> list[dict]:
    """`cfg.lm_steps` of next-token prediction on the (unlabelled) training texts, through a causal-LM
    head sharing `model`'s transformer; the head is dropped afterwards. Rows: step, loss, flops."""
    from transformers import GPTNeoXForCausalLM

    lm = GPTNeoXForCausalLM(model.config)
    lm.gpt_neox = model.gpt_neox  # shared: what the LM learns is what the classifier starts from
    lm_cfg = TrainConfig(**{**cfg.__dict__, "steps": cfg.lm_steps})
    opt = make_optimizer(lm, lm_cfg)
    config, rows, flops = M.config_dict(model), [], 0
    lm.train()
    for step in range(cfg.lm_steps):
        idx = torch.randint(len(seqs), (cfg.batch_size,), generator=gen).tolist()
        ids, mask = M.pad_batch([seqs[i] for i in idx], pad_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lm_cfg)
        loss = lm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        if not torch.isfinite(loss):
            raise DivergedError(f"language-model loss is {loss.item()} at pretraining step {step}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.max_grad_norm)
        opt.step()
        flops += M.lm_step_flops(config, cfg.batch_size, ids.shape[1])
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.lm_steps:
            rows.append({"step": step + 1, "loss": float(loss.detach()), "val_accuracy": math.nan, "flops": flops})
    return rows


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def accuracy(model, seqs: list[list[int]], labels: list[int], pad_id: int) -> float:
    pred = M.predict(model, seqs, pad_id)
    return float((pred == torch.tensor(labels)).float().mean())


def optimizer_tensors(opt: torch.optim.Optimizer, model) -> dict[str, torch.Tensor]:
    """AdamW moments by parameter name, for resume files."""
    out = {}
    for name, p in model.named_parameters():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                out[f"opt.{key}.{name}"] = torch.as_tensor(state[key]).reshape(-1) if key == "step" else state[key]
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, model, tensors: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if f"opt.exp_avg.{name}" in tensors:
            opt.state[p] = {
                "exp_avg": tensors[f"opt.exp_avg.{name}"].clone(),
                "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"].clone(),
                "step": tensors[f"opt.step.{name}"].reshape(()).clone(),
            }
