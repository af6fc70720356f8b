# Decoupled regularization, exact grid toy: soft value iteration for d = dims -> summary table + plot.


rule decoupled_grid_toy:
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
    conda:
        "../../envs/decoupled.yaml"
    shell:
        STAGE_SHELL


rule decoupled_aggregate:
    input:
        code=code_inputs("decoupled.aggregate"),
        lengths=rules.decoupled_grid_toy.output.lengths,
    output:
        table="results/decoupled/summary.parquet",
        table_csv=report("results/decoupled/summary.csv", category="Decoupled regularization"),
        plot=report("results/decoupled/grid_toy_length.png", category="Decoupled regularization"),
        metrics="results/decoupled/metrics.json",
    params:
        **stage_params(config, "decoupled.aggregate", aggregate="decoupled.aggregate"),
    log:
        "logs/decoupled/aggregate.log",
    benchmark:
        "benchmarks/decoupled/aggregate.tsv"
    conda:
        "../../envs/decoupled.yaml"
    shell:
        STAGE_SHELL


rule decoupled_all:
    input:
        rules.decoupled_aggregate.output,
