"""Workflow overhead and per-stage cost, measured on the built tree.

1. No-op rebuild cost over the whole graph: `snakemake -n` and `dvc status` after a full build, each
   against the bare cost of starting the same tool (`snakemake --version`, `dvc --version`) in the same
   run, so the ratio shows what the graph itself costs; and `dvc status` with the params hook switched
   off (`WORKBENCH_DVC_HOOK=0`, plain DVC), the hook's baseline. Snakemake's own floor: `snakemake -n`
   over a synthetic workflow with as many rules and jobs as the real graph (each job one input from the
   rule before, a log and a benchmark file, outputs present) but none of this project's glue (no params
   functions, conda envs or code inputs), so the ratio the glue could at best reach is on the table.
   Wall and CPU seconds (children's user + system time), so a figure taken on a loaded machine can
   still be compared.
2. Wall time and peak memory of every stage, from Snakemake's `benchmark:` files of the last build.

Usage: ./workbench run && .venv/bin/dvc commit -f --no-relink && .venv/bin/python bench/workflow.py [--repeats 5]
(`dvc commit -f` records the Snakemake-built outputs in dvc.lock, so `dvc status` has a full lock to check;
`--no-relink` leaves the workspace files alone: relinking them from the cache rewrites their mtimes out of
the graph's order, and Snakemake then checksums every input that looks newer than its job's outputs.)
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], repeats: int, env: dict | None = None, cwd: Path = ROOT,
          check: bool = False) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(repeats):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=check, capture_output=True, env={**os.environ, **(env or {})})
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


def graph_size() -> tuple[int, int]:
    """(rules, jobs) of the real graph, from a forced dry run's job stats."""
    out = subprocess.run(["snakemake", "-n", "-F", "--cores", "1"], cwd=ROOT, capture_output=True, text=True).stdout
    table = out[out.index("Job stats:"):]
    table = table[: table.index("total")]
    counts = [int(m.group(1)) for m in re.finditer(r"^\w+\s+(\d+)$", table, re.M)]
    return len(counts), sum(counts)


def synthetic_workflow(folder: Path, rules: int, jobs: int) -> None:
    """`rules` chained rules with one wildcard sharing `jobs` jobs, every output already built."""
    per_rule = [jobs // rules + (r < jobs % rules) for r in range(rules)]
    lines = []
    for r, n in enumerate(per_rule):
        inp = f'    input: "out/r{r - 1}/{{i}}.txt"\n' if r and n <= per_rule[r - 1] else ""
        lines.append(f'rule r{r}:\n{inp}    output: "out/r{r}/{{i}}.txt"\n    log: "logs/r{r}/{{i}}.log"\n'
                     f'    benchmark: "bench/r{r}/{{i}}.tsv"\n    shell: "touch {{output}} {{log}}"\n')
    targets = [f"out/r{r}/{i}.txt" for r, n in enumerate(per_rule) for i in range(n)]
    (folder / "Snakefile").write_text(f"rule all:\n    input: {targets!r}\n\n" + "\n".join(lines))
    for t in targets:  # built in rule order, so every output is newer than its input
        (folder / t).parent.mkdir(parents=True, exist_ok=True)
        (folder / t).touch()


def floor_row(repeats: int) -> None:
    rules, jobs = graph_size()
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_workflow(Path(tmp), rules, jobs)
        walls, cpus = timed(["snakemake", "-n", "--nolock", "--cores", "1", "--quiet"], repeats, cwd=Path(tmp),
                            check=True)
    (b, bc), med = timed(["snakemake", "--version"], repeats), statistics.median
    print(f"| `snakemake -n`, synthetic graph ({rules} rules, {jobs} jobs, no glue) | {med(walls):.2f} | "
          f"{med(cpus):.2f} | {med(b):.2f} / {med(bc):.2f} | {med(walls) / med(b):.2f}x | {med(cpus) / med(bc):.2f}x |")


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
    floor_row(args.repeats)
    stage_table()
