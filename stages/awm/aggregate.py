"""Aggregate the AWM study over seeds: gradient-norm vs H, prediction error vs horizon, costs, claims.

The unit is the training seed. Gradient growth: per seed and kind, log(mean |dJ/dtheta|) is fitted
against H (exponential growth) and against log H (polynomial); R^2 of each and the slopes go in the
table, and the claims compare them paired over seeds. Costs: each seed's true-environment cost per
(task, kind, H); claims pair kinds on seeds (same evaluation states, same policy initialisation).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.awm.models import log_linear_fits
from stages.common import artifacts, stats
from stages.common.stage import StageContext

METHOD = "awm"


def _frame(paths, extra=("task", "seed")) -> pd.DataFrame:
    parts = []
    for path in paths:
        wc = artifacts.read_provenance(path)["wildcards"]
        df = artifacts.read_table(path).to_pandas()
        for key in extra:
            df[key] = int(wc[key]) if key == "seed" else wc[key]
        parts.append(df)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def gradient_summary(grads: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per task/kind/H over seeds: mean norm, total variance; per task/kind/seed: the two fits)."""
    rows = []
    for (task, kind, H), part in grads.groupby(["task", "kind", "horizon"]):
        means = (
            np.stack([np.asarray(m, float) for m in part.mean_grad if len(m)])
            if any(len(m) for m in part.mean_grad)
            else None
        )
        between = float(means.var(0, ddof=1).mean()) if means is not None and len(means) > 1 else math.nan
        within = float(part.var_within.mean())
        rows.append(
            {
                "task": task,
                "kind": kind,
                "horizon": int(H),
                "seeds": len(part),
                "norm_mean": float(part.norm_mean.mean()),
                "norm_sd": float(part.norm_mean.std(ddof=1)),
                "variance_total": within + (between if math.isfinite(between) else 0.0),
                "variance_within": within,
                "n_nonfinite": int(part.n_nonfinite.sum()),
            }
        )
    fits = []
    for (task, kind, seed), part in grads.groupby(["task", "kind", "seed"]):
        part = part.sort_values("horizon")
        ok = np.isfinite(part.norm_mean) & (part.norm_mean > 0)
        if ok.sum() < 3:
            continue
        f = log_linear_fits(part.horizon[ok].tolist(), part.norm_mean[ok].tolist())
        hs, ns = part.horizon[ok].to_numpy(), part.norm_mean[ok].to_numpy()
        fits.append(
            {
                "task": task,
                "kind": kind,
                "seed": int(seed),
                **f,
                "log_growth": float(np.log(ns[-1] / ns[0])),
                "h_min": int(hs[0]),
                "h_max": int(hs[-1]),
                "better_fit": "exponential" if f["exp_r2"] > f["poly_r2"] else "polynomial",
            }
        )
    return pd.DataFrame(rows), pd.DataFrame(fits)


def gradient_claims(fits: pd.DataFrame, task: str, conf: float) -> list[dict]:
    claims = []
    f = fits[fits.task == task]
    by = {k: g.sort_values("seed").set_index("seed") for k, g in f.groupby("kind")}
    for kind in ("sim", "markov"):
        if kind in by:
            claims.append(
                stats.paired(
                    by[kind].exp_r2,
                    by[kind].poly_r2,
                    method=METHOD,
                    confidence=conf,
                    claim_text=f"{task}: {kind} gradient norm grows exponentially in H "
                    "(log-norm fits H better than log H)",
                    metric="R2(exp) - R2(poly)",
                )
            )
    for kind in ("awm", "awm_lstm"):
        if kind not in by:
            continue
        claims.append(
            stats.one_sample(
                by[kind].poly_slope,
                method=METHOD,
                null=3.0,
                alternative="less",
                confidence=conf,
                metric="fitted exponent p in |g| ~ H^p",
                claim_text=f"{task}: {kind} gradient norm grows at most polynomially (exponent below the paper's 3)",
            )
        )
        if "sim" in by:
            common = by[kind].index.intersection(by["sim"].index)
            claims.append(
                stats.paired(
                    by["sim"].log_growth[common],
                    by[kind].log_growth[common],
                    method=METHOD,
                    confidence=conf,
                    metric="log |g|(H_max)/|g|(H_min): sim - " + kind,
                    claim_text=f"{task}: {kind} gradient norm grows less with H than the simulator's",
                )
            )
    return claims


def cost_claims(ev: pd.DataFrame, tasks: list[str], within: float, conf: float) -> list[dict]:
    claims = []
    for task in tasks:
        e = ev[(ev.task == task) & ev.kind.isin(["awm", "markov"])]
        if e.empty:
            continue
        H = int(e.horizon.max())
        e = e[e.horizon == H].pivot(index="seed", columns="kind", values="cost").dropna()
        gaps = ev[(ev.task == task) & (ev.kind == "awm") & (ev.horizon == H)].sort_values("seed").rel_gap
        claims.append(
            stats.one_sample(
                gaps,
                method=METHOD,
                null=within,
                alternative="less",
                confidence=conf,
                metric=f"(cost - optimum) / |optimum| at H={H}",
                claim_text=f"{task}: AWM policy within {within:.0%} of the direct-shooting optimum at H={H}",
            )
        )
        if {"awm", "markov"} <= set(e.columns):
            claims.append(
                stats.paired(
                    e.markov,
                    e.awm,
                    method=METHOD,
                    confidence=conf,
                    metric=f"true cost markov - awm at H={H}",
                    claim_text=f"{task}: AWM policy beats the Markovian-model policy at the longest horizon H={H}",
                )
            )
    return claims


def _plots(ctx: StageContext, gsum: pd.DataFrame, errors: pd.DataFrame, ev: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(gsum.task.unique()) if not gsum.empty else []
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for kind, part in gsum[gsum.task == task].groupby("kind"):
            part = part.sort_values("horizon")
            ax.errorbar(part.horizon, part.norm_mean, yerr=part.norm_sd.fillna(0), marker="o", label=kind, capsize=3)
        ax.set(
            xscale="log", yscale="log", xlabel="horizon H", ylabel="mean |dJ/dtheta|", title=f"{task}: gradient norm"
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot_gradients", fig)

    etasks = sorted(errors.task.unique())
    fig, axes = plt.subplots(1, len(etasks), figsize=(4.5 * len(etasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], etasks):
        mean = errors[errors.task == task].groupby(["kind", "horizon"]).mse.mean().reset_index()
        for kind, part in mean.groupby("kind"):
            ax.plot(part.horizon, part.mse, label=kind)
        ax.set(yscale="log", xlabel="prediction step", ylabel="held-out MSE (standardised)", title=task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("plot_errors", fig)

    ctasks = sorted(ev.task.unique())
    fig, axes = plt.subplots(1, len(ctasks), figsize=(4.5 * len(ctasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], ctasks):
        part = ev[ev.task == task]
        mean = part.groupby(["kind", "horizon"]).cost.mean().reset_index()
        for kind, p in mean.groupby("kind"):
            ax.plot(p.horizon, p.cost, marker="o", label=kind)
        opt = part.groupby("horizon").optimum.first()
        ax.plot(opt.index, opt.values, "k--", label="direct shooting")
        ax.set(xlabel="horizon H", ylabel="true cost", title=task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("plot_costs", fig)


def run(ctx: StageContext) -> None:
    cfg = ctx.params["aggregate"]
    conf = cfg["confidence"]
    ev = _frame(ctx.input_list("evaluation"))
    errors = _frame(ctx.input_list("errors"))
    grads = _frame(ctx.input_list("gradients"))
    gsum, fits = gradient_summary(grads)

    costs = (
        ev.groupby(["task", "kind", "horizon"])
        .agg(
            cost_mean=("cost", "mean"),
            cost_sd=("cost", "std"),
            optimum=("optimum", "first"),
            rel_gap_mean=("rel_gap", "mean"),
            seeds=("seed", "nunique"),
            nonfinite=("finite", lambda x: int((~x).sum())),
        )
        .reset_index()
    )

    claims = []
    for task in sorted(fits.task.unique()) if not fits.empty else []:
        claims += gradient_claims(fits, task, conf)
    ode_tasks = [t for t in sorted(ev.task.unique()) if t != "pendulum"]
    claims += cost_claims(ev, ode_tasks, cfg["within"], conf)
    ctx.write_claims("claims", claims)

    for name, df in (("costs", costs), ("gradient_table", gsum), ("gradient_fits", fits)):
        table = pa.Table.from_pandas(df, preserve_index=False)
        ctx.write_table(name, table, table.schema)
    _plots(ctx, gsum, errors, ev)

    failures = []
    for key in ("wm_metrics", "policy_metrics"):
        for path in ctx.input_list(key):
            m = json.loads(open(path).read())
            failures += [{**f, "task": m["task"], "seed": m["seed"], "stage": key} for f in m["failures"]]
    ctx.write_json(
        "metrics",
        {
            "claims_holding": int(sum(c["holds"] for c in claims)),
            "claims": len(claims),
            "failures": failures,
            "better_fit": {
                f"{r.task}/{r.kind}": r.better_fit
                for r in fits.groupby(["task", "kind"])
                .agg(better_fit=("better_fit", lambda x: x.mode()[0]))
                .reset_index()
                .itertuples()
            }
            if not fits.empty
            else {},
            "rel_gap_at_longest_h": {
                f"{r.task}/{r.kind}": r.rel_gap_mean
                for r in costs.itertuples()
                if r.horizon == costs[costs.task == r.task].horizon.max() and math.isfinite(r.rel_gap_mean)
            },
        },
    )  # the pendulum's optimum is 0: no ratio
