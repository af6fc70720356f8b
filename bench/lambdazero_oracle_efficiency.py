"""LambdaZero oracle efficiency of a finished run, from its artifacts (no new docking): how many docking
calls it took to find good binders, for

  active_learning  the molecules the policy proposed and the proxy picked, rounds 1..R (docked.parquet,
                   origin `active_learning`), in round order;
  initial          the initial docked set: distinct random MDP molecules, i.e. random screening
                   (initial_docked.parquet; the same rows as origin `initial` of docked.parquet);
  run_total        what the whole run paid: the initial set, then the active-learning calls;
  evaluate:<arm>   if evaluation_molecules.parquet exists, the top-k of each evaluation arm (fresh policy /
                   random samples ranked by the final proxy reward, the initial set's top-k, which are cache
                   hits), docked by the evaluate stage, and `evaluate:screen`, the random-screening
                   sequence with the method's budget;
  method           active_learning followed by evaluate:policy: every docking call the method chose.
The chain itself records the same accounting per seed (efficiency.parquet, claims in the aggregate);
this script re-reads one run with any threshold or budget.

A docking call is one molecule sent to the oracle (failures included). A hit is a molecule whose Vina
score is <= the threshold: `--threshold` kcal/mol, or by default the `--percentile` (10) percentile of the
initial set's scores (so the initial set has about 10% hits by construction: its rate is in-sample,
the other arms' are not). Per arm: calls, hits (distinct SMILES), hits per call with a 95% Wilson
interval, calls per hit, best score and mean of the top 10 scores; and the same best / top-10 mean
after the first B calls for each budget B in `--budgets` (default every 10 calls), so arms compare at
equal budgets.

Prints one JSON object. Usage:
  .venv/bin/python bench/lambdazero_oracle_efficiency.py [--run results/lambdazero/seed0]
      [--threshold -7.0 | --percentile 10] [--budgets 10 20 40]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.artifacts import read_table  # noqa: E402

TOP = 10


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(centre - half, 0.0), 4), round(min(centre + half, 1.0), 4)]


def best_and_top(rows: list[dict]) -> tuple[float | None, float | None]:
    """Best score and mean of the top-10 distinct molecules' scores among `rows`."""
    best_by_smiles: dict[str, float] = {}
    for r in rows:
        if r["score"] is not None:
            best_by_smiles[r["smiles"]] = min(r["score"], best_by_smiles.get(r["smiles"], math.inf))
    scores = sorted(best_by_smiles.values())
    if not scores:
        return None, None
    return round(scores[0], 3), round(float(np.mean(scores[:TOP])), 3)


def arm_summary(rows: list[dict], threshold: float, budgets: list[int]) -> dict:
    """Efficiency of one arm; `rows` in the order the calls were made."""
    n = len(rows)
    ok = [r for r in rows if r["score"] is not None]
    hits = {r["smiles"] for r in ok if r["score"] <= threshold}
    best, top = best_and_top(rows)
    curve = []
    for b in budgets:
        if b <= n:
            b_best, b_top = best_and_top(rows[:b])
            curve.append({"calls": b, "hits": len({r["smiles"] for r in rows[:b]
                                                   if r["score"] is not None and r["score"] <= threshold}),
                          "best": b_best, f"top{TOP}_mean": b_top})
    return {"calls": n, "docked_ok": len(ok), "distinct_smiles": len({r["smiles"] for r in rows}),
            "hits": len(hits), "hits_per_call": round(len(hits) / n, 4) if n else None,
            "hits_per_call_95ci": wilson(len(hits), n),
            "calls_per_hit": round(n / len(hits), 2) if hits else None,
            "best": best, f"top{TOP}_mean": top, "by_budget": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "results/lambdazero/seed0",
                    help="a run folder of stages/lambdazero/rules.smk (LZ_RUN)")
    ap.add_argument("--threshold", type=float, default=None, help="hit: Vina score <= this (kcal/mol)")
    ap.add_argument("--percentile", type=float, default=10.0,
                    help="without --threshold: this percentile of the initial set's scores")
    ap.add_argument("--budgets", type=int, nargs="*", default=None,
                    help="call budgets of the per-budget table (default: every 10 calls)")
    args = ap.parse_args()

    docked_path = args.run / "docked.parquet"
    if not docked_path.exists():
        sys.exit(f"error: {docked_path} is missing: the run has not been built "
                 "(rule lambdazero_train_rl writes it; --run names another run folder)")
    from stages.lambdazero.tables import DOCKED_SCHEMA  # torch + RDKit: imported once the input exists

    docked = read_table(docked_path, DOCKED_SCHEMA).to_pylist()
    initial_path = args.run / "initial_docked.parquet"
    if initial_path.exists():
        initial = read_table(initial_path, DOCKED_SCHEMA).to_pylist()
        initial_source = str(initial_path)
    else:
        initial = [r for r in docked if r["origin"] == "initial"]
        initial_source = f"{docked_path} (origin 'initial'; {initial_path.name} missing)"
    active = sorted((r for r in docked if r["origin"] == "active_learning"), key=lambda r: r["round"])  # stable
    if not initial:
        sys.exit(f"error: no initial docked molecules in {initial_source}")

    init_scores = np.array([r["score"] for r in initial if r["score"] is not None], float)
    if args.threshold is not None:
        threshold, rule = args.threshold, "--threshold"
    elif init_scores.size:
        threshold = float(np.percentile(init_scores, args.percentile))
        rule = f"{args.percentile:g}th percentile of the initial set's {init_scores.size} scores"
    else:
        sys.exit(f"error: no successfully docked molecule in the initial set ({initial_source}); "
                 "pass --threshold")

    arms = {"active_learning": active, "initial": initial, "run_total": initial + active}
    eval_path = args.run / "evaluation_molecules.parquet"
    if eval_path.exists():
        from stages.lambdazero.evaluate import MOLECULES_SCHEMA

        rows = sorted((r for r in read_table(eval_path, MOLECULES_SCHEMA).to_pylist() if r["top_k"]),
                      key=lambda r: r["order"])                 # docking order within each arm
        for arm in dict.fromkeys(r["arm"] for r in rows):
            arms[f"evaluate:{arm}"] = [r for r in rows if r["arm"] == arm]
        if "evaluate:policy" in arms:        # the method's own calls, as the chain's efficiency.parquet counts them
            arms["method"] = active + arms["evaluate:policy"]
    longest = max(len(v) for v in arms.values())
    budgets = sorted(set(args.budgets)) if args.budgets else list(range(10, longest + 1, 10))

    out = {"run": str(args.run), "initial_source": initial_source, "threshold_kcal_mol": round(threshold, 3),
           "threshold_rule": rule, "rounds": len({r["round"] for r in active}),
           "arms": {name: arm_summary(rows, threshold, budgets) for name, rows in arms.items()}}
    a, i = out["arms"]["active_learning"], out["arms"]["initial"]
    if a["hits_per_call"] is not None and i["hits_per_call"]:
        out["active_learning_over_random_hit_rate"] = round(a["hits_per_call"] / i["hits_per_call"], 2)
    m, sc = out["arms"].get("method"), out["arms"].get("evaluate:screen")
    if m and sc and m["hits_per_call"] is not None and sc["hits_per_call"]:
        out["method_over_screening_hit_rate"] = round(m["hits_per_call"] / sc["hits_per_call"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
