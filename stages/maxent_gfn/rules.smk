# Maximum-entropy GFlowNets on HyperGrid: train -> evaluate (per grid, objective, seed) -> aggregate.
MAXENT_GRIDS = sorted(config["maxent_gfn"]["grids"])
MAXENT_OBJECTIVES = sorted(config["maxent_gfn"]["objectives"])
MAXENT_SEEDS = config["maxent_gfn"]["seeds"]
MAXENT_RUN = "results/maxent_gfn/{grid}/{objective}/seed{seed}"
MAXENT_WILDCARDS = {"grid": "|".join(MAXENT_GRIDS), "objective": "|".join(MAXENT_OBJECTIVES),
                    "seed": r"\d+"}


use rule stage as maxent_gfn_train with:
    input:
        code=code_inputs("maxent_gfn.train"),
    output:
        model=f"{MAXENT_RUN}/model.safetensors",
        sidecar=f"{MAXENT_RUN}/model.safetensors.json",
        curve=f"{MAXENT_RUN}/train_curve.csv",
    wildcard_constraints:
        **MAXENT_WILDCARDS,
    params:
        **stage_params(config, "maxent_gfn.train", seed="seed", grid="maxent_gfn.grids.{grid}",
                       objective="maxent_gfn.objectives.{objective}", model="maxent_gfn.model",
                       train="maxent_gfn.train"),
    log:
        "logs/maxent_gfn/{grid}/{objective}/seed{seed}/train.log",
    benchmark:
        "benchmarks/maxent_gfn/{grid}/{objective}/seed{seed}/train.tsv"
    resources:
        runtime=60,
        mem_mb=2000,


use rule stage as maxent_gfn_evaluate with:
    input:
        code=code_inputs("maxent_gfn.evaluate"),
        model=rules.maxent_gfn_train.output.model,
        curve=rules.maxent_gfn_train.output.curve,
    output:
        distribution=f"{MAXENT_RUN}/terminal_distribution.parquet",
        metrics=f"{MAXENT_RUN}/metrics.json",
    wildcard_constraints:
        **MAXENT_WILDCARDS,
    params:
        **stage_params(config, "maxent_gfn.evaluate", seed="seed", grid="maxent_gfn.grids.{grid}",
                       objective="maxent_gfn.objectives.{objective}", model="maxent_gfn.model"),
    log:
        "logs/maxent_gfn/{grid}/{objective}/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/maxent_gfn/{grid}/{objective}/seed{seed}/evaluate.tsv"


use rule stage as maxent_gfn_aggregate with:
    input:
        code=code_inputs("maxent_gfn.aggregate"),
        metrics=expand(rules.maxent_gfn_evaluate.output.metrics, grid=MAXENT_GRIDS,
                       objective=MAXENT_OBJECTIVES, seed=MAXENT_SEEDS),
        curves=expand(rules.maxent_gfn_train.output.curve, grid=MAXENT_GRIDS,
                      objective=MAXENT_OBJECTIVES, seed=MAXENT_SEEDS),
        distributions=expand(rules.maxent_gfn_evaluate.output.distribution, grid=MAXENT_GRIDS,
                             objective=MAXENT_OBJECTIVES, seed=MAXENT_SEEDS),
    output:
        table="results/maxent_gfn/summary.parquet",
        table_csv=report("results/maxent_gfn/summary.csv", category="Max-ent GFlowNets"),
        plot=report("results/maxent_gfn/l1_and_entropy.png", category="Max-ent GFlowNets"),
        metrics="results/maxent_gfn/metrics.json",
        claims="results/maxent_gfn/claims.parquet",
    params:
        **stage_params(config, "maxent_gfn.aggregate", aggregate="maxent_gfn.aggregate"),
    log:
        "logs/maxent_gfn/aggregate.log",
    benchmark:
        "benchmarks/maxent_gfn/aggregate.tsv"


# The same soft-Q objectives on fragment molecules (seh_frag blocks, sEH proxy): train + sampled evaluation.
MAXENT_MOL = config["maxent_gfn"]["molecules"]
MAXENT_MOL_OBJECTIVES = sorted(MAXENT_MOL["objectives"])
MAXENT_MOL_RUN = "results/maxent_gfn/molecules/{mol_objective}/seed{seed}"


use rule stage as maxent_gfn_molecules with:
    input:
        code=code_inputs("maxent_gfn.molecules"),
    output:
        model=f"{MAXENT_MOL_RUN}/model.safetensors",
        sidecar=f"{MAXENT_MOL_RUN}/model.safetensors.json",
        samples=f"{MAXENT_MOL_RUN}/samples.parquet",
        curve=f"{MAXENT_MOL_RUN}/train_curve.csv",
        metrics=f"{MAXENT_MOL_RUN}/metrics.json",
    wildcard_constraints:
        mol_objective="|".join(MAXENT_MOL_OBJECTIVES),
        seed=r"\d+",
    params:
        **stage_params(config, "maxent_gfn.molecules", seed="seed", task="maxent_gfn.molecules.task",
                       objective="maxent_gfn.molecules.objectives.{mol_objective}",
                       train="maxent_gfn.molecules.train", stopping="maxent_gfn.molecules.stopping"),
    log:
        "logs/maxent_gfn/molecules/{mol_objective}/seed{seed}/train.log",
    benchmark:
        "benchmarks/maxent_gfn/molecules/{mol_objective}/seed{seed}/train.tsv"
    resources:
        runtime=120,
        mem_mb=3000,


use rule stage as maxent_gfn_molecules_aggregate with:
    input:
        code=code_inputs("maxent_gfn.molecules_aggregate"),
        metrics=expand(rules.maxent_gfn_molecules.output.metrics, mol_objective=MAXENT_MOL_OBJECTIVES,
                       seed=MAXENT_MOL["seeds"]),
        samples=expand(rules.maxent_gfn_molecules.output.samples, mol_objective=MAXENT_MOL_OBJECTIVES,
                       seed=MAXENT_MOL["seeds"]),
        curves=expand(rules.maxent_gfn_molecules.output.curve, mol_objective=MAXENT_MOL_OBJECTIVES,
                      seed=MAXENT_MOL["seeds"]),
    output:
        table="results/maxent_gfn/molecules/summary.parquet",
        table_csv=report("results/maxent_gfn/molecules/summary.csv", category="Max-ent GFlowNets"),
        plot=report("results/maxent_gfn/molecules/correlation_and_entropy.png", category="Max-ent GFlowNets"),
        metrics="results/maxent_gfn/molecules/metrics.json",
        claims="results/maxent_gfn/molecules/claims.parquet",
    params:
        **stage_params(config, "maxent_gfn.molecules_aggregate"),
    log:
        "logs/maxent_gfn/molecules/aggregate.log",
    benchmark:
        "benchmarks/maxent_gfn/molecules/aggregate.tsv"


rule maxent_gfn_all:
    input:
        rules.maxent_gfn_aggregate.output,
        rules.maxent_gfn_molecules_aggregate.output,
