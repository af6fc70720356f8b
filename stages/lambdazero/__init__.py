"""LambdaZero: PPO over a fragment MDP with a docking proxy and active learning (see rules.smk for the
stage chain and /work/shared/methods/lambdazero.md for the method)."""
