"""Building-block vocabularies for fragment-based molecule generation.

A `Block` is a molecule (SMILES) with attachment atoms ("stems"): indices, in the atom order of
`Chem.MolFromSmiles(smiles)`, of atoms that may take one extra single bond to another block. An atom
listed twice takes up to two bonds. Two vocabularies:
  * `seh_frag_blocks()`: the 72 fragments of Bengio et al. (2021) used by the `seh_frag` task;
  * `brics_blocks(smiles, ...)`: BRICS pieces of a molecule set (by default the NCI molecules RDKit
    ships, `nci_smiles()`), broken bonds becoming stems, most frequent first.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import BRICS


@dataclass(frozen=True)
class Block:
    smiles: str
    stems: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "stems", tuple(int(s) for s in self.stems))
        mol = Chem.MolFromSmiles(self.smiles)
        if mol is None:
            raise ValueError(f"block SMILES {self.smiles!r} does not parse")
        bad = [s for s in self.stems if not 0 <= s < mol.GetNumAtoms()]
        if bad:
            raise ValueError(f"block {self.smiles!r}: stems {bad} are not atom indices "
                             f"(it has {mol.GetNumAtoms()} atoms)")

    @property
    def n_atoms(self) -> int:
        return Chem.MolFromSmiles(self.smiles).GetNumAtoms()


# --- the seh_frag vocabulary -------------------------------------------------------------------------
SEH_FRAG_PROVENANCE = {
    "repo": "recursionpharma/gflownet",
    "path": "src/gflownet/models/bengio2021flow.py",
    "commit": "1824beebd3f006d11063c4c2bcf21a7c9bff47e0",
    "name": "FRAGMENTS",
    "license": "MIT, Copyright (c) 2020 Recursion Pharmaceuticals",
    "origin": "Bengio et al. 2021, Flow Network based Generative Models (GFNOrg/gflownet)",
}

# (SMILES, attachment atom indices), verbatim and in order (stem order matters: it is the
# attachment index the environment exposes).
_SEH_FRAGMENTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Br", (0,)), ("C", (0,)), ("C#N", (0,)), ("C1=CCCCC1", (0, 2, 3)), ("C1=CNC=CC1", (0, 2)),
    ("C1CC1", (0,)), ("C1CCCC1", (0,)), ("C1CCCCC1", (0, 1, 2, 3, 4, 5)), ("C1CCNC1", (0, 2, 3, 4)),
    ("C1CCNCC1", (0, 1, 3)), ("C1CCOC1", (0, 1, 2, 4)), ("C1CCOCC1", (0, 1, 2, 4, 5)),
    ("C1CNCCN1", (2, 5)), ("C1COCCN1", (5,)), ("C1COCC[NH2+]1", (5,)), ("C=C", (0, 1)),
    ("C=C(C)C", (0,)), ("C=CC", (0, 1)), ("C=N", (0,)), ("C=O", (0,)), ("CC", (0, 1)),
    ("CC(C)C", (1,)), ("CC(C)O", (1,)), ("CC(N)=O", (2,)), ("CC=O", (1,)), ("CCC", (1,)),
    ("CCO", (1,)), ("CN", (0, 1)), ("CNC", (1,)), ("CNC(C)=O", (0,)), ("CNC=O", (0, 2)),
    ("CO", (0, 1)), ("CS", (0,)), ("C[NH3+]", (0,)), ("C[SH2+]", (1,)), ("Cl", (0,)), ("F", (0,)),
    ("FC(F)F", (1,)), ("I", (0,)), ("N", (0,)), ("N=CN", (1,)), ("NC=O", (0, 1)),
    ("N[SH](=O)=O", (1,)), ("O", (0,)), ("O=CNO", (1,)), ("O=CO", (1,)), ("O=C[O-]", (1,)),
    ("O=PO", (1,)), ("O=P[O-]", (1,)), ("O=S=O", (1,)), ("O=[NH+][O-]", (1,)),
    ("O=[PH](O)O", (1,)), ("O=[PH]([O-])O", (1,)), ("O=[SH](=O)O", (1,)), ("O=[SH](=O)[O-]", (1,)),
    ("O=c1[nH]cnc2[nH]cnc12", (3, 6)), ("O=c1[nH]cnc2c1NCCN2", (8, 3)),
    ("O=c1cc[nH]c(=O)[nH]1", (2, 4)), ("O=c1nc2[nH]c3ccccc3nc-2c(=O)[nH]1", (8, 4, 7)),
    ("O=c1nccc[nH]1", (3, 6)), ("S", (0,)), ("c1cc[nH+]cc1", (1, 3)), ("c1cc[nH]c1", (0, 2)),
    ("c1ccc2[nH]ccc2c1", (6,)), ("c1ccc2ccccc2c1", (0, 2)), ("c1ccccc1", (0, 1, 2, 3, 4, 5)),
    ("c1ccncc1", (0, 1, 2, 4, 5)), ("c1ccsc1", (2, 4)), ("c1cn[nH]c1", (0, 1, 3, 4)),
    ("c1cncnc1", (0, 1, 3, 5)), ("c1cscn1", (0, 3)), ("c1ncc2nc[nH]c2n1", (2, 6)),
)


def seh_frag_blocks() -> list[Block]:
    """The 72 `seh_frag` fragments (see SEH_FRAG_PROVENANCE)."""
    return [Block(smi, stems) for smi, stems in _SEH_FRAGMENTS]


# --- BRICS vocabulary --------------------------------------------------------------------------------
# Offline molecule source shipped inside the RDKit wheel: the first 5000 NCI compounds.
NCI_SMILES_PATH = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
BRICS_SOURCE = "rdkit RDDataDir/NCI/first_5K.smi (first 5000 NCI open-database compounds)"


def nci_smiles(n: int | None = None) -> list[str]:
    """The first `n` (default all 4999) SMILES of RDKit's NCI sample file."""
    if not NCI_SMILES_PATH.exists():
        raise FileNotFoundError(f"RDKit's NCI sample {NCI_SMILES_PATH} is missing from this install")
    out = []
    for line in NCI_SMILES_PATH.read_text().splitlines():
        if line.strip():
            out.append(line.split()[0])
        if n is not None and len(out) >= n:
            break
    return out


def block_from_brics_fragment(fragment: str) -> Block | None:
    """Turn a BRICS piece (dummy atoms `[n*]` on the broken bonds) into a Block: the dummies go, the
    atoms they were bonded to become stems, in the atom order of the block's canonical SMILES.
    None for a piece without dummies or one that does not sanitize once they are removed."""
    mol = Chem.MolFromSmiles(fragment)
    if mol is None:
        return None
    Chem.RemoveStereochemistry(mol)
    dummies = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 0]
    if not dummies:
        return None
    rw = Chem.RWMol(mol)
    anchors = []
    for d in dummies:
        (nbr,) = [n.GetIdx() for n in rw.GetAtomWithIdx(d).GetNeighbors()]
        anchors.append(nbr)
        atom = rw.GetAtomWithIdx(nbr)
        # the broken bond's valence goes back to a hydrogen; atoms whose H count RDKit does not
        # recompute (bracket atoms, aromatic heteroatoms) need it set explicitly
        if atom.GetNoImplicit() or (atom.GetIsAromatic() and atom.GetAtomicNum() != 6):
            atom.SetNumExplicitHs(atom.GetNumExplicitHs() + 1)
    for d in sorted(dummies, reverse=True):
        rw.RemoveAtom(d)
    # old index -> index after removing the dummies
    shift = {i: i - sum(d < i for d in dummies) for i in range(mol.GetNumAtoms())}
    core = rw.GetMol()
    try:
        Chem.SanitizeMol(core)
    except Exception:  # noqa: BLE001 - RDKit raises several types; any failure drops the piece
        return None
    smiles = Chem.MolToSmiles(core)
    order = list(core.GetPropsAsDict(True, True)["_smilesAtomOutputOrder"])
    new_index = {old: new for new, old in enumerate(order)}
    stems = tuple(sorted(new_index[shift[a]] for a in anchors))
    return Block(smiles, stems)


def _piece_key(piece: str) -> str | None:
    """Canonical SMILES of a BRICS piece with its dummies unlabelled: the same chemical piece with the
    same attachment atoms (up to symmetry) gets the same key whatever BRICS bond types it came from."""
    mol = Chem.MolFromSmiles(piece)
    if mol is None:
        return None
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 0:
            atom.SetIsotope(0)
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(mol)


def brics_blocks(smiles: Iterable[str], max_blocks: int, min_count: int = 1,
                 max_atoms: int | None = None) -> list[Block]:
    """BRICS pieces of `smiles`, deduplicated up to symmetry, most frequent first (ties by canonical
    piece SMILES), counting each piece once per molecule; keep those seen in >= `min_count` molecules
    and with at most `max_atoms` heavy atoms, at most `max_blocks` of them. Unparsable inputs and
    pieces without attachment points are skipped."""
    counts: Counter[str] = Counter()
    RDLogger.DisableLog("rdApp.*")
    try:
        for smi in smiles:
            mol = Chem.MolFromSmiles(smi)
            if mol is None:
                continue
            keys = {_piece_key(piece) for piece in BRICS.BRICSDecompose(mol)}
            counts.update(k for k in keys if k is not None and "*" in k)
        out: list[Block] = []
        for key in sorted((k for k, c in counts.items() if c >= min_count), key=lambda k: (-counts[k], k)):
            block = block_from_brics_fragment(key)
            if block is None or (max_atoms is not None and block.n_atoms > max_atoms):
                continue
            out.append(block)
            if len(out) >= max_blocks:
                break
    finally:
        RDLogger.EnableLog("rdApp.*")
    return out


# --- as a table --------------------------------------------------------------------------------------
BLOCKS_SCHEMA = pa.schema([
    pa.field("block_id", pa.int32(), nullable=False),
    pa.field("smiles", pa.string(), nullable=False),
    pa.field("stems", pa.list_(pa.int32()), nullable=False),
    pa.field("n_atoms", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
])


def blocks_table(blocks: Sequence[Block], source: str) -> pa.Table:
    """The vocabulary as a BLOCKS_SCHEMA table (block_id = position)."""
    return pa.table({
        "block_id": list(range(len(blocks))),
        "smiles": [b.smiles for b in blocks],
        "stems": [list(b.stems) for b in blocks],
        "n_atoms": [b.n_atoms for b in blocks],
        "source": [source] * len(blocks),
    }, schema=BLOCKS_SCHEMA)


def blocks_from_table(table: pa.Table) -> list[Block]:
    """Blocks in block_id order; the ids must be 0..n-1."""
    missing = [n for n in ("block_id", "smiles", "stems") if n not in table.column_names]
    if missing:
        raise ValueError(f"blocks table lacks column(s) {missing}")
    rows = sorted(zip(table["block_id"].to_pylist(), table["smiles"].to_pylist(),
                      table["stems"].to_pylist()))
    ids = [r[0] for r in rows]
    if ids != list(range(len(rows))):
        raise ValueError(f"blocks table block_id must be 0..{len(rows) - 1}, got {ids[:10]}...")
    return [Block(smi, tuple(stems)) for _, smi, stems in rows]
