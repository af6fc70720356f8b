"""Drug-likeness properties and filters of RDKit molecules (QED, SA score, Lipinski, PAINS, scaffolds),
plus the soft gates that turn a property into a multiplicative reward factor."""
from __future__ import annotations

import os
import sys
from functools import lru_cache

import numpy as np
from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import QED, Descriptors, Lipinski
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
from rdkit.Chem.Scaffolds import MurckoScaffold


class InvalidMolecule(ValueError):
    """A SMILES string that RDKit cannot parse into a sanitized molecule."""


def parse_smiles(smiles: str) -> Chem.Mol:
    """Sanitized molecule of `smiles`; InvalidMolecule (naming the string) if RDKit rejects it."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidMolecule(f"not a SMILES string: {smiles!r}")
    RDLogger.DisableLog("rdApp.*")  # the error below says what is wrong; keep stderr clean
    try:
        mol = Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise InvalidMolecule(f"RDKit cannot parse SMILES {smiles!r}")
    return mol


def qed(mol: Chem.Mol) -> float:
    """Quantitative estimate of drug-likeness (Bickerton et al. 2012), in [0, 1]."""
    return float(QED.qed(mol))


@lru_cache(maxsize=1)
def _sascorer():
    # The SA score ships as an RDKit Contrib script, not as a package module.
    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if not os.path.exists(os.path.join(path, "sascorer.py")):
        raise ImportError(f"RDKit Contrib SA_Score not found at {path}")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # noqa: PLC0415

    return sascorer


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009): 1 (easy) to 10 (hard)."""
    return float(_sascorer().calculateScore(mol))


def soft_gate(x: float | np.ndarray, c0: float, c1: float) -> float | np.ndarray:
    """Linear ramp from 0.01 at `c0` to 1 at `c1`, clipped to [0.01, 1]. With c1 < c0 the ramp points
    the other way (e.g. SA score, where lower is better: soft_gate(sa, 6, 3))."""
    if c0 == c1:
        raise ValueError(f"soft_gate needs c0 != c1, got {c0}")
    out = np.clip((np.asarray(x, dtype=np.float64) - c0) / (c1 - c0), 0.01, 1.0)
    return float(out) if np.ndim(out) == 0 else out


def lipinski_violations(mol: Chem.Mol) -> int:
    """Number of broken rule-of-five criteria: MW > 500, logP > 5, H-donors > 5, H-acceptors > 10."""
    return int(sum([Descriptors.MolWt(mol) > 500, Descriptors.MolLogP(mol) > 5,
                    Lipinski.NumHDonors(mol) > 5, Lipinski.NumHAcceptors(mol) > 10]))


@lru_cache(maxsize=1)
def _pains_catalog() -> FilterCatalog:
    params = FilterCatalogParams()
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.PAINS)
    return FilterCatalog(params)


def pains_alerts(mol: Chem.Mol) -> list[str]:
    """Descriptions of the PAINS (A, B and C) substructure alerts the molecule matches, sorted."""
    return sorted(entry.GetDescription() for entry in _pains_catalog().GetMatches(mol))


def murcko_scaffold(smiles: str) -> str:
    """Canonical SMILES of the Bemis-Murcko scaffold ("" for an acyclic molecule)."""
    return MurckoScaffold.MurckoScaffoldSmiles(mol=parse_smiles(smiles))
