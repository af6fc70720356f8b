"""Input functions of the robustness rules (kept out of rules.smk: Snakemake's lint wants functions in
modules)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

RUN = "results/robustness/{task}/{size}/seed{seed}"


def corpus_input(config: Mapping) -> Callable:
    """A task's user corpus file as the data rule's input, when its params name one."""

    def inputs(wildcards) -> dict[str, str]:
        path = config["robustness"]["tasks"][wildcards.task].get("path")
        return {"corpus": path} if path else {}

    return inputs


def attacked_model(wildcards) -> dict[str, str]:
    """The model an attack job targets: the clean one, or the adversarially trained one."""
    run = RUN.format(**wildcards)
    prefix = "" if wildcards.phase == "clean" else "adv_"
    return {"model": f"{run}/{prefix}model.safetensors", "config": f"{run}/{prefix}config.json"}
