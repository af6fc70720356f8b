"""Collect every (system, seed) evaluation into one table, one error-vs-horizon plot and a verdict:
does periodic reencoding with the validated k beat both no and every-step reencoding at the horizon?

System and seed are the wildcards recorded in each rollout_error.parquet's provenance; each metrics.json
(plain JSON, no provenance) is the one written beside it by the same evaluate job.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.koopman.evaluate import ERRORS_SCHEMA

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = pa.schema([
    ("system", pa.string()),
    ("seed", pa.int32()),
    ("mode", pa.string()),          # none / every / periodic (with the k chosen on val)
    ("k", pa.int32()),
    ("report_step", pa.int32()),    # the step mse_report is read at (evaluate.report_step)
    ("mse_report", pa.float64()),
    ("mse_final", pa.float64()),    # at the horizon
    ("mse_mean", pa.float64()),     # mean over steps 1..horizon
    ("basin_acc", pa.float64()),    # NaN where wells are not scored
])
MODES = ("none", "every", "periodic")
METRICS = ("mse_report", "mse_final", "mse_mean", "basin_acc")


def nan_if_none(value) -> float:
    return math.nan if value is None else float(value)


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves = [], defaultdict(lambda: defaultdict(list))   # curves[system][mode] -> [mse per step]
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    for err_path in ctx.input_list("errors"):
        wildcards = read_provenance(err_path)["wildcards"]
        system, seed = wildcards["system"], int(wildcards["seed"])
        metrics = json.loads(metrics_of[err_path.parent].read_text())
        for mode in MODES:
            m = metrics["test"][mode]
            rows.append({"system": system, "seed": seed, "mode": mode, "k": m["k"],
                         "report_step": metrics["report_step"],
                         **{name: nan_if_none(m[name]) for name in METRICS}})
        errors = read_table(err_path, ERRORS_SCHEMA)
        errors = errors.filter(pc.equal(errors["split"], "test")).sort_by("step")
        for mode in MODES:
            k = metrics["test"][mode]["k"]
            sel = errors.filter(pc.and_(pc.equal(errors["mode"], mode), pc.equal(errors["k"], k)))
            curves[system][mode].append(sel["mse"].to_numpy())
    rows.sort(key=lambda r: (r["system"], r["seed"], MODES.index(r["mode"])))
    ctx.write_table("table", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA)

    summary = {}
    for system in sorted(curves):
        mine = [r for r in rows if r["system"] == system]
        means = {mode: {name: float(np.mean([r[name] for r in mine if r["mode"] == mode]))
                        for name in METRICS} for mode in MODES}
        final = {mode: means[mode]["mse_final"] for mode in MODES}
        beats = bool(final["periodic"] < final["none"] and final["periodic"] < final["every"])
        summary[system] = {
            "n_seeds": len({r["seed"] for r in mine}),
            "chosen_k": [r["k"] for r in mine if r["mode"] == "periodic"],
            # A NaN mean (a blown-up seed) compares False, so it never counts as a win.
            **{mode: {n: (v if math.isfinite(v) else None) for n, v in means[mode].items()}
               for mode in MODES},
            "periodic_beats_both": beats,
        }
        log.info("%s: test MSE@horizon %s, periodic beats both: %s", system, final, beats)
    ctx.write_json("metrics", summary)

    systems = sorted(curves)
    fig, axes = plt.subplots(1, len(systems), figsize=(5 * len(systems), 3.8), squeeze=False)
    for ax, system in zip(axes[0], systems):
        for mode in MODES:
            mse = np.mean(curves[system][mode], axis=0)
            ks = ",".join(map(str, summary[system]["chosen_k"]))
            label = mode if mode != "periodic" else f"periodic (k = {ks} on val)"
            ax.plot(np.arange(1, len(mse) + 1), mse, label=label)
        ax.set(yscale="log", xlabel="rollout step", ylabel="test MSE",
               title=f"{system} (mean over {summary[system]['n_seeds']} seed(s))")
        ax.legend()
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=110)
