"""Max-ent GFlowNets on fragment molecules (seh_frag blocks, sEH proxy reward R = r^beta): GSQL with the
max-ent backward policy (exact path counts), with the uniform one, and naive soft Q-learning, trained by
`stages.rl.frag_soft_q`. The space is too large to enumerate, so the evaluation is sampled:

* during training, every `eval_every` iterations: the Pearson correlation of the policy's exact log P(x)
  with beta log r(x) on a fixed random test set (a sampler of R/Z gives 1) and the modes visited so far;
  training stops when that correlation has not risen by `stopping.min_delta` over the last
  `stopping.patience` evaluations, or when `train.iterations` are spent (metrics: `stopped_by`);
* the final sampler: `eval_samples` molecules (reward, modes among them), and over those samples the
  trajectory entropy H(tau), the entropy of the construction orders given x against its maximum
  log n(x), and the KL between the two (`frag_soft_q.trajectory_entropy_metrics`), each with its
  standard error over the samples.

With at most 4 blocks the max-ent and uniform backward policies are the same on every state (every
block tree of up to 4 nodes has parents with equal path counts), so the two GSQL variants differ only
from 5 blocks on; see README.md.
"""
from __future__ import annotations

import logging
import time

import pyarrow as pa
import torch

from stages.common.stage import StageContext
from stages.rl.frag_soft_q import FragSoftQConfig, LikelihoodProbe, sample_metrics, train, trajectory_entropy_metrics
from stages.rl.frag_task import SAMPLES_SCHEMA, evaluation_states, make_task

log = logging.getLogger(__name__)
PROBE = "pearson_logp_logr"


def plateaued(rows: list[dict], patience: int, min_delta: float, key: str = PROBE) -> bool:
    """True when none of the last `patience` rows beats the best row before them by more than min_delta."""
    if len(rows) <= patience:
        return False
    best_before = max(r[key] for r in rows[:-patience])
    return max(r[key] for r in rows[-patience:]) <= best_before + min_delta


def run(ctx: StageContext) -> None:
    task, objective, stopping = ctx.params["task"], ctx.params["objective"], ctx.params["stopping"]
    config = FragSoftQConfig(**ctx.params["train"], backward=objective["backward"], terminal="log_reward",
                             beta=task["beta"], temperature="fixed", tau=1.0)
    mdp, reward = make_task(task)
    probe = LikelihoodProbe(mdp, reward.score, evaluation_states(mdp, task), task["beta"])
    start = time.perf_counter()
    agent, curve = train(mdp, reward, config, ctx.seed, ctx.progress, probe=probe,
                         stop=lambda rows: plateaued(rows, stopping["patience"], stopping["min_delta"]),
                         mode_threshold=task["mode_threshold"])
    iterations = curve[-1]["step"]
    stopped_by = "budget" if iterations == config.iterations else "plateau"
    log.info("%d iterations (stopped by %s) in %.1f s, %d molecules scored; correlation %s", iterations,
             stopped_by, time.perf_counter() - start, len(reward.cache), [round(r[PROBE], 3) for r in curve])

    trajs = agent.sample(task["eval_samples"], torch.Generator().manual_seed(ctx.seed + 1))
    rows, metrics = sample_metrics(agent, task["eval_samples"], None, task["mode_threshold"], trajs)
    metrics.update(trajectory_entropy_metrics(agent, [t[-1][0] for t in trajs]))
    with torch.no_grad():
        v_s0 = torch.logsumexp(agent.log_policy([mdp.initial_state()])[2][0], 0).item()
    metrics.update(probe(agent), test_molecules=len(probe.log_r), v_s0=v_s0, objective=objective,
                   seed=ctx.seed, iterations=iterations, max_iterations=config.iterations,
                   stopped_by=stopped_by, best_pearson=max(r[PROBE] for r in curve),
                   modes_visited=curve[-1]["modes_visited"], final_loss=curve[-1]["loss"],
                   molecules_scored=curve[-1]["molecules_scored"])
    log.info("H(tau) %.3f +- %.3f, H(tau|x) %.3f vs E log n(x) %.3f (KL %.4f +- %.4f); modes %d sampled, "
             "%d visited", metrics["trajectory_entropy"], metrics["trajectory_entropy_se"],
             metrics["conditional_entropy"], metrics["mean_log_paths"], metrics["path_kl"],
             metrics["path_kl_se"], metrics["modes"], metrics["modes_visited"])
    ctx.save_checkpoint("model", agent.q.state_dict())
    ctx.write_table("samples", pa.Table.from_pylist(rows, SAMPLES_SCHEMA), SAMPLES_SCHEMA)
    ctx.write_curve("curve", curve)
    ctx.write_json("metrics", metrics)
