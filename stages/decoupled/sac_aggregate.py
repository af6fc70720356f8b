"""SAC action-scale sweep summary: per (env, temperature, scale) the evaluation returns on the shared start
states (median, quartiles, failures = episodes below the env's `fail_below`), and the temperature and
unit-box entropy at the end of training (mean of the last `tail_episodes` training episodes, median over
seeds); the spread across scales of the per-scale median return, per temperature; verdicts as fields of
metrics.json; a plot of temperature, unit-box entropy and return over training, per scale and temperature.

Verdicts, per env, at the smallest scale of the sweep, for `baseline` (SAC's -d target) and `candidate`
(the decoupled target):
  baseline_temperature_rises_at_small_scale     its final temperature is above its initial one
  candidate_temperature_lower_at_small_scale    the candidate's final temperature is below the baseline's
  baseline_entropy_near_uniform_at_small_scale  its unit-box entropy >= d (log 2 - uniform_margin)
  candidate_entropy_below_uniform_at_small_scale  the candidate's is not
  candidate_returns_vary_less_across_scales     spread (max - min over scales) of the median return
  candidate_per_episode_spread_smaller          the same per shared start state (median over seeds), then
                                                the median over start states
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common.artifacts import ArtifactError, read_provenance, read_table
from stages.common.stage import StageContext
from stages.decoupled.sac_evaluate import RETURNS_SCHEMA
from stages.decoupled.sac_train import run_of
from stages.rl.sac import CURVE_COLUMNS, TemperatureConfig, target_entropy

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = pa.schema([
    ("env", pa.string()),
    ("temperature", pa.string()),
    ("kind", pa.string()),
    ("scale", pa.float64()),
    ("seeds", pa.int32()),
    ("episodes", pa.int32()),                # evaluation episodes, all seeds
    ("median_return", pa.float64()),
    ("q25_return", pa.float64()),
    ("q75_return", pa.float64()),
    ("mean_return", pa.float64()),
    ("failures", pa.int32()),                # episodes with return < fail_below
    ("final_temperature", pa.float64()),
    ("final_entropy_unit", pa.float64()),
    ("target_entropy_unit", pa.float64()),   # the learned temperature's target in the unit box (NaN if none)
    ("uniform_entropy_unit", pa.float64()),  # d log 2, the largest possible
])


def read_curves(paths, returns_paths) -> dict[tuple, pd.DataFrame]:
    """{(env, scale, temperature, seed): curve} from the train stages' curve.csv files. A curve (CSV, no
    provenance) belongs to the run whose returns.parquet sits beside it."""
    run_at = {p.parent: run_of(read_provenance(p)["wildcards"]) for p in returns_paths}
    out = {}
    for path in paths:
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: unreadable training curve ({exc})") from exc
        missing = [c for c in CURVE_COLUMNS if c not in df.columns]
        if missing or df.empty:
            raise ArtifactError(f"{path}: training curve lacks column(s) {missing} or rows")
        rid = run_at[path.parent]
        out[rid["env"], rid["scale"], rid["temperature"], rid["seed"]] = df
    return out


def _key(scale: float) -> str:
    return f"{scale:g}"


def summarize(returns: pd.DataFrame, curves: dict, envs: dict, temperatures: dict, tail: int) -> list[dict]:
    rows = []
    for (env, temp, scale), g in returns.groupby(["env", "temperature", "scale"], sort=True):
        d = int(g["action_dim"].iloc[0])
        tails = [c.tail(tail) for (e, s, t, _), c in curves.items() if (e, s, t) == (env, scale, temp)]
        cfg = TemperatureConfig.from_dict(temperatures[temp])
        target = target_entropy(cfg, np.full(d, -scale), np.full(d, scale)) - d * math.log(scale)
        r = g["return"].to_numpy()
        rows.append({"env": env, "temperature": temp, "kind": cfg.kind, "scale": float(scale),
                     "seeds": g["seed"].nunique(), "episodes": len(r), "median_return": float(np.median(r)),
                     "q25_return": float(np.quantile(r, 0.25)), "q75_return": float(np.quantile(r, 0.75)),
                     "mean_return": float(r.mean()),
                     "failures": int((r < envs[env]["fail_below"]).sum()),
                     "final_temperature": float(np.median([t["temperature"].mean() for t in tails])),
                     "final_entropy_unit": float(np.median([t["entropy_unit"].mean() for t in tails])),
                     "target_entropy_unit": target, "uniform_entropy_unit": d * math.log(2)})
    return rows


def spreads(returns: pd.DataFrame) -> dict[str, float]:
    """Spread across scales of the median return, pooled and per shared start state."""
    by_scale = returns.groupby("scale")["return"].median()
    per_episode = returns.groupby(["episode", "scale"])["return"].median().unstack("scale")
    return {"spread_of_medians": float(by_scale.max() - by_scale.min()),
            "median_per_episode_spread": float((per_episode.max(axis=1) - per_episode.min(axis=1)).median())}


def verdicts(env: str, summary: list[dict], returns: pd.DataFrame, cfg: dict, temperatures: dict) -> dict:
    base, cand = cfg["baseline"], cfg["candidate"]
    rows = {(r["temperature"], r["scale"]): r for r in summary if r["env"] == env}
    scales = sorted({s for _, s in rows})
    per_mode = {}
    for temp in sorted({t for t, _ in rows}):
        sub = returns[(returns["env"] == env) & (returns["temperature"] == temp)]
        per_mode[temp] = {
            **spreads(sub), "failures": int(sum(rows[temp, s]["failures"] for s in scales)),
            **{f"{field}_by_scale": {_key(s): rows[temp, s][field] for s in scales}
               for field in ("median_return", "failures", "final_temperature", "final_entropy_unit")}}
    out = {"scales": scales, "per_temperature": per_mode}
    if (base, scales[0]) not in rows or (cand, scales[0]) not in rows:
        out["verdicts"] = None
        log.warning("%s: baseline '%s' or candidate '%s' not in the sweep; no verdicts", env, base, cand)
        return out
    b, c = rows[base, scales[0]], rows[cand, scales[0]]
    base_init = TemperatureConfig.from_dict(temperatures[base]).init
    near_uniform = b["uniform_entropy_unit"] * (1 - cfg["uniform_margin"] / math.log(2))
    v = {
        "small_scale": scales[0],
        "baseline_temperature_rises_at_small_scale": b["final_temperature"] > base_init,
        "candidate_temperature_lower_at_small_scale": c["final_temperature"] < b["final_temperature"],
        "baseline_entropy_near_uniform_at_small_scale": b["final_entropy_unit"] >= near_uniform,
        "candidate_entropy_below_uniform_at_small_scale": c["final_entropy_unit"] < near_uniform,
        "candidate_returns_vary_less_across_scales":
            per_mode[cand]["spread_of_medians"] < per_mode[base]["spread_of_medians"],
        "candidate_per_episode_spread_smaller":
            per_mode[cand]["median_per_episode_spread"] < per_mode[base]["median_per_episode_spread"],
        "candidate_failures_not_more": per_mode[cand]["failures"] <= per_mode[base]["failures"],
    }
    v["mechanism_shown"] = all(v[k] for k in ("baseline_temperature_rises_at_small_scale",
                                              "candidate_temperature_lower_at_small_scale",
                                              "baseline_entropy_near_uniform_at_small_scale",
                                              "candidate_entropy_below_uniform_at_small_scale"))
    out["verdicts"] = v
    return out


def plot(ctx: StageContext, curves: dict, summary: list[dict], cfg: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({k[0] for k in curves})
    temps = sorted({k[2] for k in curves})
    scales = sorted({k[1] for k in curves})
    colors = {s: plt.cm.viridis(i / max(len(scales) - 1, 1)) for i, s in enumerate(scales)}
    styles = dict(zip(temps, ["-", "--", ":", "-."] * 4))
    fig, axes = plt.subplots(len(envs), 4, figsize=(17, 3.6 * len(envs)), squeeze=False)
    for row, env in zip(axes, envs):
        groups = defaultdict(list)
        for (e, s, t, _), c in curves.items():
            if e == env:
                groups[s, t].append(c)
        for (s, t), cs in sorted(groups.items()):
            grid = np.unique(np.concatenate([c["step"].to_numpy() for c in cs]))
            for ax, col in zip(row[:3], ("temperature", "entropy_unit", "return")):
                med = np.median([np.interp(grid, c["step"], c[col]) for c in cs], axis=0)
                ax.plot(grid, med, styles[t], color=colors[s], label=f"{t}, s={s:g}")
        uniform = next(r["uniform_entropy_unit"] for r in summary if r["env"] == env)
        row[1].axhline(uniform, color="k", lw=0.8, ls=":")
        row[0].set(yscale="log", title=f"{env}: temperature", xlabel="env step")
        row[1].set(title="policy entropy in the unit box (dotted: uniform)", xlabel="env step")
        row[2].set(title="training return", xlabel="env step")
        for j, t in enumerate(temps):
            rs = sorted((r for r in summary if r["env"] == env and r["temperature"] == t), key=lambda r: r["scale"])
            x = np.arange(len(rs)) + (j - (len(temps) - 1) / 2) * 0.15
            med = np.array([r["median_return"] for r in rs])
            err = [med - [r["q25_return"] for r in rs], [r["q75_return"] for r in rs] - med]
            row[3].errorbar(x, med, yerr=err, fmt="o" + styles[t], capsize=3,
                            label=f"{t} (failures {sum(r['failures'] for r in rs)})")
            row[3].set_xticks(np.arange(len(rs)), [f"{r['scale']:g}" for r in rs])
        row[3].set(title="eval return on shared starts (median, IQR)", xlabel="action scale s")
        row[3].legend(fontsize=7)
        row[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=100)


def run(ctx: StageContext) -> None:
    cfg, envs, temperatures = ctx.params["aggregate"], ctx.params["envs"], ctx.params["temperatures"]
    returns = pd.concat([read_table(p, RETURNS_SCHEMA).to_pandas() for p in ctx.input_list("returns")],
                        ignore_index=True)
    curves = read_curves(ctx.input_list("curves"), ctx.input_list("returns"))
    summary = summarize(returns, curves, envs, temperatures, cfg["tail_episodes"])
    ctx.write_table("table", pa.Table.from_pylist(summary, SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    metrics = {"baseline": cfg["baseline"], "candidate": cfg["candidate"],
               "envs": {env: verdicts(env, summary, returns, cfg, temperatures)
                        for env in sorted(returns["env"].unique())}}
    for env, m in metrics["envs"].items():
        log.info("%s verdicts: %s", env, m["verdicts"])
    ctx.write_json("metrics", metrics)
    plot(ctx, curves, summary, cfg)
