"""Set-level measures of generated molecules: Morgan fingerprints, Tanimoto diversity, unique
Bemis-Murcko scaffolds, novelty against a reference set, nearest neighbours and Butina clusters."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator
from rdkit.ML.Cluster import Butina

from stages.chem.properties import murcko_scaffold

MORGAN_RADIUS, MORGAN_BITS = 2, 2048


def fingerprints(smiles: Sequence[str]) -> list:
    """Morgan (ECFP4-like, radius 2, 2048 bits) bit vectors."""
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    return [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]


def similarity_matrix(fps_a: list, fps_b: list) -> np.ndarray:
    if not fps_a or not fps_b:
        return np.zeros((len(fps_a), len(fps_b)))
    return np.array([DataStructs.BulkTanimotoSimilarity(f, fps_b) for f in fps_a])


def diversity(smiles: Sequence[str]) -> float:
    """Mean pairwise Tanimoto distance 1 - sim over all pairs (duplicates included); nan below 2."""
    if len(smiles) < 2:
        return float("nan")
    sim = similarity_matrix(fingerprints(smiles), fingerprints(smiles))
    iu = np.triu_indices(len(smiles), 1)
    return float(np.mean(1.0 - sim[iu]))


def unique_scaffolds(smiles: Sequence[str]) -> int:
    """Number of distinct Bemis-Murcko scaffolds (acyclic molecules share the empty scaffold)."""
    return len({murcko_scaffold(s) for s in smiles})


def nearest(smiles: Sequence[str], reference: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """For each molecule: index of and Tanimoto similarity to its nearest reference molecule
    (-1 and 0 when the reference is empty)."""
    if len(reference) == 0:
        return np.full(len(smiles), -1), np.zeros(len(smiles))
    sim = similarity_matrix(fingerprints(smiles), fingerprints(reference))
    if sim.size == 0:
        return np.zeros(0, int), np.zeros(0)
    return sim.argmax(1), sim.max(1)


def novelty(smiles: Sequence[str], reference: Sequence[str], threshold: float) -> float:
    """Fraction of molecules whose nearest reference neighbour has similarity below `threshold`."""
    if len(smiles) == 0:
        return float("nan")
    return float(np.mean(nearest(smiles, reference)[1] < threshold))


def butina_clusters(smiles: Sequence[str], cutoff: float) -> np.ndarray:
    """Butina cluster id of each molecule (distance cutoff on 1 - Tanimoto); cluster 0 is the largest."""
    n = len(smiles)
    if n == 0:
        return np.zeros(0, int)
    fps = fingerprints(smiles)
    dists = []
    for i in range(1, n):
        dists.extend(1.0 - np.asarray(DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i])))
    clusters = Butina.ClusterData(dists, n, cutoff, isDistData=True)
    out = np.empty(n, int)
    for cid, members in enumerate(clusters):
        out[list(members)] = cid
    return out
