"""The fragment-molecule task shared by the soft-Q stages: the seh_frag vocabulary, the MDP, and the
published sEH proxy as r(x) (weights from a params path, sha256-checked; never committed)."""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import torch

from stages.chem.blocks import seh_frag_blocks
from stages.chem.seh_proxy import load_seh_proxy, seh_task_reward
from stages.envs.fragments import FragmentMDP
from stages.rl.frag_soft_q import CachedReward, FragSoftQConfig, likelihood_metrics, sample_metrics, train

log = logging.getLogger(__name__)

SAMPLES_SCHEMA = pa.schema([("smiles", pa.string()), ("reward", pa.float64()), ("n_blocks", pa.int32())])


def make_task(task: dict) -> tuple[FragmentMDP, CachedReward]:
    mdp = FragmentMDP(seh_frag_blocks(), max_blocks=task["max_blocks"], fp_bits=task["fp_bits"])
    proxy = load_seh_proxy(task["seh_proxy"])
    return mdp, CachedReward(mdp, lambda mols: seh_task_reward(proxy.raw_scores(mols)).astype(np.float64))


def evaluation_states(mdp: FragmentMDP, task: dict):
    """The fixed evaluation set: random rollouts from a seed of the task, identical for every run."""
    return mdp.random_rollouts(task["test_molecules"], np.random.default_rng(task["test_seed"]),
                               stop_prob=task["test_stop_prob"])


def train_and_save(ctx, config: FragSoftQConfig, likelihood: bool, **extra) -> dict:
    """The body of a soft-Q molecule stage: train on the task of ctx.params["task"], evaluate by sampling
    (and by exact log P(x) on the shared test set when `likelihood`), write model / samples / curve /
    metrics outputs. Returns the metrics."""
    task = ctx.params["task"]
    mdp, reward = make_task(task)
    start = time.perf_counter()
    agent, curve = train(mdp, reward, config, ctx.seed, ctx.progress)
    log.info("%d iterations in %.1f s (%d molecules scored)", config.iterations, time.perf_counter() - start,
             len(reward.cache))
    rows, metrics = sample_metrics(agent, task["eval_samples"], torch.Generator().manual_seed(ctx.seed + 1),
                                   task["mode_threshold"])
    if likelihood:
        metrics.update(likelihood_metrics(agent, evaluation_states(mdp, task)))
    metrics.update(extra, seed=ctx.seed, final_loss=curve[-1]["loss"], molecules_scored=len(reward.cache))
    ctx.save_checkpoint("model", agent.q.state_dict())
    ctx.write_table("samples", pa.Table.from_pylist(rows, SAMPLES_SCHEMA), SAMPLES_SCHEMA)
    ctx.write_curve("curve", curve)
    ctx.write_json("metrics", metrics)
    return metrics
