# MaestroMotif on NetHack: collect -> captions (+pairs) -> annotate (per skill, shared LLM cache) -> reward
# (per skill) -> train (skill-conditioned policy, and the single Motif-style agent; per seed) -> codegen
# (LLM-written policy over skills, sandboxed, unit-tested) -> evaluate (composed / single / random; per seed)
# -> aggregate (claims, hostile sandbox suite).
from stages.maestromotif.workflow import policy_inputs

MM = config["maestromotif"]
MM_SEEDS = MM["seeds"]
MM_TRAINED = ["skills"] + [f"single_{t}" for t in MM["single_agent_tasks"]]
MM_EVAL_AGENTS = ["composed", "random"] + [f"single_{t}" for t in MM["single_agent_tasks"]]
MM_RL = "results/maestromotif/rl/{agent}/seed{seed}"
MM_EVAL = "results/maestromotif/eval/{agent}/seed{seed}"
MM_REWARD = "results/maestromotif/reward"

use rule stage as maestromotif_collect with:
    input:
        code=code_inputs("maestromotif.collect"),
    output:
        steps="data/maestromotif/steps.parquet",
    params:
        **stage_params(config, "maestromotif.collect", collect="maestromotif.collect", env="maestromotif.env"),
    log:
        "logs/maestromotif/collect.log",
    benchmark:
        "benchmarks/maestromotif/collect.tsv"


use rule stage as maestromotif_captions with:
    input:
        code=code_inputs("maestromotif.captions"),
        steps=rules.maestromotif_collect.output.steps,
    output:
        captions="data/maestromotif/captions.parquet",
        pairs="data/maestromotif/pairs.parquet",
    params:
        **stage_params(config, "maestromotif.captions", pairs="maestromotif.pairs"),
    log:
        "logs/maestromotif/captions.log",
    benchmark:
        "benchmarks/maestromotif/captions.tsv"


use rule stage as maestromotif_annotate with:
    input:
        code=code_inputs("maestromotif.annotate"),
        captions=rules.maestromotif_captions.output.captions,
        pairs=rules.maestromotif_captions.output.pairs,
    output:
        annotations="data/maestromotif/annotations.parquet",
        metrics="results/maestromotif/annotate_metrics.json",
    params:
        **stage_params(config, "maestromotif.annotate", skills="maestromotif.skills", tasks="maestromotif.tasks",
                       single_agent_tasks="maestromotif.single_agent_tasks", llm="maestromotif.llm",
                       judge="maestromotif.judge", annotate="maestromotif.annotate"),
    log:
        "logs/maestromotif/annotate.log",
    benchmark:
        "benchmarks/maestromotif/annotate.tsv"


use rule stage as maestromotif_reward with:
    input:
        code=code_inputs("maestromotif.reward"),
        captions=rules.maestromotif_captions.output.captions,
        pairs=rules.maestromotif_captions.output.pairs,
        annotations=rules.maestromotif_annotate.output.annotations,
    output:
        model=f"{MM_REWARD}/models.safetensors",
        sidecar=f"{MM_REWARD}/models.safetensors.json",
        stats=f"{MM_REWARD}/stats.json",
        metrics=f"{MM_REWARD}/metrics.json",
    params:
        **stage_params(config, "maestromotif.reward", model="maestromotif.reward.model",
                       train="maestromotif.reward.train"),
    log:
        "logs/maestromotif/reward.log",
    benchmark:
        "benchmarks/maestromotif/reward.tsv"


use rule stage as maestromotif_train with:
    input:
        code=code_inputs("maestromotif.train_skills"),
        reward_model=rules.maestromotif_reward.output.model,
        reward_stats=rules.maestromotif_reward.output.stats,
    output:
        policy=f"{MM_RL}/policy.safetensors",
        sidecar=f"{MM_RL}/policy.safetensors.json",
        curve=f"{MM_RL}/curve.csv",
        metrics=f"{MM_RL}/metrics.json",
    wildcard_constraints:
        agent="|".join(MM_TRAINED),
        seed=r"\d+",
    params:
        **stage_params(config, "maestromotif.train_skills", seed="seed", ppo="maestromotif.ppo",
                       rl="maestromotif.rl", policy="maestromotif.policy"),
    log:
        "logs/maestromotif/rl/{agent}/seed{seed}/train.log",
    benchmark:
        "benchmarks/maestromotif/rl/{agent}/seed{seed}/train.tsv"
    resources:
        runtime=120,
        mem_mb=3000,


use rule stage as maestromotif_codegen with:
    input:
        code=code_inputs("maestromotif.codegen"),
    output:
        rounds="results/maestromotif/codegen/rounds.parquet",
        policies="results/maestromotif/codegen/policies.json",
    params:
        **stage_params(config, "maestromotif.codegen", codegen="maestromotif.codegen", llm="maestromotif.llm",
                       skills="maestromotif.skills", tasks="maestromotif.tasks", annotate="maestromotif.annotate"),
    log:
        "logs/maestromotif/codegen.log",
    benchmark:
        "benchmarks/maestromotif/codegen.tsv"


use rule stage as maestromotif_evaluate with:
    input:
        unpack(lambda wc: {"code": code_inputs("maestromotif.evaluate"), **policy_inputs(wc)}),
    output:
        episodes=f"{MM_EVAL}/episodes.parquet",
    wildcard_constraints:
        agent="|".join(MM_EVAL_AGENTS),
        seed=r"\d+",
    params:
        **stage_params(config, "maestromotif.evaluate", seed="seed", evaluate="maestromotif.evaluate",
                       tasks="maestromotif.tasks", policy="maestromotif.policy", rl="maestromotif.rl",
                       codegen="maestromotif.codegen"),
    log:
        "logs/maestromotif/eval/{agent}/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/maestromotif/eval/{agent}/seed{seed}/evaluate.tsv"


use rule stage as maestromotif_aggregate with:
    input:
        code=code_inputs("maestromotif.aggregate"),
        episodes=expand(f"{MM_EVAL}/episodes.parquet", agent=MM_EVAL_AGENTS, seed=MM_SEEDS),
        reward_metrics=rules.maestromotif_reward.output.metrics,
        policies=rules.maestromotif_codegen.output.policies,
    output:
        claims="results/maestromotif/claims.parquet",
        table="results/maestromotif/summary.parquet",
        metrics="results/maestromotif/metrics.json",
        plot=report("results/maestromotif/success.png", category="MaestroMotif"),
    params:
        **stage_params(config, "maestromotif.aggregate", aggregate="maestromotif.aggregate"),
    log:
        "logs/maestromotif/aggregate.log",
    benchmark:
        "benchmarks/maestromotif/aggregate.tsv"


rule maestromotif_all:
    input:
        rules.maestromotif_aggregate.output,
