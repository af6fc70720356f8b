"""Stage 4, proxy: fit the docking proxy (graph-net ensemble, target -score) on the initial docked set.

First a held-out check: fit on a random (1 - holdout_fraction) of the molecules and report RMSE,
Pearson and Spearman on the rest, and whether sigma is larger where the error is (Spearman of sigma vs
|error|); then refit on all molecules for the checkpoint that train_rl starts from.
"""
from __future__ import annotations

import logging

import numpy as np
from rdkit import Chem

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.lambdazero.proxy_model import ProxyConfig
from stages.lambdazero.tables import DOCKED_SCHEMA, fit_proxy, regression_metrics, training_set

log = logging.getLogger(__name__)


def holdout_metrics(smiles: list[str], y: np.ndarray, cfg: ProxyConfig, fraction: float, seed: int) -> dict:
    n_test = int(round(fraction * len(smiles)))
    if n_test < 3 or len(smiles) - n_test < 2:
        return {"n_test": n_test, "skipped": "too few molecules for a held-out check"}
    perm = np.random.default_rng(seed).permutation(len(smiles))
    test, train = perm[:n_test], perm[n_test:]
    proxy, _ = fit_proxy([smiles[i] for i in train], y[train], cfg, seed)
    mu, sigma = proxy.predict([Chem.MolFromSmiles(smiles[i]) for i in test])
    out = {f"test_{k}": v for k, v in regression_metrics(mu, y[test]).items()}
    out["test_sigma_mean"] = float(sigma.mean())
    out["test_sigma_vs_abs_error_spearman"] = regression_metrics(sigma, np.abs(mu - y[test]))["spearman"]
    return out


def run(ctx: StageContext) -> None:
    cfg = ProxyConfig.from_params(ctx.params["proxy"])
    smiles, y = training_set(read_table(ctx.inputs["docked"], DOCKED_SCHEMA))
    metrics = {"n_molecules": len(smiles), "target": "-vina_score (kcal/mol)",
               "target_mean": float(y.mean()) if len(y) else float("nan"),
               "target_std": float(y.std()) if len(y) else float("nan"),
               **holdout_metrics(smiles, y, cfg, ctx.params["proxy"]["holdout_fraction"], ctx.seed)}
    proxy, stats = fit_proxy(smiles, y, cfg, ctx.seed)
    metrics.update(stats)
    log.info("proxy on %d docked molecules: %s", len(smiles), metrics)
    ctx.save_checkpoint("proxy", proxy.state_dict())
    ctx.write_json("metrics", metrics)
