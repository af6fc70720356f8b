"""Input function of the evaluate rule (kept out of rules.smk: Snakemake's lint wants functions in modules)."""
from __future__ import annotations

REWARD = "results/maestromotif/reward"


def policy_inputs(wildcards) -> dict[str, str]:
    """What an evaluated agent needs: nothing for random; the trained policy and the reward models
    otherwise; the accepted policy over skills for the composed agent."""
    if wildcards.agent == "random":
        return {}
    trained = "skills" if wildcards.agent == "composed" else wildcards.agent
    inputs = {"policy": f"results/maestromotif/rl/{trained}/seed{wildcards.seed}/policy.safetensors",
              "reward_model": f"{REWARD}/models.safetensors", "reward_stats": f"{REWARD}/stats.json"}
    if wildcards.agent == "composed":
        inputs["policies"] = "results/maestromotif/codegen/policies.json"
    return inputs
