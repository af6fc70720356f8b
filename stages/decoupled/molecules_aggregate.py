"""One row per (temperature rule, tau, seed) of soft Q-learning on fragment molecules, the claims and a plot.
Claims (output `claims`, stages.common.stats; the training seed is the unit, the two rules of a tau compared
paired by seed), per tau: the decoupled temperature's samples earn a higher mean sEH reward than the fixed
one's, and hold more distinct modes (r > mode_threshold). metrics.json's `checks` are their verdicts."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.stage import StageContext

COLUMNS = ("mean_reward", "top10_unique_mean_reward", "modes", "unique_fraction", "mean_blocks",
           "at_max_blocks", "molecules_scored")
SCHEMA = pa.schema([("temperature", pa.string()), ("tau", pa.float64()), ("seed", pa.int32())]
                   + [(c, pa.int64() if c in ("modes", "molecules_scored") else pa.float64()) for c in COLUMNS])
METHOD = "decoupled"
CLAIMED = {"mean_reward": "a higher mean sEH reward of its samples",
           "modes": "more distinct modes (reward above the mode threshold) among its samples"}


def claim_rows(rows: list[dict]) -> dict[str, dict]:
    """{check name: claim row}: decoupled vs fixed temperature per tau, paired by seed."""
    out = {}
    for tau in sorted({r["tau"] for r in rows}):
        of = {mode: {r["seed"]: r for r in rows if r["temperature"] == mode and r["tau"] == tau}
              for mode in ("decoupled", "fixed")}
        seeds = sorted(set(of["decoupled"]) & set(of["fixed"]))
        if not seeds:
            continue
        for column, text in CLAIMED.items():
            out[f"decoupled_{column}_above_fixed_tau{tau:g}"] = stats.paired(
                [of["decoupled"][s][column] for s in seeds], [of["fixed"][s][column] for s in seeds],
                method=METHOD, metric=f"{column} of the evaluation samples, decoupled minus fixed temperature",
                claim_text=f"fragment molecules, tau {tau:g}: the decoupled temperature gives {text} than a "
                           f"fixed one")
    return out


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
    claims = claim_rows(rows)
    ctx.write_claims("claims", list(claims.values()))
    checks = {name: c["holds"] for name, c in claims.items()}
    reward_claims = [c for name, c in claims.items() if name.startswith("decoupled_mean_reward")]
    if reward_claims:
        checks["decoupled_higher_mean_reward_at_every_tau"] = all(c["holds"] for c in reward_claims)
    ctx.write_json("metrics", {"runs": summary, "checks": checks,
                               "n_seeds": min((c["n"] for c in claims.values()), default=0)})

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
