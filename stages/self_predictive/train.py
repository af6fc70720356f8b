"""Train one seed of self_predictive (skeleton: least-squares regression by SGD against a constant baseline).

Replace the model and data with the method's; keep the shape: params from `ctx.params`, run identity
from `ctx.wildcards`, the curve through `ctx.write_curve`, a resumable loop through `ResumeState`, and
an evaluation on held-out data shared by every seed (so the aggregate can pair runs on it).
"""
from __future__ import annotations

import logging

import pyarrow as pa
import torch

from stages.common.resume import ResumeState
from stages.common.stage import StageContext

log = logging.getLogger(__name__)

EVALUATION_SCHEMA = pa.schema([("example", pa.int64()), ("model_sq_error", pa.float64()),
                               ("baseline_sq_error", pa.float64())])


def make_data(n: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1.0, 1.0, dim)
    x = torch.randn(n, dim, generator=g)
    return x, x @ w + noise * torch.randn(n, generator=g)


def run(ctx: StageContext) -> None:
    cfg = ctx.params["train"]
    x, y = make_data(cfg["n_train"], cfg["dim"], cfg["noise"], seed=1000 + ctx.seed)
    x_test, y_test = make_data(cfg["n_test"], cfg["dim"], cfg["noise"], seed=cfg["test_seed"])
    model = torch.nn.Linear(cfg["dim"], 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])

    resume = ResumeState.for_output(ctx, "model")
    step, rows = 0, []
    saved = resume.load()
    if saved is not None:
        tensors, progress = saved
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()})
        step, rows = progress["step"], progress["rows"]

    g = torch.Generator().manual_seed(ctx.seed)
    for _ in range(step):  # replay the batch sampler so a resumed run draws the same batches
        torch.randint(len(x), (cfg["batch_size"],), generator=g)
    while step < cfg["steps"]:
        idx = torch.randint(len(x), (cfg["batch_size"],), generator=g)
        loss = ((model(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % cfg["log_every"] == 0:
            rows.append({"step": step, "loss": loss.item()})
            resume.save({f"model.{k}": v for k, v in model.state_dict().items()},
                        {"step": step, "rows": rows})
    log.info("seed %s: %d steps, last loss %.4g", ctx.wildcards.get("seed"), step, rows[-1]["loss"])

    with torch.no_grad():
        model_err = (model(x_test).squeeze(-1) - y_test) ** 2
    baseline_err = (y.mean() - y_test) ** 2
    ctx.save_checkpoint("model", model.state_dict())
    ctx.write_curve("curve", rows)
    ctx.write_table("evaluation", pa.table({
        "example": torch.arange(len(y_test)).numpy(), "model_sq_error": model_err.double().numpy(),
        "baseline_sq_error": baseline_err.double().numpy()}), EVALUATION_SCHEMA)
    resume.clear()
