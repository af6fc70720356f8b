"""Run identity from an artifact path: results/demp/<dataset>/<model>/<variant>/seed<n>/<file>."""
from __future__ import annotations

from pathlib import Path


def run_id(path) -> tuple[str, str, str, int]:
    """(dataset, model, variant, seed) of the run folder holding `path`."""
    seed_dir = Path(path).parent
    if not seed_dir.name.startswith("seed") or len(seed_dir.parents) < 3:
        raise ValueError(f"{path}: expected results/demp/<dataset>/<model>/<variant>/seed<n>/...")
    return (seed_dir.parents[2].name, seed_dir.parents[1].name, seed_dir.parent.name,
            int(seed_dir.name.removeprefix("seed")))


def lambda_index(variant: str) -> int | None:
    """demp_l2 / magnitude_l2 -> 2; dense -> None."""
    return None if variant == "dense" else int(variant.rsplit("_l", 1)[1])
