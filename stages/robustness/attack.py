"""Stage attack: every configured attack on the first `n_examples` of the attack split, one model.

Runs on the clean model (phase clean) and on the adversarially trained one (phase adv). One row per
(attack, example): whether the model was right before the attack (only those are attacked), the first
iteration that flipped it, FLOPs and the final attack tokens. Per-example results go to a ResumeState
after each example, so an interrupted run resumes at the next example with the same results.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import torch

from stages.common import artifacts
from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.robustness import attacks as A
from stages.robustness import model as M
from stages.robustness import tok as T
from stages.robustness import training as TR

log = logging.getLogger(__name__)

ATTACK_SCHEMA = pa.schema(
    [
        ("attack", pa.string()),
        ("kind", pa.string()),
        ("position", pa.string()),
        ("example", pa.int64()),
        ("label", pa.int64()),
        ("clean_correct", pa.bool_()),
        ("success_iter", pa.int64()),  # -1: never flipped (or not attacked)
        ("iterations_run", pa.int64()),
        ("iterations", pa.int64()),
        ("flops", pa.int64()),
        ("flops_per_iteration", pa.int64()),
        ("loss", pa.float64()),
        ("attack_ids", pa.list_(pa.int32())),
        ("attack_text", pa.string()),
    ]
)


def load_model(ctx: StageContext):
    config = json.loads(ctx.inputs["config"].read_text())
    return M.from_state(config, artifacts.load_checkpoint(ctx.inputs["model"]))


def attack_setup(tok, n_tokens_max: int):
    """Allowed-token mask (no special tokens), the decode/re-encode filter, the initial token."""
    allowed = torch.ones(tok.get_vocab_size(), dtype=torch.bool)
    allowed[list(T.special_ids(tok))] = False
    init = tok.token_to_id("!") if tok.token_to_id("!") is not None else int(allowed.nonzero()[0])
    return allowed, (lambda ids: T.survives_roundtrip(tok, ids)), init


def attack_examples(
    model,
    tok,
    segs: list[dict],
    labels: list[int],
    name: str,
    cfg: A.AttackConfig,
    seed: int,
    done: list[dict],
    on_example=None,
) -> list[dict]:
    """Rows of ATTACK_SCHEMA for every example, continuing after the `done` ones."""
    pad = T.pad_id(tok)
    allowed, survives, init_id = attack_setup(tok, cfg.n_tokens)
    rows = list(done)
    for p in model.parameters():
        p.requires_grad_(False)
    for i in range(len(rows), len(segs)):
        seg, label = segs[i], labels[i]
        correct = int(M.predict(model, [TR.clean_ids(seg)], pad)[0]) == label
        row = {
            "attack": name,
            "kind": cfg.kind,
            "position": cfg.position,
            "example": i,
            "label": label,
            "clean_correct": correct,
            "iterations": cfg.iterations,
        }
        if correct:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            before, after = A.split_prompt(seg, cfg.position)
            init = A.init_attack(cfg.n_tokens, init_id, allowed, survives, gen)
            res = A.run_attack(
                model,
                before,
                after,
                label,
                cfg,
                allowed,
                init,
                survives,
                gen,
                where=f"attacks.{name}.n_tokens = {cfg.n_tokens}",
            )
        else:
            res = A.AttackResult(-1, 0, 0, 0, [], float("nan"))
        rows.append(A.result_row(res, **row, attack_text=tok.decode(res.attack_ids, skip_special_tokens=False)))
        if on_example is not None:
            on_example(rows)
    return rows


def run(ctx: StageContext) -> None:
    cfg = ctx.params["evaluate"]
    tok = T.load(ctx.inputs["tokenizer"])
    model = load_model(ctx)
    path = str(ctx.inputs["examples"])
    rows_in = TR.load_split(path, "attack")[: cfg["n_examples"]]
    segs = TR.encode_split(tok, rows_in, path)
    labels = [r["label"] for r in rows_in]

    resume = ResumeState.for_output(ctx, "results")
    saved = resume.load()
    finished: dict[str, list[dict]] = saved[1]["rows"] if saved else {}

    def flush(name):
        def save(rows):
            resume.save({"done": torch.tensor([len(rows)])}, {"rows": {**finished, name: rows}})

        return save

    metrics = {}
    for k, name in enumerate(sorted(ctx.params["attacks"])):
        acfg = A.AttackConfig(**ctx.params["attacks"][name])
        rows = attack_examples(
            model, tok, segs, labels, name, acfg, ctx.seed * 101 + k, finished.get(name, []), flush(name)
        )
        finished[name] = rows
        attacked = [r["success_iter"] for r in rows if r["clean_correct"]]
        metrics[name] = {
            "asr": A.asr_curve(attacked, acfg.iterations)[-1],
            "n_attacked": len(attacked),
            "clean_accuracy": sum(r["clean_correct"] for r in rows) / len(rows),
        }
        log.info("%s: ASR %.3f over %d examples", name, metrics[name]["asr"], len(attacked))
    table = pa.Table.from_pylist([r for name in sorted(finished) for r in finished[name]], schema=ATTACK_SCHEMA)
    ctx.write_table("results", table, ATTACK_SCHEMA)
    ctx.write_json("metrics", metrics)
    resume.clear()
