"""SAC action-scale sweep summary: per (env, temperature, scale) the evaluation returns on the shared start
states (median, quartiles, failures = episodes below the env's `fail_below`; the mean over seeds of each
seed's mean return with its t interval), the temperature and unit-box entropy at the end of training (mean
of the last `tail_episodes` training episodes, median over seeds), and whether a learned temperature
converged: over the training episodes in the last `converge_fraction` of the steps, the mean entropy gap
(agent-box entropy - target) and the least-squares slope of log tau per 1000 steps; a seed's run converged
when |gap| < gap_tolerance and |slope| < slope_tolerance. Also the claims (output `claims`), their verdicts
in metrics.json, and a plot of temperature, unit-box entropy, entropy gap and return over training.

Claims (stages.common.stats), per env, for `baseline` (SAC's -d target) and `candidate` (the decoupled
target). The training seed is the unit: a seed's evaluation episodes are averaged first, and the two targets
are compared paired by seed (same seeds, same evaluation start states). At the smallest scale:
  baseline_temperature_rises_at_small_scale     its final log10 temperature is above its initial one
  candidate_temperature_lower_at_small_scale    the candidate's final log10 temperature is below the baseline's
  baseline_entropy_near_uniform_at_small_scale  its unit-box entropy >= d (log 2 - uniform_margin)
  candidate_entropy_below_uniform_at_small_scale  the candidate's is below that
  baseline_fails_at_small_scale                 most of its evaluation episodes fail (fraction > 0.5)
At every scale s:
  candidate_returns_more_at_s<s>                the candidate's mean evaluation return is higher
Across scales (the paper's claim: returns do not depend on the scale). A seed's value at a scale is its mean
return over the shared evaluation episodes; its spread is max - min of those over the scales:
  candidate_same_return_across_scales           the candidate's spread is below the env's same_return_margin
  baseline_same_return_across_scales            the baseline's is (the contrast; fails where -d fails)
  candidate_returns_vary_less_across_scales     the candidate's spread is smaller than the baseline's (paired)
  candidate_fewer_failures                      per seed, the fraction of failed episodes over all scales
Convergence of the candidate's temperature, per seed the worst scale:
  candidate_entropy_reaches_target              max over scales of |mean entropy gap| < gap_tolerance
  candidate_temperature_settles                 max over scales of |log tau slope| < slope_tolerance
`mechanism_shown` in metrics.json: the first four hold; `temperature_converged`: the last two hold.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import ArtifactError, read_provenance, read_table
from stages.common.stage import StageContext
from stages.decoupled.sac_evaluate import RETURNS_SCHEMA
from stages.decoupled.sac_train import TRAIN_CURVE_COLUMNS, run_of
from stages.rl.sac import TemperatureConfig, target_entropy

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
    ("mean_return", pa.float64()),           # mean over seeds of the seed's mean return
    ("mean_return_ci_low", pa.float64()),    # 95% t interval over seeds (NaN with one seed)
    ("mean_return_ci_high", pa.float64()),
    ("failures", pa.int32()),                # episodes with return < fail_below
    ("final_temperature", pa.float64()),
    ("final_entropy_unit", pa.float64()),
    ("target_entropy_unit", pa.float64()),   # the learned temperature's target in the unit box (NaN if none)
    ("uniform_entropy_unit", pa.float64()),  # d log 2, the largest possible
    ("end_entropy_gap", pa.float64()),       # agent-box entropy - target, last converge_fraction (median over seeds)
    ("end_log_temperature_slope", pa.float64()),  # d log tau per 1000 steps there (median over seeds)
    ("converged_seeds", pa.int32()),         # seeds with |gap| < gap_tolerance and |slope| < slope_tolerance
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
        missing = [c for c in TRAIN_CURVE_COLUMNS if c not in df.columns]
        if missing or df.empty:
            raise ArtifactError(f"{path}: training curve lacks column(s) {missing} or rows")
        rid = run_at[path.parent]
        out[rid["env"], rid["scale"], rid["temperature"], rid["seed"]] = df
    return out


def _key(scale: float) -> str:
    return f"{scale:g}"


METHOD = "decoupled"


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean of `values` (NaN with fewer than two)."""
    from scipy import stats as st

    x = np.asarray(values, float)
    if len(x) < 2:
        return math.nan, math.nan
    half = float(st.t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return float(x.mean()) - half, float(x.mean()) + half


def end_of_training(curve: pd.DataFrame, fraction: float) -> tuple[float, float]:
    """(mean entropy gap, slope of log tau per 1000 env steps) over the training episodes that end in the
    last `fraction` of the run's steps; NaN gap for a temperature without a target, NaN slope with fewer
    than two such episodes."""
    last = float(curve["step"].iloc[-1])
    end = curve[curve["step"] >= last * (1 - fraction)]
    gap = float(end["entropy_gap"].mean())
    if end["step"].nunique() < 2:
        return gap, math.nan
    return gap, float(np.polyfit(end["step"].to_numpy(float) / 1000, end["log_temperature"].to_numpy(float), 1)[0])


def converged(gap: float, slope: float, cfg: dict) -> bool:
    return bool(abs(gap) < cfg["gap_tolerance"] and abs(slope) < cfg["slope_tolerance"])


def runs_of(curves: dict, env: str, scale: float, temp: str) -> dict[int, pd.DataFrame]:
    return {seed: c for (e, s, t, seed), c in curves.items() if (e, s, t) == (env, scale, temp)}


def summarize(returns: pd.DataFrame, curves: dict, envs: dict, temperatures: dict, cfg: dict) -> list[dict]:
    rows = []
    for (env, temp, scale), g in returns.groupby(["env", "temperature", "scale"], sort=True):
        d = int(g["action_dim"].iloc[0])
        runs = runs_of(curves, env, scale, temp)
        tails = [c.tail(cfg["tail_episodes"]) for c in runs.values()]
        ends = [end_of_training(c, cfg["converge_fraction"]) for c in runs.values()]
        tcfg = TemperatureConfig.from_dict(temperatures[temp])
        target = target_entropy(tcfg, np.full(d, -scale), np.full(d, scale)) - d * math.log(scale)
        r = g["return"].to_numpy()
        per_seed = list(g.groupby("seed")["return"].mean())
        ci = t_interval(per_seed)
        rows.append({"env": env, "temperature": temp, "kind": tcfg.kind, "scale": float(scale),
                     "seeds": g["seed"].nunique(), "episodes": len(r), "median_return": float(np.median(r)),
                     "q25_return": float(np.quantile(r, 0.25)), "q75_return": float(np.quantile(r, 0.75)),
                     "mean_return": float(np.mean(per_seed)), "mean_return_ci_low": ci[0],
                     "mean_return_ci_high": ci[1],
                     "failures": int((r < envs[env]["fail_below"]).sum()),
                     "final_temperature": float(np.median([t["temperature"].mean() for t in tails])),
                     "final_entropy_unit": float(np.median([t["entropy_unit"].mean() for t in tails])),
                     "target_entropy_unit": target, "uniform_entropy_unit": d * math.log(2),
                     "end_entropy_gap": float(np.median([e[0] for e in ends])),
                     "end_log_temperature_slope": float(np.median([e[1] for e in ends])),
                     "converged_seeds": sum(converged(*e, cfg) for e in ends)})
    return rows


def seed_means(values: pd.Series) -> dict[int, float]:
    """{seed: mean} of a Series indexed by seed (episodes averaged per seed first)."""
    return {int(k): float(v) for k, v in values.groupby(level="seed").mean().items()}


def paired_by_seed(a: dict, b: dict, **kwargs) -> dict:
    seeds = sorted(set(a) & set(b))
    return stats.paired([a[s] for s in seeds], [b[s] for s in seeds], method=METHOD, **kwargs)


def tail_by_seed(curves: dict, env: str, scale: float, temp: str, column: str, tail: int) -> dict[int, float]:
    return {seed: float(c[column].tail(tail).mean()) for seed, c in runs_of(curves, env, scale, temp).items()}


def return_spread_by_seed(r: pd.Series, temp: str) -> dict[int, float]:
    """{seed: max - min over scales of the seed's mean evaluation return} (r indexed by temperature, scale,
    seed, episode)."""
    per_seed = r.loc[temp].groupby(level=["scale", "seed"]).mean().unstack("scale")
    return {int(k): float(v) for k, v in (per_seed.max(axis=1) - per_seed.min(axis=1)).items()}


def claim_rows(env: str, returns: pd.DataFrame, curves: dict, cfg: dict, temperatures: dict, env_cfg: dict,
               uniform_entropy: float) -> dict[str, dict]:
    """{verdict name: claim row} for one env (see the module docstring)."""
    base, cand = cfg["baseline"], cfg["candidate"]
    fail_below, margin = env_cfg["fail_below"], env_cfg["same_return_margin"]
    r = returns[returns["env"] == env].set_index(["temperature", "scale", "seed", "episode"])["return"].sort_index()
    scales = sorted(r.index.get_level_values("scale").unique())
    small, tail = scales[0], cfg["tail_episodes"]
    listed = [float(s) for s in scales]
    out = {}

    def log_temperature(temp):
        return {k: math.log10(v) for k, v in tail_by_seed(curves, env, small, temp, "temperature", tail).items()}

    init = TemperatureConfig.from_dict(temperatures[base]).init
    out["baseline_temperature_rises_at_small_scale"] = stats.one_sample(
        list(log_temperature(base).values()), null=math.log10(init), method=METHOD,
        metric=f"log10 final temperature (mean of the last {tail} training episodes; null: log10 initial)",
        claim_text=f"{env}, s={small:g}: the {base} target's temperature rises above its initial {init:g}")
    out["candidate_temperature_lower_at_small_scale"] = paired_by_seed(
        log_temperature(base), log_temperature(cand),
        metric=f"log10 final temperature, {base} minus {cand}",
        claim_text=f"{env}, s={small:g}: the {cand} target ends at a lower temperature than the {base} target")
    near_uniform = uniform_entropy * (1 - cfg["uniform_margin"] / math.log(2))
    for temp, name, side in ((base, "baseline_entropy_near_uniform_at_small_scale", "greater"),
                             (cand, "candidate_entropy_below_uniform_at_small_scale", "less")):
        out[name] = stats.one_sample(
            list(tail_by_seed(curves, env, small, temp, "entropy_unit", tail).values()), null=near_uniform,
            alternative=side, method=METHOD,
            metric=f"unit-box policy entropy at the end of training (null: uniform - margin = {near_uniform:.3g})",
            claim_text=f"{env}, s={small:g}: the {temp} target's policy is "
                       + ("near uniform in the unit box" if side == "greater" else "below near-uniform entropy"))
    failed = (r < fail_below).astype(float)
    out["baseline_fails_at_small_scale"] = stats.one_sample(
        list(seed_means(failed.loc[base, small]).values()), null=0.5, method=METHOD,
        metric=f"fraction of evaluation episodes with return < {fail_below:g} (null: 0.5)",
        claim_text=f"{env}, s={small:g}: most evaluation episodes of the {base} target fail")
    for scale in scales:
        out[f"candidate_returns_more_at_s{scale:g}"] = paired_by_seed(
            seed_means(r.loc[cand, scale]), seed_means(r.loc[base, scale]),
            metric=f"mean evaluation return, {cand} minus {base}",
            claim_text=f"{env}, s={scale:g}: the {cand} target's policy returns more than the {base} target's")

    spread = {temp: return_spread_by_seed(r, temp) for temp in (base, cand)}
    for temp, role in ((cand, "candidate"), (base, "baseline")):
        out[f"{role}_same_return_across_scales"] = stats.one_sample(
            list(spread[temp].values()), null=margin, alternative="less", method=METHOD,
            metric=f"a seed's mean-return spread (max - min) over scales {listed} (null: margin {margin:g})",
            claim_text=f"{env}: the {temp} target's mean evaluation return is the same at every scale "
                       f"(spread < {margin:g})")
    out["candidate_returns_vary_less_across_scales"] = paired_by_seed(
        spread[base], spread[cand],
        metric=f"a seed's mean-return spread over scales {listed}, {base} minus {cand}",
        claim_text=f"{env}: the {cand} target's returns depend less on the action scale than the {base} target's")
    out["candidate_fewer_failures"] = paired_by_seed(
        seed_means(failed.loc[base]), seed_means(failed.loc[cand]),
        metric=f"fraction of failed evaluation episodes over all scales, {base} minus {cand}",
        claim_text=f"{env}: the {cand} target fails in fewer evaluation episodes than the {base} target")

    ends = {scale: {seed: end_of_training(c, cfg["converge_fraction"])
                    for seed, c in runs_of(curves, env, scale, cand).items()} for scale in scales}
    seeds = sorted(set.intersection(*(set(e) for e in ends.values())))
    last = f"the last {cfg['converge_fraction']:g} of training steps"
    for i, name, tol, what in ((0, "candidate_entropy_reaches_target", cfg["gap_tolerance"],
                                "|mean entropy gap| (agent-box entropy - target, nats)"),
                               (1, "candidate_temperature_settles", cfg["slope_tolerance"],
                                "|slope of log tau| per 1000 steps")):
        worst = [float(np.max(np.abs([ends[s][seed][i] for s in scales]))) for seed in seeds]
        out[name] = stats.one_sample(
            worst, null=tol, alternative="less", method=METHOD,
            metric=f"max over scales of {what} over {last} (null: tolerance {tol:g})",
            claim_text=f"{env}: the {cand} temperature has converged at every scale ("
                       + ("entropy at its target" if i == 0 else "log tau flat") + ")")
    return out


def verdicts(env: str, summary: list[dict], returns: pd.DataFrame, curves: dict, cfg: dict,
             temperatures: dict, envs: dict) -> tuple[dict, list[dict]]:
    """(metrics.json entry of one env, its claim rows)."""
    base, cand = cfg["baseline"], cfg["candidate"]
    rows = {(r["temperature"], r["scale"]): r for r in summary if r["env"] == env}
    scales = sorted({s for _, s in rows})
    fields = ("median_return", "mean_return", "mean_return_ci_low", "mean_return_ci_high", "failures",
              "final_temperature", "final_entropy_unit", "target_entropy_unit", "end_entropy_gap",
              "end_log_temperature_slope", "converged_seeds")
    per_mode = {temp: {"failures": int(sum(rows[temp, s]["failures"] for s in scales if (temp, s) in rows)),
                       **{f"{field}_by_scale": {_key(s): rows[temp, s][field] for s in scales if (temp, s) in rows}
                          for field in fields}}
                for temp in sorted({t for t, _ in rows})}
    out = {"scales": scales, "per_temperature": per_mode}
    if any((t, s) not in rows for t in (base, cand) for s in scales):
        out["verdicts"] = None
        log.warning("%s: baseline '%s' or candidate '%s' not run at every scale; no claims", env, base, cand)
        return out, []
    uniform = rows[base, scales[0]]["uniform_entropy_unit"]
    claims = claim_rows(env, returns, curves, cfg, temperatures, envs[env], uniform)
    v = {"small_scale": scales[0], **{name: c["holds"] for name, c in claims.items()}}
    v["mechanism_shown"] = all(v[k] for k in ("baseline_temperature_rises_at_small_scale",
                                              "candidate_temperature_lower_at_small_scale",
                                              "baseline_entropy_near_uniform_at_small_scale",
                                              "candidate_entropy_below_uniform_at_small_scale"))
    v["temperature_converged"] = v["candidate_entropy_reaches_target"] and v["candidate_temperature_settles"]
    v["n_seeds"] = min(c["n"] for c in claims.values())
    out["verdicts"] = v
    return out, list(claims.values())


def plot(ctx: StageContext, curves: dict, summary: list[dict], cfg: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({k[0] for k in curves})
    temps = sorted({k[2] for k in curves})
    scales = sorted({k[1] for k in curves})
    colors = {s: plt.cm.viridis(i / max(len(scales) - 1, 1)) for i, s in enumerate(scales)}
    styles = dict(zip(temps, ["-", "--", ":", "-."] * 4))
    fig, axes = plt.subplots(len(envs), 5, figsize=(21, 3.6 * len(envs)), squeeze=False)
    for row, env in zip(axes, envs):
        groups = defaultdict(list)
        for (e, s, t, _), c in curves.items():
            if e == env:
                groups[s, t].append(c)
        for (s, t), cs in sorted(groups.items()):
            grid = np.unique(np.concatenate([c["step"].to_numpy() for c in cs]))
            for ax, col in zip(row[:4], ("temperature", "entropy_unit", "entropy_gap", "return")):
                med = np.median([np.interp(grid, c["step"], c[col]) for c in cs], axis=0)
                ax.plot(grid, med, styles[t], color=colors[s], label=f"{t}, s={s:g}")
        for r in summary:
            if r["env"] == env and np.isfinite(r["target_entropy_unit"]):
                row[1].axhline(r["target_entropy_unit"], color=colors[r["scale"]], lw=0.6, ls=styles[r["temperature"]])
        uniform = next(r["uniform_entropy_unit"] for r in summary if r["env"] == env)
        row[1].axhline(uniform, color="k", lw=0.8, ls=":")
        row[2].axhline(0, color="k", lw=0.8)
        row[0].set(yscale="log", title=f"{env}: temperature", xlabel="env step")
        row[1].set(title="unit-box entropy (thin: targets; dotted black: uniform)", xlabel="env step")
        row[2].set(title="entropy gap: agent-box entropy - target", xlabel="env step")
        row[3].set(title="training return", xlabel="env step")
        for j, t in enumerate(temps):
            rs = sorted((r for r in summary if r["env"] == env and r["temperature"] == t), key=lambda r: r["scale"])
            x = np.arange(len(rs)) + (j - (len(temps) - 1) / 2) * 0.15
            mean = np.array([r["mean_return"] for r in rs])
            err = np.nan_to_num([mean - [r["mean_return_ci_low"] for r in rs],
                                 [r["mean_return_ci_high"] for r in rs] - mean])
            row[4].errorbar(x, mean, yerr=err, fmt="o" + styles[t], capsize=3,
                            label=f"{t} (failures {sum(r['failures'] for r in rs)})")
            row[4].set_xticks(np.arange(len(rs)), [f"{r['scale']:g}" for r in rs])
        row[4].set(title="eval return: mean of seed means, 95% t interval", xlabel="action scale s")
        row[4].legend(fontsize=7)
        row[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    ctx.save_figure("plot", fig, dpi=100)


def run(ctx: StageContext) -> None:
    cfg, envs, temperatures = ctx.params["aggregate"], ctx.params["envs"], ctx.params["temperatures"]
    returns = pd.concat([read_table(p, RETURNS_SCHEMA).to_pandas() for p in ctx.input_list("returns")],
                        ignore_index=True)
    curves = read_curves(ctx.input_list("curves"), ctx.input_list("returns"))
    summary = summarize(returns, curves, envs, temperatures, cfg)
    ctx.write_table("table", pa.Table.from_pylist(summary, SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    per_env, claims = {}, []
    for env in sorted(returns["env"].unique()):
        per_env[env], env_claims = verdicts(env, summary, returns, curves, cfg, temperatures, envs)
        claims += env_claims
        log.info("%s verdicts: %s", env, per_env[env]["verdicts"])
    ctx.write_claims("claims", claims)
    ctx.write_json("metrics", {"baseline": cfg["baseline"], "candidate": cfg["candidate"], "envs": per_env})
    plot(ctx, curves, summary, cfg)
