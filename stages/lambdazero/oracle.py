"""The docking oracle of a LambdaZero run: the receptor and box of stage 2, the docking settings of
params `lambdazero.dock`, and the shared cache file (outside results/, so no molecule is docked twice
across stages and runs; entries are keyed by molecule and by the exact docking setup)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from stages.chem.docking import DockingConfig, DockingOracle, DockingTarget

log = logging.getLogger(__name__)
CONFIG_KEYS = ("exhaustiveness", "n_poses", "seed", "scoring", "timeout_s")


def make_oracle(receptor_pdbqt: str | Path, box_json: str | Path, dock: dict, threads: int) -> DockingOracle:
    """An oracle docking with min(dock.workers, threads) worker processes (at least 1, so the
    per-ligand timeout holds)."""
    box = json.loads(Path(box_json).read_text())
    target = DockingTarget.from_pdbqt(receptor_pdbqt, box["center"], box["size"], box.get("name"))
    config = DockingConfig.from_params({k: dock[k] for k in CONFIG_KEYS if k in dock})
    workers = max(1, min(int(dock["workers"]), int(threads)))
    return DockingOracle(target, config, cache_path=dock["cache"], workers=workers)


def dock_logged(oracle: DockingOracle, smiles: list[str], what: str):
    """oracle.dock with a log line (docked vs cached, seconds); returns the result frame."""
    calls_before = oracle.calls
    results = oracle.dock(smiles)
    fresh = ~results["cached"].astype(bool)
    ok = results["status"] == "ok"
    log.info("%s: %d molecules, %d docked now (%.0f s of docking), %d from cache, %d ok, best %.2f kcal/mol",
             what, len(smiles), oracle.calls - calls_before, float(results.loc[fresh, "seconds"].sum()),
             int((~fresh).sum()), int(ok.sum()),
             float(np.nanmin(results.loc[ok, "score"])) if ok.any() else float("nan"))
    return results
