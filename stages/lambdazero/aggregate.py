"""Stage 8, aggregate: one table over seeds (evaluation rows per arm + candidate counts), the verdict of
each seed, and a plot of the top-k docking scores and proxy predictions per arm and seed.

The seed is the wildcard recorded in each evaluation.parquet's provenance; a seed's metrics.json (no
provenance) is the one beside its table, its candidates.parquet the one recording the same seed.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.lambdazero.evaluate import ARMS, SUMMARY_SCHEMA
from stages.lambdazero.export import CANDIDATES_SCHEMA

log = logging.getLogger(__name__)

TABLE_SCHEMA = pa.schema([pa.field("seed", pa.int32()), *SUMMARY_SCHEMA,
                          pa.field("candidates_exported", pa.int32())])


def seed_of(path: Path) -> int:
    return int(read_provenance(path)["wildcards"]["seed"])


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, verdicts, oracle = [], {}, {}
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    candidates_of = {seed_of(p): p for p in ctx.input_list("candidates")}
    for table_path in ctx.input_list("tables"):
        seed = seed_of(table_path)
        metrics_path = metrics_of[table_path.parent]
        n_cand = read_table(candidates_of[seed], CANDIDATES_SCHEMA).num_rows
        rows += [{"seed": seed, **r, "candidates_exported": n_cand}
                 for r in read_table(table_path, SUMMARY_SCHEMA).to_pylist()]
        m = json.loads(metrics_path.read_text())
        verdicts[str(seed)] = m["verdict"]
        oracle[str(seed)] = m["oracle"]
    rows.sort(key=lambda r: (r["seed"], ARMS.index(r["arm"])))
    ctx.write_table("table", pa.Table.from_pylist(rows, TABLE_SCHEMA), TABLE_SCHEMA)
    holds = [v["holds"] for v in verdicts.values()]
    ctx.write_json("metrics", {"verdicts": verdicts, "oracle": oracle, "seeds": len(verdicts),
                               "verdict_holds_in": f"{sum(holds)}/{len(holds)} seeds"})
    log.info("verdict holds in %d/%d seeds", sum(holds), len(holds))

    fig, (ax_score, ax_mu) = plt.subplots(1, 2, figsize=(10, 4))
    seeds = sorted({r["seed"] for r in rows})
    width = 0.8 / len(ARMS)
    for k, arm in enumerate(ARMS):
        sel = [next(r for r in rows if r["seed"] == s and r["arm"] == arm) for s in seeds]
        x = np.arange(len(seeds)) + (k - 1) * width
        ax_score.bar(x, [r["topk_mean_score"] for r in sel], width, label=arm)
        ax_mu.bar(x, [r["mean_proxy_mu"] for r in sel], width, label=arm)
    for ax, title in ((ax_score, "top-k mean Vina score (lower = better)"),
                      (ax_mu, "mean proxy prediction of -score")):
        ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
        ax.set(title=title, ylabel="kcal/mol")
        ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
