"""Glue between Snakemake rules and stage modules, shared by the Snakefile and the dvc.yaml generator.

A rule declares which stage module it runs and which dotted params keys it reads; `stage_params`
turns that into Snakemake `params:` (so a changed value re-runs the rule) and `stage_command` into the
command line both engines execute.
"""
from __future__ import annotations

import inspect
import json
import shlex
from collections.abc import Mapping
from typing import Any

from stages.common.code import ROOT, code_files
from stages.common.params import method_dirs, select

STAGE_SHELL = "python -m stages run {params.args} > {log} 2>&1"


def method_names() -> list[str]:
    """Methods with a rules file (stages/<method>/rules.smk beside its params schema), sorted."""
    return [d.name for d in method_dirs() if (d / "rules.smk").exists()]


def stage_env(wildcards, params) -> str:
    """The conda env of a stage rule: envs/<method>.yaml, the method being the stage's package."""
    return str(ROOT / "envs" / f"{params.stage.split('.')[0]}.yaml")


def code_inputs(stage: str) -> list[str]:
    """The stage's source files, declared as the rule's `code` input so editing them re-runs it."""
    return list(code_files(stage))


def _io_args(flag: str, named: Mapping[str, Any]) -> list[str]:
    args = []
    for name, value in named.items():
        if name == "code":
            continue
        paths = [value] if isinstance(value, str) else list(value)
        args.append(f"{name}={','.join(map(str, paths))}")
    return [flag, *args] if args else []


def stage_command(stage: str, keys: Mapping[str, str], inputs: Mapping[str, Any],
                  outputs: Mapping[str, Any], threads: int = 1, seed: int | None = None,
                  params_json: str | None = None, params_files: tuple[str, ...] = ("params.yaml",),
                  wildcards: Mapping[str, str] | None = None) -> str:
    """Arguments of `python -m stages run`; with `params_json` the values travel in the command."""
    args = [stage]
    if keys:
        args += ["--keys", *(f"{alias}={dotted}" for alias, dotted in keys.items())]
    args += ["--params-json", params_json] if params_json is not None else ["--params-file", *params_files]
    args += _io_args("--in", inputs) + _io_args("--out", outputs) + ["--threads", str(threads)]
    if seed is not None:
        args += ["--seed", str(seed)]
    if wildcards:
        args += ["--wildcards", *(f"{k}={v}" for k, v in sorted(wildcards.items()))]
    return shlex.join(args)


def stage_params(config: Mapping, stage: str, seed: str | None = None, **keys: str) -> dict:
    """`params:` of a stage rule. `keys` maps alias -> dotted params key, wildcards allowed
    (`system="koopman.systems.{system}"`); `seed` names the wildcard holding the seed, if any."""

    def resolved(wildcards) -> dict[str, str]:
        return {alias: dotted.format(**wildcards) for alias, dotted in keys.items()}

    seen: dict[tuple, str] = {}

    def values(wildcards) -> str:
        key = tuple(wildcards.items())
        if key not in seen:
            seen[key] = json.dumps(select(config, resolved(wildcards).values()), sort_keys=True)
        return seen[key]

    def args(wildcards, input, output, threads) -> str:
        return stage_command(stage, resolved(wildcards), input, output, threads,
                             int(wildcards[seed]) if seed else None, params_json=values(wildcards),
                             wildcards=dict(wildcards.items()))

    # `values` depends on wildcards only, so Snakemake records it and re-runs the job when it changes;
    # `args` (derived from input/output paths) is not compared.
    for function in (resolved, values, args):
        _known_signature(function)
    return {"stage": stage, "param_keys": resolved, "seed_wildcard": seed, "values": values,
            "args": args}


def _known_signature(function) -> None:
    """Snakemake inspects a params function's signature each time it calls it (for every job); this
    attribute, which Snakemake reads first (`snakemake.common.get_function_params`), answers once."""
    function._overwrite_params = inspect.signature(function).parameters
