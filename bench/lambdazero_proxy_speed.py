"""LambdaZero proxy speed, in one process on `--threads` torch threads: molecules/s scored by the docking
proxy ensemble (`stages.lambdazero.proxy_model.ProxyEnsemble.acquisition`: featurize -> K graph nets ->
mu, sigma, UCB), and by the published sEH proxy of Bengio et al. 2021 (`stages.chem.seh_proxy`, 12-step
NNConv + GRU + Set2Set) on the same molecules for comparison.

The ensemble has the params' architecture (`lambdazero.proxy`) and is really trained: fitted on
`--n-train` random fragment molecules (the `lambdazero.blocks` vocabulary, `lambdazero.mdp` settings)
with Crippen logP as a synthetic target, in seconds. It then scores `--n` molecules of
`FragmentMDP.random_rollouts` (molecule construction is not timed; featurization is, and is also
reported apart). The Spearman correlation of its mu with logP on those molecules shows the net learned
something. The sEH proxy is skipped, with a note, when its weights file is absent (nothing is fetched).

Rates are per wall second and per CPU second of this process (`time.process_time`; the uncontended
estimate on a shared machine). Prints one JSON object.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/lambdazero_proxy_speed.py [--n 1000] [--n-train 64]
       [--epochs 100] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rdkit import RDLogger
from rdkit.Chem import Crippen
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.chem.seh_proxy import ProxyWeightsError, load_seh_proxy  # noqa: E402
from stages.common.params import load_params  # noqa: E402
from stages.envs.fragments import FragmentMDP  # noqa: E402
from stages.lambdazero.blocks import vocabulary  # noqa: E402
from stages.lambdazero.proxy_model import ProxyConfig, ProxyEnsemble, featurize  # noqa: E402


def timed(fn, *args) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def rates(n: int, wall: float, cpu: float) -> dict:
    return {"mols_per_s": round(n / wall, 1), "mols_per_cpu_s": round(n / max(cpu, 1e-9), 1),
            "ms_per_mol_cpu": round(1000 * cpu / n, 4)}


def molecules(mdp: FragmentMDP, n: int, rng: np.random.Generator, stop_prob: float) -> list:
    return [mdp.to_mol(s) for s in mdp.random_rollouts(n, rng, stop_prob)]


def main() -> None:
    p = load_params(ROOT / "params.yaml")["lambdazero"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="molecules scored (timed)")
    ap.add_argument("--n-train", type=int, default=64, help="molecules the ensemble is fitted on")
    ap.add_argument("--epochs", type=int, default=p["proxy"]["epochs"], help="fit epochs (params default)")
    ap.add_argument("--uncertainty", default=p["proxy"]["uncertainty"], choices=["ensemble", "mc_dropout"])
    ap.add_argument("--seh-weights", type=Path, default=None,
                    help="sEH proxy weights (default: the committed data/external/seh_proxy file)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RDLogger.DisableLog("rdApp.*")

    blocks, source = vocabulary(p["blocks"])
    mdp = FragmentMDP(blocks, p["mdp"]["max_blocks"])
    rng = np.random.default_rng(args.seed)
    stop = p["mdp"]["random_stop_prob"]
    train_mols = molecules(mdp, args.n_train, rng, stop)
    mols = molecules(mdp, args.n, rng, stop)
    logp_train = np.array([Crippen.MolLogP(m) for m in train_mols])
    logp = np.array([Crippen.MolLogP(m) for m in mols])

    cfg = ProxyConfig.from_params({**p["proxy"], "epochs": args.epochs, "uncertainty": args.uncertainty})
    proxy = ProxyEnsemble(cfg)
    fit, fit_wall, fit_cpu = timed(proxy.fit, train_mols, logp_train, args.seed)
    proxy.acquisition(mols[:32])                                   # warm-up
    (mu, sigma, _), wall, cpu = timed(proxy.acquisition, mols)
    _, feat_wall, feat_cpu = timed(featurize, mols)
    out = {"blocks": source.split(":")[0], "n_blocks": len(blocks), "max_blocks": mdp.max_blocks,
           "n": len(mols), "mean_heavy_atoms": round(float(np.mean([m.GetNumAtoms() for m in mols])), 1),
           "threads": args.threads,
           "lambdazero_proxy": {
               "uncertainty": cfg.uncertainty, "members": cfg.members, "hidden": cfg.hidden,
               "layers": cfg.layers, "fit_n": len(train_mols), "fit_epochs": cfg.epochs,
               "fit_s": round(fit_wall, 2), "fit_cpu_s": round(fit_cpu, 2),
               "fit_train_rmse_logp": round(fit["train_rmse"], 3),
               "spearman_mu_vs_logp": round(float(spearmanr(mu, logp)[0]), 3),
               "mean_sigma": round(float(np.mean(sigma)), 3),
               **rates(len(mols), wall, cpu),
               "featurize_share_cpu": round(feat_cpu / max(cpu, 1e-9), 3)}}

    try:
        seh = load_seh_proxy(args.seh_weights)
    except ProxyWeightsError as err:
        out["seh_proxy"] = {"skipped": str(err)}
    else:
        seh.raw_scores(mols[:32])                                  # warm-up
        try:
            raw, wall, cpu = timed(seh.raw_scores, mols)
        except ValueError as err:                                   # UnsupportedMolecule among them
            out["seh_proxy"] = {"skipped": f"a molecule cannot be featurized: {err}"}
        else:
            out["seh_proxy"] = {**rates(len(mols), wall, cpu),
                                "spearman_vs_lambdazero_mu": round(float(spearmanr(raw, mu)[0]), 3)}
            out["lambdazero_over_seh_cpu"] = round(out["lambdazero_proxy"]["mols_per_cpu_s"]
                                                   / out["seh_proxy"]["mols_per_cpu_s"], 2)
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
