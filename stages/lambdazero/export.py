"""Stage 7, export: wet-lab candidates, one row per compound to order.

Pool: every molecule docked successfully with a pose (training: initial set + active learning; and the
top-k that evaluate docked). Filters: QED >= qed_min, SA <= sa_max, at most `max_lipinski_violations`
rule-of-five violations, no PAINS alert. Diversity: Butina clustering of the survivors on Morgan
fingerprints (distance cutoff `butina_cutoff` on 1 - Tanimoto), the best-docking molecule of each cluster,
ranked by docking score, top `top_n`, with the ligand efficiency (-score / heavy atoms) beside the score.
Each row also has the final proxy's mu/sigma, properties, scaffold,
and its nearest neighbour among the proxy's training molecules (itself excluded) with the similarity.
Writes Parquet, a CSV copy for the report, and an SDF of the docked poses with the row's fields as
properties.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors

from stages.chem.properties import lipinski_violations, murcko_scaffold, pains_alerts, parse_smiles
from stages.common.artifacts import atomic_path, read_table
from stages.common.stage import StageContext
from stages.lambdazero import chem_metrics
from stages.lambdazero.evaluate import MOLECULES_SCHEMA
from stages.lambdazero.proxy_model import ProxyConfig
from stages.lambdazero.reward import properties
from stages.lambdazero.tables import DOCKED_SCHEMA
from stages.lambdazero.train_rl import load_proxy

log = logging.getLogger(__name__)

CANDIDATES_SCHEMA = pa.schema([
    ("rank", pa.int32()), ("smiles", pa.string()), ("inchikey", pa.string()),
    ("docking_score", pa.float64()),          # Vina kcal/mol (lower = better)
    ("heavy_atoms", pa.int32()),
    ("ligand_efficiency", pa.float64()),      # -docking_score / heavy atoms (kcal/mol per heavy atom)
    ("proxy_mu", pa.float64()), ("proxy_sigma", pa.float64()),   # final proxy, units of -score
    ("qed", pa.float64()), ("sa", pa.float64()), ("mw", pa.float64()), ("logp", pa.float64()),
    ("lipinski_violations", pa.int32()), ("scaffold", pa.string()),
    ("cluster", pa.int32()), ("cluster_size", pa.int32()),
    ("nearest_train_smiles", pa.string()), ("nearest_train_similarity", pa.float64()),
    ("origin", pa.string()), ("round", pa.int32()),
])


def candidate_pool(docked: list[dict], evaluated: list[dict]) -> list[dict]:
    """Distinct (by InChIKey) docked molecules with a score and a pose; the first occurrence wins."""
    pool: dict[str, dict] = {}
    for r in docked:
        if r["score"] is not None and r["pose_sdf"]:
            pool.setdefault(r["inchikey"], {**r})
    for r in evaluated:
        if r["top_k"] and r["score"] is not None and r["pose_sdf"]:
            pool.setdefault(r["inchikey"], {"smiles": r["smiles"], "inchikey": r["inchikey"], "score": r["score"],
                                            "pose_sdf": r["pose_sdf"], "origin": f"evaluate:{r['arm']}",
                                            "round": -1})
    return list(pool.values())


def passing(pool: list[dict], f: dict) -> list[dict]:
    out = []
    mols = [parse_smiles(r["smiles"]) for r in pool]
    q, sa = properties(mols)
    for r, mol, qi, si in zip(pool, mols, q, sa):
        viol = lipinski_violations(mol)
        if qi >= f["qed_min"] and si <= f["sa_max"] and viol <= f["max_lipinski_violations"] \
                and not pains_alerts(mol):
            out.append({**r, "qed": float(qi), "sa": float(si), "lipinski_violations": viol,
                        "mw": float(Descriptors.MolWt(mol)), "logp": float(Crippen.MolLogP(mol))})
    return out


def select_diverse(cands: list[dict], cutoff: float, top_n: int) -> list[dict]:
    """Best-scoring member of each Butina cluster, best first, at most top_n."""
    clusters = chem_metrics.butina_clusters([c["smiles"] for c in cands], cutoff)
    sizes = np.bincount(clusters) if len(clusters) else np.zeros(0, int)
    best: dict[int, dict] = {}
    for c, cid in zip(cands, clusters.tolist()):
        c = {**c, "cluster": cid, "cluster_size": int(sizes[cid])}
        if cid not in best or (c["score"], c["smiles"]) < (best[cid]["score"], best[cid]["smiles"]):
            best[cid] = c
    return sorted(best.values(), key=lambda c: (c["score"], c["smiles"]))[:top_n]


def run(ctx: StageContext) -> None:
    p, ex = ctx.params, ctx.params["export"]
    docked = read_table(ctx.inputs["docked"], DOCKED_SCHEMA).to_pylist()
    evaluated = read_table(ctx.inputs["molecules"], MOLECULES_SCHEMA).to_pylist()
    pool = candidate_pool(docked, evaluated)
    ok = passing(pool, p["filters"])
    chosen = select_diverse(ok, ex["butina_cutoff"], ex["top_n"])
    log.info("%d docked molecules with a pose, %d pass the filters, %d clusters -> %d candidates",
             len(pool), len(ok), len({c["cluster"] for c in chosen}) if chosen else 0, len(chosen))

    train = list(dict.fromkeys(r["smiles"] for r in docked if r["score"] is not None))
    proxy = load_proxy(ctx.inputs["proxy"], ProxyConfig.from_params(p["proxy"]))
    mu, sigma = proxy.predict([parse_smiles(c["smiles"]) for c in chosen])
    fps_train = chem_metrics.fingerprints(train)
    rows = []
    for rank, (c, m, s) in enumerate(zip(chosen, mu, sigma), start=1):
        sim = chem_metrics.similarity_matrix(chem_metrics.fingerprints([c["smiles"]]), fps_train)[0]
        others = [i for i, t in enumerate(train) if t != c["smiles"]]
        j = max(others, key=lambda i: sim[i]) if others else None
        n_heavy = parse_smiles(c["smiles"]).GetNumHeavyAtoms()
        rows.append({"rank": rank, "smiles": c["smiles"], "inchikey": c["inchikey"], "docking_score": c["score"],
                     "heavy_atoms": n_heavy, "ligand_efficiency": -c["score"] / n_heavy,
                     "proxy_mu": float(m), "proxy_sigma": float(s), "qed": c["qed"], "sa": c["sa"], "mw": c["mw"],
                     "logp": c["logp"], "lipinski_violations": c["lipinski_violations"],
                     "scaffold": murcko_scaffold(c["smiles"]), "cluster": c["cluster"],
                     "cluster_size": c["cluster_size"], "nearest_train_smiles": train[j] if j is not None else "",
                     "nearest_train_similarity": float(sim[j]) if j is not None else 0.0,
                     "origin": c["origin"], "round": c["round"]})
    check_candidates(rows)
    ctx.write_table("candidates", pa.Table.from_pylist(rows, CANDIDATES_SCHEMA), CANDIDATES_SCHEMA)
    write_sdf(ctx.outputs["poses"], rows, {c["inchikey"]: c["pose_sdf"] for c in chosen})


def check_candidates(rows: list[dict]) -> None:
    """One row per compound, every SMILES a sanitizable molecule."""
    keys = [r["inchikey"] for r in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise AssertionError(f"duplicate InChIKeys among the candidates: {dupes}")
    for r in rows:
        parse_smiles(r["smiles"])  # raises InvalidMolecule naming the SMILES


def write_sdf(path, rows: list[dict], poses: dict[str, str]) -> None:
    """Docked pose of each candidate (with hydrogens as docked), row fields as SD properties."""
    with atomic_path(path) as tmp:
        writer = Chem.SDWriter(str(tmp))
        for r in rows:
            mol = Chem.MolFromMolBlock(poses[r["inchikey"]], removeHs=False)
            if mol is None:
                raise ValueError(f"pose of {r['smiles']} ({r['inchikey']}) is not a readable molblock")
            mol.SetProp("_Name", f"rank{r['rank']}_{r['inchikey']}")
            for key, value in r.items():
                mol.SetProp(key, f"{value:.4f}" if isinstance(value, float) else str(value))
            writer.write(mol)
        writer.close()
