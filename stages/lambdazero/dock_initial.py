"""Stage 3, dock: the initial docked set, `n` distinct random MDP molecules docked through the cached
oracle. It seeds the proxy and is one of the baselines the policy is evaluated against."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from stages.common.stage import StageContext
from stages.lambdazero.mdp import load_mdp, unique_molecules
from stages.lambdazero.oracle import dock_logged, make_oracle
from stages.lambdazero.reward import properties
from stages.lambdazero.tables import DOCKED_SCHEMA, docked_rows

log = logging.getLogger(__name__)


def random_molecules(mdp, n: int, rng: np.random.Generator, stop_prob: float, max_draws: int = 50):
    """`n` distinct molecules of random MDP rollouts (fewer only if the MDP has fewer)."""
    smiles, mols = [], []
    for _ in range(max_draws):
        s, m = unique_molecules(mdp, mdp.random_rollouts(2 * n, rng, stop_prob))
        for smi, mol in zip(s, m):
            if smi not in smiles:
                smiles.append(smi)
                mols.append(mol)
        if len(smiles) >= n:
            break
    return smiles[:n], mols[:n]


def run(ctx: StageContext) -> None:
    p = ctx.params
    mdp = load_mdp(ctx.inputs["blocks"], p["mdp"]["max_blocks"])
    rng = np.random.default_rng(ctx.seed)
    smiles, mols = random_molecules(mdp, p["initial"]["n"], rng, p["mdp"]["random_stop_prob"])
    q, sa = properties(mols)
    with make_oracle(ctx.inputs["receptor"], ctx.inputs["box"], p["dock"], ctx.threads) as oracle:
        results = dock_logged(oracle, smiles, "initial set")
    rows = docked_rows(results, "initial", 0, {"qed": q, "sa": sa})
    ctx.write_table("docked", pa.Table.from_pylist(rows, DOCKED_SCHEMA), DOCKED_SCHEMA)
