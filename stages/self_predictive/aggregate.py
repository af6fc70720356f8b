"""Aggregate the three studies: claims (stages.common.stats, the training seed as the unit), a summary
table, and the plots (collapse curves on a log axis, return / rank / |cos| vs steps, POMDP success).

Run identity comes from each artifact's provenance wildcards. Claims:
  linear, per env: log10 |cos| at `linear_step`, online minus detached (and minus EMA), paired per seed,
    against log10(linear_ratio) (one-sided: online is at least `linear_ratio` times larger);
  mdp, at `mdp_distractors`: ZP-EMA's latent rank (mean over the second half of training) above online
    ZP's, online ZP's |cos| above ZP-EMA's; ZP-EMA's final return above online ZP's, none's and OP's
    (one-sided superiority tests, paired per seed: same seeds, same
    evaluation episodes); seeds with a diverged run in a pair are left out and counted in `detail`;
  pomdp: ZP-EMA's final greedy success rate minus none's and minus OP's, two-sided (stated with its
    interval whichever way it goes).
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from stages.common import artifacts, stats  # noqa: E402
from stages.common.stage import StageContext  # noqa: E402

METHOD = "self_predictive"
SUMMARY_SCHEMA = pa.schema([("study", pa.string()), ("setting", pa.string()), ("variant", pa.string()),
                            ("metric", pa.string()), ("n", pa.int64()), ("mean", pa.float64()),
                            ("std", pa.float64()), ("median", pa.float64()), ("q25", pa.float64()),
                            ("q75", pa.float64())])


def _wildcards(path) -> dict:
    return artifacts.read_provenance(path)["wildcards"]


def load_linear(paths) -> pd.DataFrame:
    frames = []
    for p in paths:
        df = artifacts.read_table(p).to_pandas()
        frames.append(df.assign(env=_wildcards(p)["sp_env"]))
    return pd.concat(frames, ignore_index=True)


def describe(study: str, setting: str, variant: str, metric: str, values) -> dict:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"study": study, "setting": setting, "variant": variant, "metric": metric, "n": 0,
                "mean": math.nan, "std": math.nan, "median": math.nan, "q25": math.nan, "q75": math.nan}
    return {"study": study, "setting": setting, "variant": variant, "metric": metric, "n": len(v),
            "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75))}


def linear_claims(df: pd.DataFrame, step: int, ratio: float, confidence: float) -> tuple[list, list]:
    claims, rows = [], []
    for env, at_env in df.groupby("env", sort=True):
        at = at_env[at_env.step == step]
        if at.empty:
            raise ValueError(f"self_predictive.aggregate.linear_step = {step} is not a logged step of {env}")
        by = {t: g.set_index("seed").abs_cos.sort_index() for t, g in at.groupby("target")}
        for t, v in by.items():
            rows.append(describe("linear", env, t, f"abs_cos@{step}", v))
        if "online" not in by:
            continue
        for other in ("detached", "ema"):
            if other not in by:
                continue
            a, b = np.log10(by["online"]), np.log10(by[other])
            med = float(np.median(by["online"])) / float(np.median(by[other]))
            claims.append(stats.paired(
                a.to_numpy(), b.to_numpy(), method=METHOD, null=math.log10(ratio), confidence=confidence,
                claim_text=f"linear {env}: online |cos| >= {ratio:g}x {other} after {step} steps",
                metric=f"log10 |cos| online - {other} (step {step}; null log10 {ratio:g})",
                detail=f"median |cos| online {np.median(by['online']):.3g}, {other} {np.median(by[other]):.3g}, "
                       f"ratio of medians {med:.3g}; {len(a)} seeds"))
    return claims, rows


def load_runs(summary_paths, curve_paths, evals_paths=None):
    """Summaries, curves and evaluations of the runs; the i-th curve / evals file is the i-th summary's run
    (the rule expands them over the same wildcards), whose identity comes from its provenance."""
    summaries, curves, evals = [], [], []
    for i, sp in enumerate(summary_paths):
        w = _wildcards(sp)
        ident = {"variant": w.get("sp_variant", w.get("sp_pomdp_variant")), "seed": int(w["seed"]),
                 "distractors": int(w.get("sp_distractors", -1))}
        summaries.append(artifacts.read_table(sp).to_pandas())
        curves.append(pd.read_csv(curve_paths[i]).assign(**ident))
        if evals_paths is not None:
            if _wildcards(evals_paths[i]) != w:
                raise ValueError(f"{evals_paths[i]} is not the run of {sp}")
            evals.append(artifacts.read_table(evals_paths[i]).to_pandas().assign(**ident))
    return (pd.concat(summaries, ignore_index=True), pd.concat(curves, ignore_index=True),
            pd.concat(evals, ignore_index=True) if evals_paths is not None else None)


def _pair(values: dict, a: str, b: str):
    seeds = sorted(set(values.get(a, {})) & set(values.get(b, {})))
    ok = [s for s in seeds if np.isfinite(values[a][s]) and np.isfinite(values[b][s])]
    return [values[a][s] for s in ok], [values[b][s] for s in ok], len(seeds) - len(ok)


def mdp_claims(summ: pd.DataFrame, curves: pd.DataFrame, distractors: int, confidence: float):
    claims = []
    at = summ[summ.distractors == distractors]
    cur = curves[curves.distractors == distractors]
    half = cur.step.max() / 2 if len(cur) else 0
    late = cur[cur.step > half].groupby(["variant", "seed"])[["rank", "srank", "abs_cos"]].mean()
    rank = {v: {s: float(late.loc[(v, s), "rank"]) for s in g.seed} for v, g in at.groupby("variant")
            if v in late.index.get_level_values(0)}
    cos = {v: {s: float(late.loc[(v, s), "abs_cos"]) for s in g.seed} for v, g in at.groupby("variant")
           if v in late.index.get_level_values(0)}
    ret = {v: dict(zip(g.seed, g.final_return)) for v, g in at.groupby("variant")}
    if {"zp_ema", "zp_online"} <= set(rank):
        a, b, dropped = _pair(rank, "zp_ema", "zp_online")
        claims.append(stats.paired(a, b, method=METHOD, confidence=confidence,
                                   claim_text=f"mdp d={distractors}: ZP-EMA keeps a higher latent rank than online ZP",
                                   metric="matrix_rank(atol 1e-3) mean over 2nd half, EMA - online",
                                   detail=f"{dropped} seeds without both runs" if dropped else ""))
        a, b, dropped = _pair(cos, "zp_online", "zp_ema")
        claims.append(stats.paired(a, b, method=METHOD, confidence=confidence,
                                   claim_text=f"mdp d={distractors}: online ZP latent dims more aligned than ZP-EMA's",
                                   metric="mean |cos| between latent dims over 2nd half, online - EMA",
                                   detail=f"{dropped} seeds without both runs" if dropped else ""))
    for other in ("zp_online", "none", "op"):
        if {"zp_ema", other} <= set(ret):
            a, b, dropped = _pair(ret, "zp_ema", other)
            claims.append(stats.paired(a, b, method=METHOD, confidence=confidence,
                                       claim_text=f"mdp d={distractors}: ZP-EMA return above {other}",
                                       metric=f"final greedy return, ZP-EMA - {other}",
                                       detail=f"{dropped} seeds dropped (diverged)" if dropped else ""))
    return claims


def pomdp_claims(summ: pd.DataFrame, confidence: float):
    claims = []
    succ = {v: dict(zip(g.seed, g.final_success)) for v, g in summ.groupby("variant")}
    for other in ("none", "op"):
        if {"zp_ema", other} <= set(succ):
            a, b, dropped = _pair(succ, "zp_ema", other)
            claims.append(stats.paired(a, b, method=METHOD, alternative="two-sided", confidence=confidence,
                                       claim_text=f"pomdp: ZP-EMA success rate differs from {other}",
                                       metric=f"final greedy success rate, ZP-EMA - {other}",
                                       detail=f"{dropped} seeds dropped (diverged)" if dropped else ""))
    return claims


def plot_linear(df: pd.DataFrame):
    envs = sorted(df.env.unique())
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for target, g in df[df.env == env].groupby("target"):
            q = g.groupby("step").abs_cos.quantile([0.25, 0.5, 0.75]).unstack()
            ax.plot(q.index, q[0.5], label=target)
            ax.fill_between(q.index, q[0.25], q[0.75], alpha=0.25)
        ax.set(yscale="log", xlabel="SGD step", ylabel="|cos| between encoder columns", title=env)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_runs(curves: pd.DataFrame, evals: pd.DataFrame | None, x: str, y_first: str):
    settings = sorted(curves.distractors.unique())
    fig, axes = plt.subplots(len(settings), 3, figsize=(14, 3.4 * len(settings)), squeeze=False)
    for row, d in zip(axes, settings):
        cur = curves[curves.distractors == d]
        for v, g in cur.groupby("variant"):
            m = g.groupby(x)[["rank", "srank", "abs_cos"]].mean()
            line, = row[1].plot(m.index, m["rank"], label=f"{v} rank")
            row[1].plot(m.index, m["srank"], "--", color=line.get_color(), label=f"{v} srank")
            row[2].plot(m.index, m["abs_cos"], label=v)
            if evals is None:
                s = g.groupby(x)[y_first].mean()
                row[0].plot(s.index, s.values, label=v)
        if evals is not None:
            ev = evals[evals.distractors == d]
            for v, g in ev.groupby("variant"):
                s = g.groupby(["step", "seed"])["return"].mean().groupby("step").mean()
                row[0].plot(s.index, s.values, label=v)
        tag = f" (distractors {d})" if d >= 0 else ""
        row[0].set(xlabel=x, ylabel=y_first, title=f"{y_first}{tag}")
        row[1].set(xlabel=x, ylabel="rank (atol 1e-3), srank (dashed)", title=f"latent rank{tag}")
        row[2].set(xlabel=x, ylabel="mean |cos| between latent dims", title=f"|cos|{tag}")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def run(ctx: StageContext) -> None:
    cfg = ctx.params["aggregate"]
    conf = cfg["confidence"]
    lin = load_linear(ctx.input_list("collapse"))
    claims, rows = linear_claims(lin, cfg["linear_step"], cfg["linear_ratio"], conf)

    summ, curves, evals = load_runs(ctx.input_list("mdp_summary"), ctx.input_list("mdp_curve"),
                                    ctx.input_list("mdp_evals"))
    if cfg["mdp_distractors"] not in set(summ.distractors):
        raise ValueError(f"self_predictive.aggregate.mdp_distractors = {cfg['mdp_distractors']} is not a "
                         f"trained distractor count {sorted(set(summ.distractors))}")
    claims += mdp_claims(summ, curves, cfg["mdp_distractors"], conf)
    for (d, v), g in summ.groupby(["distractors", "variant"]):
        for metric in ("final_return", "final_rank", "final_srank", "final_abs_cos"):
            rows.append(describe("mdp", f"distractors={d}", v, metric, g[metric]))
        rows.append(describe("mdp", f"distractors={d}", v, "diverged", (g.status == "diverged").astype(float)))

    psumm, pcurves, _ = load_runs(ctx.input_list("pomdp_summary"), ctx.input_list("pomdp_curve"))
    claims += pomdp_claims(psumm, conf)
    for v, g in psumm.groupby("variant"):
        for metric in ("final_success", "final_rank", "final_abs_cos"):
            rows.append(describe("pomdp", "delayed_cue", v, metric, g[metric]))

    ctx.write_claims("claims", claims)
    ctx.write_table("table", pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    ctx.save_figure("plot_collapse", plot_linear(lin))
    ctx.save_figure("plot_mdp", plot_runs(curves, evals, "step", "return"))
    ctx.save_figure("plot_pomdp", plot_runs(pcurves, None, "episode", "success"))
    ctx.write_json("metrics", {
        "claims": len(claims), "claims_holding": int(sum(c["holds"] for c in claims)),
        "mdp_runs": int(len(summ)), "mdp_diverged": int((summ.status == "diverged").sum()),
        "pomdp_runs": int(len(psumm)), "pomdp_diverged": int((psumm.status == "diverged").sum()),
        "linear_median_abs_cos": {f"{r['setting']}/{r['variant']}": r["median"] for r in rows
                                  if r["study"] == "linear"}})
