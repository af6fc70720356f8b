"""Adversarial-training settings against each other on the built models (issue 13: clean accuracy vs ASR).

For every variant (overrides of `robustness.advtrain` in params.yaml, given as JSON) and every trained
model of the default graph (`results/robustness/<task>/<size>/seed<k>/model.safetensors`, built first by
`snakemake robustness_all`), runs the advtrain stage and then the GCG-suffix attack on the first
`--examples` attack-split prompts, through `python -m stages run` (the stages' own code), two at a time.
The undefended model is attacked on the same prompts. Prints, per variant, the ASR drop and the change in
clean validation accuracy, means over sizes per seed with 95% t-intervals over seeds (paired: same
models, same prompts), and per size.

    PYTHONPATH=. python bench/robustness_advtrain_mix.py --out /tmp/advmix \\
        --variant base='{}' mixed='{"examples_per_epoch": 640, "max_adv_fraction": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stages.common.stats import paired
from stages.common.workflow import stage_command

ROOT = Path(__file__).resolve().parents[1]


def stage(module: str, keys: dict, values: dict, inputs: dict, outputs: dict, seed: int, log: Path) -> None:
    """`python -m stages run`, with the command line the workflow rules build."""
    args = stage_command(module, keys, {k: str(v) for k, v in inputs.items()},
                         {k: str(v) for k, v in outputs.items()}, 1, seed, params_json=json.dumps(values))
    cmd = [sys.executable, "-m", "stages", "run", *shlex.split(args)]
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def one(params: dict, task: str, examples: int, variant: str, overrides: dict, size: str, seed: int,
        out: Path) -> dict:
    rb = params["robustness"]
    built = ROOT / "results" / "robustness" / task / size / f"seed{seed}"
    folder = out / variant / size / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    data = {"examples": ROOT / "data" / "robustness" / task / "examples.parquet",
            "tokenizer": ROOT / "data" / "robustness" / "tokenizer.json"}
    attack_name = rb["advtrain"]["attack"]
    attack = rb["attacks"][attack_name]
    model, config = built / "model.safetensors", built / "config.json"
    row = {"variant": variant, "size": size, "seed": seed}
    if variant != "undefended":
        advtrain = {**rb["advtrain"], **overrides}
        stage("robustness.advtrain", {"advtrain": "robustness.advtrain", "attack": f"robustness.attacks.{attack_name}"},
              {"robustness.advtrain": advtrain, f"robustness.attacks.{attack_name}": attack},
              {**data, "model": model, "config": config},
              {"model_out": folder / "adv.safetensors", "sidecar": folder / "adv.safetensors.json",
               "config_out": folder / "adv_config.json", "curve": folder / "curve.csv",
               "metrics": folder / "adv_metrics.json"}, seed, folder / "advtrain.log")
        model, config = folder / "adv.safetensors", folder / "adv_config.json"
        curve = pd.read_csv(folder / "curve.csv")
        row["accuracy_change"] = float(curve.val_accuracy.iloc[-1] - curve.val_accuracy.iloc[0])
    stage("robustness.attack", {"evaluate": "robustness.evaluate", "attacks": "robustness.attacks"},
          {"robustness.attacks": {attack_name: attack}, "robustness.evaluate": {"n_examples": examples}},
          {**data, "model": model, "config": config},
          {"results": folder / "attack.parquet", "metrics": folder / "attack_metrics.json"}, seed,
          folder / "attack.log")
    hits = pd.read_parquet(folder / "attack.parquet").query("clean_correct")
    row["asr"] = float((hits.success_iter > 0).mean())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", required=True, help="name='{json overrides of robustness.advtrain}'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--examples", type=int, default=32, help="attack-split prompts attacked per model")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sizes", nargs="*", help="only these sizes (default: all in params.yaml)")
    ap.add_argument("--seeds", nargs="*", type=int, help="only these seeds (default: all)")
    a = ap.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    rb = params["robustness"]
    task = sorted(rb["tasks"])[0]
    variants = {"undefended": {}, **{v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in a.variant}}
    sizes, seeds = a.sizes or sorted(rb["sizes"]), a.seeds if a.seeds is not None else rb["seeds"]
    jobs = [(v, o, s, k) for v, o in variants.items() for s in sizes for k in seeds]
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = pd.DataFrame(pool.map(lambda j: one(params, task, a.examples, *j, a.out), jobs))
    base = rows[rows.variant == "undefended"].set_index(["size", "seed"]).asr
    for name in variants:
        if name == "undefended":
            continue
        r = rows[rows.variant == name].set_index(["size", "seed"])
        r["asr_drop"] = base - r.asr
        per_seed = r.groupby(level="seed")[["asr_drop", "accuracy_change"]].mean()
        drop = paired(per_seed.asr_drop, np.zeros(len(per_seed)), method="robustness", claim_text=name,
                      metric="asr_drop")
        acc = paired(per_seed.accuracy_change, np.zeros(len(per_seed)), method="robustness", claim_text=name,
                     metric="accuracy_change", alternative="two-sided")
        print(f"\n{name} {json.dumps(variants[name])}: ASR drop {drop['effect']:.3f} "
              f"[{drop['ci_low']:.3f}, {drop['ci_high']:.3f}], clean accuracy change {acc['effect']:+.3f} "
              f"[{acc['ci_low']:+.3f}, {acc['ci_high']:+.3f}] (means over sizes per seed, n = {len(per_seed)} seeds)")
        print(r.groupby(level="size")[["asr_drop", "accuracy_change"]].mean().round(3).to_string())
    rows.to_csv(a.out / "rows.csv", index=False)


if __name__ == "__main__":
    main()
