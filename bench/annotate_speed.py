"""Speed of the embedded judge (local SmolLM2 backend, pointwise mode), measured in one process:

1. conversion of the packaged GGUF to safetensors (only when the converted folder does not exist yet,
   or always with --fresh-conversion, into a temp folder);
2. load time from the converted safetensors folder;
3. annotation of N generated caption pairs over M distinct captions with an empty answer cache:
   captions rated per second and pairs per second;
4. the same annotation again: every answer comes from the cache (seconds, model calls = 0).

The llm and judge blocks come from params.yaml (`motif:`), overridable on the command line. Prints JSON.
Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/annotate_speed.py [--pairs 200] [--captions 48]
       [--batch-size 8] [--threads 1] [--fresh-conversion | --converted-dir DIR] [--params params.yaml ...]
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.common.params import load_params  # noqa: E402
from stages.llm.local import LocalBackend, convert_gguf, resolve_gguf  # noqa: E402
from stages.motif.annotate import annotate  # noqa: E402

MONSTERS = ["newt", "jackal", "grid bug", "sewer rat", "fox", "gnome", "lichen", "kobold", "goblin", "hill orc"]
NEUTRAL = ["It's a wall.", "It's solid stone.", "Never mind.", "You are hungry.", "The door is locked.",
           "You see no door there.", "In what direction?", "Unknown command ' '.", "You stumble.",
           "You hear the footsteps of a guard on patrol.", "There is a doorway here.", "Things that are here:"]


def captions(n: int, rng: random.Random) -> list[str]:
    """n distinct NetHack-like messages: kills, gold, stairs, misses and neutral lines."""
    pool = set(NEUTRAL)
    pool.update(f"You kill the {m}!" for m in MONSTERS)
    pool.update(f"You miss the {m}." for m in MONSTERS)
    pool.update(f"The {m} bites!" for m in MONSTERS)
    pool.update(f"You see here {g} gold pieces." for g in range(2, 60))
    pool.update(["You climb down the stairs.", "There is a staircase down here.", "Welcome to experience level 2."])
    pool = sorted(pool)
    if n > len(pool):
        raise SystemExit(f"--captions at most {len(pool)}")
    return rng.sample(pool, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--captions", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=None, help="default: motif.llm.batch_size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh-conversion", action="store_true", help="time a conversion into a temp folder")
    ap.add_argument("--converted-dir", default=None, help="default: motif.llm.local.converted_dir")
    ap.add_argument("--params", nargs="+", default=[str(ROOT / "params.yaml")])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    params = load_params(*args.params)["motif"]
    llm = copy.deepcopy(params["llm"])
    llm["backend"] = "local"
    if args.batch_size:
        llm["batch_size"] = args.batch_size
    if args.converted_dir:
        llm["local"]["converted_dir"] = args.converted_dir
    gguf = resolve_gguf(llm["model"])
    out: dict = {"threads": args.threads, "batch_size": llm["batch_size"], "pairs": args.pairs,
                 "distinct_captions": args.captions,
                 "few_shot_examples": len(params["judge"]["pointwise_examples"])}
    with tempfile.TemporaryDirectory() as tmp:
        if args.fresh_conversion:
            llm["local"]["converted_dir"] = tmp
        folder = Path(llm["local"]["converted_dir"]) / gguf.stem
        out["conversion_s"] = round(convert_gguf(gguf, folder), 2) if not folder.exists() else None
        start = time.perf_counter()
        backend = LocalBackend(llm)
        out["construct_backend_s"] = round(time.perf_counter() - start, 2)
        out["load_from_safetensors_s"] = round(backend.load_seconds, 2)

        rng = random.Random(0)
        caps = captions(args.captions, rng)
        pairs = [tuple(rng.sample(caps, 2)) for _ in range(args.pairs)]
        table = pa.table({"pair_id": pa.array(range(len(pairs)), pa.int64()), "message_a": [a for a, _ in pairs],
                          "message_b": [b for _, b in pairs], "tie": [False] * len(pairs)})
        opts = {"cache_dir": str(Path(tmp) / "cache"), "flush_every": 64}
        _, first = annotate(table, llm, params["judge"], opts, backend=backend)
        _, again = annotate(table, llm, params["judge"], opts, backend=backend)
    out.update({
        "judge_mode": first["judge_mode"], "labels": first["labels"],
        "annotate_s": first["seconds"], "captions_rated": first["captions_rated"],
        "captions_per_s": round(first["captions_rated"] / first["seconds"], 2),
        "pairs_per_s": first["pairs_per_s"], "model_calls": first["model_calls"],
        "rerun_s": again["seconds"], "rerun_model_calls": again["model_calls"], "rerun_cache_hits": again["cache_hits"],
    })
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
