"""One row per (temperature rule, tau, seed) of soft Q-learning on fragment molecules, a check and a plot.
Check (per tau): the decoupled temperature's samples earn a higher mean sEH reward than the fixed one's."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.common.stage import StageContext

COLUMNS = ("mean_reward", "top10_unique_mean_reward", "modes", "unique_fraction", "mean_blocks",
           "at_max_blocks", "molecules_scored")
SCHEMA = pa.schema([("temperature", pa.string()), ("tau", pa.float64()), ("seed", pa.int32())]
                   + [(c, pa.int64() if c in ("modes", "molecules_scored") else pa.float64()) for c in COLUMNS])


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(({"temperature": m["temperature"], "tau": m["tau"], "seed": m["seed"],
                    **{c: m[c] for c in COLUMNS}}
                   for m in (json.loads(p.read_text()) for p in ctx.input_list("metrics"))),
                  key=lambda r: (r["temperature"], r["tau"], r["seed"]))
    ctx.write_table("table", pa.Table.from_pylist(rows, SCHEMA), SCHEMA)

    taus = sorted({r["tau"] for r in rows})
    modes = sorted({r["temperature"] for r in rows})

    def mean(mode, tau, key):
        return float(np.mean([r[key] for r in rows if r["temperature"] == mode and r["tau"] == tau]))

    summary = {f"{mode}_tau{tau:g}": {c: mean(mode, tau, c) for c in COLUMNS} for mode in modes for tau in taus}
    checks = {}
    if {"fixed", "decoupled"} <= set(modes):
        checks["decoupled_higher_mean_reward_at_every_tau"] = all(
            mean("decoupled", t, "mean_reward") > mean("fixed", t, "mean_reward") for t in taus)
    ctx.write_json("metrics", {"runs": summary, "checks": checks})

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "mean_reward", "mean sEH reward of samples"),
                           (axes[1], "mean_blocks", "mean blocks per molecule")):
        for mode in modes:
            ax.plot(taus, [mean(mode, t, key) for t in taus], marker="o", label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("tau")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
