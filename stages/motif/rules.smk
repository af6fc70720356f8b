# Motif on NetHack: collect -> pairs -> annotate (LLM) -> reward -> train_rl (per agent, seed)
# -> evaluate (per agent incl. random, seed) -> aggregate.
MOTIF = config["motif"]
MOTIF_SEEDS = MOTIF["seeds"]
MOTIF_AGENTS = sorted(MOTIF["agents"])
MOTIF_REWARD = "results/motif/reward"
MOTIF_RL = "results/motif/rl/{agent}/seed{seed}"
MOTIF_EVAL = "results/motif/eval/{agent}/seed{seed}"
MOTIF_WILDCARDS = {"agent": "|".join(MOTIF_AGENTS), "seed": r"\d+"}


use rule stage as motif_collect with:
    input:
        # a trained policy (collect.policy = its path) is an input; 'random' needs none
        unpack(lambda wc: {"code": code_inputs("motif.collect"),
                           **({"policy": MOTIF["collect"]["policy"]} if MOTIF["collect"]["policy"] != "random"
                              else {})}),
    output:
        steps="data/motif/steps.parquet",
    params:
        **stage_params(config, "motif.collect", collect="motif.collect", env="motif.env",
                       policy="motif.policy"),
    log:
        "logs/motif/collect.log",
    benchmark:
        "benchmarks/motif/collect.tsv"


use rule stage as motif_pairs with:
    input:
        code=code_inputs("motif.pairs"),
        steps=rules.motif_collect.output.steps,
    output:
        pairs="data/motif/pairs.parquet",
    params:
        **stage_params(config, "motif.pairs", pairs="motif.pairs"),
    log:
        "logs/motif/pairs.log",
    benchmark:
        "benchmarks/motif/pairs.tsv"


use rule stage as motif_annotate with:
    input:
        code=code_inputs("motif.annotate"),
        pairs=rules.motif_pairs.output.pairs,
    output:
        annotations="data/motif/annotations.parquet",
        metrics="results/motif/annotate_metrics.json",
    params:
        **stage_params(config, "motif.annotate", llm="motif.llm", judge="motif.judge",
                       annotate="motif.annotate"),
    log:
        "logs/motif/annotate.log",
    benchmark:
        "benchmarks/motif/annotate.tsv"


use rule stage as motif_reward with:
    input:
        code=code_inputs("motif.reward"),
        steps=rules.motif_collect.output.steps,
        pairs=rules.motif_pairs.output.pairs,
        annotations=rules.motif_annotate.output.annotations,
    output:
        model=f"{MOTIF_REWARD}/model.safetensors",
        sidecar=f"{MOTIF_REWARD}/model.safetensors.json",
        stats=f"{MOTIF_REWARD}/stats.json",
        messages=f"{MOTIF_REWARD}/messages.parquet",
        metrics=f"{MOTIF_REWARD}/metrics.json",
        curve=f"{MOTIF_REWARD}/curve.csv",
    params:
        **stage_params(config, "motif.reward", model="motif.reward.model", train="motif.reward.train"),
    log:
        "logs/motif/reward.log",
    benchmark:
        "benchmarks/motif/reward.tsv"


use rule stage as motif_train_rl with:
    input:
        # extrinsic-only agents (a_int = 0) need no reward model, so they do not wait for the LLM
        unpack(lambda wc: {"code": code_inputs("motif.train_rl"),
                           **({"reward_model": rules.motif_reward.output.model,
                               "reward_stats": rules.motif_reward.output.stats}
                              if MOTIF["agents"][wc.agent]["a_int"] != 0 else {})}),
    output:
        policy=f"{MOTIF_RL}/policy.safetensors",
        sidecar=f"{MOTIF_RL}/policy.safetensors.json",
        curve=f"{MOTIF_RL}/curve.csv",
        metrics=f"{MOTIF_RL}/metrics.json",
    wildcard_constraints:
        **MOTIF_WILDCARDS,
    params:
        **stage_params(config, "motif.train_rl", seed="seed", agent="motif.agents.{agent}",
                       ppo="motif.ppo", policy="motif.policy", intrinsic="motif.intrinsic",
                       env="motif.env"),
    log:
        "logs/motif/rl/{agent}/seed{seed}/train.log",
    benchmark:
        "benchmarks/motif/rl/{agent}/seed{seed}/train.tsv"
    resources:
        runtime=60,
        mem_mb=3000,


use rule stage as motif_evaluate with:
    input:
        code=code_inputs("motif.evaluate"),
        policy=rules.motif_train_rl.output.policy,
        reward_model=rules.motif_reward.output.model,
        reward_stats=rules.motif_reward.output.stats,
    output:
        episodes=f"{MOTIF_EVAL}/episodes.parquet",
        messages=f"{MOTIF_EVAL}/messages.parquet",
    wildcard_constraints:
        **MOTIF_WILDCARDS,
    params:
        **stage_params(config, "motif.evaluate", seed="seed", evaluate="motif.evaluate",
                       policy="motif.policy", intrinsic="motif.intrinsic", env="motif.env"),
    log:
        "logs/motif/eval/{agent}/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/motif/eval/{agent}/seed{seed}/evaluate.tsv"


use rule stage as motif_evaluate_random with:
    input:
        code=code_inputs("motif.evaluate"),
        reward_model=rules.motif_reward.output.model,
        reward_stats=rules.motif_reward.output.stats,
    output:
        episodes="results/motif/eval/random/seed{seed}/episodes.parquet",
        messages="results/motif/eval/random/seed{seed}/messages.parquet",
    wildcard_constraints:
        seed=r"\d+",
    params:
        **stage_params(config, "motif.evaluate", seed="seed", evaluate="motif.evaluate",
                       policy="motif.policy", intrinsic="motif.intrinsic", env="motif.env"),
    log:
        "logs/motif/eval/random/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/motif/eval/random/seed{seed}/evaluate.tsv"


use rule stage as motif_aggregate with:
    input:
        code=code_inputs("motif.aggregate"),
        episodes=expand(f"{MOTIF_EVAL}/episodes.parquet", agent=["random"] + MOTIF_AGENTS,
                        seed=MOTIF_SEEDS),
        messages=expand(f"{MOTIF_EVAL}/messages.parquet", agent=["random"] + MOTIF_AGENTS, seed=MOTIF_SEEDS),
        curves=expand(rules.motif_train_rl.output.curve, agent=MOTIF_AGENTS, seed=MOTIF_SEEDS),
        policies=expand(rules.motif_train_rl.output.policy, agent=MOTIF_AGENTS, seed=MOTIF_SEEDS),
        reward_metrics=rules.motif_reward.output.metrics,
    output:
        table="results/motif/summary.parquet",
        table_csv=report("results/motif/summary.csv", category="Motif"),
        plot=report("results/motif/agents.png", category="Motif"),
        metrics="results/motif/metrics.json",
        claims="results/motif/claims.parquet",
        messages_by_agent="results/motif/messages_by_agent.parquet",
    params:
        **stage_params(config, "motif.aggregate"),
    log:
        "logs/motif/aggregate.log",
    benchmark:
        "benchmarks/motif/aggregate.tsv"


rule motif_all:
    input:
        rules.motif_aggregate.output,
