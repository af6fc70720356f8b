"""Docking oracle overhead, in one process: the same N ligands docked by a minimal direct loop (RDKit
embed + MMFF, Meeko PDBQT, one Vina object whose maps are computed once) and through DockingOracle with
an empty cache and one worker process (canonicalisation, fork worker, cache writes included), same
settings and seeds; then the same ligands again through the now-filled cache.

Both sides pay for computing Vina's maps once. Ligands are given as canonical SMILES, so both dock the
same input and must give the same scores (checked). The machine is shared, so `--rounds 2` alternates
the order (direct, oracle, oracle, direct) to spread load drift over both, and CPU time (this process
plus the finished worker processes) is reported beside wall time, as other jobs may share the cores.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/docking_throughput.py [--n 6] [--rounds 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meeko import MoleculePreparation, PDBQTWriterLegacy  # noqa: E402
from rdkit import Chem  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402
from vina import Vina  # noqa: E402

from stages.chem import docking  # noqa: E402
from stages.chem.docking import DockingConfig, DockingOracle, DockingTarget  # noqa: E402
from stages.chem.receptor import DEFAULT_LIGAND, default_receptor_pdb, prepare_receptor  # noqa: E402

LIGANDS = ["CC(=O)Nc1ccc(O)cc1", "Oc1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1",
           "NC(=O)c1cccnc1", "Cc1ccccc1", "OC(=O)c1ccccc1", "c1ccc2ccccc2c1", "CCOC(=O)c1ccccc1",
           "Nc1ccc(cc1)S(N)(=O)=O", "O=C1CCCN1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"]


def direct_scores(smiles: list[str], target: DockingTarget, cfg: DockingConfig) -> list[float]:
    v = Vina(sf_name=cfg.scoring, cpu=1, seed=cfg.seed + 1, verbosity=0)
    v.set_receptor(target.receptor_pdbqt)
    v.compute_vina_maps(center=list(target.center), box_size=list(target.size))
    scores = []
    for smi in smiles:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        params = AllChem.ETKDGv3()
        params.randomSeed = cfg.seed
        AllChem.EmbedMolecule(mol, params)
        AllChem.MMFFOptimizeMolecule(mol, maxIters=cfg.mmff_max_iters)
        pdbqt, _, _ = PDBQTWriterLegacy.write_string(MoleculePreparation().prepare(mol)[0])
        v.set_ligand_from_string(pdbqt)
        v.dock(exhaustiveness=cfg.exhaustiveness, n_poses=cfg.n_poses)
        scores.append(float(v.energies(n_poses=1)[0][0]))
    return scores


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (the oracle's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help=f"ligands (at most {len(LIGANDS)})")
    ap.add_argument("--exhaustiveness", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--padding", type=float, default=4.0, help="box padding around 1PWC's ligand, A")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args()
    smiles = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in LIGANDS[: args.n]]
    cfg = DockingConfig(exhaustiveness=args.exhaustiveness, seed=args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record = prepare_receptor(default_receptor_pdb(), tmp / "rec.pdbqt", ligand_resname=DEFAULT_LIGAND,
                                  padding=args.padding)
        target = DockingTarget.from_receptor(record, name="1pwc")
        t_direct = t_oracle = c_direct = c_oracle = 0.0
        for r in range(args.rounds):
            for side in (("direct", "oracle") if r % 2 == 0 else ("oracle", "direct")):
                docking._SESSION = None  # both sides compute the maps themselves
                start, cpu = time.perf_counter(), cpu_seconds()
                if side == "direct":
                    ref = direct_scores(smiles, target, cfg)
                    t_direct += time.perf_counter() - start
                    c_direct += cpu_seconds() - cpu
                else:
                    cache = tmp / f"cache{r}.parquet"
                    with DockingOracle(target, cfg, cache, workers=1) as oracle:
                        df = oracle.dock(smiles)
                    t_oracle += time.perf_counter() - start
                    c_oracle += cpu_seconds() - cpu
        start = time.perf_counter()
        cached = DockingOracle(target, cfg, cache, workers=1)  # reads the cache file
        again = cached.dock(smiles)
        t_cold = time.perf_counter() - start
        warm = []
        for _ in range(5):
            start = time.perf_counter()
            cached.dock(smiles)
            warm.append(time.perf_counter() - start)
        assert cached.calls == 0 and again["cached"].all()

    out = {
        "n_ligands": len(smiles), "rounds": args.rounds, "exhaustiveness": args.exhaustiveness,
        "box_size": list(target.size),
        "direct_s_per_ligand": t_direct / (args.rounds * len(smiles)),
        "oracle_s_per_ligand": t_oracle / (args.rounds * len(smiles)),
        "throughput_ratio_oracle_vs_direct": t_direct / t_oracle,
        "cpu_ratio_oracle_vs_direct": c_direct / c_oracle,
        "scores_match": [round(s, 3) for s in ref] == df["score"].round(3).tolist(),
        "statuses": df["status"].value_counts().to_dict(),
        "cached_hit_ms": 1000 * statistics.median(warm) / len(smiles),
        "cached_hit_ms_first_call": 1000 * t_cold / len(smiles),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['n_ligands']} ligands x {args.rounds} round(s), exhaustiveness {args.exhaustiveness}, "
          f"box {[round(s, 1) for s in target.size]} A")
    print(f"direct loop : {out['direct_s_per_ligand']:.2f} s/ligand (maps included)")
    print(f"oracle      : {out['oracle_s_per_ligand']:.2f} s/ligand (1 worker, empty cache)")
    print(f"ratio       : {out['throughput_ratio_oracle_vs_direct']:.3f}x (target >= 0.9)  "
          f"scores match: {out['scores_match']}")
    print(f"CPU ratio   : {out['cpu_ratio_oracle_vs_direct']:.3f}x (CPU seconds, workers included)")
    print(f"cached hit  : {out['cached_hit_ms']:.2f} ms/ligand warm, {out['cached_hit_ms_first_call']:.2f} "
          "ms/ligand on a new oracle's first call (reads the cache file)")


if __name__ == "__main__":
    main()
