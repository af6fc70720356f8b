"""Resumable training state: one safetensors file of tensors plus JSON progress, keyed on the run.

A long stage calls `ResumeState.for_output(ctx, "model")`, then `load()` once at the start and `save()`
every so often. The file only continues the run that wrote it: the same params hash, seed, code hash and
input hashes (from the stage's provenance); anything else, or a file that fails its sha256 check, starts afresh with
a warning and never crashes the stage. Tensors go through safetensors (no pickle); non-tensor progress
(counters, curve rows, RNG states as lists) goes in the sidecar's `progress` entry. `clear()` removes
the file once the stage has written its outputs.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.common import artifacts

log = logging.getLogger(__name__)
RUN_KEYS = ("params_hash", "seed", "code_sha256", "inputs")


@dataclass
class ResumeState:
    path: Path
    provenance: dict

    @classmethod
    def for_output(cls, ctx, output: str) -> ResumeState:
        """The resume file beside output `output` of the stage: `<output>.resume.safetensors`."""
        return cls(Path(f"{ctx.outputs[output]}.resume.safetensors"), ctx.provenance())

    def save(self, tensors: Mapping[str, torch.Tensor], progress: Mapping[str, Any]) -> None:
        """Atomically replace the resume file; the sidecar (with `progress`) is written last."""
        json.dumps(progress)  # fail here, before anything is written, on what JSON cannot hold
        artifacts.save_checkpoint(self.path, tensors, {**self.provenance, "progress": dict(progress)})

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, progress) left by this same run, else None."""
        if not self.path.exists():
            return None
        try:
            saved = artifacts.read_provenance(self.path)
            if any(saved.get(k) != self.provenance.get(k) for k in RUN_KEYS):
                log.warning("%s: left by a run with other params, seed or code; starting afresh", self.path)
                return None
            tensors = artifacts.load_checkpoint(self.path)
        except (artifacts.ArtifactError, OSError, ValueError) as exc:
            log.warning("unusable resume file %s, starting afresh: %s", self.path, exc)
            return None
        log.info("resuming from %s", self.path)
        return tensors, dict(saved.get("progress", {}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        artifacts.sidecar_path(self.path).unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU generator states as JSON-able values (for `progress`)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    return {"python": repr(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import ast
    import random

    import numpy as np

    random.setstate(_tuples(ast.literal_eval(state["python"])))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors `<prefix>.<param index>.<name>` (safetensors
    holds tensors only); the param groups (learning rate...) are rebuilt from the config, not saved."""
    return {f"{prefix}.{i}.{name}": torch.as_tensor(value)
            for i, state in optimizer.state_dict()["state"].items() for name, value in state.items()}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           prefix: str) -> None:
    """Inverse of `optimizer_tensors`; keys under other prefixes are ignored (give the optimizer a prefix
    no module's state shares)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[name] = value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
