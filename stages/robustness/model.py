"""The model family: transformers' GPT-NeoX (Pythia's architecture) with a sequence-classification head,
batching of segment-encoded prompts, clean evaluation, and an analytic FLOP count.

A size is a dict of params (`hidden`, `layers`, `heads`, `pretrained`); with `pretrained` set to a local
folder holding a Pythia checkpoint the same code loads it (`from_pretrained`, never the hub) instead of
building a fresh model. The FLOP count is the matmul count torch.utils.flop_counter reports (tests check
the two agree): forward 2 x (multiply-adds) of every linear layer and of attention.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

NUM_LABELS = 2


def build(
    size: Mapping[str, Any], vocab_size: int, pad_id: int, max_positions: int
) -> GPTNeoXForSequenceClassification:
    """A fresh classifier of this size (seeded by the caller's torch RNG), or the pretrained one."""
    if size.get("pretrained"):
        model = GPTNeoXForSequenceClassification.from_pretrained(
            size["pretrained"], num_labels=NUM_LABELS, local_files_only=True
        )
        model.config.pad_token_id = pad_id
        return model
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        intermediate_size=4 * size["hidden"],
        max_position_embeddings=max_positions,
        rotary_pct=size.get("rotary_pct", 1.0),
        use_parallel_residual=True,
        tie_word_embeddings=False,
        num_labels=NUM_LABELS,
        pad_token_id=pad_id,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        initializer_range=size.get("init", 0.02),
    )
    return GPTNeoXForSequenceClassification(cfg)


def from_state(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> GPTNeoXForSequenceClassification:
    """A classifier from its saved config (`model.config.to_dict()`) and state dict, in eval mode."""
    model = GPTNeoXForSequenceClassification(GPTNeoXConfig.from_dict(dict(config)))
    model.load_state_dict(dict(tensors))
    return model.eval()


def config_dict(model: GPTNeoXForSequenceClassification) -> dict[str, Any]:
    """What the FLOP count needs from the config."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_labels")
    return {k: getattr(model.config, k) for k in keys}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask; the head reads the last non-pad token."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def logits_of(model, seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    ids, mask = pad_batch(seqs, pad_id)
    out = model.gpt_neox(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(1) - 1
    return model.score(out[torch.arange(len(seqs)), last])


@torch.no_grad()
def predict(model, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [logits_of(model, seqs[i : i + batch_size], pad_id).argmax(-1) for i in range(0, len(seqs), batch_size)]
    )


def check_context(model, n_tokens: int, what: str) -> None:
    limit = model.config.max_position_embeddings
    if n_tokens > limit:
        raise ValueError(
            f"{what}: a prompt of {n_tokens} tokens would exceed the model's context of {limit} "
            f"(max_position_embeddings)"
        )


# ---- FLOPs ------------------------------------------------------------------------------------------


def forward_flops(config: Mapping[str, Any], batch: int, new: int, past: int = 0, attention: bool = True) -> int:
    """Matmul FLOPs of one forward over `batch` sequences of `new` tokens after `past` cached ones, the
    classification head on the last position. `attention=False` leaves out the score and value products
    (4 n (past + n) d per layer): torch.utils.flop_counter does not see them inside CPU's fused
    scaled-dot-product kernel, so the test compares the rest with the counter exactly."""
    d, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    linear = layers * new * 2 * (3 * d * d + d * d + 2 * d * i) + 2 * d * config["num_labels"]
    attn = layers * 4 * new * (past + new) * d if attention else 0
    return batch * (linear + attn)


def train_step_flops(config: Mapping[str, Any], lengths: Sequence[int], attention: bool = True) -> int:
    """Forward + backward (gradients of inputs and weights: 2x the forward) of a right-padded batch;
    padding counts because the matmuls run on it."""
    return 3 * forward_flops(config, len(lengths), max(lengths), attention=attention)


def lm_step_flops(config: Mapping[str, Any], batch: int, n: int, attention: bool = True) -> int:
    """Forward + backward of a causal-LM step: the transformer as in `train_step_flops` with the
    vocabulary head on every position instead of the classification head on the last one."""
    head = 2 * config["hidden_size"] * (n * config["vocab_size"] - config["num_labels"])
    return 3 * (forward_flops(config, batch, n, attention=attention) + batch * head)


def gcg_grad_flops(config: Mapping[str, Any], new: int, past: int, n_attack: int, attention: bool = True) -> int:
    """The gradient pass of one GCG iteration on one prompt: the one-hot x embedding matmul of the attack
    tokens, the forward over the `new` uncached tokens, and a backward to the one-hot only (weights
    frozen: 1x the linear layers and the one-hot product, 2x attention)."""
    onehot = 2 * n_attack * config["vocab_size"] * config["hidden_size"]
    linear = forward_flops(config, 1, new, past, attention=False)
    attn = forward_flops(config, 1, new, past) - linear if attention else 0
    return 2 * onehot + 2 * linear + 3 * attn


def log10(x: float) -> float:
    return math.log10(max(x, 1.0))
