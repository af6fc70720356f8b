"""AWM: differentiable tasks, world models, gradient study, NaN handling, and the tiny chain in-process."""

import copy
import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from stages.awm import aggregate, collect, evaluate, gradients, optimum, train_policy, train_world_model
from stages.awm.gradients import per_state_gradients, study_policy
from stages.awm.models import Policy, SimulatorModel, imagine, log_linear_fits, make_world_model
from stages.awm.tasks import make_task, pendulum_derivs
from stages.common.code import ROOT
from stages.common.params import ParamsError, load_params, validate
from stages.common.stage import StageContext

SMALL = {"d_model": 16, "layers": 1, "heads": 2, "hidden": 16}


def tiny_params() -> dict:
    return load_params(ROOT / "params.yaml", ROOT / "config" / "tiny.yaml")["awm"]


def energy(s):
    th1, th2, w1, w2 = s.unbind(-1)
    kinetic = 0.5 * (2 * w1**2 + w2**2 + 2 * w1 * w2 * torch.cos(th1 - th2))
    return kinetic - 9.8 * (2 * torch.cos(th1) + torch.cos(th2))


def test_pendulum_rk4_conserves_energy_and_is_chaotic():
    s = torch.tensor([[0.8 * math.pi, 0.0, 0.0, 0.0]], dtype=torch.float64)
    e0 = energy(s)
    task = make_task("pendulum")
    zero = torch.zeros(1, 1, dtype=torch.float64)
    for t in range(200):
        s = task.step(s, zero, t)
    assert abs(float(energy(s) - e0)) < 0.03 * abs(float(e0))
    s0 = torch.zeros(1, 4)
    norms = []
    for H in (25, 200):
        a = torch.full((1, H, 1), 0.8, requires_grad=True)
        task.episode_cost(task.rollout(s0, a), a).sum().backward()
        norms.append(a.grad.norm().item())
    assert norms[1] > 1e3 * norms[0]  # the shooting landscape's gradient explodes with H
    assert pendulum_derivs(torch.zeros(1, 4)).abs().max() == 0  # hanging at rest is an equilibrium


def test_ode_gradient_matches_finite_differences():
    task = make_task("cancer")
    s0 = task.eval_initial(1, torch.Generator())
    a = (0.3 * torch.randn(1, 20, 1, generator=torch.Generator().manual_seed(0))).double().requires_grad_(True)
    task.lo, task.hi = task.lo.double(), task.hi.double()
    cost = lambda x: task.episode_cost(task.rollout(s0.double(), x), x).sum()
    cost(a).backward()
    e = torch.zeros_like(a)
    e[0, 5, 0] = 1e-6
    fd = (cost(a.detach() + e) - cost(a.detach() - e)) / 2e-6
    assert float(fd) == pytest.approx(float(a.grad[0, 5, 0]), rel=1e-4)


def test_direct_shooting_recovers_known_pendulum_answer_and_beats_zero_control():
    task = make_task("pendulum")
    s0 = optimum.eval_states(task, 3, 0)
    best, controls, _ = optimum.grid_shoot(task, s0, 30, 21, 2, 0.01)
    assert float(best.max()) < 1e-8 and torch.allclose(controls[:, 0, 0], torch.full((3,), 0.6))
    cancer = make_task("cancer")
    x0 = optimum.eval_states(cancer, 1, 0)
    best, controls, _ = optimum.shoot(cancer, x0, 20, 2, 60, 0.1, seed=0)
    zero = torch.zeros(1, 20, 1)
    assert float(best) < float(cancer.episode_cost(cancer.rollout(x0, zero), zero)) - 0.1
    assert float(cancer.episode_cost(cancer.rollout(x0, controls), controls)) == pytest.approx(float(best), rel=1e-5)


@pytest.mark.parametrize("kind", ["history", "awm", "awm_lstm", "markov"])
def test_stepwise_rollout_equals_teacher_forced_prediction(kind):
    torch.manual_seed(0)
    m = make_world_model(kind, 2, 1, SMALL, 30)
    s0, acts = torch.rand(3, 2), torch.rand(3, 12, 1)
    carry, out = m.start(s0), [s0]
    for t in range(12):
        s, carry = m.step(carry, acts[:, t], t)
        out.append(s)
    assert torch.allclose(torch.stack(out, 1), m.predict(s0, acts), atol=1e-5)


@pytest.mark.parametrize("kind", ["awm", "awm_lstm"])
def test_parallel_awm_path_has_the_sequential_gradient(kind):
    task = make_task("cancer")
    torch.manual_seed(0)
    m = make_world_model(kind, 1, 1, SMALL, task.max_horizon)
    policy = Policy(1, 1, task.obs_scale, task.max_horizon, 8)
    with torch.no_grad():
        policy.net[-1].weight.mul_(20)
    s0 = task.explore_initial(2, torch.Generator().manual_seed(1))
    grads = []
    for act in (policy, lambda o, t: policy(o, t)):  # a bare callable takes the sequential path
        policy.zero_grad()
        st, ac = imagine(m, task, s0, act, 15)
        task.episode_cost(st, ac).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_per_state_gradients_equal_one_backward_per_state():
    task = make_task("pendulum")
    policy = study_policy(task, {"policy_init_seed": 0, "init_action": 0.8}, 8)
    s0 = task.eval_initial(3, torch.Generator().manual_seed(0))
    for model in (SimulatorModel(task), make_world_model("history", 4, 1, SMALL, 40)):
        g, _ = per_state_gradients(model, task, policy, s0, 20, 1.0)
        for i in range(3):
            policy.zero_grad()
            st, ac = imagine(model, task, s0[i : i + 1], policy, 20)
            task.episode_cost(st, ac).sum().backward()
            ref = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
            assert torch.allclose(g[i], ref, rtol=1e-4, atol=1e-6)


def test_growth_fits_tell_exponential_from_polynomial():
    H = [25, 50, 100, 200]
    exp = log_linear_fits(H, [math.exp(0.05 * h) for h in H])
    poly = log_linear_fits(H, [h**2 for h in H])
    assert exp["exp_r2"] > exp["poly_r2"] and exp["exp_slope"] == pytest.approx(0.05)
    assert poly["poly_r2"] > poly["exp_r2"] and poly["poly_slope"] == pytest.approx(2.0)


def test_nonfinite_world_model_loss_is_recorded_and_weights_stay_finite():
    states = torch.rand(8, 11, 2)
    states[3, 5, 1] = float("inf")
    cfg = {**SMALL, "lr": 1e-3, "steps": 6, "batch_size": 8, "grad_clip": 1.0, "on_nonfinite": "stop", "log_every": 2}
    rows, failures = [], []
    model = train_world_model.train_kind("markov", (states, torch.rand(8, 10, 1)), cfg, 0, 10, rows, failures)
    assert failures and failures[0]["step"] == 1 and failures[0]["action"] == "stop"
    assert all(torch.isfinite(v).all() for k, v in model.state_dict().items() if not k.startswith("norm"))


class ExplodingModel:
    kind = "exploding"

    def start(self, s0):
        return s0

    def step(self, s, a, t):
        s = s * 1e30 + a  # overflows to inf within a few steps
        return s, s


def test_nonfinite_policy_update_is_skipped_with_its_step():
    task = make_task("cancer")
    cfg = {
        "hidden": 8,
        "lr": 0.01,
        "steps": 3,
        "batch_size": 1,
        "grad_clip": 100.0,
        "gamma": 1.0,
        "detach_obs": True,
        "on_nonfinite": "skip",
        "log_every": 1,
    }
    rows, failures = [], []
    policy = train_policy.train_one(task, ExplodingModel(), 20, cfg, 0, rows, failures, "exploding.H20")
    assert [f["step"] for f in failures] == [1, 2, 3] and not rows
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def test_bad_params_are_rejected_naming_the_key():
    params = copy.deepcopy(tiny_params())
    params["world_model"]["on_nonfinite"] = "ignore"
    with pytest.raises(ParamsError, match="world_model.on_nonfinite"):
        from stages.common.params import schema_at

        validate(params["world_model"], schema=schema_at("awm.world_model"), prefix="awm.world_model")
    with pytest.raises(ValueError, match="unknown AWM task"):
        make_task("cartpole")


def _ctx(stage, params, keys, inputs, outputs, tmp, run_seed=None, **wc):
    return StageContext(
        stage=f"awm.{stage}",
        params=params,
        param_keys=keys,
        inputs=inputs,
        outputs={k: tmp / v for k, v in outputs.items()},
        seed_value=run_seed,
        wildcards={k: str(v) for k, v in wc.items()},
    )


def test_tiny_chain_in_process(tmp_path):
    p = tiny_params()
    p["policy_tasks"] = ["cancer"]
    p["world_model"]["kinds"] = ["markov", "awm"]
    p["policy"]["kinds"] = ["sim", "markov", "awm"]
    p["gradients"]["kinds"] = ["sim", "markov", "awm"]
    key = {
        "task": "awm.tasks.{t}",
        "collect": "awm.collect",
        "optimum": "awm.optimum",
        "evaluate": "awm.evaluate",
        "world_model": "awm.world_model",
        "policy": "awm.policy",
        "gradients": "awm.gradients",
        "aggregate": "awm.aggregate",
    }

    def args(t, *names):
        return ({n: p["tasks"][t] if n == "task" else p[n] for n in names}, {n: key[n].format(t=t) for n in names})

    evals, errors, grads, wm_metrics, pol_metrics = [], [], [], [], []
    for t in ("cancer", "pendulum"):
        d = tmp_path / t
        collect.run(_ctx("collect", *args(t, "task", "collect"), {}, {"rollouts": "rollouts.parquet"}, d, task=t))
        if t == "cancer":
            optimum.run(
                _ctx("optimum", *args(t, "task", "optimum", "evaluate"), {}, {"optimum": "optimum.parquet"}, d, task=t)
            )
        for seed in p["seeds"]:
            r = d / f"seed{seed}"
            train_world_model.run(
                _ctx(
                    "train_world_model",
                    *args(t, "task", "world_model"),
                    {"rollouts": d / "rollouts.parquet"},
                    {"models": "m.safetensors", "errors": "e.parquet", "curve": "c.csv", "metrics": "metrics.json"},
                    r,
                    seed,
                    task=t,
                    seed=seed,
                )
            )
            errors.append(r / "e.parquet")
            wm_metrics.append(r / "metrics.json")
            if t == "pendulum":
                gradients.run(
                    _ctx(
                        "gradients",
                        *args(t, "task", "world_model", "policy", "gradients"),
                        {"models": r / "m.safetensors"},
                        {"gradients": "g.parquet"},
                        r,
                        seed,
                        task=t,
                        seed=seed,
                    )
                )
                grads.append(r / "g.parquet")
                continue
            train_policy.run(
                _ctx(
                    "train_policy",
                    *args(t, "task", "world_model", "policy"),
                    {"models": r / "m.safetensors"},
                    {"policies": "p.safetensors", "curve": "pc.csv", "metrics": "pm.json"},
                    r,
                    seed,
                    task=t,
                    seed=seed,
                )
            )
            pol_metrics.append(r / "pm.json")
            evaluate.run(
                _ctx(
                    "evaluate",
                    *args(t, "task", "policy", "evaluate"),
                    {"policies": r / "p.safetensors", "optimum": d / "optimum.parquet"},
                    {"evaluation": "ev.parquet"},
                    r,
                    seed,
                    task=t,
                    seed=seed,
                )
            )
            evals.append(r / "ev.parquet")
    ev = pq.read_table(evals[0]).to_pandas()
    assert set(ev.kind) == {"sim", "markov", "awm"} and set(ev.horizon) == set(p["tasks"]["cancer"]["horizons"])
    assert (ev.cost >= ev.optimum - 1e-4).all()  # nothing beats direct shooting on the true system
    out = {
        "claims": "claims.parquet",
        "costs": "costs.parquet",
        "gradient_table": "gt.parquet",
        "gradient_fits": "gf.parquet",
        "plot_gradients": "g.png",
        "plot_errors": "e.png",
        "plot_costs": "c.png",
        "metrics": "metrics.json",
    }
    aggregate.run(
        _ctx(
            "aggregate",
            {"aggregate": p["aggregate"]},
            {"aggregate": "awm.aggregate"},
            {
                "evaluation": evals,
                "errors": errors,
                "gradients": grads,
                "wm_metrics": wm_metrics,
                "policy_metrics": pol_metrics,
            },
            out,
            tmp_path / "agg",
        )
    )
    claims = pq.read_table(tmp_path / "agg" / "claims.parquet").to_pylist()
    assert {c["n"] for c in claims} == {len(p["seeds"])} and len(claims) == 6
    gt = pq.read_table(tmp_path / "agg" / "gt.parquet").to_pandas()
    assert set(gt.horizon) == set(p["gradients"]["horizons"]) and (gt.norm_mean > 0).all()
    assert json.loads((tmp_path / "agg" / "metrics.json").read_text())["claims"] == 6


def test_sac_baseline_runs_on_the_ode_and_reports_against_the_optimum(tmp_path):
    from stages.awm import sac_baseline

    p = tiny_params()
    t = "cancer"
    optimum.run(
        _ctx(
            "optimum",
            {"task": p["tasks"][t], "optimum": p["optimum"], "evaluate": p["evaluate"]},
            {"task": "awm.tasks.cancer", "optimum": "awm.optimum", "evaluate": "awm.evaluate"},
            {},
            {"optimum": "optimum.parquet"},
            tmp_path,
            task=t,
        )
    )
    sac_baseline.run(
        _ctx(
            "sac_baseline",
            {"task": p["tasks"][t], "sac": p["sac"]},
            {"task": "awm.tasks.cancer", "sac": "awm.sac"},
            {"optimum": tmp_path / "optimum.parquet"},
            {"policy": "sac.safetensors", "curve": "c.csv", "evaluation": "ev.parquet"},
            tmp_path,
            0,
            task=t,
            seed=0,
        )
    )
    row = pq.read_table(tmp_path / "ev.parquet").to_pylist()[0]
    assert row["kind"] == "sac" and row["horizon"] == max(p["tasks"][t]["horizons"])
    assert row["finite"] and row["cost"] >= row["optimum"] - 1e-4
