"""Self-predictive RL: the linear study's loss and collapse, the agent's target variants, distractors, the
delayed-cue POMDP, NaN handling, exact resume, params validation and the tiny chain's plan."""
import copy
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from stages.common.code import ROOT
from stages.common.params import ParamsError, load_params, validate
from stages.common.resume import ResumeState
from stages.common.stage import StageContext, seed_everything
from stages.self_predictive import linear, mdp, pomdp
from stages.self_predictive.agent import Agent, AgentConfig, mean_abs_cos, srank
from stages.self_predictive.linear_envs import LinearTask, _histories, rollout_dataset

TINY = load_params(ROOT / "params.yaml", ROOT / "config" / "tiny.yaml")["self_predictive"]


# ---------------------------------------------------------------- linear study
def test_history_features_follow_the_reference_layout():
    obs = np.eye(3)[[0, 1, 2, 1]]
    act = np.eye(2)[[1, 0, 1]]
    h = _histories(obs, act, 2)
    assert h.shape == (4, 2 * 3 + 2)
    np.testing.assert_array_equal(h[0], [0, 0, 0, 1, 0, 0, 0, 0])          # zero padding before o_0
    np.testing.assert_array_equal(h[2], [0, 1, 0, 0, 0, 1, 1, 0])          # o_1, o_2, a_1


def test_datasets_have_the_notes_sizes():
    s, a, s2 = rollout_dataset(LinearTask("loadunload", history=20), 10, 200, np.random.SeedSequence(0))
    assert s.shape == (2000, 20 * 3 + 19 * 2) and a.shape == (2000, 2) and s2.shape == s.shape
    np.testing.assert_array_equal(s[1:200], s2[:199])                        # h' is the next history
    s, a, _ = rollout_dataset(LinearTask("mountaincar", history=1), 2, 200, np.random.SeedSequence(0))
    assert s.shape[1] == 100 and a.shape[1] == 3 and 0 < s.max() <= 1


def test_gram_loss_equals_the_loss_on_the_data():
    h, a, h2, counts = linear.padded_data(LinearTask("loadunload", history=5), [0, 1], 2, 50)
    w = linear.orthogonal_init(2, h.shape[-1], 2, [0, 1])
    w_t = w + 0.1 * torch.randn_like(w)
    x = torch.cat([h @ w, a], -1)
    trans = torch.linalg.lstsq(x, h2 @ w_t).solution
    direct = 0.5 * ((x @ trans - h2 @ w_t) ** 2).sum((1, 2)) / counts
    torch.testing.assert_close(linear.zp_loss(linear.gram_blocks(h, a, h2), w, w_t, counts), direct)


def test_orthogonal_init_has_orthonormal_columns():
    w = linear.orthogonal_init(3, 20, 2, [0, 1, 2])
    torch.testing.assert_close(w.mT @ w, torch.eye(2).expand(3, 2, 2).double())


def test_online_target_aligns_the_encoder_columns_and_stop_gradient_does_not():
    h, a, h2, counts = linear.padded_data(LinearTask("loadunload", history=20), list(range(4)), 4, 100)
    g, w0 = linear.gram_blocks(h, a, h2), linear.orthogonal_init(4, h.shape[-1], 2, list(range(4)))
    final = {}
    for target in linear.TARGETS:
        rows = linear.train_target(g, counts, w0, target, steps=100, lr=1e-2, tau=0.005, log_every=50)
        final[target] = np.median([r["abs_cos"] for r in rows if r["step"] == 100])
        assert [r["step"] for r in rows if r["seed"] == 0] == [0, 50, 100]
    assert final["online"] > 30 * final["detached"] and final["online"] > 30 * final["ema"]


def test_unknown_linear_target_is_rejected():
    with pytest.raises(ValueError, match="not one of"):
        linear.train_target({}, torch.ones(1), torch.zeros(1, 3, 2), "frozen", 1, 0.1, 0.1, 1)


# ---------------------------------------------------------------- MDP agent
def test_distractors_append_scaled_noise():
    env = mdp.make_env("Pendulum-v1", 7, 2.0, seed=0)
    assert env.observation_space.shape == (10,)
    obs = np.stack([env.reset(seed=i)[0] for i in range(200)])
    assert abs(obs[:, 3:].std() - 2.0) < 0.15 and np.all(np.abs(obs[:, :2]) <= 1)


def test_only_the_online_target_sends_gradient_through_the_next_state():
    s2 = torch.randn(8, 5)
    grads = {}
    for variant in ("zp_online", "zp_detached", "zp_ema"):
        agent = Agent(5, 1, variant, AgentConfig(latent=3, hidden=8, model_hidden=8), seed=0)
        z = agent.encoder(torch.randn(8, 5)).detach()  # only the target side can reach the encoder
        loss = agent.aux_loss(z, torch.zeros(8, 1), s2)
        g = torch.autograd.grad(loss, list(agent.encoder.parameters()), allow_unused=True)
        grads[variant] = any(x is not None and x.abs().sum() > 0 for x in g)
    assert grads == {"zp_online": True, "zp_detached": False, "zp_ema": False}


def test_update_trains_only_each_networks_own_objective():
    agent = Agent(4, 1, "zp_ema", AgentConfig(latent=3, hidden=8, model_hidden=8, batch_size=8), seed=0)
    for _ in range(20):
        agent.buffer.add(np.random.randn(4), np.random.uniform(-1, 1, 1), 0.0, np.random.randn(4), False)
    before = {k: v.clone() for k, v in agent.state(with_buffer=False).items()}
    losses = agent.update(0)
    after = agent.state(with_buffer=False)
    assert all(math.isfinite(v) for v in losses.values())
    for net in ("encoder.", "model.", "critic.", "actor."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net)), net
    # EMA copies moved by tau towards the online nets
    k = "encoder_target.layers.0.weight"
    torch.testing.assert_close(after[k], before[k] + 0.005 * (after["encoder.layers.0.weight"] - before[k]))


def test_collapse_probes():
    z = torch.randn(64, 1) @ torch.randn(1, 6)           # rank 1: every latent dimension is one direction
    assert srank(z) == 1 and mean_abs_cos(z) == pytest.approx(1.0, abs=1e-5)
    assert srank(torch.randn(256, 6)) == 6 and mean_abs_cos(torch.randn(4096, 6)) < 0.05


def _mdp_ctx(tmp_path, cfg, seed=0, variant="zp_ema"):
    out = {"summary": tmp_path / "summary.parquet", "evals": tmp_path / "evals.parquet",
           "curve": tmp_path / "curve.csv"}
    w = {"sp_distractors": str(cfg["distractors"][0]), "sp_variant": variant, "seed": str(seed)}
    return StageContext(stage="self_predictive.mdp", params={"mdp": cfg}, param_keys={"mdp": "self_predictive.mdp"},
                        inputs={}, outputs=out, seed_value=seed, wildcards=w), out


def test_mdp_resumes_bit_identical(tmp_path, monkeypatch):
    cfg = copy.deepcopy(TINY["mdp"])
    cfg["train"] = {**cfg["train"], "total_steps": 400, "checkpoint_every": 200}
    seed_everything(0, 1)
    ctx, out = _mdp_ctx(tmp_path / "full", cfg)
    mdp.run(ctx)
    full = (out["curve"].read_text(), pq.read_table(out["evals"]).to_pylist())

    calls = {"n": 0}
    real = Agent.update

    def crash_late(self, step):
        calls["n"] += 1
        if calls["n"] > 100:  # step 300: after the checkpoint at the episode end at step 200
            raise KeyboardInterrupt
        return real(self, step)

    seed_everything(0, 1)
    ctx, out = _mdp_ctx(tmp_path / "resumed", cfg)
    monkeypatch.setattr(Agent, "update", crash_late)
    with pytest.raises(KeyboardInterrupt):
        mdp.run(ctx)
    assert (tmp_path / "resumed" / "summary.parquet.resume.safetensors").exists()
    monkeypatch.setattr(Agent, "update", real)
    seed_everything(123, 1)  # the resume file, not the fresh seeding, must decide the generators
    mdp.run(ctx)
    assert (out["curve"].read_text(), pq.read_table(out["evals"]).to_pylist()) == full
    assert not (tmp_path / "resumed" / "summary.parquet.resume.safetensors").exists()


def test_mdp_nan_loss_is_recorded_with_its_step(tmp_path, monkeypatch):
    cfg = copy.deepcopy(TINY["mdp"])
    real = Agent.update

    def nan_at_250(self, step):
        out = real(self, step)
        return {**out, "critic_loss": math.nan} if step == 250 else out

    monkeypatch.setattr(Agent, "update", nan_at_250)
    seed_everything(0, 1)
    ctx, out = _mdp_ctx(tmp_path, cfg)
    mdp.run(ctx)
    row = pq.read_table(out["summary"]).to_pylist()[0]
    assert row["status"] == "diverged" and row["failed_step"] == 250 and math.isnan(row["final_return"])


def test_mdp_rejects_a_distractor_count_not_in_params(tmp_path):
    ctx, _ = _mdp_ctx(tmp_path, TINY["mdp"])
    ctx.wildcards["sp_distractors"] = "999"
    with pytest.raises(ValueError, match="not in self_predictive.mdp.distractors"):
        mdp.run(ctx)


# ---------------------------------------------------------------- POMDP
def test_delayed_cue_chain_rewards_only_the_cued_choice():
    assert pomdp.episode_tokens(1, 3) == [1, 2, 2, 2, 3, 4]
    assert pomdp.episode_rewards(1, [0, 0, 0, 0, 1]) == [0, 0, 0, 0, 1.0]
    assert pomdp.episode_rewards(0, [0, 0, 1]) == [0, 0, -1.0]


def test_recurrent_q_learns_to_remember_the_cue():
    cfg = {**TINY["pomdp"], "corridor": 1, "hidden": 16, "batch_size": 16, "episodes": 300,
           "epsilon_episodes": 100, "eval_every": 300, "eval_episodes": 10}
    seed_everything(0, 1)
    learner = pomdp.Learner("zp_ema", cfg, seed=0)
    p = pomdp.train(learner, cfg, 0, None, None)
    assert p["curve"][-1]["success"] == 1.0  # a memoryless policy gets 0.5


def test_pomdp_resumes_bit_identical(tmp_path):
    cfg = {**TINY["pomdp"], "episodes": 30, "checkpoint_every": 10}

    def ctx_at(d):
        out = {"summary": d / "summary.parquet", "evals": d / "evals.parquet", "curve": d / "curve.csv"}
        return StageContext(stage="self_predictive.pomdp", params={"pomdp": cfg},
                            param_keys={"pomdp": "self_predictive.pomdp"}, inputs={}, outputs=out, seed_value=1,
                            wildcards={"sp_pomdp_variant": "op", "seed": "1"}), out

    seed_everything(1, 1)
    ctx, out = ctx_at(tmp_path / "a")
    pomdp.run(ctx)
    full = out["curve"].read_text()
    ctx, out = ctx_at(tmp_path / "b")
    seed_everything(1, 1)
    learner = pomdp.Learner("op", cfg, 1)
    # an interrupted run: 20 episodes done, the last checkpoint at episode 10
    pomdp.train(learner, {**cfg, "episodes": 20}, 1, ResumeState.for_output(ctx, "summary"), None)
    assert ResumeState.for_output(ctx, "summary").path.exists()
    seed_everything(77, 1)
    pomdp.run(ctx)
    assert out["curve"].read_text() == full


# ---------------------------------------------------------------- params and workflow
@pytest.mark.parametrize("dotted,value,key", [
    ("mdp.distractors", [-1], "self_predictive.mdp.distractors.0"),
    ("mdp.agent.latent", 1, "self_predictive.mdp.agent.latent"),
    ("mdp.agent.rank_atol", 0, "self_predictive.mdp.agent.rank_atol"),
    ("mdp.variants", ["zp_frozen"], "self_predictive.mdp.variants.0"),
    ("linear.targets", ["stale"], "self_predictive.linear.targets.0"),
    ("linear.latent", 3, "self_predictive.linear.latent"),
    ("pomdp.hidden", 0, "self_predictive.pomdp.hidden"),
])
def test_params_schema_rejects_bad_values_naming_the_key(dotted, value, key):
    params = load_params(ROOT / "params.yaml")
    node = params["self_predictive"]
    *path, last = dotted.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        validate(params)


def test_snakemake_plans_the_tiny_chain(tmp_path):
    import os
    import sys

    from tests.test_workflow import copy_project, sh

    copy_project(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    out = sh(["snakemake", "-n", "--cores", "1", "self_predictive_all", "--configfile", "params.yaml",
              "config/tiny.yaml"], tmp_path, env).stdout
    jobs = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2
                and line.split()[0].startswith("self_predictive_") and line.split()[1].isdigit())
    n_mdp = len(TINY["mdp"]["distractors"]) * len(TINY["mdp"]["variants"]) * len(TINY["mdp"]["seeds"])
    assert jobs == {"self_predictive_linear": "2", "self_predictive_mdp": str(n_mdp),
                    "self_predictive_pomdp": str(len(TINY["pomdp"]["variants"]) * len(TINY["pomdp"]["seeds"])),
                    "self_predictive_aggregate": "1", "self_predictive_all": "1"}
    assert "results/self_predictive/mdp/d4/zp_ema/seed0/summary.parquet" in out
