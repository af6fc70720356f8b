"""Collect every (system, seed) evaluation into one table, one error-vs-horizon plot and the claims:
does periodic reencoding with the validated k beat both no and every-step reencoding at the horizon
(test MSE, and for Duffing the fraction of test trajectories ending in the right well)?

Claims (output `claims`, stages.common.stats): the training seed is the unit; every mode of a seed is rolled
out from the same test initial states, so modes are compared paired by seed. MSE is compared on a log10
scale (errors span orders of magnitude across seeds and modes). metrics.json's `periodic_beats_both` is
the conjunction of the two MSE claims of its system.

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

from stages.common import stats
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
RIVALS = {"none": "no reencoding", "every": "every-step reencoding"}
METHOD = "koopman"


def nan_if_none(value) -> float:
    return math.nan if value is None else float(value)


def none_if_nan(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def verdict_of(c: dict) -> dict:
    """A claim row as plain JSON for metrics.json (null where the row has NaN)."""
    return {"holds": c["holds"], "effect": none_if_nan(c["effect"]), "n": c["n"],
            "ci": [none_if_nan(c["ci_low"]), none_if_nan(c["ci_high"])], "p_value": none_if_nan(c["p_value"]),
            "detail": c["detail"]}


def by_seed(rows: list[dict], system: str, mode: str, name: str) -> dict[int, float]:
    return {r["seed"]: r[name] for r in rows if r["system"] == system and r["mode"] == mode}


def claim_rows(rows: list[dict], horizon_of: dict[str, int]) -> list[dict]:
    """Per system: periodic beats each rival on log10 test MSE at the horizon; where wells are scored,
    periodic puts more test trajectories in the right well than each rival. Paired by seed."""
    out = []
    for system in sorted({r["system"] for r in rows}):
        periodic = by_seed(rows, system, "periodic", "mse_final")
        seeds = sorted(periodic)
        ks = [k for _, k in sorted(by_seed(rows, system, "periodic", "k").items())]
        for rival, label in RIVALS.items():
            other = by_seed(rows, system, rival, "mse_final")
            a = np.log10([other[s] for s in seeds])
            b = np.log10([periodic[s] for s in seeds])
            blown = [s for s in seeds if not (np.isfinite(other[s]) and np.isfinite(periodic[s]))]
            out.append(stats.paired(
                a, b, method=METHOD, metric=f"log10 test MSE@{horizon_of[system]}, {rival} minus periodic",
                claim_text=f"{system}: periodic reencoding (k = {ks} chosen on val) has lower held-out "
                           f"MSE@{horizon_of[system]} than {label}",
                detail=(("not shown: fewer than 2 units; " if len(seeds) < 2 else "")
                        + f"non-finite MSE (blown-up rollout) in seed(s) {blown}") if blown else ""))
        if all(np.isfinite(v) for v in by_seed(rows, system, "periodic", "basin_acc").values()):
            acc = by_seed(rows, system, "periodic", "basin_acc")
            for rival, label in RIVALS.items():
                other = by_seed(rows, system, rival, "basin_acc")
                out.append(stats.paired(
                    [acc[s] for s in seeds], [other[s] for s in seeds], method=METHOD,
                    metric=f"test basin accuracy at step {horizon_of[system]}, periodic minus {rival}",
                    claim_text=f"{system}: periodic reencoding ends more held-out trajectories in the right "
                               f"well than {label}"))
    return out


def run(ctx: StageContext) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, curves = [], defaultdict(lambda: defaultdict(list))   # curves[system][mode] -> [mse per step]
    horizon_of: dict[str, int] = {}
    metrics_of = {p.parent: p for p in ctx.input_list("metrics")}
    for err_path in ctx.input_list("errors"):
        wildcards = read_provenance(err_path)["wildcards"]
        system, seed = wildcards["system"], int(wildcards["seed"])
        metrics = json.loads(metrics_of[err_path.parent].read_text())
        horizon_of[system] = metrics["horizon"]
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
    claims = claim_rows(rows, horizon_of)
    ctx.write_claims("claims", claims)

    summary = {}
    for system in sorted(curves):
        mine = [r for r in rows if r["system"] == system]
        means = {mode: {name: float(np.mean([r[name] for r in mine if r["mode"] == mode]))
                        for name in METRICS} for mode in MODES}
        final = {mode: means[mode]["mse_final"] for mode in MODES}
        mine_claims = {c["metric"]: c for c in claims if c["claim"].startswith(f"{system}:")}
        mse_claims = [c for m, c in mine_claims.items() if m.startswith("log10 test MSE")]
        beats = bool(mse_claims) and all(c["holds"] for c in mse_claims)
        summary[system] = {
            "n_seeds": len({r["seed"] for r in mine}),
            "chosen_k": [r["k"] for r in mine if r["mode"] == "periodic"],
            # A NaN mean (a blown-up seed) compares False, so it never counts as a win.
            **{mode: {n: (v if math.isfinite(v) else None) for n, v in means[mode].items()}
               for mode in MODES},
            # the claims' verdicts (paired by seed, see claims.parquet), not a comparison of means
            "periodic_beats_both": beats,
            "claims": {m: verdict_of(c) for m, c in mine_claims.items()},
        }
        log.info("%s: test MSE@horizon %s, periodic beats both (claims): %s", system, final, beats)
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
