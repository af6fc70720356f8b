# Koopman autoencoders with periodic reencoding: simulate -> train -> evaluate (per system, seed) -> aggregate.
KOOPMAN_SYSTEMS = sorted(config["koopman"]["systems"])
KOOPMAN_SEEDS = config["koopman"]["seeds"]
KOOPMAN_RUN = "results/koopman/{system}/seed{seed}"


wildcard_constraints:
    system="|".join(KOOPMAN_SYSTEMS),
    seed=r"\d+",


use rule stage as koopman_simulate with:
    input:
        code=code_inputs("koopman.simulate"),
    output:
        trajectories="data/koopman/{system}/trajectories.parquet",
    params:
        **stage_params(config, "koopman.simulate", system="koopman.systems.{system}"),
    log:
        "logs/koopman/{system}/simulate.log",
    benchmark:
        "benchmarks/koopman/{system}/simulate.tsv"


use rule stage as koopman_train with:
    input:
        code=code_inputs("koopman.train"),
        trajectories=rules.koopman_simulate.output.trajectories,
    output:
        model=f"{KOOPMAN_RUN}/model.safetensors",
        sidecar=f"{KOOPMAN_RUN}/model.safetensors.json",
        curve=f"{KOOPMAN_RUN}/train_curve.csv",
    params:
        **stage_params(config, "koopman.train", seed="seed", system="koopman.systems.{system}",
                       model="koopman.model", train="koopman.train"),
    log:
        f"logs/koopman/{{system}}/seed{{seed}}/train.log",
    benchmark:
        f"benchmarks/koopman/{{system}}/seed{{seed}}/train.tsv"
    resources:
        runtime=240,
        mem_mb=16000,
        gpu=1,


use rule stage as koopman_evaluate with:
    input:
        code=code_inputs("koopman.evaluate"),
        trajectories=rules.koopman_simulate.output.trajectories,
        model=rules.koopman_train.output.model,
    output:
        errors=f"{KOOPMAN_RUN}/rollout_error.parquet",
        metrics=f"{KOOPMAN_RUN}/metrics.json",
    params:
        **stage_params(config, "koopman.evaluate", seed="seed", system="koopman.systems.{system}",
                       model="koopman.model", evaluate="koopman.evaluate"),
    log:
        f"logs/koopman/{{system}}/seed{{seed}}/evaluate.log",
    benchmark:
        f"benchmarks/koopman/{{system}}/seed{{seed}}/evaluate.tsv"
    resources:
        runtime=60,
        mem_mb=8000,


use rule stage as koopman_aggregate with:
    input:
        code=code_inputs("koopman.aggregate"),
        errors=expand(rules.koopman_evaluate.output.errors, system=KOOPMAN_SYSTEMS, seed=KOOPMAN_SEEDS),
        metrics=expand(rules.koopman_evaluate.output.metrics, system=KOOPMAN_SYSTEMS, seed=KOOPMAN_SEEDS),
    output:
        table="results/koopman/summary.parquet",
        table_csv=report("results/koopman/summary.csv", category="Koopman"),
        plot=report("results/koopman/error_vs_horizon.png", category="Koopman"),
        metrics="results/koopman/metrics.json",
        claims="results/koopman/claims.parquet",
    params:
        **stage_params(config, "koopman.aggregate", evaluate="koopman.evaluate"),
    log:
        "logs/koopman/aggregate.log",
    benchmark:
        "benchmarks/koopman/aggregate.tsv"


rule koopman_all:
    input:
        rules.koopman_aggregate.output,
