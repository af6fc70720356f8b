# Actions World Models (Ma et al., ICML 2024): collect + optimum (per task) -> train_world_model ->
# train_policy -> evaluate, and gradients (per task, seed) -> aggregate. Conventions: docs/adding-a-method.md.
AWM = config["awm"]
AWM_SEEDS = AWM["seeds"]
AWM_POLICY_TASKS = AWM["policy_tasks"]
AWM_GRADIENT_TASKS = AWM["gradient_tasks"]
AWM_SAC_TASKS = AWM["sac"]["tasks"]
AWM_MODEL_TASKS = sorted(set(AWM_POLICY_TASKS) | set(AWM_GRADIENT_TASKS))
AWM_RUN = "results/awm/{task}/seed{seed}"
AWM_WILDCARDS = {"task": "|".join(sorted(AWM["tasks"])), "seed": r"\d+"}


use rule stage as awm_collect with:
    input:
        code=code_inputs("awm.collect"),
    output:
        rollouts="data/awm/{task}/rollouts.parquet",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.collect", task="awm.tasks.{task}", collect="awm.collect"),
    log:
        "logs/awm/{task}/collect.log",
    benchmark:
        "benchmarks/awm/{task}/collect.tsv"


use rule stage as awm_optimum with:
    input:
        code=code_inputs("awm.optimum"),
    output:
        optimum="data/awm/{task}/optimum.parquet",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.optimum", task="awm.tasks.{task}", optimum="awm.optimum",
                       evaluate="awm.evaluate"),
    log:
        "logs/awm/{task}/optimum.log",
    benchmark:
        "benchmarks/awm/{task}/optimum.tsv"
    resources:
        runtime=60,
        mem_mb=4000,


use rule stage as awm_train_world_model with:
    input:
        code=code_inputs("awm.train_world_model"),
        rollouts=rules.awm_collect.output.rollouts,
    output:
        models=f"{AWM_RUN}/world_models.safetensors",
        sidecar=f"{AWM_RUN}/world_models.safetensors.json",
        errors=f"{AWM_RUN}/prediction_error.parquet",
        curve=f"{AWM_RUN}/curve_world_model.csv",
        metrics=f"{AWM_RUN}/metrics_world_model.json",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.train_world_model", seed="seed", task="awm.tasks.{task}",
                       world_model="awm.world_model"),
    log:
        f"logs/awm/{{task}}/seed{{seed}}/train_world_model.log",
    benchmark:
        f"benchmarks/awm/{{task}}/seed{{seed}}/train_world_model.tsv"
    resources:
        runtime=240,
        mem_mb=8000,
        gpu=1,


use rule stage as awm_train_policy with:
    input:
        code=code_inputs("awm.train_policy"),
        models=rules.awm_train_world_model.output.models,
    output:
        policies=f"{AWM_RUN}/policies.safetensors",
        sidecar=f"{AWM_RUN}/policies.safetensors.json",
        curve=f"{AWM_RUN}/curve_policy.csv",
        metrics=f"{AWM_RUN}/metrics_policy.json",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.train_policy", seed="seed", task="awm.tasks.{task}",
                       world_model="awm.world_model", policy="awm.policy"),
    log:
        f"logs/awm/{{task}}/seed{{seed}}/train_policy.log",
    benchmark:
        f"benchmarks/awm/{{task}}/seed{{seed}}/train_policy.tsv"
    resources:
        runtime=360,
        mem_mb=8000,
        gpu=1,


use rule stage as awm_evaluate with:
    input:
        code=code_inputs("awm.evaluate"),
        policies=rules.awm_train_policy.output.policies,
        optimum=rules.awm_optimum.output.optimum,
    output:
        evaluation=f"{AWM_RUN}/evaluation.parquet",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.evaluate", seed="seed", task="awm.tasks.{task}", policy="awm.policy",
                       evaluate="awm.evaluate"),
    log:
        f"logs/awm/{{task}}/seed{{seed}}/evaluate.log",
    benchmark:
        f"benchmarks/awm/{{task}}/seed{{seed}}/evaluate.tsv"


use rule stage as awm_gradients with:
    input:
        code=code_inputs("awm.gradients"),
        models=rules.awm_train_world_model.output.models,
    output:
        gradients=f"{AWM_RUN}/gradients.parquet",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.gradients", seed="seed", task="awm.tasks.{task}",
                       world_model="awm.world_model", policy="awm.policy", gradients="awm.gradients"),
    log:
        f"logs/awm/{{task}}/seed{{seed}}/gradients.log",
    benchmark:
        f"benchmarks/awm/{{task}}/seed{{seed}}/gradients.tsv"
    resources:
        runtime=120,
        mem_mb=8000,


use rule stage as awm_sac with:
    input:
        code=code_inputs("awm.sac_baseline"),
        optimum=rules.awm_optimum.output.optimum,
    output:
        policy=f"{AWM_RUN}/sac_policy.safetensors",
        sidecar=f"{AWM_RUN}/sac_policy.safetensors.json",
        curve=f"{AWM_RUN}/curve_sac.csv",
        evaluation=f"{AWM_RUN}/sac_evaluation.parquet",
    wildcard_constraints:
        **AWM_WILDCARDS,
    params:
        **stage_params(config, "awm.sac_baseline", seed="seed", task="awm.tasks.{task}", sac="awm.sac"),
    log:
        f"logs/awm/{{task}}/seed{{seed}}/sac.log",
    benchmark:
        f"benchmarks/awm/{{task}}/seed{{seed}}/sac.tsv"
    resources:
        runtime=240,
        mem_mb=4000,


use rule stage as awm_aggregate with:
    input:
        code=code_inputs("awm.aggregate"),
        evaluation=expand(rules.awm_evaluate.output.evaluation, task=AWM_POLICY_TASKS, seed=AWM_SEEDS)
        + expand(rules.awm_sac.output.evaluation, task=AWM_SAC_TASKS, seed=AWM_SEEDS),
        errors=expand(rules.awm_train_world_model.output.errors, task=AWM_MODEL_TASKS, seed=AWM_SEEDS),
        gradients=expand(rules.awm_gradients.output.gradients, task=AWM_GRADIENT_TASKS, seed=AWM_SEEDS),
        wm_metrics=expand(rules.awm_train_world_model.output.metrics, task=AWM_MODEL_TASKS, seed=AWM_SEEDS),
        policy_metrics=expand(rules.awm_train_policy.output.metrics, task=AWM_POLICY_TASKS, seed=AWM_SEEDS),
    output:
        claims="results/awm/claims.parquet",
        costs="results/awm/costs.parquet",
        costs_csv=report("results/awm/costs.csv", category="AWM"),
        gradient_table="results/awm/gradient_table.parquet",
        gradient_table_csv=report("results/awm/gradient_table.csv", category="AWM"),
        gradient_fits="results/awm/gradient_fits.parquet",
        gradient_fits_csv=report("results/awm/gradient_fits.csv", category="AWM"),
        plot_gradients=report("results/awm/gradient_norm_vs_horizon.png", category="AWM"),
        plot_errors=report("results/awm/prediction_error.png", category="AWM"),
        plot_costs=report("results/awm/cost_vs_horizon.png", category="AWM"),
        metrics="results/awm/metrics.json",
    params:
        **stage_params(config, "awm.aggregate", aggregate="awm.aggregate"),
    log:
        "logs/awm/aggregate.log",
    benchmark:
        "benchmarks/awm/aggregate.tsv"


rule awm_all:
    input:
        rules.awm_aggregate.output,
