"""Stage aggregate: ASR against parameters, attack compute and defence compute, per task, seeds as the
unit; claims, tables and plots.

Identity (task, size, seed, phase) comes from the provenance of each attack table and checkpoint; the
metrics JSON and curve CSV of a run are the ones its own job wrote in the same folder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

from stages.common import stats
from stages.common.artifacts import read_provenance, read_table
from stages.common.stage import StageContext
from stages.robustness.attack import ATTACK_SCHEMA
from stages.robustness.attacks import asr_curve

log = logging.getLogger(__name__)
METHOD = "robustness"

SUMMARY_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("size", pa.string()),
        ("seed", pa.int64()),
        ("params", pa.int64()),
        ("phase", pa.string()),
        ("attack", pa.string()),
        ("asr", pa.float64()),
        ("asr_mean_over_iterations", pa.float64()),  # area under the ASR curve / iterations: how fast it rises
        ("n_attacked", pa.int64()),
        ("attack_clean_accuracy", pa.float64()),
        ("val_accuracy", pa.float64()),
        ("train_flops", pa.float64()),
        ("defence_flops", pa.float64()),
        ("flops_per_iteration", pa.float64()),
    ]
)
CURVE_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("size", pa.string()),
        ("seed", pa.int64()),
        ("phase", pa.string()),
        ("attack", pa.string()),
        ("iteration", pa.int64()),
        ("asr", pa.float64()),
        ("attack_flops", pa.float64()),
    ]
)


def slope(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 and np.ptp(x) > 0 else math.nan


def _read_csv(path) -> list[dict]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def collect(ctx: StageContext):
    train = {}
    for p in ctx.input_list("models"):
        w = read_provenance(p)["wildcards"]
        train[(w["task"], w["size"], int(w["seed"]))] = json.loads((p.parent / "train_metrics.json").read_text())
    adv = {}
    for p in ctx.input_list("adv_models"):
        w = read_provenance(p)["wildcards"]
        adv[(w["task"], w["size"], int(w["seed"]))] = {
            "metrics": json.loads((p.parent / "adv_metrics.json").read_text()),
            "curve": _read_csv(p.parent / "adv_curve.csv"),
        }
    attacks = defaultdict(dict)  # (task, size, seed) -> phase -> rows
    for p in ctx.input_list("attacks"):
        w = read_provenance(p)["wildcards"]
        attacks[(w["task"], w["size"], int(w["seed"]))][w["phase"]] = read_table(p, ATTACK_SCHEMA).to_pylist()
    return train, adv, attacks


def run(ctx: StageContext) -> None:
    cfg = ctx.params["aggregate"]
    conf = cfg["confidence"]
    train, adv, attacks = collect(ctx)
    summary, curves = [], []
    for key in sorted(attacks):
        task, size, seed = key
        for phase, rows in sorted(attacks[key].items()):
            for name in sorted({r["attack"] for r in rows}):
                mine = [r for r in rows if r["attack"] == name]
                hit = [r["success_iter"] for r in mine if r["clean_correct"]]
                iters = mine[0]["iterations"]
                fpi = float(np.mean([r["flops_per_iteration"] for r in mine if r["clean_correct"]] or [math.nan]))
                curve = asr_curve(hit, iters)
                summary.append(
                    {
                        "task": task,
                        "size": size,
                        "seed": seed,
                        "params": train[key]["params"],
                        "phase": phase,
                        "attack": name,
                        "asr": curve[-1],
                        "asr_mean_over_iterations": float(np.mean(curve[1:])),
                        "n_attacked": len(hit),
                        "attack_clean_accuracy": sum(r["clean_correct"] for r in mine) / len(mine),
                        "val_accuracy": (train[key] if phase == "clean" else adv[key]["metrics"])["val_accuracy"],
                        "train_flops": float(train[key]["train_flops"]),
                        "defence_flops": float(adv[key]["metrics"]["defence_flops"]) if phase == "adv" else 0.0,
                        "flops_per_iteration": fpi,
                    }
                )
                curves += [
                    {
                        "task": task,
                        "size": size,
                        "seed": seed,
                        "phase": phase,
                        "attack": name,
                        "iteration": i,
                        "asr": a,
                        "attack_flops": i * fpi,
                    }
                    for i, a in enumerate(curve)
                ]
    ctx.write_table("table", pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    ctx.write_table("curves", pa.Table.from_pylist(curves, schema=CURVE_SCHEMA), CURVE_SCHEMA)

    claims, metrics = [], {}
    for task in sorted({s["task"] for s in summary}):
        c, m = task_claims(task, summary, adv, cfg, conf)
        claims += c
        metrics[task] = m
    ctx.write_claims("claims", claims)
    metrics["claims_holding"] = int(sum(c["holds"] for c in claims))
    metrics["claims"] = len(claims)
    ctx.write_json("metrics", metrics)
    plot(ctx, summary, curves, adv, cfg)


def _value(summary, task, size, seed, phase, attack, field="asr"):
    for s in summary:
        if (s["task"], s["size"], s["seed"], s["phase"], s["attack"]) == (task, size, seed, phase, attack):
            return s[field]
    return math.nan


def task_claims(task, summary, adv, cfg, conf):
    T, H = cfg["train_attack"], cfg["heldout_attack"]
    rows = [s for s in summary if s["task"] == task]
    sizes = sorted({s["size"] for s in rows}, key=lambda z: next(s["params"] for s in rows if s["size"] == z))
    seeds = sorted({s["seed"] for s in rows})
    params = {z: next(s["params"] for s in rows if s["size"] == z) for z in sizes}
    tflops = {(z, sd): _value(summary, task, z, sd, "clean", T, "train_flops") for z in sizes for sd in seeds}
    asr = {
        (ph, a, z, sd): _value(summary, task, z, sd, ph, a)
        for ph in ("clean", "adv")
        for a in (T, H)
        for z in sizes
        for sd in seeds
    }
    acc = {
        (ph, z, sd): _value(summary, task, z, sd, ph, T, "val_accuracy")
        for ph in ("clean", "adv")
        for z in sizes
        for sd in seeds
    }
    out, m = [], {"sizes": {z: params[z] for z in sizes}, "seeds": seeds}
    kw = dict(method=METHOD, confidence=conf)
    for z in sizes:  # competence first: an ASR on a near-chance classifier says nothing about robustness
        out.append(
            stats.one_sample(
                [acc["clean", z, sd] for sd in seeds],
                null=cfg["min_clean_accuracy"],
                claim_text=(
                    f"{task}: the undefended {z} ({params[z]:,} params) reaches clean val accuracy >= "
                    f"{cfg['min_clean_accuracy']}"
                ),
                metric="clean val accuracy, undefended",
                **kw,
            )
        )
    for z in sizes:
        out.append(
            stats.one_sample(
                [asr["clean", T, z, sd] for sd in seeds],
                null=cfg["high_asr"],
                claim_text=f"{task}: {T} ASR >= {cfg['high_asr']} on the undefended {z} ({params[z]:,} params)",
                metric=f"{T} ASR, undefended",
                **kw,
            )
        )
    for z in sizes:
        out.append(
            stats.paired(
                [asr["clean", T, z, sd] for sd in seeds],
                [asr["adv", T, z, sd] for sd in seeds],
                claim_text=f"{task}: adversarial training lowers {T} ASR at {z}",
                metric=f"{T} ASR drop (before - after)",
                **kw,
            )
        )
    out.append(
        stats.paired(
            [np.mean([asr["clean", T, z, sd] for z in sizes]) for sd in seeds],
            [np.mean([asr["adv", T, z, sd] for z in sizes]) for sd in seeds],
            claim_text=f"{task}: adversarial training lowers {T} ASR (mean over sizes)",
            metric=f"{T} ASR drop (before - after), mean over sizes",
            **kw,
        )
    )
    before = [np.mean([acc["clean", z, sd] for z in sizes]) for sd in seeds]
    after = [np.mean([acc["adv", z, sd] for z in sizes]) for sd in seeds]
    out.append(
        stats.paired(
            after,
            before,
            null=-cfg["clean_tolerance"],
            claim_text=(
                f"{task}: clean val accuracy after adversarial training within {cfg['clean_tolerance']:.2f} of before "
                "(mean over sizes)"
            ),
            metric="val accuracy change (after - before)",
            **kw,
        )
    )
    logp = [math.log10(params[z]) for z in sizes]
    size_slopes = [slope(logp, [asr["clean", T, z, sd] for z in sizes]) for sd in seeds]
    out.append(
        stats.one_sample(
            size_slopes,
            null=0.0,
            alternative="less",
            claim_text=(f"{task}: bigger undefended models resist {T} better (slope of ASR vs log10 params < 0)"),
            metric="d ASR / d log10 params, undefended",
            **kw,
        )
    )
    # With ASR saturated at 1 the end point cannot show a size trend; how fast ASR rises can (the paper's
    # attack compute to a given ASR): the mean of the ASR curve over iterations.
    auc = {
        (z, sd): _value(summary, task, z, sd, "clean", T, "asr_mean_over_iterations") for z in sizes for sd in seeds
    }
    out.append(
        stats.one_sample(
            [slope(logp, [auc[z, sd] for z in sizes]) for sd in seeds],
            null=0.0,
            alternative="less",
            claim_text=(
                f"{task}: bigger undefended models take more {T} iterations to break (slope of the ASR curve's "
                "mean over iterations vs log10 params < 0)"
            ),
            metric="d mean-over-iterations ASR / d log10 params, undefended",
            **kw,
        )
    )
    # Compute efficiency: ASR drop per decade of compute, by scaling the model vs by adversarial training.
    scale_eff = [
        -slope([math.log10(tflops[z, sd]) for z in sizes], [asr["clean", T, z, sd] for z in sizes]) for sd in seeds
    ]
    adv_eff = [
        float(
            np.mean(
                [
                    (asr["clean", T, z, sd] - asr["adv", T, z, sd])
                    / math.log10(1 + adv[task, z, sd]["metrics"]["defence_flops"] / tflops[z, sd])
                    for z in sizes
                ]
            )
        )
        for sd in seeds
    ]
    out.append(
        stats.paired(
            adv_eff,
            scale_eff,
            claim_text=(f"{task}: adversarial training buys more ASR drop per decade of compute than a larger model"),
            metric="ASR drop per decade of compute: adv training - scaling",
            **kw,
        )
    )
    gain_slopes = [slope(logp, [asr["clean", T, z, sd] - asr["adv", T, z, sd] for z in sizes]) for sd in seeds]
    out.append(
        stats.one_sample(
            gain_slopes,
            null=0.0,
            claim_text=(
                f"{task}: bigger models gain more from adversarial training (slope of ASR drop vs log10 params > 0)"
            ),
            metric="d (ASR drop) / d log10 params",
            **kw,
        )
    )
    out.append(
        stats.paired(
            [np.mean([asr["clean", H, z, sd] for z in sizes]) for sd in seeds],
            [np.mean([asr["adv", H, z, sd] for z in sizes]) for sd in seeds],
            claim_text=(f"{task}: adversarial training against {T} lowers the held-out {H} ASR (mean over sizes)"),
            metric=f"{H} ASR drop",
            **kw,
        )
    )
    out.append(
        stats.one_sample(
            [slope(logp, [asr["adv", H, z, sd] for z in sizes]) for sd in seeds],
            null=0.0,
            alternative="less",
            claim_text=(f"{task}: larger adversarially trained models resist the held-out {H} better (slope < 0)"),
            metric=f"d {H} ASR after adv training / d log10 params",
            **kw,
        )
    )
    m.update(
        {
            "size_slope_mean": float(np.mean(size_slopes)),
            "asr_drop_per_decade_scaling": float(np.mean(scale_eff)),
            "asr_drop_per_decade_advtrain": float(np.mean(adv_eff)),
            "asr_undefended": {z: float(np.mean([asr["clean", T, z, sd] for sd in seeds])) for z in sizes},
            "asr_mean_over_iterations_undefended": {
                z: float(
                    np.mean([_value(summary, task, z, sd, "clean", T, "asr_mean_over_iterations") for sd in seeds])
                )
                for z in sizes
            },
            "asr_adv": {z: float(np.mean([asr["adv", T, z, sd] for sd in seeds])) for z in sizes},
            "heldout_asr_undefended": {z: float(np.mean([asr["clean", H, z, sd] for sd in seeds])) for z in sizes},
            "heldout_asr_adv": {z: float(np.mean([asr["adv", H, z, sd] for sd in seeds])) for z in sizes},
            "val_accuracy_before": float(np.mean(before)),
            "val_accuracy_undefended": {z: float(np.mean([acc["clean", z, sd] for sd in seeds])) for z in sizes},
            "val_accuracy_adv": {z: float(np.mean([acc["adv", z, sd] for sd in seeds])) for z in sizes},
            "val_accuracy_after": float(np.mean(after)),
        }
    )
    return out, m


def plot(ctx, summary, curves, adv, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s["task"] for s in summary})
    fig, axes = plt.subplots(len(tasks), 4, figsize=(19, 4.2 * len(tasks)), squeeze=False)
    for ax_row, task in zip(axes, tasks):
        rows = [s for s in summary if s["task"] == task]
        sizes = sorted({s["size"] for s in rows}, key=lambda z: next(s["params"] for s in rows if s["size"] == z))
        params = {z: next(s["params"] for s in rows if s["size"] == z) for z in sizes}
        ax = ax_row[0]
        for phase in ("clean", "adv"):
            for attack, style in ((cfg["train_attack"], "-o"), (cfg["heldout_attack"], "--s")):
                vals = [
                    [s["asr"] for s in rows if s["size"] == z and s["phase"] == phase and s["attack"] == attack]
                    for z in sizes
                ]
                ax.errorbar(
                    [params[z] for z in sizes],
                    [np.mean(v) for v in vals],
                    [np.std(v) for v in vals],
                    fmt=style,
                    capsize=3,
                    label=f"{attack}, {'undefended' if phase == 'clean' else 'adv-trained'}",
                )
        ax.set(xscale="log", xlabel="parameters", ylabel="ASR", ylim=(-0.05, 1.05), title=f"{task}: ASR vs size")
        ax.legend(fontsize=7)
        ax = ax_row[1]
        for z in sizes:
            cs = [
                c
                for c in curves
                if c["task"] == task and c["size"] == z and c["phase"] == "clean" and c["attack"] == cfg["train_attack"]
            ]
            its = sorted({c["iteration"] for c in cs})
            ax.plot(
                [np.mean([c["attack_flops"] for c in cs if c["iteration"] == i]) for i in its[1:]],
                [np.mean([c["asr"] for c in cs if c["iteration"] == i]) for i in its[1:]],
                "-o",
                ms=3,
                label=z,
            )
        ax.set(
            xscale="log",
            xlabel="attack FLOPs per prompt",
            ylabel="ASR",
            title=f"{task}: undefended {cfg['train_attack']} ASR vs attack compute",
        )
        ax.legend(fontsize=7)
        ax = ax_row[2]
        for z in sizes:
            runs = [(sd, a) for (t, s, sd), a in adv.items() if t == task and s == z]
            tfl = {sd: next(r["train_flops"] for r in rows if r["size"] == z and r["seed"] == sd) for sd, _ in runs}
            xs = [[r["defence_flops"] / tfl[sd] for r in a["curve"][1:]] for sd, a in runs]
            ys = [[r["attack_asr"] for r in a["curve"][1:]] for sd, a in runs]
            ax.plot(np.mean(xs, 0), np.mean(ys, 0), "-o", ms=3, label=z)
        ax.set(
            xscale="log",
            xlabel="defence FLOPs / training FLOPs",
            ylabel="training-attack ASR on round batch",
            title=f"{task}: adversarial training vs defence compute",
        )
        ax.legend(fontsize=7)
        ax = ax_row[3]
        for z in sizes:
            runs = [a for (t, s, _), a in adv.items() if t == task and s == z]
            ax.plot(
                [r["round"] for r in runs[0]["curve"]],
                np.mean([[r["val_accuracy"] for r in a["curve"]] for a in runs], 0),
                "-o",
                ms=3,
                label=z,
            )
        ax.set(xlabel="adversarial training round", ylabel="clean val accuracy", title=f"{task}: clean accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("plot", fig)
