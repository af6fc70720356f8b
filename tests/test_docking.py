"""Receptor preparation, Vina docking, the docking cache and the worker pool (tiny molecules,
exhaustiveness 1, the 1PWC pocket box)."""
from __future__ import annotations

import os
import time

import gemmi
import numpy as np
import pytest
from rdkit import Chem

from stages.chem import docking
from stages.chem.dock_cache import DockingCacheError
from stages.chem.docking import DockingConfig, DockingOracle, DockingTarget, dock_smiles
from stages.chem.receptor import ReceptorError, default_receptor_pdb, prepare_receptor
from stages.chem.workers import TaskFailure, WorkerPool

CONFIG = DockingConfig(exhaustiveness=1, n_poses=1, seed=0)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    return prepare_receptor(default_receptor_pdb(), tmp_path_factory.mktemp("rec") / "1pwc.pdbqt",
                            ligand_resname="PNM", padding=3.0)


@pytest.fixture(scope="module")
def target(record):
    return DockingTarget.from_receptor(record, name="1pwc")


def _ligand_xyz():
    st = gemmi.read_structure(str(default_receptor_pdb()))
    return np.array([a.pos.tolist() for ch in st[0] for r in ch if r.name == "PNM" for a in r])


def test_receptor_pdbqt_is_protein_only_and_box_holds_ligand(record):
    lines = [ln for ln in open(record["pdbqt"]) if ln.startswith(("ATOM", "HETATM"))]
    assert len(lines) == record["n_atoms"] > 2000
    types = {ln[77:79].strip() for ln in lines}
    assert {"C", "N", "OA", "HD"} <= types  # AD4 types, polar hydrogens added
    assert not {ln[17:20] for ln in lines} & {"HOH", "PNM"}
    assert all(abs(float(ln[70:76])) < 2 for ln in lines)  # a charge column that parses
    assert record["ligand"]["resname"] == "PNM" and record["dropped_residues"]["HOH"] > 0
    xyz, c, s = _ligand_xyz(), np.array(record["center"]), np.array(record["size"])
    assert np.all(np.abs(xyz - c) <= s / 2)


@pytest.mark.parametrize("content", ["", "this is not a PDB file\n", None,
                                     "HETATM    1  O   HOH A   1      1.000   2.000   3.000  1.00  0.00           O\n"])
def test_bad_receptor_file_raises(tmp_path, content):
    path = tmp_path / "bad.pdb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReceptorError, match="bad.pdb"):
        prepare_receptor(path, tmp_path / "out.pdbqt", ligand_resname=None, center=(1, 2, 3), size=(8, 8, 8))
    assert not (tmp_path / "out.pdbqt").exists()


def _empty_point(xyz: np.ndarray) -> np.ndarray:
    """A point inside the protein's bounding box at least 3 A from every atom."""
    lo, hi = xyz.min(0), xyz.max(0)
    grid = np.stack(np.meshgrid(*[np.linspace(a + 0.5, b - 0.5, 12) for a, b in zip(lo, hi)]), -1).reshape(-1, 3)
    dist = np.min(np.linalg.norm(grid[:, None] - xyz[None], axis=-1), axis=1)
    assert dist.max() > 3
    return grid[dist.argmax()]


def test_box_outside_protein_or_empty_raises(tmp_path):
    pdb = default_receptor_pdb()
    with pytest.raises(ReceptorError, match="outside the protein"):
        prepare_receptor(pdb, tmp_path / "r.pdbqt", ligand_resname=None, center=(200, 0, 0), size=(20, 20, 20))
    st = gemmi.read_structure(str(pdb))
    xyz = np.array([a.pos.tolist() for ch in st[0] for r in ch if r.het_flag == "A" for a in r])
    with pytest.raises(ReceptorError, match="contains no protein atom"):
        prepare_receptor(pdb, tmp_path / "r.pdbqt", ligand_resname=None, center=_empty_point(xyz),
                         size=(2, 2, 2))
    with pytest.raises(ReceptorError, match="PNM"):
        prepare_receptor(pdb, tmp_path / "r.pdbqt", ligand_resname="XYZ")


def test_dock_benzene_gives_negative_score_and_readable_pose(target):
    res = dock_smiles("c1ccccc1", target, CONFIG)
    assert res.status == "ok", res.error
    assert res.score < 0
    mol = Chem.MolFromMolBlock(res.pose_sdf)
    assert mol is not None and mol.GetNumHeavyAtoms() == 6
    xyz = mol.GetConformer().GetPositions()
    assert np.all(np.abs(xyz - np.array(target.center)) <= np.array(target.size) / 2 + 2)


@pytest.mark.parametrize("smiles,status", [("not_a_smiles", "invalid_smiles"), ("", "invalid_smiles"),
                                           ("C1#CC1", "embed_failed"), ("CCO.Cl", "prep_failed"),
                                           ("C[Se]C", "prep_failed")])
def test_failures_are_rows(target, smiles, status):
    df = DockingOracle(target, CONFIG, workers=0).dock([smiles, "CCO"])
    assert df["status"].tolist() == [status, "ok"]
    assert np.isnan(df["score"][0]) and df["error"][0]


def test_score_is_deterministic_for_fixed_seed(target):
    first = dock_smiles("Oc1ccccc1", target, CONFIG)
    again = dock_smiles("Oc1ccccc1", target, CONFIG)
    docking._SESSION = None  # a fresh Vina object with freshly computed maps
    fresh = dock_smiles("Oc1ccccc1", target, CONFIG)
    assert first.status == "ok"
    assert first.score == again.score == fresh.score
    assert first.pose_sdf == again.pose_sdf == fresh.pose_sdf


def test_cache_hit_needs_no_docking(target, tmp_path, monkeypatch):
    cache = tmp_path / "dock.parquet"
    first = DockingOracle(target, CONFIG, cache, workers=0)
    df1 = first.dock(["Oc1ccccc1"])
    assert first.calls == 1 and first.hits == 0 and not df1["cached"][0]

    def no_docking(*args):
        raise AssertionError("docked although cached")

    monkeypatch.setattr(docking, "_dock_task", no_docking)
    second = DockingOracle(target, CONFIG, cache, workers=0)  # a fresh process would read the file too
    start = time.perf_counter()
    df2 = second.dock(["Oc1ccccc1", "c1ccc(O)cc1", "OC1=CC=CC=C1"])
    assert time.perf_counter() - start < 1.0
    assert second.calls == 0 and second.hits == 3
    assert df2["cached"].all() and (df2["score"] == df1["score"][0]).all()
    assert df2["inchikey"].nunique() == 1 and df2["pose_sdf"][0] == df1["pose_sdf"][0]


def test_duplicates_in_one_call_are_docked_once_and_interrupts_keep_results(target, tmp_path, monkeypatch):
    cache = tmp_path / "dock.parquet"
    real, seen = docking._dock_task, []

    def interrupted_second(smiles, *args):
        seen.append(smiles)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(smiles, *args)

    monkeypatch.setattr(docking, "_dock_task", interrupted_second)
    oracle = DockingOracle(target, CONFIG, cache, workers=0, flush_interval_s=0)
    with pytest.raises(KeyboardInterrupt):
        oracle.dock(["CCO", "OCC", "CCN"])
    assert seen == ["CCO", "CCN"]  # the duplicate was not docked again
    monkeypatch.setattr(docking, "_dock_task", real)
    resumed = DockingOracle(target, CONFIG, cache, workers=0)
    df = resumed.dock(["CCO", "CCN"])
    assert df["cached"].tolist() == [True, False] and resumed.calls == 1


def test_truncated_cache_is_a_clear_error_and_kept(target, tmp_path):
    cache = tmp_path / "dock.parquet"
    DockingOracle(target, CONFIG, cache, workers=0).dock(["CCO"])
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    with pytest.raises(DockingCacheError, match=r"dock\.parquet.*recover=True"):
        DockingOracle(target, CONFIG, cache, workers=0)
    assert cache.read_bytes() == data[: len(data) // 2]  # nothing deleted
    oracle = DockingOracle(target, CONFIG, cache, workers=0, recover=True)
    assert len(oracle.cache) == 0 and not cache.exists()
    assert len(list(tmp_path.glob("dock.parquet.corrupt-*"))) == 1


def test_workers_give_same_scores_and_timeouts_are_rows(target, tmp_path):
    smiles = ["CCO", "c1ccccc1"]
    serial = DockingOracle(target, CONFIG, workers=0).dock(smiles)
    with DockingOracle(target, CONFIG, workers=2) as parallel:
        df = parallel.dock(smiles)
    assert df["status"].tolist() == ["ok", "ok"]
    assert df["score"].tolist() == serial["score"].tolist()
    slow = DockingConfig(exhaustiveness=1, seed=0, timeout_s=0.01)
    with DockingOracle(target, slow, tmp_path / "c.parquet", workers=1) as oracle:
        assert oracle.dock(["CC(C)Cc1ccc(cc1)C(C)C(=O)O"])["status"].tolist() == ["timeout"]
        oracle.dock(["CC(C)Cc1ccc(cc1)C(C)C(=O)O"])
        assert oracle.calls == 2  # timeouts are not cached


def _square(x):
    return x * x


def _misbehave(x):
    if x == "crash":
        os._exit(3)
    if x == "sleep":
        time.sleep(30)
    if x == "raise":
        raise ValueError("bad task")
    return x


def test_worker_pool_survives_crashes_errors_and_timeouts():
    with WorkerPool(_square, 2) as pool:
        assert dict(pool.run([(i, (i,)) for i in range(5)])) == {i: i * i for i in range(5)}
    with WorkerPool(_misbehave, 2, timeout_s=1.0) as pool:
        out = dict(pool.run([(k, (k,)) for k in ("crash", "sleep", "raise", "fine")]))
        assert out["fine"] == "fine"
        assert [out[k].kind for k in ("crash", "sleep", "raise")] == ["crashed", "timeout", "error"]
        assert isinstance(out["crash"], TaskFailure) and "3" in out["crash"].message
        assert dict(pool.run([("again", ("again",))])) == {"again": "again"}  # replaced workers serve
