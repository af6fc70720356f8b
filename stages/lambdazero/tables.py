"""Schemas of the LambdaZero artifacts, and helpers shared by its stages."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from rdkit import Chem

from stages.lambdazero.proxy_model import ProxyConfig, ProxyEnsemble

# Every molecule sent to the docking oracle, one row per molecule (failures included, score null).
# `seconds`/`cached` of the oracle are left out on purpose: they depend on the cache state, not on the
# run, and would make the artifact's bytes differ between a fresh and a cached re-run (they go to the log).
DOCKED_SCHEMA = pa.schema([
    ("smiles", pa.string()),            # canonical SMILES (RDKit)
    ("inchikey", pa.string()),
    ("status", pa.string()),            # ok | failed | timeout | invalid (from the oracle)
    ("score", pa.float64()),            # Vina kcal/mol, best pose; null unless status == ok
    ("pose_sdf", pa.string()),          # best pose as an SDF block ("" when none)
    ("origin", pa.string()),            # initial | active_learning | evaluate:<arm>
    ("round", pa.int32()),              # 0 = initial set, r = active-learning round r
    ("qed", pa.float64()),
    ("sa", pa.float64()),
    ("proxy_mu", pa.float64()),         # proxy's -score prediction when it was selected (nan: not by proxy)
    ("proxy_sigma", pa.float64()),
    ("acquisition", pa.float64()),      # UCB mu + kappa sigma at selection time
    ("heavy_atoms", pa.int32()),
    ("ligand_efficiency", pa.float64()),  # -score / heavy atoms (kcal/mol per heavy atom; null without a score)
])


def ligand_efficiency(score: float | None, n_heavy: int) -> float | None:
    """-score / heavy atoms (kcal/mol per heavy atom, larger = better); None without a score."""
    if score is None or not np.isfinite(score) or n_heavy <= 0:
        return None
    return -float(score) / n_heavy


def heavy_atom_count(smiles: str) -> int:
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return mol.GetNumHeavyAtoms() if mol is not None else 0


def docked_rows(results, origin: str, round_index: int, props: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Rows of DOCKED_SCHEMA from an oracle result frame (same order as the request)."""
    rows = []
    for i, r in enumerate(results.to_dict("records")):
        score = r.get("score")
        ok = r.get("status") == "ok" and score is not None and np.isfinite(score)
        smiles = r.get("canonical_smiles") or r.get("smiles")
        n_heavy = heavy_atom_count(smiles)
        rows.append({
            "smiles": smiles, "inchikey": r.get("inchikey") or "", "heavy_atoms": n_heavy,
            "ligand_efficiency": ligand_efficiency(float(score), n_heavy) if ok else None,
            "status": r.get("status"), "score": float(score) if ok else None,
            "pose_sdf": r.get("pose_sdf") or "", "origin": origin, "round": round_index,
            **{k: float(props[k][i]) if props is not None and k in props else float("nan")
               for k in ("qed", "sa", "proxy_mu", "proxy_sigma", "acquisition")}})
    return rows


def training_set(docked: pa.Table | list[dict]) -> tuple[list[str], np.ndarray]:
    """(SMILES, target = -score) of the successfully docked molecules, one per SMILES (first kept)."""
    rows = docked.to_pylist() if isinstance(docked, pa.Table) else docked
    seen: dict[str, float] = {}
    for r in rows:
        if r["status"] == "ok" and r["score"] is not None and r["smiles"] not in seen:
            seen[r["smiles"]] = -float(r["score"])
    return list(seen), np.array(list(seen.values()), dtype=np.float64)


def fit_proxy(smiles: Sequence[str], target: np.ndarray, cfg: ProxyConfig, seed: int) -> tuple[ProxyEnsemble, dict]:
    if len(smiles) < 2:
        raise ValueError(f"only {len(smiles)} molecule(s) docked successfully; the proxy needs >= 2 "
                         "(check the receptor/box and the docking log)")
    proxy = ProxyEnsemble(cfg)
    stats = proxy.fit([Chem.MolFromSmiles(s) for s in smiles], target, seed)
    return proxy, stats


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """RMSE, Pearson and Spearman correlation (nan below 3 points or with a constant vector)."""
    from scipy.stats import pearsonr, spearmanr

    pred, true = np.asarray(pred, float), np.asarray(true, float)
    out = {"rmse": float(np.sqrt(np.mean((pred - true) ** 2))) if len(true) else float("nan"),
           "pearson": float("nan"), "spearman": float("nan"), "n": int(len(true))}
    if len(true) >= 3 and np.std(pred) > 0 and np.std(true) > 0:
        out["pearson"] = float(pearsonr(pred, true)[0])
        out["spearman"] = float(spearmanr(pred, true)[0])
    return out
