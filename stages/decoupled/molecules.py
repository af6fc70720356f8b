"""Soft Q-learning on fragment molecules (seh_frag blocks, sEH proxy reward r(x) on stop) with a fixed
temperature tau or the static decoupled one tau / max(log |A(s)|, 1). The number of legal actions
grows from ~70 on the empty state to ~1000s once a molecule has open stems, so a fixed tau pays the
policy up to tau log |A(s)| per step for entropy: it learns to grow to max_blocks with near-uniform
choices whatever the reward. The decoupled temperature bounds that bonus by tau per step.
"""
from __future__ import annotations

from stages.common.stage import StageContext
from stages.rl.frag_soft_q import FragSoftQConfig
from stages.rl.frag_task import train_and_save


def run(ctx: StageContext) -> None:
    config = FragSoftQConfig(**ctx.params["train"], backward="none", terminal="reward",
                             beta=ctx.params["task"]["beta"], temperature=ctx.params["temperature"],
                             tau=ctx.params["tau"])
    train_and_save(ctx, config, likelihood=False, temperature=config.temperature, tau=config.tau)
