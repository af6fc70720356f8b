"""Fixed cost of one stage process: a no-op stage through the runner (`python -m stages run
common.noop`) against `python -c pass` and against `python -c "import torch"`, interleaved in the same
run so machine load affects all alike. Every job of the main job pays the runner's cost once.

Usage: .venv/bin/python bench/stage_startup.py [--repeats 7]   (prints JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "noop.json"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import torch": [sys.executable, "-c", "import torch"],
        "no-op stage": [sys.executable, "-m", "stages", "run", "common.noop", "--params-json", "{}",
                        "--out", f"metrics={out}"],
        "no-op stage + torch": [sys.executable, "-c",
                                "import sys, torch; from stages.common.stage import main; "
                                f"sys.exit(main(['common.noop', '--params-json', '{{}}', '--out', 'metrics={out}']))"],
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"repeats": args.repeats, "median_s": {k: round(v, 3) for k, v in med.items()},
                      "min_s": {k: round(min(v), 3) for k, v in times.items()},
                      "noop_stage_minus_python_s": round(med["no-op stage"] - med["python -c pass"], 3),
                      "torch_stage_over_import_torch": round(med["no-op stage + torch"] / med["import torch"], 2)},
                     indent=2))


if __name__ == "__main__":
    main()
