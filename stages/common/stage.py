"""Run one stage: resolve its params, seed everything, hand it a context, log timings.

Both engines call the same command, `python -m stages run <module> ...`:
  Snakemake passes the values it resolved from its config as JSON (`--params-json`), so profile
  overlays and `--config` overrides reach the stage; DVC passes `--params-file params.yaml` and the
  runner reads exactly the dotted keys named in `--keys`. Either way the stage sees the same dict and
  writes the same bytes.
A stage module defines `run(ctx: StageContext) -> None`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.common import artifacts
from stages.common.code import ROOT, code_files, code_sha256
from stages.common.params import load_params, params_hash, select, validate_selected

KEY_PACKAGES = ("numpy", "pandas", "pyarrow", "torch")
log = logging.getLogger("stages")


@lru_cache(maxsize=1)
def git_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class StageContext:
    """What a stage sees: its params (by alias), its input and output paths (by name), and helpers
    that stamp provenance on everything it writes."""

    stage: str
    params: dict[str, Any]
    param_keys: dict[str, str]
    inputs: dict[str, Path | list[Path]]
    outputs: dict[str, Path]
    threads: int = 1
    seed_value: int | None = None
    wildcards: dict[str, str] = field(default_factory=dict)
    """The job's wildcards ({system}, {seed}, ...) as strings: run identity without parsing paths."""
    _input_hashes: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """The `--seed` the engine passed (a seed wildcard), else a param aliased `seed`, else 0."""
        if self.seed_value is not None:
            return self.seed_value
        return int(self.params.get("seed", 0))

    def provenance(self) -> dict:
        if not self._input_hashes:
            self._input_hashes = {
                name: ([artifacts.file_sha256(p) for p in paths] if isinstance(paths, list)
                       else artifacts.file_sha256(paths))
                for name, paths in self.inputs.items()}
        dotted = {self.param_keys[a]: v for a, v in self.params.items()}
        return {"stage": self.stage, "params": dotted, "params_hash": params_hash(dotted),
                "seed": self.seed, "wildcards": dict(self.wildcards), "code_version": git_version(),
                "code_sha256": code_sha256(self.stage),
                "inputs": self._input_hashes, "packages": package_versions()}

    def write_table(self, name: str, table: pa.Table, schema: pa.Schema) -> Path:
        """Write output `name`; when the rule also declares `<name>_csv`, a CSV copy goes there
        (Snakemake's report renders CSV tables, not Parquet)."""
        path = artifacts.write_table(self.outputs[name], table, schema, self.provenance())
        if f"{name}_csv" in self.outputs:
            artifacts.write_csv(self.outputs[f"{name}_csv"], table)
        return path

    def save_checkpoint(self, name: str, tensors: Mapping) -> Path:
        return artifacts.save_checkpoint(self.outputs[name], tensors, self.provenance())

    def write_json(self, name: str, data: Mapping) -> Path:
        return artifacts.write_json(self.outputs[name], data)

    def write_curve(self, name: str, rows: list[Mapping[str, Any]],
                    columns: Iterable[str] | None = None) -> Path:
        """A training curve as CSV output `name` (DVC plots it over `step`): one row per mapping, the
        columns named by `columns` (default: the first row's keys), numbers in one format."""
        return artifacts.write_curve(self.outputs[name], rows, columns)

    def write_claims(self, name: str, claims: list[Mapping[str, Any]]) -> Path:
        """Rows of `stages.common.stats.claim(...)` as the Parquet output `name`; `python -m stages
        summary` prints every method's claims as one table."""
        from stages.common.stats import claims_table

        table = claims_table(claims)
        return self.write_table(name, table, table.schema)

    def input_list(self, name: str) -> list[Path]:
        """Input `name` as a list, also when the rule's expand() produced a single file."""
        paths = self.inputs[name]
        return paths if isinstance(paths, list) else [paths]

    def save_figure(self, name: str, fig, dpi: int = 110) -> Path:
        """Save a matplotlib figure as PNG output `name` atomically, with fixed metadata so the bytes
        are identical across re-runs, and close it."""
        import matplotlib.pyplot as plt

        with artifacts.atomic_path(self.outputs[name]) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
        plt.close(fig)
        return self.outputs[name]

    def progress(self, iterable: Iterable | None = None, **kwargs):
        """A progress bar on a terminal; silent when output goes to a log file."""
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=None, mininterval=1.0, **kwargs)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"stages run: {what} '{item}' must look like name=value")
        out[name] = value
    return out


def uses_torch(stage: str) -> bool:
    """Whether any source file of the stage imports torch (at module level or inside a function)."""
    return any(re.search(r"^\s*(import|from) torch\b", (ROOT / rel).read_text(), re.M)
               for rel in code_files(stage))


def seed_everything(seed: int, threads: int, with_torch: bool = True) -> None:
    """Seed Python and NumPy, and torch (deterministic algorithms on) when `with_torch`: stages whose
    code never imports torch (most aggregates) skip its ~1 s import."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if with_torch:
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        # torch.use_deterministic_algorithms(True) also sets torch._inductor.config.deterministic,
        # which imports inductor and dynamo (~1.5 s per process); no stage uses torch.compile, so set
        # the ATen flag alone.
        torch._C._set_deterministic_algorithms(True, warn_only=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", help="stage module under stages/, e.g. koopman.train")
    ap.add_argument("--keys", nargs="*", default=[], help="alias=dotted.params.key for each param read")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--params-json", help="{dotted key: value} resolved by Snakemake")
    src.add_argument("--params-file", nargs="+", help="params.yaml (and overlays), read by DVC")
    ap.add_argument("--in", dest="inputs", nargs="*", default=[], help="name=path[,path...]")
    ap.add_argument("--out", dest="outputs", nargs="*", default=[], help="name=path")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None, help="seed from a {seed} wildcard")
    ap.add_argument("--wildcards", nargs="*", default=[], help="name=value of each job wildcard")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    keys = _pairs(args.keys, "--keys")
    if args.params_json is not None:
        values = json.loads(args.params_json)
        selected = {dotted: values[dotted] for dotted in keys.values()}
        validate_selected(selected, source="--params-json")
    else:
        selected = select(load_params(*args.params_file), keys.values())
    inputs = {n: ([Path(p) for p in v.split(",")] if "," in v else Path(v))
              for n, v in _pairs(args.inputs, "--in").items()}
    outputs = {n: Path(v) for n, v in _pairs(args.outputs, "--out").items()}
    ctx = StageContext(stage=args.stage, params={a: selected[d] for a, d in keys.items()},
                       param_keys=keys, inputs=inputs, outputs=outputs, threads=args.threads,
                       seed_value=args.seed, wildcards=_pairs(args.wildcards, "--wildcards"))

    module = importlib.import_module(f"stages.{args.stage}")
    seed_everything(ctx.seed, args.threads, with_torch=uses_torch(args.stage))
    start = time.perf_counter()
    log.info("stage %s: params %s", args.stage, json.dumps(ctx.provenance()["params"], sort_keys=True))
    module.run(ctx)
    missing = [str(p) for p in outputs.values() if not p.exists()]
    if missing:
        raise artifacts.ArtifactError(f"stage {args.stage} did not write declared output(s) {missing}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("stage %s done: wall %.1f s, peak RSS %.0f MB, pid %d", args.stage,
             time.perf_counter() - start, peak_mb, os.getpid())
    return 0
