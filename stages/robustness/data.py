"""Stage data: one task's train / val / attack examples as one Parquet table (tasks.EXAMPLES_SCHEMA).

A generated task (`kind` password_match or word_length) draws pseudo-words made here from `seed`; a
`corpus` task reads the user's Parquet/CSV file (columns text, label) named by `path`. The word source
is part of the params, so it is in the provenance of the table.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from stages.common.stage import StageContext
from stages.robustness import tasks

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    cfg = ctx.params["task"]
    sizes = {s: cfg[f"n_{s}"] for s in tasks.SPLITS}
    if cfg["kind"] == "corpus":
        if not cfg.get("path"):
            raise ValueError(f"task '{ctx.wildcards.get('task')}': kind corpus needs param 'path'")
        rows = tasks.load_corpus(cfg["path"], cfg["labels"], sizes, cfg["seed"], cfg.get("instructions", ""))
    else:
        if cfg.get("word_source", "pseudo") != "pseudo":
            raise ValueError(f"word_source '{cfg['word_source']}': only 'pseudo' (generated here) is built in")
        rows = tasks.generate(
            cfg["kind"], sizes, cfg["seed"], cfg["n_words"], tuple(cfg["chunk_words"]), tuple(cfg["syllables"])
        )
    table = pa.Table.from_pylist(rows, schema=tasks.EXAMPLES_SCHEMA)
    labels = table.column("label").to_pylist()
    log.info("%s: %d examples, label balance %.3f", ctx.wildcards.get("task"), len(rows), sum(labels) / len(rows))
    ctx.write_table("examples", table, tasks.EXAMPLES_SCHEMA)
