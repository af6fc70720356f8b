"""Grid toy summary: expected episode length per d, standard vs decoupled temperature, the claims
"decoupled within `tolerance` of the shortest path for every d" and "the standard temperature's length
grows with d, beyond the tolerance", and a plot.

The lengths come from exact soft value iteration: no seed, no sampling, so the claim rows (output
`claims`) carry the exact value as their effect and a degenerate interval, with n the number of d values
and test "exact"; metrics.json's verdicts are those rows' `holds`."""
from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa

from stages.common import stats
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


METHOD = "decoupled"
EXACT = "exact: soft value iteration, no sampling error"


def claim_rows(rows: list[dict], tol: float) -> dict[str, dict]:
    dims = [r["d"] for r in rows]
    dec = np.array([r["decoupled_ratio"] for r in rows])
    std = np.array([r["standard_ratio"] for r in rows])
    worst = float(dec.max() - 1)
    grows = bool(np.all(np.diff(std) > 0)) and float(std[-1] - 1) > tol
    per_d = ", ".join(f"d={d}: {a:.3f} vs {b:.3f}" for d, a, b in zip(dims, dec, std))
    unit = "grid dimension d"
    return {
        "decoupled_within_tolerance_every_d": stats.claim(
            METHOD, f"grid toy: the decoupled temperature's expected episode length is within {tol:.0%} of the "
                    f"shortest path for every d in {dims}", "largest (expected length / shortest path) - 1 over d",
            worst, (worst, worst), len(dims), unit, "exact", math.nan, worst <= tol,
            detail=f"{EXACT}; length / shortest path, decoupled vs standard: {per_d}"),
        "standard_grows_with_d": stats.claim(
            METHOD, f"grid toy: the standard temperature's expected length grows with d and leaves the {tol:.0%} "
                    f"band (action-space size 2d)", f"(expected length / shortest path) - 1 at d = {dims[-1]}",
            float(std[-1] - 1), (float(std[-1] - 1),) * 2, len(dims), unit, "exact", math.nan, grows,
            detail=f"{EXACT}; standard ratios {[round(float(x), 3) for x in std]}"),
    }


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

    claims = claim_rows(rows, tol)
    ctx.write_claims("claims", list(claims.values()))
    standard_within = {r["d"]: r["standard_ratio"] - 1 <= tol for r in rows}
    verdict = {
        "tolerance": tol,
        "decoupled_within_tolerance_every_d": claims["decoupled_within_tolerance_every_d"]["holds"],
        "standard_grows_with_d": claims["standard_grows_with_d"]["holds"],
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
