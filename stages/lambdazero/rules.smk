# LambdaZero: blocks -> receptor -> dock (initial set) -> proxy -> train_rl (PPO + active learning)
# -> evaluate (out of sample: fresh policy samples vs random rollouts at the same k; the method's docking
# calls vs random screening) -> export (wet-lab candidates) -> aggregate (claims over seeds).
# Docking results are cached in lambdazero.dock.cache (outside results/), shared by every stage and run.
LZ_SEEDS = config["lambdazero"]["seeds"]
LZ = "results/lambdazero"
LZ_RUN = "results/lambdazero/seed{seed}"
LZ_WILDCARDS = {"seed": r"\d+"}
LZ_CATEGORY = "LambdaZero"


use rule stage as lambdazero_blocks with:
    input:
        code=code_inputs("lambdazero.blocks"),
    output:
        blocks=f"{LZ}/blocks.parquet",
    params:
        **stage_params(config, "lambdazero.blocks", blocks="lambdazero.blocks"),
    log:
        "logs/lambdazero/blocks.log",
    benchmark:
        "benchmarks/lambdazero/blocks.tsv"


use rule stage as lambdazero_receptor with:
    input:
        code=code_inputs("lambdazero.receptor"),
    output:
        receptor=f"{LZ}/receptor.pdbqt",
        box=f"{LZ}/box.json",
    params:
        **stage_params(config, "lambdazero.receptor", target="lambdazero.target"),
    log:
        "logs/lambdazero/receptor.log",
    benchmark:
        "benchmarks/lambdazero/receptor.tsv"


use rule stage as lambdazero_dock with:
    input:
        code=code_inputs("lambdazero.dock_initial"),
        blocks=rules.lambdazero_blocks.output.blocks,
        receptor=rules.lambdazero_receptor.output.receptor,
        box=rules.lambdazero_receptor.output.box,
    output:
        docked=f"{LZ_RUN}/initial_docked.parquet",
    wildcard_constraints:
        **LZ_WILDCARDS,
    params:
        **stage_params(config, "lambdazero.dock_initial", seed="seed", mdp="lambdazero.mdp",
                       initial="lambdazero.initial", dock="lambdazero.dock"),
    threads: 2
    log:
        "logs/lambdazero/seed{seed}/dock.log",
    benchmark:
        "benchmarks/lambdazero/seed{seed}/dock.tsv"


use rule stage as lambdazero_proxy with:
    input:
        code=code_inputs("lambdazero.proxy"),
        docked=rules.lambdazero_dock.output.docked,
    output:
        proxy=f"{LZ_RUN}/proxy_initial.safetensors",
        proxy_sidecar=f"{LZ_RUN}/proxy_initial.safetensors.json",
        metrics=f"{LZ_RUN}/proxy_initial_metrics.json",
    wildcard_constraints:
        **LZ_WILDCARDS,
    params:
        **stage_params(config, "lambdazero.proxy", seed="seed", proxy="lambdazero.proxy"),
    log:
        "logs/lambdazero/seed{seed}/proxy.log",
    benchmark:
        "benchmarks/lambdazero/seed{seed}/proxy.tsv"


use rule stage as lambdazero_train_rl with:
    input:
        code=code_inputs("lambdazero.train_rl"),
        blocks=rules.lambdazero_blocks.output.blocks,
        receptor=rules.lambdazero_receptor.output.receptor,
        box=rules.lambdazero_receptor.output.box,
        docked=rules.lambdazero_dock.output.docked,
        proxy=rules.lambdazero_proxy.output.proxy,
    output:
        policy=f"{LZ_RUN}/policy.safetensors",
        policy_sidecar=f"{LZ_RUN}/policy.safetensors.json",
        proxy=f"{LZ_RUN}/proxy.safetensors",
        proxy_sidecar=f"{LZ_RUN}/proxy.safetensors.json",
        rounds=f"{LZ_RUN}/rounds.parquet",
        docked=f"{LZ_RUN}/docked.parquet",
        proposals=f"{LZ_RUN}/proposals.parquet",
        curve=f"{LZ_RUN}/train_curve.csv",
    wildcard_constraints:
        **LZ_WILDCARDS,
    params:
        **stage_params(config, "lambdazero.train_rl", seed="seed", mdp="lambdazero.mdp",
                       dock="lambdazero.dock", proxy="lambdazero.proxy", reward="lambdazero.reward",
                       ppo="lambdazero.ppo", active_learning="lambdazero.active_learning"),
    threads: 2
    log:
        "logs/lambdazero/seed{seed}/train_rl.log",
    benchmark:
        "benchmarks/lambdazero/seed{seed}/train_rl.tsv"


use rule stage as lambdazero_evaluate with:
    input:
        code=code_inputs("lambdazero.evaluate"),
        blocks=rules.lambdazero_blocks.output.blocks,
        receptor=rules.lambdazero_receptor.output.receptor,
        box=rules.lambdazero_receptor.output.box,
        policy=rules.lambdazero_train_rl.output.policy,
        proxy=rules.lambdazero_train_rl.output.proxy,
        docked=rules.lambdazero_train_rl.output.docked,
        rounds=rules.lambdazero_train_rl.output.rounds,
        curve=rules.lambdazero_train_rl.output.curve,
    output:
        molecules=f"{LZ_RUN}/evaluation_molecules.parquet",
        table=f"{LZ_RUN}/evaluation.parquet",
        efficiency=f"{LZ_RUN}/efficiency.parquet",
        table_csv=report(f"{LZ_RUN}/evaluation.csv", category=LZ_CATEGORY),
        plot=report(f"{LZ_RUN}/evaluation.png", category=LZ_CATEGORY),
        metrics=f"{LZ_RUN}/metrics.json",
    wildcard_constraints:
        **LZ_WILDCARDS,
    params:
        **stage_params(config, "lambdazero.evaluate", seed="seed", mdp="lambdazero.mdp",
                       dock="lambdazero.dock", proxy="lambdazero.proxy", reward="lambdazero.reward",
                       ppo="lambdazero.ppo", evaluate="lambdazero.evaluate", filters="lambdazero.filters"),
    threads: 2
    log:
        "logs/lambdazero/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/lambdazero/seed{seed}/evaluate.tsv"


use rule stage as lambdazero_export with:
    input:
        code=code_inputs("lambdazero.export"),
        docked=rules.lambdazero_train_rl.output.docked,
        proxy=rules.lambdazero_train_rl.output.proxy,
        molecules=rules.lambdazero_evaluate.output.molecules,
    output:
        candidates=f"{LZ_RUN}/candidates.parquet",
        candidates_csv=report(f"{LZ_RUN}/candidates.csv", category=LZ_CATEGORY),
        poses=f"{LZ_RUN}/candidates.sdf",
    wildcard_constraints:
        **LZ_WILDCARDS,
    params:
        **stage_params(config, "lambdazero.export", proxy="lambdazero.proxy", filters="lambdazero.filters",
                       export="lambdazero.export"),
    log:
        "logs/lambdazero/seed{seed}/export.log",
    benchmark:
        "benchmarks/lambdazero/seed{seed}/export.tsv"


use rule stage as lambdazero_aggregate with:
    input:
        code=code_inputs("lambdazero.aggregate"),
        tables=expand(rules.lambdazero_evaluate.output.table, seed=LZ_SEEDS),
        metrics=expand(rules.lambdazero_evaluate.output.metrics, seed=LZ_SEEDS),
        efficiency=expand(rules.lambdazero_evaluate.output.efficiency, seed=LZ_SEEDS),
        candidates=expand(rules.lambdazero_export.output.candidates, seed=LZ_SEEDS),
    output:
        table=f"{LZ}/summary.parquet",
        table_csv=report(f"{LZ}/summary.csv", category=LZ_CATEGORY),
        efficiency=f"{LZ}/efficiency.parquet",
        plot=report(f"{LZ}/summary.png", category=LZ_CATEGORY),
        metrics=f"{LZ}/metrics.json",
        claims=f"{LZ}/claims.parquet",
    params:
        **stage_params(config, "lambdazero.aggregate", evaluate="lambdazero.evaluate"),
    log:
        "logs/lambdazero/aggregate.log",
    benchmark:
        "benchmarks/lambdazero/aggregate.tsv"


rule lambdazero_all:
    input:
        rules.lambdazero_aggregate.output,
        expand(rules.lambdazero_export.output, seed=LZ_SEEDS),
        expand(rules.lambdazero_evaluate.output, seed=LZ_SEEDS),
