"""Train every world-model kind of one task and seed on the collected rollouts; score them held out.

Losses are teacher-forced next-state MSE in standardised units (markov: one step from the true state;
history: from the true prefix; awm / awm_lstm: from s_1 and the actions only). Adam with cosine decay and
gradient clipping. A non-finite loss or gradient is recorded with its step; `on_nonfinite: stop` restores
the last finite weights (snapshotted every `log_every` steps) and ends that kind's training, `skip`
drops the update and goes on. A kind whose weights are not finite at the end is left out of the
checkpoint and marked failed in the metrics, never saved as if fine.
Held-out error: open-loop prediction of the test episodes from their first state under their recorded
actions (markov and history fed their own predictions), MSE per horizon step in standardised units.
"""

from __future__ import annotations

import copy
import logging
import time

import pyarrow as pa
import torch

from stages.awm.data import load_rollouts
from stages.awm.models import make_world_model, n_params
from stages.awm.tasks import make_task
from stages.common.resume import ResumeState
from stages.common.stage import StageContext

log = logging.getLogger(__name__)
ERROR_SCHEMA = pa.schema([("kind", pa.string()), ("horizon", pa.int64()), ("mse", pa.float64())])


def train_kind(
    kind: str, data: tuple[torch.Tensor, torch.Tensor], cfg: dict, seed: int, max_len: int, rows: list, failures: list
):
    states, actions = data
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_world_model(kind, states.shape[-1], actions.shape[-1], cfg, max_len)
    model.norm.fit(states)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["steps"])
    good = copy.deepcopy(model.state_dict())
    for step in range(1, cfg["steps"] + 1):
        idx = torch.randint(len(states), (cfg["batch_size"],), generator=g)
        loss = model.loss(states[idx], actions[idx])
        opt.zero_grad()
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
            failures.append(
                {
                    "kind": kind,
                    "step": step,
                    "event": f"non-finite loss {loss.item()} / grad norm {gnorm.item()}",
                    "action": cfg["on_nonfinite"],
                }
            )
            log.warning("%s: %s at step %d", kind, failures[-1]["event"], step)
            if cfg["on_nonfinite"] == "stop":
                model.load_state_dict(good)
                break
            continue
        opt.step()
        sched.step()
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            rows.append({"step": step, "kind": kind, "loss": loss.item(), "grad_norm": gnorm.item()})
            if all(torch.isfinite(v).all() for v in model.state_dict().values()):
                good = copy.deepcopy(model.state_dict())
    return model


@torch.no_grad()
def heldout_error(model, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """MSE per horizon step 1..T (standardised units) of open-loop predictions."""
    pred = model.predict(states[:, 0], actions)
    z, zp = model.norm.norm(states), model.norm.norm(pred)
    return ((zp - z) ** 2).mean((0, 2))[1:]


def run(ctx: StageContext) -> None:
    name, cfg = ctx.wildcards["task"], ctx.params["world_model"]
    make_task(name, ctx.params["task"])  # rejects an unknown task name before any training
    splits = load_rollouts(ctx.inputs["rollouts"])
    train, test = splits["train"], splits["test"]
    max_len = train[1].shape[1]

    resume = ResumeState.for_output(ctx, "models")
    tensors, progress = {}, {"done": [], "rows": [], "failures": [], "errors": [], "seconds": {}}
    saved = resume.load()
    if saved is not None:
        tensors, progress = saved
    for kind in cfg["kinds"]:
        if kind in progress["done"]:
            continue
        start = time.perf_counter()
        model = train_kind(kind, train, cfg, ctx.seed, max_len, progress["rows"], progress["failures"])
        state = model.state_dict()
        finite = all(torch.isfinite(v).all() for v in state.values())
        err = heldout_error(model, *test) if finite else torch.full((test[1].shape[1],), float("nan"))
        if finite:
            tensors.update({f"{kind}.{k}": v.contiguous() for k, v in state.items()})
        else:
            progress["failures"].append(
                {
                    "kind": kind,
                    "step": cfg["steps"],
                    "event": "non-finite weights",
                    "action": "left out of the checkpoint",
                }
            )
        progress["errors"] += [{"kind": kind, "horizon": h + 1, "mse": float(e)} for h, e in enumerate(err)]
        progress["seconds"][kind] = time.perf_counter() - start
        progress["done"].append(kind)
        log.info(
            "%s %s (%d params): %.1f s, held-out mse h=1 %.3g, h=%d %.3g",
            name,
            kind,
            n_params(model),
            progress["seconds"][kind],
            err[0],
            len(err),
            err[-1],
        )
        resume.save(tensors, progress)

    ctx.save_checkpoint("models", tensors)
    ctx.write_table("errors", pa.Table.from_pylist(progress["errors"], schema=ERROR_SCHEMA), ERROR_SCHEMA)
    ctx.write_curve("curve", progress["rows"], ["step", "kind", "loss", "grad_norm"])
    by_kind = {k: [e for e in progress["errors"] if e["kind"] == k] for k in progress["done"]}
    ctx.write_json(
        "metrics",
        {
            "task": name,
            "seed": ctx.seed,
            "failures": progress["failures"],
            "failed_kinds": sorted({f["kind"] for f in progress["failures"]}),
            "train_seconds": progress["seconds"],
            "heldout_mse_last": {k: v[-1]["mse"] for k, v in by_kind.items() if v},
            "heldout_mse_first": {k: v[0]["mse"] for k, v in by_kind.items() if v},
        },
    )
    resume.clear()


def load_world_models(path, task, cfg: dict, max_len: int) -> dict:
    """{kind: model} for every kind the checkpoint holds (failed kinds are absent)."""
    from stages.common import artifacts

    tensors = artifacts.load_checkpoint(path)
    out = {}
    for kind in cfg["kinds"]:
        part = {k[len(kind) + 1 :]: v for k, v in tensors.items() if k.startswith(kind + ".")}
        if not part:
            continue
        model = make_world_model(kind, task.obs_dim, task.act_dim, cfg, max_len)
        model.load_state_dict(part)
        out[kind] = model.eval()
    return out
