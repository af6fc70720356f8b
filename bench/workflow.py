"""Workflow overhead and per-stage cost, measured on the built tree.

1. No-op rebuild cost over the whole graph: `snakemake -n` and `dvc status` after a full build, each
   against the bare cost of starting the same tool (`snakemake --version`, `dvc --version`) in the same
   run, so the ratio shows what the graph itself costs.
2. Wall time and peak memory of every stage, from Snakemake's `benchmark:` files of the last build.

Usage: ./workbench run && .venv/bin/python bench/workflow.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def noop_table(repeats: int) -> None:
    print(f"## No-op rebuild over the whole graph ({repeats} runs, seconds)\n")
    print("| command | median | min | max | bare tool start (median) | ratio |")
    print("|---|---|---|---|---|---|")
    for cmd, bare in [(["snakemake", "-n", "--nolock", "--cores", "1", "--quiet"], ["snakemake", "--version"]),
                      (["dvc", "status"], ["dvc", "--version"])]:
        t, b = timed(cmd, repeats), timed(bare, repeats)
        print(f"| `{' '.join(cmd)}` | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | "
              f"{statistics.median(b):.2f} | {statistics.median(t) / statistics.median(b):.2f}x |")


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
