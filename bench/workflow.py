"""Workflow overhead and per-stage cost, measured on the built tree.

1. No-op rebuild cost over the whole graph: `snakemake -n` and `dvc status` after a full build, each
   against the bare cost of starting the same tool (`snakemake --version`, `dvc --version`) in the same
   run, so the ratio shows what the graph itself costs; and `dvc status` with the params hook switched
   off (`WORKBENCH_DVC_HOOK=0`, plain DVC), the hook's baseline. Wall and CPU seconds (children's user +
   system time), so a figure taken on a loaded machine can still be compared.
2. Wall time and peak memory of every stage, from Snakemake's `benchmark:` files of the last build.

Usage: ./workbench run && .venv/bin/dvc commit -f && .venv/bin/python bench/workflow.py [--repeats 5]
(`dvc commit -f` records the Snakemake-built outputs in dvc.lock, so `dvc status` has a full lock to check.)
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], repeats: int, env: dict | None = None) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(repeats):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, env={**os.environ, **(env or {})})
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append(after.children_user + after.children_system - before.children_user - before.children_system)
    return walls, cpus


def noop_table(repeats: int) -> None:
    print(f"## No-op rebuild over the whole graph ({repeats} runs, medians, seconds)\n")
    print("| command | wall | CPU | bare tool start: wall / CPU | ratio (wall) | ratio (CPU) |")
    print("|---|---|---|---|---|---|")
    cases = [("snakemake -n", ["snakemake", "-n", "--nolock", "--cores", "1", "--quiet"], {},
              ["snakemake", "--version"]),
             ("dvc status", ["dvc", "status", "-q"], {}, ["dvc", "--version"]),
             ("dvc status, hook off (plain DVC)", ["dvc", "status", "-q"], {"WORKBENCH_DVC_HOOK": "0"},
              ["dvc", "--version"])]
    for name, cmd, env, bare in cases:
        (t, tc), (b, bc) = timed(cmd, repeats, env), timed(bare, repeats)
        med = statistics.median
        print(f"| `{name}` | {med(t):.2f} | {med(tc):.2f} | {med(b):.2f} / {med(bc):.2f} | "
              f"{med(t) / med(b):.2f}x | {med(tc) / med(bc):.2f}x |")


def stage_table() -> None:
    print("\n## Stages of the last build (Snakemake benchmark files)\n")
    print("| stage | wall s | peak RSS MB |")
    print("|---|---|---|")
    for tsv in sorted((ROOT / "benchmarks").rglob("*.tsv")):
        row = next(csv.DictReader(tsv.open(), delimiter="\t"))
        name = str(tsv.relative_to(ROOT / "benchmarks").with_suffix(""))
        print(f"| {name} | {float(row['s']):.1f} | {float(row['max_rss']):.0f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    noop_table(args.repeats)
    stage_table()
