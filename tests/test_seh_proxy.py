"""sEH proxy re-implementation against the 37 reference scores, plus loader safety and featurization.

The weights are committed (data/external/seh_proxy); the 37 reference scores stay in
shared/data/seh_proxy beside the project, and the reference tests skip when that table is absent."""
import csv
import gzip
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from stages.chem.seh_proxy import (
    SEH_PROXY_FILENAME,
    SEH_PROXY_SHA256,
    ProxyWeightsError,
    UnsupportedMolecule,
    featurize,
    load_seh_proxy,
    read_proxy_arrays,
    seh_task_reward,
)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "data" / "external" / "seh_proxy" / SEH_PROXY_FILENAME
REFERENCE = ROOT.parent / "shared" / "data" / "seh_proxy" / "reference_scores.tsv"
ROWS = list(csv.DictReader(REFERENCE.open(), delimiter="\t")) if REFERENCE.exists() else []


@pytest.fixture(scope="module")
def proxy():
    return load_seh_proxy(WEIGHTS)


@pytest.fixture(scope="module")
def single_scores(proxy):
    return np.array([proxy.raw_scores([Chem.MolFromSmiles(r["smiles"])])[0] for r in ROWS])


def test_reference_table_is_complete():
    if not REFERENCE.exists():
        pytest.skip(f"reference table absent: {REFERENCE}")
    assert len(ROWS) == 37


@pytest.mark.parametrize("i", range(len(ROWS)), ids=[r["smiles"] for r in ROWS])
def test_matches_reference_scores(single_scores, i):
    row = ROWS[i]
    assert abs(single_scores[i] - float(row["raw_output"])) < 1e-4, row["smiles"]
    assert abs(seh_task_reward(single_scores[i:i + 1])[0] - float(row["task_reward"])) < 1e-4


@pytest.mark.parametrize("batch_size", [1, 5, 256])
def test_batching_does_not_change_scores(proxy, single_scores, batch_size):
    mols = [Chem.MolFromSmiles(r["smiles"]) for r in ROWS]
    batched = proxy.raw_scores(mols, batch_size=batch_size)
    assert batched.dtype == np.float32 and batched.shape == (len(ROWS),)
    np.testing.assert_allclose(batched, single_scores, atol=1e-5)


def test_atom_renumbering_does_not_change_score(proxy):
    mol = Chem.MolFromSmiles("O=C(NC1CCCCC1)NC1CCCCC1")  # DCU
    perm = np.random.default_rng(0).permutation(mol.GetNumAtoms()).tolist()
    shuffled = Chem.RenumberAtoms(mol, perm)
    a, b = proxy.raw_scores([mol, shuffled])
    assert abs(a - b) < 1e-5


@pytest.mark.parametrize("raw,expected", [(np.nan, 1e-4), (-3.0, 1e-4), (8.0, 1.0), (4.0, 0.5),
                                          (1e4, 100.0)])
def test_task_reward_transform(raw, expected):
    assert seh_task_reward(np.array([raw]))[0] == pytest.approx(expected, rel=1e-6)


# --- featurization (no weights needed) ---------------------------------------------------------------
def test_aspirin_features_follow_the_spec():
    mol = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    x, edge_index, edge_attr = featurize(mol)
    assert x.shape == (13, 71) and x.dtype == np.float32
    assert set(np.flatnonzero(x[0])) == {1, 12, 13, 19} and x[0, 13] == 3  # methyl carbon
    assert x[4, 9] == 1 and x[4, 11] == 1  # aromatic sp2 carbon
    assert np.all(x[:, 70] == 0) and np.all(x[:, :6].sum(1) == 1)
    assert edge_index.shape == (2, 2 * mol.GetNumBonds()) == (2, edge_attr.shape[0])
    keys = edge_index[0] * 100 + edge_index[1]
    assert np.all(np.diff(keys) > 0), "edges sorted by (source, target)"
    assert edge_attr.sum(1).tolist() == [1] * edge_attr.shape[0]
    assert edge_attr[:, 3].sum() == 12  # six aromatic bonds, both directions


@pytest.mark.parametrize("smiles", ["C", "O", "[Na+]"])
def test_single_atom_gets_zero_self_loop(smiles):
    x, edge_index, edge_attr = featurize(Chem.MolFromSmiles(smiles))
    assert x.shape == (1, 71)
    assert edge_index.tolist() == [[0], [0]] and edge_attr.tolist() == [[0, 0, 0, 0]]


def test_dative_bond_is_a_clear_error():
    mol = Chem.RWMol(Chem.MolFromSmiles("CN"))
    mol.GetBondWithIdx(0).SetBondType(Chem.BondType.DATIVE)
    with pytest.raises(UnsupportedMolecule, match="DATIVE"):
        featurize(mol)


def test_element_beyond_barium_is_a_clear_error():
    with pytest.raises(UnsupportedMolecule, match="Pt"):
        featurize(Chem.MolFromSmiles("[Pt]"))


# --- loading -----------------------------------------------------------------------------------------
def _write_pickle(path: Path, obj) -> Path:
    with gzip.open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


def test_wrong_sha_names_file_and_both_hashes(tmp_path):
    path = _write_pickle(tmp_path / SEH_PROXY_FILENAME, [np.zeros(3, np.float32)] * 22)
    with pytest.raises(ProxyWeightsError) as err:
        load_seh_proxy(path)
    assert str(path) in str(err.value) and SEH_PROXY_SHA256 in str(err.value)
    from stages.common.artifacts import file_sha256
    assert file_sha256(path) in str(err.value)


def test_forbidden_global_in_pickle_is_refused(tmp_path):
    path = _write_pickle(tmp_path / "evil.pkl.gz", [np.zeros(2, np.float32), OrderedDict(a=1)])
    from stages.common.artifacts import file_sha256
    with pytest.raises(ProxyWeightsError, match="OrderedDict"):
        read_proxy_arrays(path, sha256=file_sha256(path))


def test_plain_array_pickle_loads_with_restricted_unpickler(tmp_path):
    arrays = [np.arange(4, dtype=np.float32) * i for i in range(22)]
    path = _write_pickle(tmp_path / "ok.pkl.gz", arrays)
    from stages.common.artifacts import file_sha256
    loaded = read_proxy_arrays(path, sha256=file_sha256(path))
    assert all(np.array_equal(a, b) for a, b in zip(loaded, arrays))


def test_missing_file_without_url_says_where(tmp_path):
    with pytest.raises(ProxyWeightsError, match=str(tmp_path)):
        load_seh_proxy(cache_dir=tmp_path)


def test_download_with_wrong_sha_leaves_nothing(tmp_path):
    src = _write_pickle(tmp_path / "other.pkl.gz", [np.zeros(1)])
    cache = tmp_path / "cache"
    with pytest.raises(ProxyWeightsError, match="sha256"):
        load_seh_proxy(cache_dir=cache, url=src.as_uri())
    assert list(cache.iterdir()) == []


def test_download_into_cache_dir(tmp_path):
    proxy = load_seh_proxy(cache_dir=tmp_path, url=WEIGHTS.as_uri())  # file:// stands in for https
    assert (tmp_path / SEH_PROXY_FILENAME).exists()
    assert proxy.raw_scores([Chem.MolFromSmiles("c1ccccc1")])[0] == pytest.approx(0.929, abs=1e-3)
