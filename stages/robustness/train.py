"""Stage train: one classifier per (task, size, seed), trained directly as a classifier on the task's
training split (README: why not LM pretraining first); clean accuracy on the validation split.

Resumable: every `log_every` steps the weights, AdamW moments, sampler state and curve go to a
ResumeState file; a rerun continues from the last save and gives the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging

import torch

from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.robustness import model as M
from stages.robustness import tok as T
from stages.robustness import training as TR

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    cfg = TR.TrainConfig(**ctx.params["train"])
    tok = T.load(ctx.inputs["tokenizer"])
    pad = T.pad_id(tok)
    path = str(ctx.inputs["examples"])
    train_rows, val_rows = TR.load_split(path, "train"), TR.load_split(path, "val")
    x = [TR.clean_ids(s) for s in TR.encode_split(tok, train_rows, path)]
    y = [r["label"] for r in train_rows]
    xv = [TR.clean_ids(s) for s in TR.encode_split(tok, val_rows, path)]
    yv = [r["label"] for r in val_rows]
    model = M.build(ctx.params["size"], tok.get_vocab_size(), pad, ctx.params["max_positions"])
    M.check_context(model, max(map(len, x + xv)), f"{path}: longest example")
    opt = TR.make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(ctx.seed)
    sampler_state: dict = {"order": []}

    resume = ResumeState.for_output(ctx, "model")
    step, rows, flops = 0, [], 0
    saved = resume.load()
    if saved is not None:
        tensors, progress = saved
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        TR.load_optimizer_tensors(opt, model, tensors)
        gen.set_state(tensors["generator"])
        step, rows, flops, sampler_state = progress["step"], progress["rows"], progress["flops"], progress["sampler"]
    if saved is None and cfg.lm_steps:  # an interrupted pretraining phase reruns (deterministic) from scratch
        rows = TR.lm_pretrain(model, x, pad, cfg, torch.Generator().manual_seed(ctx.seed + 1_000_003))
        flops = rows[-1]["flops"]
        log.info("language-model pretraining: %d steps, loss %.4f", cfg.lm_steps, rows[-1]["loss"])
    nxt = _sampler(len(x), cfg.batch_size, gen, sampler_state)
    config = M.config_dict(model)
    offset = cfg.lm_steps  # curve steps count pretraining first
    while step < cfg.steps:
        idx = nxt()
        seqs = [x[i] for i in idx]
        loss = TR.train_step(model, opt, seqs, [y[i] for i in idx], pad, TR.lr_at(step, cfg), cfg.max_grad_norm, step)
        flops += M.train_step_flops(config, [len(s) for s in seqs])
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            acc = TR.accuracy(model, xv, yv, pad)
            rows.append({"step": offset + step, "loss": loss, "val_accuracy": acc, "flops": flops})
            log.info("step %d loss %.4f val acc %.3f", step, loss, rows[-1]["val_accuracy"])
            resume.save(
                {
                    **{f"model.{k}": v for k, v in model.state_dict().items()},
                    **TR.optimizer_tensors(opt, model),
                    "generator": gen.get_state(),
                },
                {"step": step, "rows": rows, "flops": flops, "sampler": sampler_state},
            )
    ctx.save_checkpoint("model", model.state_dict())
    with open(ctx.outputs["config"], "w") as fh:
        json.dump(model.config.to_dict(), fh, indent=1, sort_keys=True)
    ctx.write_curve("curve", rows, ["step", "loss", "val_accuracy", "flops"])
    ctx.write_json(
        "metrics",
        {
            "params": M.n_params(model),
            "params_non_embedding": M.n_params(model) - model.gpt_neox.embed_in.weight.numel(),
            "train_flops": flops,
            "val_accuracy": rows[-1]["val_accuracy"],
            "steps": step,
            "lm_steps": cfg.lm_steps,
        },
    )
    resume.clear()


def _sampler(n: int, batch_size: int, gen: torch.Generator, state: dict):
    """Shuffled epochs; `state["order"]` (the rest of the current epoch) is saved for resuming."""

    def nxt() -> list[int]:
        if len(state["order"]) < batch_size:
            state["order"] += torch.randperm(n, generator=gen).tolist()
        out, state["order"] = state["order"][:batch_size], state["order"][batch_size:]
        return out

    return nxt
