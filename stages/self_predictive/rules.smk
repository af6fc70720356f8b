# Self-predictive RL (Ni et al., ICLR 2024): linear collapse study (per env), MDP study (per distractor count,
# aux-loss variant and seed), POMDP study (per variant and seed) -> aggregate (claims, curves, tables).
SP = config["self_predictive"]
SP_LINEAR_ENVS = sorted(SP["linear"]["envs"])
SP_MDP_DISTRACTORS = SP["mdp"]["distractors"]
SP_MDP_VARIANTS = SP["mdp"]["variants"]
SP_MDP_SEEDS = SP["mdp"]["seeds"]
SP_POMDP_VARIANTS = SP["pomdp"]["variants"]
SP_POMDP_SEEDS = SP["pomdp"]["seeds"]
SP_MDP_RUN = "results/self_predictive/mdp/d{sp_distractors}/{sp_variant}/seed{seed}"
SP_POMDP_RUN = "results/self_predictive/pomdp/{sp_pomdp_variant}/seed{seed}"


wildcard_constraints:
    seed=r"\d+",
    sp_distractors=r"\d+",
    sp_variant="zp_ema|zp_detached|zp_online|op|none",
    sp_pomdp_variant="zp_ema|op|none",
    sp_env="mountaincar|loadunload",


use rule stage as self_predictive_linear with:
    input:
        code=code_inputs("self_predictive.linear"),
    output:
        collapse="results/self_predictive/linear/{sp_env}/collapse.parquet",
        curve="results/self_predictive/linear/{sp_env}/curve.csv",
    params:
        **stage_params(config, "self_predictive.linear", linear="self_predictive.linear",
                       task="self_predictive.linear.envs.{sp_env}"),
    log:
        "logs/self_predictive/linear/{sp_env}.log",
    benchmark:
        "benchmarks/self_predictive/linear/{sp_env}.tsv"
    resources:
        runtime=30,
        mem_mb=4000,


use rule stage as self_predictive_mdp with:
    input:
        code=code_inputs("self_predictive.mdp"),
    output:
        summary=f"{SP_MDP_RUN}/summary.parquet",
        evals=f"{SP_MDP_RUN}/evals.parquet",
        curve=f"{SP_MDP_RUN}/curve.csv",
    params:
        **stage_params(config, "self_predictive.mdp", seed="seed", mdp="self_predictive.mdp"),
    log:
        f"logs/self_predictive/mdp/d{{sp_distractors}}/{{sp_variant}}/seed{{seed}}.log",
    benchmark:
        f"benchmarks/self_predictive/mdp/d{{sp_distractors}}/{{sp_variant}}/seed{{seed}}.tsv"
    resources:
        runtime=1440,  # paper scale (500k steps, hidden 512) on CPU: the stages have no device param yet
        mem_mb=16000,


use rule stage as self_predictive_pomdp with:
    input:
        code=code_inputs("self_predictive.pomdp"),
    output:
        summary=f"{SP_POMDP_RUN}/summary.parquet",
        evals=f"{SP_POMDP_RUN}/evals.parquet",
        curve=f"{SP_POMDP_RUN}/curve.csv",
    params:
        **stage_params(config, "self_predictive.pomdp", seed="seed", pomdp="self_predictive.pomdp"),
    log:
        f"logs/self_predictive/pomdp/{{sp_pomdp_variant}}/seed{{seed}}.log",
    benchmark:
        f"benchmarks/self_predictive/pomdp/{{sp_pomdp_variant}}/seed{{seed}}.tsv"
    resources:
        runtime=1440,
        mem_mb=8000,


use rule stage as self_predictive_aggregate with:
    input:
        code=code_inputs("self_predictive.aggregate"),
        collapse=expand(rules.self_predictive_linear.output.collapse, sp_env=SP_LINEAR_ENVS),
        mdp_summary=expand(rules.self_predictive_mdp.output.summary, sp_distractors=SP_MDP_DISTRACTORS,
                           sp_variant=SP_MDP_VARIANTS, seed=SP_MDP_SEEDS),
        mdp_evals=expand(rules.self_predictive_mdp.output.evals, sp_distractors=SP_MDP_DISTRACTORS,
                         sp_variant=SP_MDP_VARIANTS, seed=SP_MDP_SEEDS),
        mdp_curve=expand(rules.self_predictive_mdp.output.curve, sp_distractors=SP_MDP_DISTRACTORS,
                         sp_variant=SP_MDP_VARIANTS, seed=SP_MDP_SEEDS),
        pomdp_summary=expand(rules.self_predictive_pomdp.output.summary, sp_pomdp_variant=SP_POMDP_VARIANTS,
                             seed=SP_POMDP_SEEDS),
        pomdp_curve=expand(rules.self_predictive_pomdp.output.curve, sp_pomdp_variant=SP_POMDP_VARIANTS,
                           seed=SP_POMDP_SEEDS),
    output:
        claims="results/self_predictive/claims.parquet",
        table="results/self_predictive/summary.parquet",
        table_csv=report("results/self_predictive/summary.csv", category="Self-predictive RL"),
        plot_collapse=report("results/self_predictive/linear_collapse.png", category="Self-predictive RL"),
        plot_mdp=report("results/self_predictive/mdp_curves.png", category="Self-predictive RL"),
        plot_pomdp=report("results/self_predictive/pomdp_curves.png", category="Self-predictive RL"),
        metrics="results/self_predictive/metrics.json",
    params:
        **stage_params(config, "self_predictive.aggregate", aggregate="self_predictive.aggregate",
                       linear="self_predictive.linear"),
    log:
        "logs/self_predictive/aggregate.log",
    benchmark:
        "benchmarks/self_predictive/aggregate.tsv"


rule self_predictive_all:
    input:
        rules.self_predictive_aggregate.output,
