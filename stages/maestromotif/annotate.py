"""Per-skill annotation (stage 3): every skill's description (and every single-agent task's words) is a
goal for the shared Motif judge (stages/llm/judge.py). With vLLM / an OpenAI server the paper's pairwise
prompt is asked with the goal as the preference (reasoning, then 1 / 2 / None); with the embedded local
model each pooled caption is rated pointwise per goal. All goals go through ONE answer cache (the one
Motif uses, `annotate.cache_dir`): a caption already rated for a goal is never rated again, and a killed
run loses nothing it paid for. Identical-caption pairs are ties without an LLM call.

Output `annotations`: one row per (goal, pair): label 1 / 2 / 0 (tie) / -1 (unknown, masked).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.llm.cache import AnswerCache, CallStats
from stages.llm.factory import LazyBackend
from stages.llm.judge import TIE, UNKNOWN, judge_mode, judge_pairwise, judge_pointwise
from stages.maestromotif.captions import CAPTIONS_SCHEMA, PAIRS_SCHEMA

log = logging.getLogger(__name__)

ANNOTATIONS_SCHEMA = pa.schema([("goal", pa.string()), ("pair_id", pa.int64()), ("label", pa.int8()),
                                ("masked", pa.bool_()), ("judge_mode", pa.string()),
                                ("rating_a", pa.float64()), ("rating_b", pa.float64()),
                                ("answer", pa.string())])


def goals(skills: dict, tasks: dict, single_agent_tasks: list[str]) -> dict[str, str]:
    """goal name -> words: the skills, then `task:<name>` for each single-agent task."""
    out = dict(skills)
    for name in single_agent_tasks:
        out[f"task:{name}"] = tasks[name]["words"]
    return out


def annotate(captions: pa.Table, pairs: pa.Table, goal_words: dict[str, str], llm: dict, judge: dict,
             opts: dict, backend=None) -> tuple[pa.Table, dict]:
    text = captions.column("caption").to_pylist()
    a, b = pairs.column("a").to_pylist(), pairs.column("b").to_pylist()
    ids = pairs.column("pair_id").to_pylist()
    ask = [i for i in range(len(ids)) if a[i] != b[i]]
    mode = judge_mode(judge["mode"], llm["backend"])
    backend = backend or LazyBackend(llm)
    stats, cols, per_goal = CallStats(), {k: [] for k in ANNOTATIONS_SCHEMA.names}, {}
    start = time.perf_counter()
    with AnswerCache(opts["cache_dir"], flush_every=opts["flush_every"]) as cache:
        for goal, words in goal_words.items():
            to_judge = [(text[a[i]], text[b[i]]) for i in ask]
            calls = stats.model_calls
            if mode == "pairwise":
                judged = judge_pairwise(backend, cache, words, to_judge, llm["sampling"], llm["batch_size"], stats)
            else:
                judged, _ = judge_pointwise(backend, cache, words, to_judge, judge, llm["batch_size"], stats)
            got = dict(zip(ask, judged))
            labels = []
            for i, pid in enumerate(ids):
                j = got.get(i)
                label = TIE if j is None else j.label
                labels.append(label)
                for k, v in (("goal", goal), ("pair_id", pid), ("label", label), ("masked", label == UNKNOWN),
                             ("judge_mode", mode if j is not None else "identical"),
                             ("rating_a", None if j is None else j.rating_a),
                             ("rating_b", None if j is None else j.rating_b),
                             ("answer", None if j is None else j.answer)):
                    cols[k].append(v)
            per_goal[goal] = {"model_calls": stats.model_calls - calls,
                              "labels": {str(v): labels.count(v) for v in (1, 2, 0, -1)}}
            log.info("goal %s: %s (%d model calls)", goal, per_goal[goal]["labels"],
                     per_goal[goal]["model_calls"])
    metrics = {"judge_mode": mode, "model_id": backend.model_id, "pairs": len(ids), "judged_pairs": len(ask),
               "goals": per_goal, "model_calls": stats.model_calls, "cache_hits": stats.cache_hits,
               "seconds": round(time.perf_counter() - start, 2)}
    return pa.table(cols, ANNOTATIONS_SCHEMA), metrics


def run(ctx: StageContext) -> None:
    captions = read_table(ctx.inputs["captions"], CAPTIONS_SCHEMA)
    pairs = read_table(ctx.inputs["pairs"], PAIRS_SCHEMA)
    goal_words = goals(ctx.params["skills"], ctx.params["tasks"], ctx.params["single_agent_tasks"])
    table, metrics = annotate(captions, pairs, goal_words, ctx.params["llm"],
                              ctx.params["judge"], ctx.params["annotate"])
    log.info("%d annotations, %d model calls, %d cache hits, %.1f s", table.num_rows,
             metrics["model_calls"], metrics["cache_hits"], metrics["seconds"])
    ctx.write_table("annotations", table, ANNOTATIONS_SCHEMA)
    ctx.write_json("metrics", metrics)
    assert np.isin(table.column("label").to_numpy(), [1, 2, 0, -1]).all()
