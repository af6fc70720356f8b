"""Max-ent GFlowNets on fragment molecules (seh_frag blocks, sEH proxy reward R = r^beta): GSQL with the
max-ent backward policy (exact path counts), with the uniform one, and naive soft Q-learning, trained by
`stages.rl.frag_soft_q`. The space is too large to enumerate, so the evaluation is sampled: reward of
policy samples, modes, and the exact log P(x) of the policy on a fixed random test set against
beta log r(x) (Pearson; a sampler of R/Z gives log P = beta log r - log Z, correlation 1).
"""
from __future__ import annotations

from stages.common.stage import StageContext
from stages.rl.frag_soft_q import FragSoftQConfig
from stages.rl.frag_task import train_and_save


def run(ctx: StageContext) -> None:
    objective = ctx.params["objective"]
    config = FragSoftQConfig(**ctx.params["train"], backward=objective["backward"], terminal="log_reward",
                             beta=ctx.params["task"]["beta"], temperature="fixed", tau=1.0)
    train_and_save(ctx, config, likelihood=True, objective=objective)
