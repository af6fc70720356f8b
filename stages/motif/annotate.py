"""Label caption pairs with an LLM judge (Motif step 3).

Input `pairs`: pair_id, message_a, message_b, tie (identical captions: a tie, no LLM call).
Output `annotations`: one row per pair, label 1 (first better) / 2 (second) / 0 (tie) / -1 (unknown,
masked out of reward training), with the judge mode, the model, the ratings (pointwise) or raw answers
(pairwise) and the number of re-asks. Output `metrics`: label counts, parse failures, model calls vs
cache hits, the time the backend took to get ready (load, or a first conversion; 0 when the cache
answered everything) and pairs/s without it.

Params: `llm` (which model answers: stages/llm/config.schema.yaml), `judge` (what to prefer and how to
ask: goal, mode, pointwise question and examples, tie_margin; motif.judge in params.schema.yaml), `annotate`:
cache_dir (default data/llm_cache: outside results/, so answers survive `snakemake --forcerun` and
rule changes), flush_every (default 64 new answers), recover_cache (default false: an unreadable cache
part stops the run; true moves it aside and re-asks its answers).
"""
from __future__ import annotations

import logging
import time

import pyarrow as pa

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.llm.cache import AnswerCache, CallStats
from stages.llm.factory import LazyBackend
from stages.llm.judge import FIRST, SECOND, TIE, UNKNOWN, PairJudgement, judge_mode, judge_pairwise, judge_pointwise

log = logging.getLogger(__name__)

PAIRS_INPUT = pa.schema([("pair_id", pa.int64()), ("message_a", pa.string()), ("message_b", pa.string()),
                         ("tie", pa.bool_())])
ANNOTATIONS_SCHEMA = pa.schema([
    ("pair_id", pa.int64()),
    ("label", pa.int8()),            # 1 first better, 2 second, 0 tie, -1 unknown
    ("masked", pa.bool_()),          # true = unknown: left out of reward training
    ("judge_mode", pa.string()),     # pairwise | pointwise | identical (tie without an LLM call)
    ("model_id", pa.string()),       # null for identical pairs (no model asked)
    ("rating_a", pa.float64()),      # pointwise: log p(yes) - log p(no) of each message
    ("rating_b", pa.float64()),
    ("answer", pa.string()),         # pairwise: the raw answer
    ("reask_answer", pa.string()),   # pairwise: the answer to the follow-up, when one was needed
    ("n_reasks", pa.int8()),
])
DEFAULTS = {"cache_dir": "data/llm_cache", "flush_every": 64, "recover_cache": False}


def annotate(pairs: pa.Table, llm: dict, judge: dict, opts: dict, progress=None,
             backend=None) -> tuple[pa.Table, dict]:
    """Label every pair; returns the annotations table and the metrics. `backend` overrides the one
    the llm block names (tests pass doubles)."""
    opts = {**DEFAULTS, **(opts or {})}
    mode, goal = judge_mode(judge["mode"], llm["backend"]), judge["goal"]
    ids = pairs.column("pair_id").to_pylist()
    a_msgs, b_msgs = pairs.column("message_a").to_pylist(), pairs.column("message_b").to_pylist()
    identical = [bool(t) or a == b for t, a, b in zip(pairs.column("tie").to_pylist(), a_msgs, b_msgs)]
    ask = [i for i, same in enumerate(identical) if not same]
    to_judge = [(a_msgs[i], b_msgs[i]) for i in ask]

    stats = CallStats()
    # built on the first cache miss: a re-run answered from the cache loads no model
    backend = backend or LazyBackend(llm)
    model_id = backend.model_id
    lazy_load_s = lambda: backend.load_seconds if isinstance(backend, LazyBackend) else 0.0  # noqa: E731
    loaded_before = lazy_load_s()
    start = time.perf_counter()
    judged: list[PairJudgement] = []
    n_captions = 0
    if ask:
        bar = progress(total=len(to_judge), desc=f"annotate ({mode})") if progress else None
        tick = bar.update if bar is not None else None
        with AnswerCache(opts["cache_dir"], flush_every=opts["flush_every"],
                         recover=opts["recover_cache"]) as cache:
            if mode == "pairwise":
                judged = judge_pairwise(backend, cache, goal, to_judge, llm["sampling"], llm["batch_size"],
                                        stats, tick)
            else:
                judged, ratings = judge_pointwise(backend, cache, goal, to_judge, judge,
                                                  llm["batch_size"], stats, tick)
                n_captions = len(ratings)
        if bar is not None:
            bar.close()
    backend_s = lazy_load_s() - loaded_before  # load, or a first conversion (~1 min), in this call
    seconds = time.perf_counter() - start - backend_s

    rows = [PairJudgement(TIE) for _ in ids]
    for i, j in zip(ask, judged):
        rows[i] = j
    table = pa.table({
        "pair_id": ids,
        "label": [r.label for r in rows],
        "masked": [r.label == UNKNOWN for r in rows],
        "judge_mode": [mode if not same else "identical" for same in identical],
        "model_id": [model_id if not same else None for same in identical],
        "rating_a": [r.rating_a for r in rows],
        "rating_b": [r.rating_b for r in rows],
        "answer": [r.answer for r in rows],
        "reask_answer": [r.reask_answer for r in rows],
        "n_reasks": [r.n_reasks for r in rows],
    }, schema=ANNOTATIONS_SCHEMA)
    labels = [r.label for r in rows]
    metrics = {
        "judge_mode": mode, "model_id": model_id, "pairs": len(ids),
        "identical_pairs": sum(identical), "judged_pairs": len(ask),
        "labels": {"first": labels.count(FIRST), "second": labels.count(SECOND), "tie": labels.count(TIE),
                   "unknown": labels.count(UNKNOWN)},
        "parse_failures": sum(r.n_reasks for r in judged),
        "unknown_after_reask": sum(r.label == UNKNOWN for r in judged),
        "captions_rated": n_captions,
        "model_calls": stats.model_calls, "cache_hits": stats.cache_hits,
        "backend_load_s": round(backend_s, 3), "seconds": round(seconds, 3),
        "pairs_per_s": round(len(ask) / seconds, 3) if ask and seconds > 0 else None,
    }
    return table, metrics


def run(ctx: StageContext) -> None:
    pairs = read_table(ctx.inputs["pairs"], PAIRS_INPUT)
    table, metrics = annotate(pairs, ctx.params["llm"], ctx.params["judge"], ctx.params.get("annotate", {}),
                              progress=ctx.progress)
    log.info("annotated %d pairs (%s, %s): %s; %d model calls, %d cache hits, %.1f s",
             metrics["pairs"], metrics["judge_mode"], metrics["model_id"], metrics["labels"],
             metrics["model_calls"], metrics["cache_hits"], metrics["seconds"])
    ctx.write_table("annotations", table, ANNOTATIONS_SCHEMA)
    ctx.write_json("metrics", metrics)
