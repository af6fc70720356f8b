"""Building-block vocabularies (stages/chem/blocks.py)."""
import pyarrow as pa
import pytest
from rdkit import Chem

from stages.chem.blocks import (
    BLOCKS_SCHEMA,
    Block,
    block_from_brics_fragment,
    blocks_from_table,
    blocks_table,
    brics_blocks,
    nci_smiles,
    seh_frag_blocks,
)


@pytest.fixture(scope="module")
def nci_blocks():
    return brics_blocks(nci_smiles(300), max_blocks=40)


def test_seh_frag_vocabulary():
    blocks = seh_frag_blocks()
    assert len(blocks) == 72 == len({b.smiles for b in blocks})
    assert blocks[0] == Block("Br", (0,)) and blocks[-1] == Block("c1ncc2nc[nH]c2n1", (2, 6))
    assert max(len(b.stems) for b in blocks) == 6  # cyclohexane and benzene


@pytest.mark.parametrize("smiles,stems", [("CC", (2,)), ("C1CC", (0,)), ("CC", (-1,))])
def test_bad_block_is_rejected(smiles, stems):
    with pytest.raises(ValueError, match="block"):
        Block(smiles, stems)


@pytest.mark.parametrize("piece,smiles,stem_symbols", [
    ("[16*]n1cccc1", "c1cc[nH]c1", ["N"]),  # aromatic N gets its H back
    ("[16*]c1ccc([16*])cc1", "c1ccccc1", ["C", "C"]),
    ("[4*]C([4*])C(=O)[N+](C)(C)C", "CC(=O)[N+](C)(C)C", ["C", "C"]),  # one atom, two stems
    ("[1*]C(=O)CC", "CCC=O", ["C"]),
])
def test_brics_piece_to_block(piece, smiles, stem_symbols):
    block = block_from_brics_fragment(piece)
    assert block.smiles == smiles
    mol = Chem.MolFromSmiles(block.smiles)
    assert [mol.GetAtomWithIdx(s).GetSymbol() for s in block.stems] == stem_symbols


def test_para_stems_are_three_bonds_apart():
    block = block_from_brics_fragment("[16*]c1ccc([16*])cc1")
    dist = Chem.GetDistanceMatrix(Chem.MolFromSmiles(block.smiles))
    assert dist[block.stems[0], block.stems[1]] == 3


def test_piece_without_dummy_is_dropped():
    assert block_from_brics_fragment("c1ccccc1") is None


def test_brics_vocabulary(nci_blocks):
    assert 0 < len(nci_blocks) <= 40
    assert len(set(nci_blocks)) == len(nci_blocks)
    assert all(b.stems for b in nci_blocks)
    assert brics_blocks(nci_smiles(300), max_blocks=40) == nci_blocks  # deterministic
    assert brics_blocks(nci_smiles(300), max_blocks=10) == nci_blocks[:10]  # most frequent first


def test_brics_filters():
    small = brics_blocks(nci_smiles(100), max_blocks=100, max_atoms=3)
    assert small and all(b.n_atoms <= 3 for b in small)
    common = brics_blocks(nci_smiles(100), max_blocks=100, min_count=5)
    everything = brics_blocks(nci_smiles(100), max_blocks=1000)
    assert 0 < len(common) < len(everything)
    assert brics_blocks(["not smiles", "CCO"], max_blocks=5) == []  # nothing to break in ethanol


@pytest.mark.parametrize("source", ["seh_frag", "brics"])
def test_table_round_trip(source, nci_blocks):
    blocks = seh_frag_blocks() if source == "seh_frag" else nci_blocks
    table = blocks_table(blocks, source)
    assert table.schema.equals(BLOCKS_SCHEMA)
    assert table["n_atoms"].to_pylist() == [b.n_atoms for b in blocks]
    assert blocks_from_table(table) == blocks
    assert blocks_from_table(table.take(list(range(len(blocks)))[::-1])) == blocks  # by id, not row


def test_table_with_gap_in_ids_is_rejected():
    table = blocks_table(seh_frag_blocks()[:3], "seh_frag")
    bad = table.set_column(0, "block_id", pa.array([0, 1, 5], pa.int32()))
    with pytest.raises(ValueError, match="block_id"):
        blocks_from_table(bad)
