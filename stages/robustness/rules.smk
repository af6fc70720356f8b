# Robustness scaling (Howe, McKenzie et al.): data (per task) -> tokenizer (one) -> train (task x size x seed)
# -> attack clean / advtrain -> attack adv -> aggregate. Conventions: docs/adding-a-method.md.
from stages.robustness.workflow import RUN, attacked_model, corpus_input

ROBUSTNESS_TASKS = sorted(config["robustness"]["tasks"])
ROBUSTNESS_SIZES = sorted(config["robustness"]["sizes"])
ROBUSTNESS_SEEDS = config["robustness"]["seeds"]
ROBUSTNESS_RUN = RUN
ROBUSTNESS_ALL = dict(task=ROBUSTNESS_TASKS, size=ROBUSTNESS_SIZES, seed=ROBUSTNESS_SEEDS)


wildcard_constraints:
    task="|".join(ROBUSTNESS_TASKS),
    size="|".join(ROBUSTNESS_SIZES),
    seed=r"\d+",
    phase="clean|adv",


use rule stage as robustness_data with:
    input:
        unpack(corpus_input(config)),
        code=code_inputs("robustness.data"),
    output:
        examples="data/robustness/{task}/examples.parquet",
    params:
        **stage_params(config, "robustness.data", task="robustness.tasks.{task}"),
    log:
        "logs/robustness/{task}/data.log",
    benchmark:
        "benchmarks/robustness/{task}/data.tsv"


use rule stage as robustness_tokenizer with:
    input:
        code=code_inputs("robustness.tokenizer"),
        examples=expand(rules.robustness_data.output.examples, task=ROBUSTNESS_TASKS),
    output:
        tokenizer="data/robustness/tokenizer.json",
        metrics="data/robustness/tokenizer_metrics.json",
    params:
        **stage_params(config, "robustness.tokenizer", tokenizer="robustness.tokenizer"),
    log:
        "logs/robustness/tokenizer.log",
    benchmark:
        "benchmarks/robustness/tokenizer.tsv"


use rule stage as robustness_train with:
    input:
        code=code_inputs("robustness.train"),
        examples=rules.robustness_data.output.examples,
        tokenizer=rules.robustness_tokenizer.output.tokenizer,
    output:
        model=f"{ROBUSTNESS_RUN}/model.safetensors",
        sidecar=f"{ROBUSTNESS_RUN}/model.safetensors.json",
        config=f"{ROBUSTNESS_RUN}/config.json",
        curve=f"{ROBUSTNESS_RUN}/train_curve.csv",
        metrics=f"{ROBUSTNESS_RUN}/train_metrics.json",
    params:
        **stage_params(config, "robustness.train", seed="seed", size="robustness.sizes.{size}",
                       train="robustness.train", max_positions="robustness.max_positions"),
    log:
        "logs/robustness/{task}/{size}/seed{seed}/train.log",
    benchmark:
        "benchmarks/robustness/{task}/{size}/seed{seed}/train.tsv"
    resources:
        runtime=600,
        mem_mb=32000,
        gpu=1,


use rule stage as robustness_advtrain with:
    input:
        code=code_inputs("robustness.advtrain"),
        examples=rules.robustness_data.output.examples,
        tokenizer=rules.robustness_tokenizer.output.tokenizer,
        model=rules.robustness_train.output.model,
        config=rules.robustness_train.output.config,
    output:
        model_out=f"{ROBUSTNESS_RUN}/adv_model.safetensors",
        sidecar=f"{ROBUSTNESS_RUN}/adv_model.safetensors.json",
        config_out=f"{ROBUSTNESS_RUN}/adv_config.json",
        curve=f"{ROBUSTNESS_RUN}/adv_curve.csv",
        metrics=f"{ROBUSTNESS_RUN}/adv_metrics.json",
    params:
        **stage_params(config, "robustness.advtrain", seed="seed", advtrain="robustness.advtrain",
                       attack=f"robustness.attacks.{config['robustness']['advtrain']['attack']}"),
    log:
        "logs/robustness/{task}/{size}/seed{seed}/advtrain.log",
    benchmark:
        "benchmarks/robustness/{task}/{size}/seed{seed}/advtrain.tsv"
    resources:
        runtime=1440,
        mem_mb=32000,
        gpu=1,


use rule stage as robustness_attack with:
    input:
        unpack(attacked_model),
        code=code_inputs("robustness.attack"),
        examples=rules.robustness_data.output.examples,
        tokenizer=rules.robustness_tokenizer.output.tokenizer,
    output:
        results=f"{ROBUSTNESS_RUN}/attack_{{phase}}.parquet",
        metrics=f"{ROBUSTNESS_RUN}/attack_{{phase}}_metrics.json",
    params:
        **stage_params(config, "robustness.attack", seed="seed", evaluate="robustness.evaluate",
                       attacks="robustness.attacks"),
    log:
        "logs/robustness/{task}/{size}/seed{seed}/attack_{phase}.log",
    benchmark:
        "benchmarks/robustness/{task}/{size}/seed{seed}/attack_{phase}.tsv"
    resources:
        runtime=720,
        mem_mb=32000,
        gpu=1,


use rule stage as robustness_aggregate with:
    input:
        code=code_inputs("robustness.aggregate"),
        models=expand(rules.robustness_train.output.model, **ROBUSTNESS_ALL),
        train_metrics=expand(rules.robustness_train.output.metrics, **ROBUSTNESS_ALL),
        adv_models=expand(rules.robustness_advtrain.output.model_out, **ROBUSTNESS_ALL),
        adv_metrics=expand(rules.robustness_advtrain.output.metrics, **ROBUSTNESS_ALL),
        adv_curves=expand(rules.robustness_advtrain.output.curve, **ROBUSTNESS_ALL),
        attacks=expand(rules.robustness_attack.output.results, phase=["clean", "adv"], **ROBUSTNESS_ALL),
    output:
        claims="results/robustness/claims.parquet",
        table="results/robustness/summary.parquet",
        table_csv=report("results/robustness/summary.csv", category="Robustness"),
        curves="results/robustness/asr_curves.parquet",
        plot=report("results/robustness/asr_scaling.png", category="Robustness"),
        metrics="results/robustness/metrics.json",
    params:
        **stage_params(config, "robustness.aggregate", aggregate="robustness.aggregate"),
    log:
        "logs/robustness/aggregate.log",
    benchmark:
        "benchmarks/robustness/aggregate.tsv"


rule robustness_all:
    input:
        rules.robustness_aggregate.output,
