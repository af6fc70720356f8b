"""Roll the trained model out to the horizon from each val/test initial state, three ways:
no reencoding, every-step reencoding, and periodic reencoding for every k in `evaluate.periods`.

k is picked on the val split (lowest MSE at the horizon) and only then read off the test split.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import torch

from stages.common.artifacts import load_checkpoint
from stages.common.stage import StageContext
from stages.koopman.model import KoopmanAE, rollout
from stages.koopman.simulate import load_splits

log = logging.getLogger(__name__)

ERRORS_SCHEMA = pa.schema([
    ("split", pa.string()),
    ("mode", pa.string()),      # none / every / periodic
    ("k", pa.int32()),          # reencoding period; 0 for none and every
    ("step", pa.int32()),       # 1..horizon
    ("mse", pa.float64()),      # squared error averaged over trajectories and state dimensions
])
MODES = [("none", 0), ("every", 1)]  # (mode, period passed to rollout)


def finite_or_none(value: float) -> float | None:
    """Blown-up rollouts give inf/NaN; JSON metrics get null instead."""
    return float(value) if math.isfinite(value) else None


def basin_accuracy(pred_final: np.ndarray, basins: np.ndarray) -> float:
    x = pred_final[:, 0]
    # A blown-up (non-finite) prediction lies in no well.
    return float(((np.where(x >= 0, 1, -1) == basins) & np.isfinite(x)).mean())


def summarise(mse: np.ndarray, pred_final: np.ndarray, basins: np.ndarray, kind: str,
              report_step: int) -> dict:
    out = {"mse_report": mse[report_step - 1], "mse_final": mse[-1],
           "mse_mean": mse.mean()}
    out = {k: finite_or_none(v) for k, v in out.items()}
    out["basin_acc"] = basin_accuracy(pred_final, basins) if kind == "duffing" else None
    return out


def run(ctx: StageContext) -> None:
    system, model_cfg, cfg = ctx.params["system"], ctx.params["model"], ctx.params["evaluate"]
    splits = load_splits(ctx.inputs["trajectories"])
    horizon = system["eval_horizon"]
    if cfg["report_step"] > horizon:
        raise ValueError(f"evaluate.report_step {cfg['report_step']} exceeds eval_horizon {horizon}")
    d = splits["val"][0].shape[-1]
    model = KoopmanAE.from_params(d, model_cfg, system)
    model.load_state_dict(load_checkpoint(ctx.inputs["model"], list(model.state_dict())))
    model.eval()

    curves: dict[tuple[str, str, int], np.ndarray] = {}
    finals: dict[tuple[str, str, int], np.ndarray] = {}
    runs = MODES + [("periodic", k) for k in cfg["periods"]]
    for split in ("val", "test"):
        states, _ = splits[split]
        truth = torch.tensor(states[:, 1:horizon + 1], dtype=torch.float64)
        x0 = torch.tensor(states[:, 0], dtype=torch.float32)
        for mode, period in runs:
            pred = rollout(model, x0, horizon, period).double()
            key = (split, mode, period if mode == "periodic" else 0)
            curves[key] = ((pred - truth) ** 2).mean(dim=(0, 2)).numpy()
            finals[key] = pred[:, -1].numpy()

    val_final = {k: curves[("val", "periodic", k)][-1] for k in cfg["periods"]}
    best_k = min(cfg["periods"], key=lambda k: (np.nan_to_num(val_final[k], nan=np.inf), k))
    log.info("val MSE@%d by k: %s -> k = %d", horizon,
             {k: f"{v:.3g}" for k, v in val_final.items()}, best_k)

    basins = splits["test"][1]
    report = cfg["report_step"]
    test = {}
    for mode, k in [("none", 0), ("every", 0), ("periodic", best_k)]:
        stats = summarise(curves[("test", mode, k)], finals[("test", mode, k)], basins, system["kind"],
                          report)
        test[mode] = {"k": k, **stats}
        log.info("test %-8s k=%3d  %s", mode, k, test[mode])

    ctx.write_json("metrics", {
        "chosen_k": best_k,
        "horizon": horizon,
        "report_step": report,
        "val_mse_final_by_k": {str(k): finite_or_none(v) for k, v in val_final.items()},
        "test": test,
    })
    ctx.write_table("errors", pa.Table.from_pylist([
        {"split": split, "mode": mode, "k": k, "step": s + 1, "mse": float(v)}
        for (split, mode, k), curve in curves.items() for s, v in enumerate(curve)
    ]), ERRORS_SCHEMA)
