"""AutoDock Vina docking of SMILES strings, and the cached, parallel docking oracle.

One ligand: RDKit parses the SMILES, adds hydrogens, embeds one conformer with ETKDGv3 (seeded; a second
try from random coordinates if the first fails) and relaxes it with MMFF94 (UFF where MMFF has no
parameters); Meeko types it and writes PDBQT; Vina (scoring "vina", one CPU, seeded) docks it into the
receptor's box and the best pose comes back as an SDF molblock through Meeko's RDKitMolCreate.
The score is Vina's total for the best pose, in kcal/mol (more negative binds better).

Vina's grid maps depend only on receptor, box and scoring function and cost seconds to compute, so each
process keeps its last Vina object (maps + seed) and reuses it for every ligand (`_vina`): the same
numbers as a fresh Vina object per ligand (tested), without the cost. The oracle docks the canonical SMILES,
so a molecule's
result does not depend on how its SMILES was written, and caches by molecule and setup (`dock_cache`).
Failures are rows with a status (STATUSES), never exceptions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pyarrow as pa
from meeko import MoleculePreparation, PDBQTMolecule, PDBQTWriterLegacy, RDKitMolCreate
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem
from vina import Vina

from stages.chem.dock_cache import DockingCache, DockingCacheError  # noqa: F401  (re-exported)
from stages.chem.workers import TaskFailure, WorkerPool

log = logging.getLogger(__name__)

STATUSES = ("ok", "invalid_smiles", "embed_failed", "prep_failed", "vina_failed", "timeout")
ORACLE_SCHEMA = pa.schema([
    ("smiles", pa.string()), ("canonical_smiles", pa.string()), ("inchikey", pa.string()),
    ("status", pa.string()), ("score", pa.float64()), ("pose_sdf", pa.string()),
    ("seconds", pa.float64()), ("cached", pa.bool_()), ("error", pa.string()),
])


@dataclass(frozen=True)
class DockingTarget:
    """A prepared receptor (rigid PDBQT) and the search box, in Angstrom."""

    name: str
    receptor_pdbqt: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    receptor_sha256: str

    @classmethod
    def from_pdbqt(cls, path: str | os.PathLike, center: Sequence[float], size: Sequence[float],
                   name: str | None = None) -> DockingTarget:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: receptor PDBQT does not exist")
        return cls(name or path.stem, str(path), tuple(float(c) for c in center),
                   tuple(float(s) for s in size), hashlib.sha256(path.read_bytes()).hexdigest())

    @classmethod
    def from_receptor(cls, record: dict, name: str | None = None) -> DockingTarget:
        """From the record `receptor.prepare_receptor` returns (or its JSON copy)."""
        return cls.from_pdbqt(record["pdbqt"], record["center"], record["size"], name)

    def check(self) -> None:
        """The receptor file is there and is still the one this target (and its cache rows) describe."""
        path = Path(self.receptor_pdbqt)
        if not path.is_file():
            raise ValueError(f"{path}: receptor PDBQT of target {self.name!r} does not exist")
        if hashlib.sha256(path.read_bytes()).hexdigest() != self.receptor_sha256:
            raise ValueError(f"{path}: receptor PDBQT changed since target {self.name!r} was made from it")
        if len(self.center) != 3 or len(self.size) != 3 or min(self.size) <= 0:
            raise ValueError(f"target {self.name!r}: box needs 3 centre and 3 positive size values")


@dataclass(frozen=True)
class DockingConfig:
    """Docking settings. All but `timeout_s` change results and so are part of the cache key."""

    exhaustiveness: int = 1  # Vina Monte Carlo runs; 1 is cheap (~0.5-5 s/ligand here), Vina's default is 8
    n_poses: int = 1  # poses Vina refines and keeps; the score is the best one's
    seed: int = 0  # seeds both the RDKit embedding and Vina's search
    scoring: str = "vina"  # Vina scoring function: "vina" or "vinardo"
    embed_max_iters: int = 0  # ETKDG maxIterations (0: RDKit's default)
    mmff_max_iters: int = 500  # force-field relaxation steps after embedding
    timeout_s: float | None = 300.0  # per ligand, enforced when docking in worker processes

    def __post_init__(self):
        if self.exhaustiveness < 1 or self.n_poses < 1:
            raise ValueError(f"exhaustiveness and n_poses must be >= 1, got {self.exhaustiveness}, "
                             f"{self.n_poses}")
        if self.scoring not in ("vina", "vinardo"):
            raise ValueError(f"scoring must be 'vina' or 'vinardo', got {self.scoring!r}")
        if not 0 <= self.seed < 2**31 - 1:
            raise ValueError(f"seed must be in [0, 2**31 - 1), got {self.seed}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {self.timeout_s}")

    @classmethod
    def from_params(cls, params: dict) -> DockingConfig:
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown docking setting(s) {sorted(unknown)}")
        return cls(**params)

    def result_key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "timeout_s"}


@dataclass
class DockResult:
    smiles: str
    status: str
    score: float | None = None
    pose_sdf: str | None = None
    seconds: float = 0.0
    error: str | None = None


def setup_hash(target: DockingTarget, config: DockingConfig) -> str:
    """Identity of everything that decides a docking result besides the molecule."""
    key = {"receptor_sha256": target.receptor_sha256, "center": [round(c, 3) for c in target.center],
           "size": [round(s, 3) for s in target.size], "config": config.result_key(),
           "versions": {p: version(p) for p in ("vina", "meeko", "rdkit")}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def canonicalize(smiles: str) -> tuple[str, str] | None:
    """(canonical SMILES, InChIKey), or None if RDKit cannot parse `smiles`."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None
        canonical = Chem.MolToSmiles(mol)
        inchikey = Chem.MolToInchiKey(mol) or f"NOINCHI-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"
    finally:
        RDLogger.EnableLog("rdApp.*")
    return canonical, inchikey


# ---------------------------------------------------------------- one ligand

class _LigandError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def prepare_ligand(smiles: str, config: DockingConfig) -> str:
    """PDBQT string of one 3D conformer of `smiles`; raises _LigandError(status, message)."""
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles.strip() else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise _LigandError("invalid_smiles", f"RDKit cannot parse SMILES {smiles!r}")
    if len(Chem.GetMolFrags(mol)) > 1:
        raise _LigandError("prep_failed", "several fragments; dock one molecule per SMILES (strip salts)")
    mol = Chem.AddHs(mol)
    for random_coords in (False, True):
        params = AllChem.ETKDGv3()
        params.randomSeed = config.seed
        params.useRandomCoords = random_coords
        if config.embed_max_iters:
            params.maxIterations = config.embed_max_iters
        if AllChem.EmbedMolecule(mol, params) == 0:
            break
    else:
        raise _LigandError("embed_failed", "ETKDG found no 3D conformer (also from random coordinates)")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=config.mmff_max_iters)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=config.mmff_max_iters)
    try:
        setups = MoleculePreparation().prepare(mol)
        pdbqt, ok, err = PDBQTWriterLegacy.write_string(setups[0])
    except Exception as exc:  # Meeko raises RuntimeError/ValueError/KeyError for untypeable atoms
        raise _LigandError("prep_failed", f"Meeko: {type(exc).__name__}: {exc}") from exc
    if not ok:
        raise _LigandError("prep_failed", f"Meeko PDBQT writer: {err.strip()}")
    return pdbqt


_SESSION: tuple[tuple, Vina] | None = None  # this process's Vina object with computed maps


def _vina(target: DockingTarget, config: DockingConfig) -> Vina:
    """A Vina object with the receptor loaded and maps for all atom types computed (kept per process)."""
    global _SESSION
    key = (target, config.scoring, config.seed)
    if _SESSION is None or _SESSION[0] != key:
        target.check()
        # Vina reads seed 0 as "pick a random seed", so it gets seed + 1
        v = Vina(sf_name=config.scoring, cpu=1, seed=config.seed + 1, verbosity=0)
        v.set_receptor(target.receptor_pdbqt)
        v.compute_vina_maps(center=list(target.center), box_size=list(target.size))
        _SESSION = (key, v)
    return _SESSION[1]


def dock_smiles(smiles: str, receptor: DockingTarget, config: DockingConfig) -> DockResult:
    """Dock one SMILES as written (the oracle passes canonical SMILES); never raises for a bad molecule."""
    start = time.perf_counter()
    result = DockResult(smiles, "ok")
    try:
        pdbqt = prepare_ligand(smiles, config)
        v = _vina(receptor, config)
        try:
            v.set_ligand_from_string(pdbqt)
            v.dock(exhaustiveness=config.exhaustiveness, n_poses=config.n_poses)
            result.score = float(v.energies(n_poses=1)[0][0])
            poses = v.poses(n_poses=1)
        except Exception as exc:
            raise _LigandError("vina_failed", f"Vina: {type(exc).__name__}: {exc}") from exc
        try:
            result.pose_sdf = _pose_molblock(poses, smiles, result.score)
        except Exception as exc:  # keep the score; say why there is no pose
            result.error = f"pose conversion failed: {type(exc).__name__}: {exc}"
    except _LigandError as exc:
        result.status, result.score, result.error = exc.status, None, str(exc)
    except Exception as exc:  # anything unforeseen in RDKit/Meeko is this ligand's failure, not the run's
        result.status, result.score, result.error = "prep_failed", None, f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def _pose_molblock(poses_pdbqt: str, smiles: str, score: float) -> str:
    mol = RDKitMolCreate.from_pdbqt_mol(PDBQTMolecule(poses_pdbqt, skip_typing=True))[0]
    if mol is None:
        raise ValueError("Meeko could not rebuild the molecule from the pose")
    mol.SetProp("_Name", f"{smiles} vina={score:.3f}")
    return Chem.MolToMolBlock(mol, confId=mol.GetConformers()[0].GetId())


def _dock_task(smiles: str, target: DockingTarget, config: DockingConfig) -> dict:
    return asdict(dock_smiles(smiles, target, config))


# ---------------------------------------------------------------- the oracle

@dataclass
class DockingOracle:
    """Dock lists of SMILES with a Parquet cache and `workers` processes (0: in this process).

    `calls` counts molecules actually docked (cache misses), `hits` those answered from the cache or
    by a duplicate earlier in the same call. Results are flushed to the cache every `flush_interval_s`
    and when `dock` returns or is interrupted. Timeouts are not cached (they depend on machine load).
    `timeout_s` of the config is enforced only with workers >= 1 (a worker is killed, then replaced).
    """

    target: DockingTarget
    config: DockingConfig = field(default_factory=DockingConfig)
    cache_path: str | os.PathLike | None = None
    workers: int = 1
    recover: bool = False  # unreadable cache file: keep it aside as <name>.corrupt-<time>, start empty
    flush_interval_s: float = 10.0
    mp_context: str = "fork"

    def __post_init__(self):
        self.target.check()
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.cache = DockingCache(self.cache_path, recover=self.recover)
        self.setup = setup_hash(self.target, self.config)
        self.calls, self.hits = 0, 0
        self._pool: WorkerPool | None = None

    def dock(self, smiles: Sequence[str]) -> pd.DataFrame:
        """One row per input SMILES, in input order (columns: ORACLE_SCHEMA)."""
        smiles = list(smiles)
        rows: list[dict | None] = [None] * len(smiles)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, s in enumerate(smiles):
            canon = canonicalize(s)
            if canon is None:
                rows[i] = _row(s, None, None, status="invalid_smiles",
                               error=f"RDKit cannot parse SMILES {s!r}")
                continue
            hit = self.cache.get(canon[1], canon[0], self.setup)
            if hit is not None:
                self.hits += 1
                rows[i] = _row(s, canon[0], canon[1], cached=True, **_result_fields(hit))
            elif canon in groups:
                groups[canon].append(i)
            else:
                groups[canon] = [i]
        last_flush = time.monotonic()
        try:
            for (canonical, inchikey), result in self._run(list(groups)):
                self.calls += 1
                self.hits += len(groups[(canonical, inchikey)]) - 1
                for n, i in enumerate(groups[(canonical, inchikey)]):
                    rows[i] = _row(smiles[i], canonical, inchikey, cached=n > 0, **result)
                if result["status"] != "timeout":
                    self.cache.put({**result, "inchikey": inchikey, "canonical_smiles": canonical,
                                    "config_hash": self.setup, "target": self.target.name, "docked_at": None})
                if time.monotonic() - last_flush >= self.flush_interval_s:
                    self.cache.flush()
                    last_flush = time.monotonic()
        finally:
            self.cache.flush()
        return pd.DataFrame(rows, columns=ORACLE_SCHEMA.names)

    def _run(self, keys: list[tuple[str, str]]):
        """Yield (key, result fields) as dockings finish."""
        if not keys:
            return
        if self.workers == 0:
            for key in keys:
                yield key, _result_fields(_dock_task(key[0], self.target, self.config))
            return
        if self._pool is None:
            if self.mp_context == "fork":
                _vina(self.target, self.config)  # compute maps once; forked workers inherit them
            self._pool = WorkerPool(_dock_task, self.workers, timeout_s=self.config.timeout_s,
                                    context=self.mp_context)
        tasks = [(key, (key[0], self.target, self.config)) for key in keys]
        for key, out in self._pool.run(tasks):
            if isinstance(out, TaskFailure):
                status = "timeout" if out.kind == "timeout" else "vina_failed"
                out = {"status": status, "score": None, "pose_sdf": None, "seconds": out.seconds,
                       "error": out.message}
            yield key, _result_fields(out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> DockingOracle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _result_fields(d: dict) -> dict:
    return {k: d.get(k) for k in ("status", "score", "pose_sdf", "seconds", "error")}


def _row(smiles, canonical, inchikey, *, status, score=None, pose_sdf=None, seconds=0.0, cached=False,
         error=None) -> dict:
    return {"smiles": smiles, "canonical_smiles": canonical, "inchikey": inchikey, "status": status,
            "score": score, "pose_sdf": pose_sdf, "seconds": seconds, "cached": cached, "error": error}
