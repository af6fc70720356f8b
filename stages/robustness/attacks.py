"""GCG and RandomToken on one prompt of a GPT-NeoX classifier, with the uncached-suffix trick.

A prompt is `before` + attack tokens + `after` (tok.py's segment encoding): for a suffix attack `before`
holds instructions, content and chunk and `after` the answer cue; for a prefix attack the chunk moves to
`after`. The keys/values of `before` do not depend on the attack, so they are computed once per prompt
and each candidate forward runs only over attack + after (a few tokens instead of the whole prompt).

GCG (Zou et al. 2023, as in the reference): the gradient of the loss toward the wrong label with respect
to the one-hot attack tokens ranks `top_k` replacement tokens per position; `candidates` single-token
swaps are drawn uniformly over positions x top-k tokens, those that do not survive decode -> re-encode
are dropped, the rest are scored in one batched forward and the best one becomes the attack (kept even
if worse than the last: one candidate per iteration). RandomToken draws `candidates` fresh random
attacks per iteration and keeps the best. Both stop at the first iteration whose attack flips the
prediction; ASR at iteration i is the share of (clean-correct) prompts flipped within i iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from stages.robustness import model as M


@dataclass
class AttackConfig:
    """One attack's knobs (params `attacks.<name>`)."""

    kind: str  # gcg | random_token
    position: str  # suffix (after the chunk) | prefix (before the chunk)
    n_tokens: int = 10  # attack length in tokens
    iterations: int = 10  # budget per prompt
    candidates: int = 16  # swaps (GCG) or random attacks (RandomToken) scored per iteration
    top_k: int = 256  # GCG: replacement tokens per position from the gradient


@dataclass
class AttackResult:
    success_iter: int  # first iteration whose attack flips the prediction; -1 if none
    iterations: int  # iterations run
    flops: int  # matmul FLOPs spent on this prompt
    flops_per_iteration: int  # of one full iteration (for compute-vs-ASR curves)
    attack_ids: list[int] = field(default_factory=list)
    loss: float = float("nan")  # final loss toward the wrong label


def split_prompt(segments: dict[str, list[int]], position: str) -> tuple[list[int], list[int]]:
    """(before, after) of the attack for one segment-encoded example."""
    if position == "suffix":
        return segments["head"] + segments["chunk"], segments["answer"]
    if position == "prefix":
        return segments["head"], segments["chunk"] + segments["answer"]
    raise ValueError(f"attack position '{position}' (expected suffix or prefix)")


class PromptModel:
    """A frozen classifier with the keys/values of one prompt's `before` part cached."""

    def __init__(self, model, before: list[int], after: list[int], cached: bool = True):
        self.model, self.after = model, torch.tensor(after, dtype=torch.long)
        self.before, self.cached = torch.tensor(before, dtype=torch.long), cached
        self.past = len(before) if cached else 0
        if cached:
            with torch.no_grad():
                cache = DynamicCache()
                model.gpt_neox(input_ids=self.before[None], cache=cache, use_cache=True)
            self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def _cache(self, batch: int) -> DynamicCache:
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.kv]
        )

    def logits_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """Logits at the last position for (batch, new, hidden) input embeddings after `before`."""
        if not self.cached:  # the baseline the benchmark compares with: the whole prompt every time
            head = self.model.gpt_neox.embed_in(self.before)[None].expand(len(embeds), -1, -1)
            out = self.model.gpt_neox(inputs_embeds=torch.cat([head, embeds], 1)).last_hidden_state
        else:
            out = self.model.gpt_neox(
                inputs_embeds=embeds, cache=self._cache(len(embeds)), use_cache=True
            ).last_hidden_state
        return self.model.score(out[:, -1])

    def logits_ids(self, attack: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([attack, self.after.expand(len(attack), -1)], dim=1)
        return self.logits_embeds(self.model.gpt_neox.embed_in(ids))


def _wrong_label_loss(logits: torch.Tensor, label: int) -> torch.Tensor:
    return F.cross_entropy(logits, torch.full((len(logits),), 1 - label, dtype=torch.long), reduction="none")


def token_gradients(pm: PromptModel, attack: torch.Tensor, label: int) -> torch.Tensor:
    """d loss(wrong label) / d one-hot attack tokens, shape (n_tokens, vocab): GCG's linear estimate of
    the loss change of each single-token swap."""
    W = pm.model.gpt_neox.embed_in.weight
    one_hot = F.one_hot(attack, W.shape[0]).to(W.dtype).requires_grad_(True)
    embeds = torch.cat([one_hot @ W, pm.model.gpt_neox.embed_in(pm.after)])[None]
    loss = _wrong_label_loss(pm.logits_embeds(embeds), label).sum()
    return torch.autograd.grad(loss, one_hot)[0]


def propose(
    pm: PromptModel,
    attack: torch.Tensor,
    label: int,
    cfg: AttackConfig,
    allowed: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """`cfg.candidates` attacks to score: GCG's gradient-ranked single swaps, or fresh random tokens."""
    if cfg.kind == "gcg":
        grad = token_gradients(pm, attack, label)
        grad[:, ~allowed] = float("inf")
        top = (-grad).topk(min(cfg.top_k, int(allowed.sum())), dim=1).indices  # (n_tokens, k)
        pos = torch.randint(cfg.n_tokens, (cfg.candidates,), generator=generator)
        tok = top[pos, torch.randint(top.shape[1], (cfg.candidates,), generator=generator)]
        cands = attack.expand(cfg.candidates, -1).clone()
        cands[torch.arange(cfg.candidates), pos] = tok
        return cands
    if cfg.kind == "random_token":
        allowed_ids = allowed.nonzero().squeeze(1)
        return allowed_ids[torch.randint(len(allowed_ids), (cfg.candidates, cfg.n_tokens), generator=generator)]
    raise ValueError(f"unknown attack kind '{cfg.kind}' (expected gcg or random_token)")


def iteration(
    pm: PromptModel,
    attack: torch.Tensor,
    label: int,
    cfg: AttackConfig,
    allowed: torch.Tensor,
    survives: Callable[[list[int]], bool],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One attack iteration: (surviving distinct candidates, their logits), or None if none survived."""
    cands = propose(pm, attack, label, cfg, allowed, generator)
    keep = [i for i, c in enumerate(cands.tolist()) if survives(c)]
    if not keep:
        return None
    cands = torch.unique(cands[keep], dim=0)
    with torch.no_grad():
        return cands, pm.logits_ids(cands)


def run_attack(
    model,
    before: list[int],
    after: list[int],
    label: int,
    cfg: AttackConfig,
    allowed: torch.Tensor,
    init_ids: list[int],
    survives: Callable[[list[int]], bool],
    generator: torch.Generator,
    where: str = "attack prompt",
) -> AttackResult:
    """Attack one prompt the model classifies correctly. `allowed` (bool, vocab) marks tokens an attack
    may use; `survives` is the decode/re-encode filter; `where` names the attack in errors."""
    config = M.config_dict(model)
    M.check_context(model, len(before) + cfg.n_tokens + len(after), where)
    pm = PromptModel(model, before, after)
    new = cfg.n_tokens + len(after)
    grad_flops = M.gcg_grad_flops(config, new, pm.past, cfg.n_tokens) if cfg.kind == "gcg" else 0
    result = AttackResult(-1, 0, 0, grad_flops + M.forward_flops(config, cfg.candidates, new, pm.past))
    attack = torch.tensor(init_ids, dtype=torch.long)
    for it in range(1, cfg.iterations + 1):
        out = iteration(pm, attack, label, cfg, allowed, survives, generator)
        result.iterations = it
        result.flops += grad_flops
        if out is None:
            continue
        cands, logits = out
        result.flops += M.forward_flops(config, len(cands), new, pm.past)
        losses = _wrong_label_loss(logits, label)
        best = int(losses.argmin())
        attack, result.loss = cands[best], float(losses[best])  # the best of this iteration, kept
        if int(logits[best].argmax()) != label:
            result.success_iter = it
            break
    result.attack_ids = attack.tolist()
    return result


def asr_curve(success_iters: list[int], iterations: int) -> list[float]:
    """ASR after 0..iterations iterations over the attacked (clean-correct) prompts."""
    n = len(success_iters)
    return [sum(1 for s in success_iters if 0 < s <= i) / n if n else float("nan") for i in range(iterations + 1)]


def init_attack(
    n_tokens: int,
    init_id: int,
    allowed: torch.Tensor,
    survives: Callable[[list[int]], bool],
    generator: torch.Generator,
) -> list[int]:
    """`n_tokens` copies of `init_id`, or random allowed tokens when those do not survive re-encoding."""
    ids = [init_id] * n_tokens
    allowed_ids = allowed.nonzero().squeeze(1)
    for _ in range(100):
        if survives(ids):
            return ids
        ids = allowed_ids[torch.randint(len(allowed_ids), (n_tokens,), generator=generator)].tolist()
    raise RuntimeError("no initial attack survives decode/re-encode in 100 draws")


def result_row(res: AttackResult, **extra: Any) -> dict[str, Any]:
    return {
        **extra,
        "success_iter": res.success_iter,
        "iterations_run": res.iterations,
        "flops": res.flops,
        "flops_per_iteration": res.flops_per_iteration,
        "attack_ids": res.attack_ids,
        "loss": None if math.isnan(res.loss) else res.loss,
    }  # null: not attacked, or no candidate survived
