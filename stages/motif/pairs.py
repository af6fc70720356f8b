"""Sample caption pairs for the annotator, with the paper's rules:

- empty messages are dropped (most NetHack steps have none; "nothing happened" is not a caption);
- optionally (`group_consecutive`) a message repeated on consecutive steps of an episode counts once;
- a pair of identical captions is a tie (`tie` = true): the annotator labels it without an LLM call.

The annotator's cost is the number of distinct captions it must rate (the local judge rates captions
one at a time), so the caption pool is capped at `max_captions`: when there are more, that many are
drawn without replacement with probability proportional to how often they occur, and pairs only use
pooled captions. Pairs are then drawn uniformly over observations (`sample_by: step`, the paper: frequent
captions dominate) or uniformly over pooled captions (`sample_by: caption`: rare events such as a kill
or a staircase get as many comparisons as "It's a wall."). Deterministic for a seed; every pair keeps
the row numbers of its two observations in the steps table.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from stages.common.artifacts import read_table
from stages.common.stage import StageContext

log = logging.getLogger(__name__)

PAIRS_SCHEMA = pa.schema([("pair_id", pa.int64()), ("message_a", pa.string()), ("message_b", pa.string()),
                          ("tie", pa.bool_()), ("row_a", pa.int64()), ("row_b", pa.int64())])
STEPS_COLUMNS = pa.schema([("episode", pa.int32()), ("message", pa.string())])


def candidate_rows(messages: list[str], episodes: np.ndarray, group_consecutive: bool) -> np.ndarray:
    """Rows whose caption may be paired: non-empty, and (grouping) not a repeat of the row before it
    in the same episode."""
    msgs = np.asarray(messages, dtype=object)
    keep = msgs != ""
    if group_consecutive and len(msgs) > 1:
        repeat = np.zeros(len(msgs), bool)
        repeat[1:] = (msgs[1:] == msgs[:-1]) & (episodes[1:] == episodes[:-1])
        keep &= ~repeat
    return np.flatnonzero(keep)


def caption_pool(captions: np.ndarray, counts: np.ndarray, max_captions: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `max_captions` captions, drawn without replacement proportionally to `counts`
    (Efraimidis-Spirakis keys u^(1/w)); all of them when there are few enough."""
    if len(captions) <= max_captions:
        return np.arange(len(captions))
    keys = np.log(rng.random(len(captions))) / counts
    return np.sort(np.argsort(-keys, kind="stable")[:max_captions])


def sample_pairs(messages: list[str], episodes: np.ndarray, n_pairs: int, max_captions: int,
                 sample_by: str, group_consecutive: bool, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = candidate_rows(messages, episodes, group_consecutive)
    if len(rows) < 2:
        raise ValueError(f"only {len(rows)} non-empty caption(s) in the steps table: cannot make pairs "
                         "(collect more steps)")
    row_caption = np.asarray(messages, dtype=object)[rows]
    captions, inverse, counts = np.unique(row_caption.astype(str), return_inverse=True, return_counts=True)
    pool = caption_pool(captions, counts, max_captions, rng)
    in_pool = np.isin(inverse, pool)
    rows, inverse = rows[in_pool], inverse[in_pool]
    if sample_by == "step":
        picks = rng.integers(len(rows), size=(n_pairs, 2))
        row_a, row_b = rows[picks[:, 0]], rows[picks[:, 1]]
    elif sample_by == "caption":
        # rows of each pooled caption, then a caption uniformly and one of its rows uniformly
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], pool)
        sizes = counts[pool]
        which = rng.integers(len(pool), size=(n_pairs, 2))
        offset = (rng.random((n_pairs, 2)) * sizes[which]).astype(np.int64)
        chosen = rows[order[starts[which] + offset]]
        row_a, row_b = chosen[:, 0], chosen[:, 1]
    else:
        raise ValueError(f"pairs.sample_by must be 'step' or 'caption', not '{sample_by}'")
    msgs = np.asarray(messages, dtype=object)
    a, b = msgs[row_a].tolist(), msgs[row_b].tolist()
    return pa.table({"pair_id": np.arange(n_pairs, dtype=np.int64), "message_a": a, "message_b": b,
                     "tie": np.asarray(a, dtype=object) == np.asarray(b, dtype=object),
                     "row_a": row_a.astype(np.int64), "row_b": row_b.astype(np.int64)}, PAIRS_SCHEMA)


def run(ctx: StageContext) -> None:
    cfg = ctx.params["pairs"]
    steps = read_table(ctx.inputs["steps"], STEPS_COLUMNS)
    table = sample_pairs(steps.column("message").to_pylist(), steps.column("episode").to_numpy(),
                         cfg["n_pairs"], cfg["max_captions"], cfg["sample_by"], cfg["group_consecutive"],
                         cfg["seed"])
    distinct = set(table.column("message_a").to_pylist()) | set(table.column("message_b").to_pylist())
    log.info("%d pairs over %d distinct captions (%d ties, answered without the LLM)", table.num_rows,
             len(distinct), int(np.sum(table.column("tie").to_numpy())))
    ctx.write_table("pairs", table, PAIRS_SCHEMA)
