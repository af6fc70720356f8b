"""Grid toy summary: expected episode length per d, standard vs decoupled temperature, the check
"decoupled within `tolerance` of the shortest path for every d, standard not", and a plot."""
from __future__ import annotations

import logging

import pyarrow as pa

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.decoupled.grid_toy import LENGTHS_SCHEMA

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = pa.schema([
    ("d", pa.int32()),
    ("shortest_path", pa.int32()),
    ("standard_length", pa.float64()),
    ("decoupled_length", pa.float64()),
    ("standard_ratio", pa.float64()),
    ("decoupled_ratio", pa.float64()),
    ("decoupled_tau", pa.float64()),
])


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tol = ctx.params["aggregate"]["tolerance"]
    lengths = read_table(ctx.inputs["lengths"], LENGTHS_SCHEMA).to_pylist()
    by = {(r["d"], r["regularizer"]): r for r in lengths}
    dims = sorted({r["d"] for r in lengths})
    rows = [{"d": d, "shortest_path": by[d, "standard"]["shortest_path"],
             "standard_length": by[d, "standard"]["expected_length"],
             "decoupled_length": by[d, "decoupled"]["expected_length"],
             "standard_ratio": by[d, "standard"]["ratio"], "decoupled_ratio": by[d, "decoupled"]["ratio"],
             "decoupled_tau": by[d, "decoupled"]["tau"]} for d in dims]
    ctx.write_table("table", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA)

    within = {r["d"]: r["decoupled_ratio"] - 1 <= tol for r in rows}
    standard_within = {r["d"]: r["standard_ratio"] - 1 <= tol for r in rows}
    verdict = {
        "tolerance": tol,
        "decoupled_within_tolerance_every_d": all(within.values()),
        "standard_outside_tolerance_dims": [d for d, ok in standard_within.items() if not ok],
        "standard_outside_tolerance_some_d": not all(standard_within.values()),
        "per_d": {str(r["d"]): {k: r[k] for k in ("shortest_path", "standard_length", "decoupled_length")}
                  for r in rows},
    }
    log.info("decoupled within %.0f%% for every d: %s; standard outside for d = %s", 100 * tol,
             verdict["decoupled_within_tolerance_every_d"], verdict["standard_outside_tolerance_dims"])
    ctx.write_json("metrics", verdict)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(dims, [r["shortest_path"] for r in rows], "k--", label="shortest path 3d" if
            rows[0]["shortest_path"] == 3 * dims[0] else "shortest path")
    ax.plot(dims, [r["standard_length"] for r in rows], "o-", label="standard temperature")
    ax.plot(dims, [r["decoupled_length"] for r in rows], "s-", label="decoupled tau / log|A|")
    ax.set(yscale="log", xlabel="grid dimension d", ylabel="expected episode length",
           title="soft value iteration, exact", xticks=dims)
    ax.legend()
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=110)
