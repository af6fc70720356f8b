"""GCG cost on PasswordMatch prompts (issue 13): one GCG iteration vs one forward + backward of the same
model on the same batch, and the speed-up from caching the prompt before the attack tokens.

    OMP_NUM_THREADS=2 PYTHONPATH=. python bench/robustness_gcg_speed.py [--hidden 384 --layers 4 ...]

Everything is measured in this process on the same prompts: the batch is the `candidates` attacked
prompts of one GCG iteration; "forward + backward" is one training step's worth of work on them (loss
backpropagated to the weights). Prints JSON; timings are medians over `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from stages.robustness import attacks as A
from stages.robustness import model as M
from stages.robustness import tasks
from stages.robustness import tok as T
from stages.robustness import training as TR


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = tasks.generate("password_match", {"train": 3000, "val": 10, "attack": 10}, 0, 3000, (1, 3), (1, 4))
    tok = T.train_bpe([r["text"] for r in rows], args.vocab)
    model = M.build(
        {"hidden": args.hidden, "layers": args.layers, "heads": args.heads}, tok.get_vocab_size(), T.pad_id(tok), 256
    ).eval()
    seg = TR.segments(tok, rows[-1], "bench")
    label = rows[-1]["label"]
    before, after = A.split_prompt(seg, "suffix")
    allowed = torch.ones(tok.get_vocab_size(), dtype=torch.bool)
    allowed[list(T.special_ids(tok))] = False
    cfg = A.AttackConfig("gcg", "suffix", args.n_tokens, 1, args.candidates, 256)
    attack = torch.tensor(
        A.init_attack(
            args.n_tokens, tok.token_to_id("!"), allowed, lambda ids: T.survives_roundtrip(tok, ids), torch.Generator()
        )
    )
    keep_all = lambda ids: True  # noqa: E731  (the filter is tokenizer work, timed separately below)

    full = [TR.attacked_ids(seg, attack.tolist(), "suffix")] * args.candidates

    def fwd_bwd():
        model.zero_grad()
        for p in model.parameters():
            p.requires_grad_(True)
        F.cross_entropy(M.logits_of(model, full, 0), torch.full((len(full),), label)).backward()

    def gcg(cached: bool):
        for p in model.parameters():
            p.requires_grad_(False)
        pm = A.PromptModel(model, before, after, cached=cached)
        A.iteration(pm, attack, label, cfg, allowed, keep_all, torch.Generator().manual_seed(0))

    t_fb = median_time(fwd_bwd, args.repeats)
    t_cached = median_time(lambda: gcg(True), args.repeats)
    t_full = median_time(lambda: gcg(False), args.repeats)
    cands = A.propose(A.PromptModel(model, before, after), attack, label, cfg, allowed, torch.Generator())
    t_filter = median_time(lambda: [T.survives_roundtrip(tok, c) for c in cands.tolist()], args.repeats)
    config = M.config_dict(model)
    print(
        json.dumps(
            {
                "params": M.n_params(model),
                "vocab": tok.get_vocab_size(),
                "threads": args.threads,
                "prompt_tokens": len(full[0]),
                "cached_prefix_tokens": len(before),
                "candidates": args.candidates,
                "fwd_bwd_s": round(t_fb, 4),
                "gcg_iteration_uncached_s": round(t_full, 4),
                "gcg_iteration_cached_s": round(t_cached, 4),
                "retokenize_filter_s": round(t_filter, 4),
                "ratio_gcg_uncached_over_fwd_bwd": round(t_full / t_fb, 2),
                "ratio_gcg_cached_over_fwd_bwd": round(t_cached / t_fb, 2),
                "prefix_cache_speedup": round(t_full / t_cached, 2),
                "gcg_iteration_flops_cached": M.gcg_grad_flops(
                    config, args.n_tokens + len(after), len(before), args.n_tokens
                )
                + M.forward_flops(config, args.candidates, args.n_tokens + len(after), len(before)),
                "fwd_bwd_flops": M.train_step_flops(config, [len(full[0])] * args.candidates),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
