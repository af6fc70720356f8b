"""LM pretraining then classifier fine-tuning vs training directly as a classifier (issue 13, stage 3), at
tiny scale and equal optimizer steps: `direct` runs `--steps` classifier steps; `pretrain` runs
`--lm-fraction` of them as next-token prediction on the unlabelled training texts (the train stage's
`lm_steps`) and the rest as classifier steps. Same model, data, seed and learning-rate schedule shape.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/robustness_pretrain.py [--task password_match --hidden 64 ...]

Prints JSON: val accuracy along each run, FLOPs and wall time, and the ratio pretrain / direct of the
final accuracies, measured in this process.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stages.robustness import model as M
from stages.robustness import tasks
from stages.robustness import tok as T
from stages.robustness import training as TR


def run(route: str, a, tok, x, y, xv, yv) -> dict:
    pad = T.pad_id(tok)
    torch.manual_seed(a.seed)
    size = {"hidden": a.hidden, "layers": a.layers, "heads": a.heads, "init": a.init}
    model = M.build(size, tok.get_vocab_size(), pad, 128)
    lm_steps = int(a.steps * a.lm_fraction) if route == "pretrain" else 0
    cfg = TR.TrainConfig(a.steps - lm_steps, 32, a.lr, 50, 0.01, a.every, 1.0, lm_steps)
    t0, rows, flops = time.perf_counter(), [], 0
    if lm_steps:
        rows = TR.lm_pretrain(model, x, pad, cfg, torch.Generator().manual_seed(a.seed + 1))
        flops = rows[-1]["flops"]
    opt, gen, config = TR.make_optimizer(model, cfg), torch.Generator().manual_seed(a.seed), M.config_dict(model)
    for step in range(cfg.steps):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=gen).tolist()
        seqs = [x[i] for i in idx]
        TR.train_step(model, opt, seqs, [y[i] for i in idx], pad, TR.lr_at(step, cfg), 1.0, step)
        flops += M.train_step_flops(config, [len(s) for s in seqs])
        if (step + 1) % a.every == 0 or step + 1 == cfg.steps:
            rows.append({"step": lm_steps + step + 1, "val_accuracy": TR.accuracy(model, xv, yv, pad), "flops": flops})
    return {
        "lm_steps": lm_steps,
        "classifier_steps": cfg.steps,
        "val_accuracy": rows[-1]["val_accuracy"],
        "best_val_accuracy": max(r["val_accuracy"] for r in rows if r["val_accuracy"] == r["val_accuracy"]),
        "flops": flops,
        "seconds": time.perf_counter() - t0,
        "curve": [(r["step"], round(r["val_accuracy"], 3)) for r in rows if r["val_accuracy"] == r["val_accuracy"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="password_match", choices=["password_match", "word_length"])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--init", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lm-fraction", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = tasks.generate(a.task, {"train": a.n_train, "val": 300, "attack": 1}, 1, 200, (1, 3), (1, 2))
    tok = T.train_bpe([r["text"] for r in rows if r["split"] == "train"], 512)
    enc = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    x = [TR.clean_ids(s) for s in TR.encode_split(tok, enc["train"], "bench")]
    xv = [TR.clean_ids(s) for s in TR.encode_split(tok, enc["val"], "bench")]
    y, yv = [r["label"] for r in enc["train"]], [r["label"] for r in enc["val"]]
    out = {"args": vars(a), **{route: run(route, a, tok, x, y, xv, yv) for route in ("direct", "pretrain")}}
    out["accuracy_ratio_pretrain_over_direct"] = out["pretrain"]["val_accuracy"] / out["direct"]["val_accuracy"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
