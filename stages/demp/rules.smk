# Demon Pruning: data -> train (dense | demp_l<i> | magnitude_l<i>) -> prune -> evaluate (per run, seed) -> aggregate.
# A run is a (dataset, model) pair of demp.runs; demp_l<i> uses demp.sweep.<model>.lambda_max[i] and
# magnitude_l<i> prunes the dense network to the widths demp_l<i> ended with (and keeps them: see prune.py).
# lambda_max is chosen on the validation split by the aggregate; test accuracy is only reported.
DEMP_RUNS = config["demp"]["runs"]
DEMP_SEEDS = config["demp"]["seeds"]
DEMP_RUN = "results/demp/{dataset}/{model}/{variant}/seed{seed}"
DEMP_DENSE = DEMP_RUN.replace("{variant}", "dense")
DEMP_DEMP = DEMP_RUN.replace("{variant}", "demp_l{lam}")
DEMP_MAGNITUDE = DEMP_RUN.replace("{variant}", "magnitude_l{lam}")
DEMP_WILDCARDS = {
    "dataset": "digits|synthetic|cifar10",
    "model": "|".join(sorted(config["demp"]["models"])),
    "variant": r"dense|demp_l\d+|magnitude_l\d+",
    "lam": r"\d+",
    "seed": r"\d+",
}
DEMP_VARIANTS = {
    model: ["dense"] + [f"{kind}_l{i}" for kind in ("demp", "magnitude") for i in range(len(s["lambda_max"]))]
    for model, s in config["demp"]["sweep"].items()
}
DEMP_JOBS = [
    dict(dataset=r["dataset"], model=r["model"], variant=v, seed=seed)
    for r in DEMP_RUNS
    for v in DEMP_VARIANTS[r["model"]]
    for seed in DEMP_SEEDS
]


use rule stage as demp_data with:
    input:
        code=code_inputs("demp.data"),
    output:
        dataset="data/demp/{dataset}/dataset.parquet",
    params:
        **stage_params(config, "demp.data", dataset="demp.datasets.{dataset}"),
    wildcard_constraints:
        **DEMP_WILDCARDS,
    log:
        "logs/demp/{dataset}/data.log",
    benchmark:
        "benchmarks/demp/{dataset}/data.tsv"


use rule stage as demp_train_dense with:
    input:
        code=code_inputs("demp.train"),
        dataset=rules.demp_data.output.dataset,
    output:
        model=f"{DEMP_DENSE}/trained.safetensors",
        sidecar=f"{DEMP_DENSE}/trained.safetensors.json",
        curve=f"{DEMP_DENSE}/curve.csv",
    params:
        **stage_params(config, "demp.train", seed="seed", dataset="demp.datasets.{dataset}",
                       model="demp.models.{model}", train="demp.train", criterion="demp.criterion"),
    wildcard_constraints:
        **DEMP_WILDCARDS,
    log:
        "logs/demp/{dataset}/{model}/dense/seed{seed}/train.log",
    benchmark:
        "benchmarks/demp/{dataset}/{model}/dense/seed{seed}/train.tsv"
    resources:
        runtime=60,
        mem_mb=2000,


use rule stage as demp_train_demp with:
    input:
        code=code_inputs("demp.train"),
        dataset=rules.demp_data.output.dataset,
    output:
        model=f"{DEMP_DEMP}/trained.safetensors",
        sidecar=f"{DEMP_DEMP}/trained.safetensors.json",
        curve=f"{DEMP_DEMP}/curve.csv",
    params:
        **stage_params(config, "demp.train", seed="seed", dataset="demp.datasets.{dataset}",
                       model="demp.models.{model}", train="demp.train", criterion="demp.criterion",
                       demon="demp.demon", sweep="demp.sweep.{model}"),
    wildcard_constraints:
        **DEMP_WILDCARDS,
    log:
        "logs/demp/{dataset}/{model}/demp_l{lam}/seed{seed}/train.log",
    benchmark:
        "benchmarks/demp/{dataset}/{model}/demp_l{lam}/seed{seed}/train.tsv"
    resources:
        runtime=60,
        mem_mb=2000,


use rule stage as demp_train_magnitude with:
    input:
        code=code_inputs("demp.magnitude"),
        dataset=rules.demp_data.output.dataset,
        dense=rules.demp_train_dense.output.model,
        target=f"{DEMP_DEMP}/pruned.safetensors",
    output:
        model=f"{DEMP_MAGNITUDE}/trained.safetensors",
        sidecar=f"{DEMP_MAGNITUDE}/trained.safetensors.json",
        curve=f"{DEMP_MAGNITUDE}/curve.csv",
    params:
        **stage_params(config, "demp.magnitude", seed="seed", dataset="demp.datasets.{dataset}",
                       model="demp.models.{model}", train="demp.train", criterion="demp.criterion",
                       magnitude="demp.magnitude"),
    wildcard_constraints:
        **DEMP_WILDCARDS,
    log:
        "logs/demp/{dataset}/{model}/magnitude_l{lam}/seed{seed}/train.log",
    benchmark:
        "benchmarks/demp/{dataset}/{model}/magnitude_l{lam}/seed{seed}/train.tsv"
    resources:
        runtime=30,
        mem_mb=2000,


use rule stage as demp_prune with:
    input:
        code=code_inputs("demp.prune"),
        dataset=rules.demp_data.output.dataset,
        model=f"{DEMP_RUN}/trained.safetensors",
    output:
        model=f"{DEMP_RUN}/pruned.safetensors",
        sidecar=f"{DEMP_RUN}/pruned.safetensors.json",
        widths=f"{DEMP_RUN}/widths.parquet",
    params:
        **stage_params(config, "demp.prune", seed="seed", model="demp.models.{model}",
                       criterion="demp.criterion"),
    wildcard_constraints:
        **DEMP_WILDCARDS,
    log:
        "logs/demp/{dataset}/{model}/{variant}/seed{seed}/prune.log",
    benchmark:
        "benchmarks/demp/{dataset}/{model}/{variant}/seed{seed}/prune.tsv"


use rule stage as demp_evaluate with:
    input:
        code=code_inputs("demp.evaluate"),
        dataset=rules.demp_data.output.dataset,
        model=rules.demp_prune.output.model,
        reference=rules.demp_train_dense.output.model,
        curve=f"{DEMP_RUN}/curve.csv",
    output:
        table=f"{DEMP_RUN}/eval.parquet",
        metrics=f"{DEMP_RUN}/metrics.json",
    params:
        **stage_params(config, "demp.evaluate", seed="seed", model="demp.models.{model}",
                       evaluate="demp.evaluate", demon="demp.demon"),
    wildcard_constraints:
        **DEMP_WILDCARDS,
    log:
        "logs/demp/{dataset}/{model}/{variant}/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/demp/{dataset}/{model}/{variant}/seed{seed}/evaluate.tsv"


use rule stage as demp_aggregate with:
    input:
        code=code_inputs("demp.aggregate"),
        tables=[f"{DEMP_RUN}/eval.parquet".format(**job) for job in DEMP_JOBS],
        curves=[f"{DEMP_RUN}/curve.csv".format(**job) for job in DEMP_JOBS if job["variant"].startswith("demp")],
    output:
        table="results/demp/summary.parquet",
        table_csv=report("results/demp/summary.csv", category="DemP"),
        plot=report("results/demp/tradeoff.png", category="DemP"),
        metrics="results/demp/metrics.json",
        claims="results/demp/claims.parquet",
    params:
        **stage_params(config, "demp.aggregate", sweep="demp.sweep", aggregate="demp.aggregate",
                       magnitude="demp.magnitude"),
    log:
        "logs/demp/aggregate.log",
    benchmark:
        "benchmarks/demp/aggregate.tsv"


rule demp_all:
    input:
        rules.demp_aggregate.output,
