"""Captions and caption pairs (stage 2). Every step t > 0 of an episode gets the paper's caption from
steps t-1 and t (previous and current message; depth, gold, HP, XP, hunger changes with the numbers).
Steps with an empty message and no stat change are dropped (nothing happened). Distinct captions are
kept with their count, their current message and their clipped stat differences (the reward model's
input). The caption pool given to the annotator is capped at `max_captions`: every caption with an
"event" (a depth, gold or XP change) is kept - they are rare and are what the skills disagree on - and
the rest is drawn proportionally to frequency. Pairs are drawn uniformly over pooled captions; a pair of
identical captions is a tie without an LLM call. The same pairs serve every skill.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.maestromotif.skills import DIFF_STATS, caption

log = logging.getLogger(__name__)

STATS = ("depth", "gold", "hp", "hp_max", "xlvl", "hunger")
STEPS_COLUMNS = pa.schema([("episode", pa.int32()), ("message", pa.string()), ("done", pa.bool_())]
                          + [(s, pa.int32()) for s in STATS])
CAPTIONS_SCHEMA = pa.schema(
    [("caption_id", pa.int64()), ("caption", pa.string()), ("message", pa.string()), ("count", pa.int64()),
     ("pooled", pa.bool_()), ("event", pa.bool_())] + [(f"d_{s}", pa.int32()) for s in DIFF_STATS])
PAIRS_SCHEMA = pa.schema([("pair_id", pa.int64()), ("a", pa.int64()), ("b", pa.int64()), ("tie", pa.bool_())])


def step_captions(steps: pa.Table) -> list[tuple[str, str, tuple[int, ...]]]:
    """(caption, message, raw stat diffs) of every step t > 0 where something happened."""
    cols = {c: steps.column(c).to_numpy(zero_copy_only=False) for c in STEPS_COLUMNS.names}
    msgs = steps.column("message").to_pylist()
    out = []
    for t in range(1, steps.num_rows):
        # same episode, and not the zeroed observation that ends a game
        if cols["episode"][t] != cols["episode"][t - 1] or (cols["done"][t] and cols["depth"][t] == 0):
            continue
        before = {s: int(cols[s][t - 1]) for s in STATS}
        after = {s: int(cols[s][t]) for s in STATS}
        diffs = tuple(after[s] - before[s] for s in DIFF_STATS)
        if not msgs[t] and not any(diffs[:2]) and diffs[3] == 0 and diffs[4] == 0:
            continue   # an empty message and no depth / gold / XP / hunger change (HP ticks alone: noise)
        out.append((caption(msgs[t - 1], msgs[t], before, after), msgs[t], diffs))
    return out


def build(steps: pa.Table, n_pairs: int, max_captions: int, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    rows = step_captions(steps)
    if len(rows) < 2:
        raise ValueError(f"only {len(rows)} captioned step(s): collect more steps")
    counts: dict[tuple, int] = {}
    for row in rows:
        counts[row] = counts.get(row, 0) + 1
    keys = sorted(counts)   # deterministic order
    count = np.array([counts[k] for k in keys])
    event = np.array([any(k[2][i] != 0 for i in (0, 1, 3)) for k in keys])
    pooled = event.copy()
    if pooled.sum() > max_captions:   # too many events: keep the rarest kinds first, deterministically
        pooled[:] = False
        pooled[np.flatnonzero(event)[rng.permutation(int(event.sum()))[:max_captions]]] = True
    free = max_captions - int(pooled.sum())
    rest = np.flatnonzero(~pooled)
    if free > 0 and len(rest):
        gumbel = np.log(rng.random(len(rest))) / count[rest]   # Efraimidis-Spirakis: proportional to count
        pooled[rest[np.argsort(-gumbel, kind="stable")[:free]]] = True
    captions = pa.table({
        "caption_id": np.arange(len(keys), dtype=np.int64), "caption": [k[0] for k in keys],
        "message": [k[1] for k in keys], "count": count.astype(np.int64), "pooled": pooled, "event": event,
        **{f"d_{s}": np.array([k[2][i] for k in keys], np.int32) for i, s in enumerate(DIFF_STATS)}},
        CAPTIONS_SCHEMA)
    pool = np.flatnonzero(pooled)
    pick = pool[rng.integers(len(pool), size=(n_pairs, 2))]
    pairs = pa.table({"pair_id": np.arange(n_pairs, dtype=np.int64), "a": pick[:, 0].astype(np.int64),
                      "b": pick[:, 1].astype(np.int64), "tie": pick[:, 0] == pick[:, 1]}, PAIRS_SCHEMA)
    return captions, pairs


def run(ctx: StageContext) -> None:
    cfg = ctx.params["pairs"]
    captions, pairs = build(read_table(ctx.inputs["steps"], STEPS_COLUMNS), cfg["n_pairs"],
                            cfg["max_captions"], cfg["seed"])
    pooled = captions.filter(captions.column("pooled"))
    log.info("%d distinct captions (%d with an event), %d pooled; %d pairs (%d ties)", captions.num_rows,
             int(np.sum(captions.column("event").to_numpy())), pooled.num_rows, pairs.num_rows,
             int(np.sum(pairs.column("tie").to_numpy())))
    ctx.write_table("captions", captions, CAPTIONS_SCHEMA)
    ctx.write_table("pairs", pairs, PAIRS_SCHEMA)
