# Decoupled regularization.
# Exact grid toy: soft value iteration for d = dims -> summary table + plot.
# SAC action-scale sweep: train (per env, scale, temperature, seed) -> evaluate on shared start states -> aggregate.
DECOUPLED_SAC = config["decoupled"]["sac"]
DECOUPLED_SAC_ENVS = DECOUPLED_SAC["run_envs"]
DECOUPLED_SAC_SCALES = [f"{s:g}" for s in DECOUPLED_SAC["scales"]]
DECOUPLED_SAC_TEMPERATURES = DECOUPLED_SAC["run_temperatures"]
DECOUPLED_SAC_SEEDS = DECOUPLED_SAC["seeds"]
DECOUPLED_SAC_RUN = "results/decoupled/sac/{env}/s{scale}/{temperature}/seed{seed}"
DECOUPLED_SAC_LOG = "decoupled/sac/{env}/s{scale}/{temperature}/seed{seed}"
DECOUPLED_SAC_WILDCARDS = {"env": "|".join(sorted(DECOUPLED_SAC["envs"])), "scale": r"[0-9.e+-]+",
                           "temperature": "|".join(sorted(DECOUPLED_SAC["temperatures"])), "seed": r"\d+"}


use rule stage as decoupled_grid_toy with:
    input:
        code=code_inputs("decoupled.grid_toy"),
    output:
        lengths="results/decoupled/grid_toy/lengths.parquet",
    params:
        **stage_params(config, "decoupled.grid_toy", toy="decoupled.grid_toy"),
    log:
        "logs/decoupled/grid_toy.log",
    benchmark:
        "benchmarks/decoupled/grid_toy.tsv"


use rule stage as decoupled_aggregate with:
    input:
        code=code_inputs("decoupled.aggregate"),
        lengths=rules.decoupled_grid_toy.output.lengths,
    output:
        table="results/decoupled/summary.parquet",
        table_csv=report("results/decoupled/summary.csv", category="Decoupled regularization"),
        plot=report("results/decoupled/grid_toy_length.png", category="Decoupled regularization"),
        metrics="results/decoupled/metrics.json",
        claims="results/decoupled/claims.parquet",
    params:
        **stage_params(config, "decoupled.aggregate", aggregate="decoupled.aggregate"),
    log:
        "logs/decoupled/aggregate.log",
    benchmark:
        "benchmarks/decoupled/aggregate.tsv"


use rule stage as decoupled_sac_train with:
    input:
        code=code_inputs("decoupled.sac_train"),
    output:
        model=f"{DECOUPLED_SAC_RUN}/model.safetensors",
        sidecar=f"{DECOUPLED_SAC_RUN}/model.safetensors.json",
        curve=f"{DECOUPLED_SAC_RUN}/curve.csv",
    wildcard_constraints:
        **DECOUPLED_SAC_WILDCARDS,
    params:
        **stage_params(config, "decoupled.sac_train", seed="seed", env="decoupled.sac.envs.{env}",
                       temperature="decoupled.sac.temperatures.{temperature}", agent="decoupled.sac.agent",
                       train="decoupled.sac.train"),
    log:
        f"logs/{DECOUPLED_SAC_LOG}/train.log",
    benchmark:
        f"benchmarks/{DECOUPLED_SAC_LOG}/train.tsv"
    resources:
        runtime=30,
        mem_mb=2000,


use rule stage as decoupled_sac_evaluate with:
    input:
        code=code_inputs("decoupled.sac_evaluate"),
        model=rules.decoupled_sac_train.output.model,
    output:
        returns=f"{DECOUPLED_SAC_RUN}/returns.parquet",
        metrics=f"{DECOUPLED_SAC_RUN}/metrics.json",
    wildcard_constraints:
        **DECOUPLED_SAC_WILDCARDS,
    params:
        **stage_params(config, "decoupled.sac_evaluate", seed="seed", env="decoupled.sac.envs.{env}",
                       agent="decoupled.sac.agent", evaluate="decoupled.sac.evaluate"),
    log:
        f"logs/{DECOUPLED_SAC_LOG}/evaluate.log",
    benchmark:
        f"benchmarks/{DECOUPLED_SAC_LOG}/evaluate.tsv"


use rule stage as decoupled_sac_aggregate with:
    input:
        code=code_inputs("decoupled.sac_aggregate"),
        returns=expand(rules.decoupled_sac_evaluate.output.returns, env=DECOUPLED_SAC_ENVS, scale=DECOUPLED_SAC_SCALES,
                       temperature=DECOUPLED_SAC_TEMPERATURES, seed=DECOUPLED_SAC_SEEDS),
        curves=expand(rules.decoupled_sac_train.output.curve, env=DECOUPLED_SAC_ENVS, scale=DECOUPLED_SAC_SCALES,
                      temperature=DECOUPLED_SAC_TEMPERATURES, seed=DECOUPLED_SAC_SEEDS),
    output:
        table="results/decoupled/sac/summary.parquet",
        table_csv=report("results/decoupled/sac/summary.csv", category="Decoupled regularization"),
        plot=report("results/decoupled/sac/temperature_entropy.png", category="Decoupled regularization"),
        metrics="results/decoupled/sac/metrics.json",
        claims="results/decoupled/sac/claims.parquet",
    params:
        **stage_params(config, "decoupled.sac_aggregate", envs="decoupled.sac.envs",
                       temperatures="decoupled.sac.temperatures", aggregate="decoupled.sac.aggregate"),
    log:
        "logs/decoupled/sac/aggregate.log",
    benchmark:
        "benchmarks/decoupled/sac/aggregate.tsv"


# Soft Q-learning on fragment molecules, fixed vs decoupled temperature (shared task: stages/rl/frag_task.py).
DECOUPLED_MOL = config["decoupled"]["molecules"]
DECOUPLED_MOL_RUN = "results/decoupled/molecules/{mol_run}/seed{seed}"


use rule stage as decoupled_molecules with:
    input:
        code=code_inputs("decoupled.molecules"),
    output:
        model=f"{DECOUPLED_MOL_RUN}/model.safetensors",
        sidecar=f"{DECOUPLED_MOL_RUN}/model.safetensors.json",
        samples=f"{DECOUPLED_MOL_RUN}/samples.parquet",
        curve=f"{DECOUPLED_MOL_RUN}/train_curve.csv",
        metrics=f"{DECOUPLED_MOL_RUN}/metrics.json",
    wildcard_constraints:
        mol_run="|".join(sorted(DECOUPLED_MOL["runs"])),
        seed=r"\d+",
    params:
        **stage_params(config, "decoupled.molecules", seed="seed", task="decoupled.molecules.task",
                       temperature="decoupled.molecules.runs.{mol_run}.temperature",
                       tau="decoupled.molecules.runs.{mol_run}.tau", train="decoupled.molecules.train"),
    log:
        "logs/decoupled/molecules/{mol_run}/seed{seed}/train.log",
    benchmark:
        "benchmarks/decoupled/molecules/{mol_run}/seed{seed}/train.tsv"
    resources:
        runtime=120,
        mem_mb=3000,


use rule stage as decoupled_molecules_aggregate with:
    input:
        code=code_inputs("decoupled.molecules_aggregate"),
        metrics=expand(rules.decoupled_molecules.output.metrics, mol_run=sorted(DECOUPLED_MOL["runs"]),
                       seed=DECOUPLED_MOL["seeds"]),
    output:
        table="results/decoupled/molecules/summary.parquet",
        table_csv=report("results/decoupled/molecules/summary.csv", category="Decoupled regularization"),
        plot=report("results/decoupled/molecules/reward_vs_tau.png", category="Decoupled regularization"),
        metrics="results/decoupled/molecules/metrics.json",
        claims="results/decoupled/molecules/claims.parquet",
    params:
        **stage_params(config, "decoupled.molecules_aggregate"),
    log:
        "logs/decoupled/molecules/aggregate.log",
    benchmark:
        "benchmarks/decoupled/molecules/aggregate.tsv"


rule decoupled_all:
    input:
        rules.decoupled_aggregate.output,
        rules.decoupled_sac_aggregate.output,
        rules.decoupled_molecules_aggregate.output,
