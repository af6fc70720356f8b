"""Train one GFlowNet objective on one HyperGrid: TB / DB / SubTB, or soft Q-learning with a backward-policy
reward (GSQL, Mohammadpour et al. 2024).

Soft Q-learning here: temperature 1, no discount, Q(s, a) -> r(s, a) + V(s'), V = logsumexp Q, semi-gradient
(V(s') detached, no target network, as in the reference soft_q_learning.py). Rewards, for a backward
policy P_B: r(s -> s') = log P_B(s | s') for an increment, r(x -> stop) = log R(x). Then V*(s0) = log Z
and softmax(Q*) samples x with probability R(x)/Z. Backward policies ("backward" of an objective):
  uniform   P_B = 1 / #parents
  maxent    P_B(s | s') = n(s) / n(s'), n = exact path counts: the largest trajectory entropy
  learned_n the same with log n learned by the consistency loss (log n(s') - logsumexp_{parents} log n)^2
            (i.e. (log n(s') + log P_B(s|s') - log n(s))^2 with P_B normalised over the parents)
  none      r = 0 for increments: naive soft Q-learning, which samples x with probability ~ n(x) R(x).

Every `eval_every` iterations the exact terminal distribution is computed by DP over the grid (no
sampling): the curve holds exact L1 to R/Z and |log Z estimate - log Z|. Time per iteration goes to the
log only, so the artifacts are deterministic for a fixed seed.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from stages.common.stage import StageContext
from stages.envs.hypergrid import HyperGrid
from stages.maxent_gfn.model import GFNModel, sample
from stages.rl import balance
from stages.rl.soft_q import soft_bellman_residual

log = logging.getLogger(__name__)

CURVE_COLUMNS = ("step", "loss", "l1", "logz_error", "modes_found", "states_visited")


def make_env(grid: dict) -> HyperGrid:
    return HyperGrid(grid["ndim"], grid["height"], grid["R0"], grid["R1"], grid["R2"])


def log_pb_steps(model: GFNModel, states, actions, backward: str):
    """log P_B(s_t | s_{t+1}) for every padded position t (the stop position is fixed up by callers),
    and for learned_n the consistency residuals log n(s_{t+1}) - logsumexp_{parents} log n."""
    env, s, s_next = model.env, states[:, :-1], states[:, 1:]
    if backward == "uniform":
        return env.log_pb_uniform(s_next).float(), None
    if backward == "maxent":
        return env.log_pb_maxent(s, actions).float(), None
    if backward == "learned_n":
        # one pass of the n network serves the reward (detached: the Q loss must not move n) and the loss
        log_n = model.log_n(states)
        log_n_sum_parents = torch.logsumexp(model.log_n_parents(s_next), -1)
        return (log_n[:, :-1] - log_n_sum_parents).detach(), log_n[:, 1:] - log_n_sum_parents
    return torch.zeros(actions.shape), None  # none: naive soft Q-learning


def objective_loss(model: GFNModel, batch, objective: dict, cfg: dict) -> torch.Tensor:
    env = model.env
    logits, log_flow = model(batch.states, dedupe=True)                  # (B, T + 2, A), (B, T + 2)
    log_r = env.log_reward(batch.terminal).float()
    acts = batch.actions
    valid, is_stop = batch.valid, acts == env.stop
    log_pb, n_res = log_pb_steps(model, batch.states, acts, objective["backward"])
    log_pb = torch.where(is_stop, 0.0, log_pb)

    if objective["loss"] == "sql":
        q_sa = logits[:, :-1].gather(-1, acts[..., None])[..., 0]
        v_next = torch.logsumexp(logits[:, 1:], -1).detach()
        reward = torch.where(is_stop, log_r[:, None].expand_as(log_pb), log_pb)
        res = soft_bellman_residual(q_sa, reward, v_next, terminal=is_stop)
        loss = res[valid].pow(2).mean()
    else:
        log_pf = torch.log_softmax(logits[:, :-1], -1).gather(-1, acts[..., None])[..., 0]
        flows = log_flow[:, :-1]
        if objective["loss"] == "tb":
            loss = balance.trajectory_balance(log_pf, log_pb, model.log_Z, log_r, batch.n)
        elif objective["loss"] == "db":
            loss = balance.detailed_balance(log_pf, log_pb, flows, log_r, batch.n)
        else:
            loss = balance.subtrajectory_balance(log_pf, log_pb, flows, log_r, batch.n,
                                                 cfg["subtb_lambda"])

    if n_res is not None:
        # consistency of the path counts on every visited non-initial state: n(s') = sum_parents n
        loss = loss + n_res[valid & ~is_stop].pow(2).mean()
    return loss


def exact_metrics(model: GFNModel, loss_kind: str) -> tuple[float, float]:
    env = model.env
    p = env.terminal_distribution(model.log_pf_all())
    return float((p - env.target).abs().sum()), abs(model.log_Z_estimate(loss_kind) - env.log_Z)


def train(env: HyperGrid, model_cfg: dict, objective: dict, cfg: dict, seed: int,
          progress=lambda it, **kw: it) -> tuple[GFNModel, list[dict], float]:
    """The whole training run; returns the model, the curve rows (CURVE_COLUMNS) and seconds per iteration."""
    if objective["backward"] == "none" and objective["loss"] != "sql":
        raise ValueError("backward 'none' (no P_B correction) only makes sense with loss 'sql'")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GFNModel.from_params(env, model_cfg, objective)
    others = [p for name, p in model.named_parameters() if name != "log_Z"]
    opt = torch.optim.Adam([{"params": others, "lr": cfg["lr"]},
                            {"params": [model.log_Z], "lr": cfg["lr_logz"]}],
                           fused=True)  # one kernel per step: ~3x cheaper than the default on CPU
    # cosine decay to 0: the last iterations average out the sampling noise of the updates
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["iterations"])
    seen = torch.zeros(len(env.all_states), dtype=torch.bool)
    rows, train_seconds = [], 0.0
    iters = cfg["iterations"]
    for step in progress(range(1, iters + 1), total=iters, desc="train"):
        start = time.perf_counter()
        batch = sample(model, cfg["batch_size"], cfg["epsilon"], gen)
        loss = objective_loss(model, batch, objective, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        train_seconds += time.perf_counter() - start
        seen[env.index(batch.terminal)] = True
        if step % cfg["eval_every"] == 0 or step == iters:
            l1, logz_err = exact_metrics(model, objective["loss"])
            rows.append({"step": step, "loss": loss.item(), "l1": l1, "logz_error": logz_err,
                         "modes_found": int((seen & env.mode_mask).sum()), "states_visited": int(seen.sum())})
            if not np.isfinite(rows[-1]["loss"]):
                raise FloatingPointError(f"loss is {rows[-1]['loss']} at iteration {step}")
    return model, rows, train_seconds / iters


def run(ctx: StageContext) -> None:
    env = make_env(ctx.params["grid"])
    objective, cfg = ctx.params["objective"], ctx.params["train"]
    model, rows, sec_per_it = train(env, ctx.params["model"], objective, cfg, ctx.seed, ctx.progress)
    last = rows[-1]
    log.info("%s/%s on %dD H=%d: %d iterations, %.2f ms per iteration (sampling + loss + update, "
             "exact evaluations excluded); exact L1 %.4f, |logZ err| %.4f, modes %d/%d",
             objective["loss"], objective["backward"], env.ndim, env.height, last["step"], 1e3 * sec_per_it,
             last["l1"], last["logz_error"], last["modes_found"], int(env.mode_mask.sum()))
    ctx.save_checkpoint("model", model.state_dict())
    ctx.write_curve("curve", rows, CURVE_COLUMNS)
