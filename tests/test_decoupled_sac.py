"""SAC under an action-rescaling wrapper: the wrapper, the unit-box entropy, the temperature targets and their
effect at a small scale, resuming a killed run, evaluation on shared start states, the dm_control adapter."""
import math

import gymnasium as gym
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from stages.common.artifacts import load_checkpoint, read_provenance, sidecar_path
from stages.common.params import load_params
from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.decoupled import sac_aggregate, sac_evaluate, sac_train
from stages.envs.control import ActionRescale, make_control_env
from stages.rl.sac import (
    SAC,
    Actor,
    SACConfig,
    Temperature,
    TemperatureConfig,
    entropy_range,
    evaluate,
    greedy_policy,
    target_entropy,
    train,
)
from tests.test_workflow import ROOT

TINY = load_params(ROOT / "params.yaml", ROOT / "config/tiny.yaml")["decoupled"]["sac"]
RESUME = "model.safetensors.resume.safetensors"   # ResumeState.for_output(ctx, "model")


class BoxEcho(gym.Env):
    """Records the action it receives; asymmetric, non-unit box."""
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([3.0, 10.0], np.float32))

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.last = action
        return np.zeros(1, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize("scale", [0.1, 0.25, 1.0, 4.0])
def test_action_rescale_maps_the_agent_box_onto_the_task_box_and_clips(scale):
    env = ActionRescale(BoxEcho(), scale)
    assert env.action_space.low.tolist() == pytest.approx([-scale] * 2)
    assert env.action_space.high.tolist() == pytest.approx([scale] * 2)
    for agent, task in [([-scale, -scale], [-1, 0]), ([scale, scale], [3, 10]), ([0, 0], [1, 5]),
                        ([scale / 2, -scale / 2], [2, 2.5]), ([3 * scale, -7 * scale], [3, 0])]:
        env.step(np.array(agent, np.float32))
        assert env.unwrapped.last.tolist() == pytest.approx(task, abs=1e-6)
    pend = make_control_env("Pendulum-v1", scale)
    assert pend.action(np.array([scale])).tolist() == pytest.approx([2.0])
    assert pend.action(np.array([-10 * scale])).tolist() == pytest.approx([-2.0])


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_action_rescale_refuses_non_positive_scales(bad):
    with pytest.raises(ValueError, match="positive"):
        ActionRescale(BoxEcho(), bad)


def constant_gaussian_actor(scale: float, d: int, sigma: float) -> Actor:
    """An actor whose policy is tanh(N(0, sigma^2 I)) scaled to [-scale, scale]^d whatever the state."""
    low, high = np.full(d, -scale), np.full(d, scale)
    actor = Actor(1, low, high, SACConfig(hidden=4, layers=1))
    last = actor.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        # log_std = MIN + (MAX - MIN) (tanh(b) + 1) / 2  ->  b for log sigma
        t = 2 * (math.log(sigma) + 5.0) / 7.0 - 1
        last.bias.copy_(torch.tensor([0.0] * d + [math.atanh(t)] * d))
    return actor


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0])
def test_unit_box_entropy_of_a_narrow_gaussian_and_its_shift_by_d_log_s(scale):
    d, sigma = 2, 0.05
    agent = SAC(1, np.full(d, -scale), np.full(d, scale), SACConfig(hidden=4, layers=1, buffer_size=1),
                TemperatureConfig(), seed=0)
    agent.actor = constant_gaussian_actor(scale, d, sigma)
    unit, scaled = agent.entropies(np.zeros((40_000, 1), np.float32))
    # tanh is the identity to O(sigma^2) near 0: the unit-box policy is ~N(0, sigma^2 I)
    gaussian = d * (0.5 * math.log(2 * math.pi * math.e) + math.log(sigma))
    assert unit == pytest.approx(gaussian, abs=0.03)
    assert scaled == pytest.approx(unit + d * math.log(scale), abs=1e-4)


def test_unit_box_log_prob_does_not_depend_on_the_scale():
    obs = torch.zeros(500, 1)
    logps = {}
    for scale in (0.1, 1.0, 4.0):
        actor = constant_gaussian_actor(scale, 3, 0.7)    # wide: tanh saturates, the Jacobian matters
        act, logp = actor.sample(obs, torch.Generator().manual_seed(0))
        assert act.abs().max() <= scale
        logps[scale] = actor.unit_box_log_prob(logp)
    torch.testing.assert_close(logps[0.1], logps[1.0])
    torch.testing.assert_close(logps[4.0], logps[1.0])


@pytest.mark.parametrize("scale,d", [(0.1, 1), (1.0, 1), (4.0, 3)])
def test_temperature_targets_and_static_value(scale, d):
    low, high = np.full(d, -scale), np.full(d, scale)
    h_max, h_min = d * math.log(2 * scale), d * math.log(1e-3)
    assert entropy_range(low, high, 1e-3) == pytest.approx((h_max, h_min))
    assert target_entropy(TemperatureConfig(kind="auto"), low, high) == -d
    assert target_entropy(TemperatureConfig(kind="decoupled", alpha=0.1), low, high) == pytest.approx(
        0.1 * h_max + 0.9 * h_min)
    assert math.isnan(target_entropy(TemperatureConfig(kind="fixed"), low, high))
    static = Temperature(TemperatureConfig(kind="static", tau=1.5), low, high, lr=1e-3)
    assert static.value().item() == pytest.approx(1.5 / (h_max - h_min), rel=1e-6)
    assert Temperature(TemperatureConfig(kind="fixed", tau=0.3), low, high, lr=1e-3).value().item() == \
        pytest.approx(0.3)


def test_h_min_guard_when_the_box_is_tinier_than_min_width():
    h_max, h_min = entropy_range(np.array([-1e-4]), np.array([1e-4]), 1e-3)
    assert h_min == pytest.approx(h_max - 3)


@pytest.mark.parametrize("entropy_offset,direction", [(-0.5, 1), (0.5, -1)])
def test_learned_temperature_rises_below_its_target_and_falls_above(entropy_offset, direction):
    temp = Temperature(TemperatureConfig(kind="auto", init=1.0), np.full(2, -1.0), np.full(2, 1.0), lr=0.01)
    entropy = temp.target + entropy_offset
    before = temp.value().item()
    for _ in range(5):
        temp.update(torch.full((8,), -entropy))
    assert direction * (temp.value().item() - before) > 0
    with pytest.raises(ValueError, match="not one of"):
        TemperatureConfig.from_dict({"kind": "adaptive"})


def short_run(kind: str, scale: float) -> SAC:
    env = make_control_env("Pendulum-v1", scale, max_episode_steps=50)
    agent = SAC(3, env.action_space.low, env.action_space.high,
                SACConfig(hidden=16, batch_size=32, learning_starts=50, buffer_size=1000, lr_temperature=2e-3),
                TemperatureConfig(kind=kind, init=1.0), seed=0)
    train(env, agent, 200, seed=0)                  # 150 updates: Adam moves log tau by up to ~0.3
    return agent


def test_at_scale_0_1_the_minus_d_target_raises_the_temperature_and_the_decoupled_one_lowers_it():
    auto, decoupled = short_run("auto", 0.1), short_run("decoupled", 0.1)
    # max entropy in [-0.1, 0.1] is log 0.2 < -1: the -d target cannot be met, tau grows every update
    assert auto.temperature.value().item() > 1.2
    # its target (0.1 log 0.2 + 0.9 log 1e-3 = -6.4) is below the policy's entropy: tau falls
    assert decoupled.temperature.value().item() < 0.85


def stage_ctx(stage: str, run_dir, outputs: dict, inputs=None, seed: int = 0, wildcards=None,
              **aliases) -> StageContext:
    params = {alias: _get(dotted) for alias, dotted in aliases.items()}
    return StageContext(stage=stage, params=params, param_keys=aliases, inputs=inputs or {},
                        outputs={k: run_dir / v for k, v in outputs.items()}, seed_value=seed,
                        wildcards=wildcards or {})


def job(scale: str, temperature: str = "auto", seed: int = 0) -> dict:
    """The wildcards Snakemake gives a pendulum run (strings)."""
    return {"env": "pendulum", "scale": scale, "temperature": temperature, "seed": str(seed)}


def _get(dotted: str):
    node = {"decoupled": {"sac": TINY}}
    for part in dotted.split("."):
        node = node[part]
    return node


def train_ctx(run_dir, scale="0.25", temperature="auto", seed=0, total_steps=None) -> StageContext:
    ctx = stage_ctx("decoupled.sac_train", run_dir,
                     {"model": "model.safetensors", "curve": "curve.csv"}, seed=seed,
                     wildcards=job(scale, temperature, seed),
                     env="decoupled.sac.envs.pendulum", temperature=f"decoupled.sac.temperatures.{temperature}",
                     agent="decoupled.sac.agent", train="decoupled.sac.train")
    if total_steps is not None:
        ctx.params["env"] = {**ctx.params["env"], "total_steps": total_steps}
    return ctx


class SimulatedKill(Exception):
    pass


def test_a_killed_run_resumes_and_ends_identical_to_an_uninterrupted_one(tmp_path, monkeypatch, caplog):
    whole = tmp_path / "a"
    sac_train.run(train_ctx(whole))

    killed = tmp_path / "b"
    resume = killed / RESUME
    original, saves = sac_train.save_resume, []

    def save_then_die(state, agent, progress):
        original(state, agent, progress)
        saves.append(progress.step)
        if len(saves) == 1:
            raise SimulatedKill

    monkeypatch.setattr(sac_train, "save_resume", save_then_die)
    with pytest.raises(SimulatedKill):
        sac_train.run(train_ctx(killed))
    assert resume.exists() and not (killed / "model.safetensors").exists()
    assert read_provenance(resume)["progress"]["step"] == saves[0]
    monkeypatch.setattr(sac_train, "save_resume", original)
    with caplog.at_level("INFO"):
        sac_train.run(train_ctx(killed))
    assert f"resuming from {resume}" in caplog.text and f"resuming at step {saves[0]}" in caplog.text
    assert 0 < saves[0] < TINY["envs"]["pendulum"]["total_steps"]
    assert not resume.exists() and not sidecar_path(resume).exists()

    a, b = load_checkpoint(whole / "model.safetensors"), load_checkpoint(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert (whole / "curve.csv").read_text() == (killed / "curve.csv").read_text()


def test_a_resume_file_from_other_params_is_ignored(tmp_path, caplog):
    run_dir = tmp_path / "a"
    sac_train.run(train_ctx(run_dir, "1", seed=1, total_steps=200))
    other = tmp_path / "b"
    ctx = train_ctx(other, "1", seed=1, total_steps=200)
    agent = sac_train.build(ctx.params["env"], ctx.params["agent"], ctx.params["temperature"], 1.0, 1)[1]
    stale = ResumeState(other / RESUME, {**ctx.provenance(), "params_hash": "0" * 16})
    sac_train.save_resume(stale, agent, sac_train.Progress(step=150, episode=3))
    with caplog.at_level("WARNING"):
        sac_train.run(ctx)
    assert "starting afresh" in caplog.text
    assert (run_dir / "curve.csv").read_text() == (other / "curve.csv").read_text()


def test_tiny_sweep_evaluates_every_run_on_the_same_start_states_and_aggregates(tmp_path):
    returns, curves = [], []
    for scale in ("0.1", "1"):
        for temp in ("auto", "decoupled"):
            run_dir = tmp_path / f"run_{scale}_{temp}"   # identity travels as wildcards, not in folder names
            sac_train.run(train_ctx(run_dir, scale, temp, total_steps=200))
            sac_evaluate.run(stage_ctx(
                "decoupled.sac_evaluate", run_dir, {"returns": "returns.parquet", "metrics": "metrics.json"},
                inputs={"model": run_dir / "model.safetensors"}, wildcards=job(scale, temp),
                env="decoupled.sac.envs.pendulum",
                agent="decoupled.sac.agent", evaluate="decoupled.sac.evaluate"))
            returns.append(run_dir / "returns.parquet")
            curves.append(run_dir / "curve.csv")
    tables = [pq.read_table(p).to_pylist() for p in returns]
    first = TINY["evaluate"]["first_reset_seed"]
    expected = list(range(first, first + TINY["evaluate"]["episodes"]))
    assert all([r["reset_seed"] for r in t] == expected for t in tables)
    assert len({tuple(r["return"] for r in t) for t in tables}) > 1, "different agents, different returns"

    sac_aggregate.run(stage_ctx(
        "decoupled.sac_aggregate", tmp_path, {"table": "summary.parquet", "plot": "plot.png",
                                              "metrics": "metrics.json", "claims": "claims.parquet"},
        inputs={"returns": returns, "curves": curves}, envs="decoupled.sac.envs",
        temperatures="decoupled.sac.temperatures", aggregate="decoupled.sac.aggregate"))
    summary = pq.read_table(tmp_path / "summary.parquet").to_pylist()
    assert {(r["temperature"], r["scale"]) for r in summary} == {
        (t, s) for t in ("auto", "decoupled") for s in (0.1, 1.0)}
    small = {r["temperature"]: r for r in summary if r["scale"] == 0.1}
    assert small["auto"]["final_temperature"] > small["decoupled"]["final_temperature"]
    assert small["auto"]["target_entropy_unit"] == pytest.approx(-1 - math.log(0.1))
    # the decoupled target in unit-box terms moves with the scale: H_min is absolute (d log 1e-3)
    assert small["decoupled"]["target_entropy_unit"] == pytest.approx(0.1 * math.log(0.2) + 0.9 * math.log(1e-3)
                                                                       - math.log(0.1))
    # tau rises at s = 0.1 under -d (entropy below its target: negative gap) and falls under decoupled
    assert small["auto"]["end_entropy_gap"] < 0 < small["auto"]["end_log_temperature_slope"]
    assert small["decoupled"]["end_entropy_gap"] > 0 > small["decoupled"]["end_log_temperature_slope"]
    curve = pd.read_csv(curves[0])
    np.testing.assert_allclose(curve["entropy_gap"], curve["entropy_agent"] - curve["target_entropy"], atol=1e-5)
    np.testing.assert_allclose(np.exp(curve["log_temperature"]), curve["temperature"], rtol=1e-5)
    import json
    verdicts = json.loads((tmp_path / "metrics.json").read_text())["envs"]["pendulum"]["verdicts"]
    claims = pq.read_table(tmp_path / "claims.parquet").to_pylist()
    # one seed per cell: every claim is a row, none is shown, and metrics.json says the same
    assert len(claims) == 13 and all(c["n"] == 1 and not c["holds"] for c in claims)
    assert all(c["detail"].startswith("not shown") for c in claims)
    assert verdicts["n_seeds"] == 1 and not verdicts["mechanism_shown"]
    assert verdicts["candidate_temperature_lower_at_small_scale"] is False
    assert (tmp_path / "plot.png").stat().st_size > 0


def synthetic_curve(log_tau_end: float, entropy_unit_end: float, gap_end: float, settled: bool) -> pd.DataFrame:
    """A 6000-step curve, one episode per 200 steps: log tau moves linearly from 0 to log_tau_end and stays
    there over the last half when `settled`; the entropy gap likewise goes to gap_end."""
    step = np.arange(200, 6001, 200)
    ramp = np.minimum(step / 3000, 1.0) if settled else step / 6000
    return pd.DataFrame({"step": step, "temperature": np.exp(log_tau_end * ramp), "log_temperature": log_tau_end * ramp,
                         "entropy_unit": entropy_unit_end * ramp, "entropy_gap": 3.0 + (gap_end - 3.0) * ramp})


def synthetic_sweep(auto_small_return=-1300.0, seeds=(0, 1, 2), decoupled_settles=True):
    """Returns and curves of a 2-scale sweep that behaves like the default-scale run: at s = 0.1 the -d
    target's temperature explodes, its policy is uniform and it fails; the decoupled one does not, and its
    temperature settles (log tau flat, entropy at its target) or keeps falling."""
    rows, curves = [], {}
    rng = np.random.default_rng(0)
    for temp in ("auto", "decoupled"):
        for scale in (0.1, 1.0):
            for seed in seeds:
                bad = temp == "auto" and scale == 0.1
                for ep in range(4):
                    ret = (auto_small_return if bad else -130.0) + rng.normal(0, 5) + 10 * ep
                    rows.append({"env": "pendulum", "temperature": temp, "scale": scale, "seed": seed,
                                 "episode": ep, "return": ret, "action_dim": 1})
                if bad:
                    curve = synthetic_curve(math.log(1e3 * (1 + seed)), 0.68 - 0.01 * seed, -1.6, settled=False)
                elif temp == "decoupled":
                    curve = synthetic_curve(-2.5 - 0.1 * seed, -0.2 - 0.05 * seed,
                                            0.05 * (seed - 1) if decoupled_settles else 4.0, decoupled_settles)
                else:
                    curve = synthetic_curve(-1.6, 0.0, 0.9, settled=False)
                curves["pendulum", scale, temp, seed] = curve
    return pd.DataFrame(rows), curves


CLAIM_CFG = TINY["aggregate"] | {"tail_episodes": 1}
PENDULUM = {"fail_below": -400.0, "same_return_margin": 50.0}


def test_end_of_training_reads_the_gap_and_the_log_tau_slope_of_the_last_fraction_only():
    falling = synthetic_curve(-2.4, -0.3, 4.0, settled=False)       # log tau -0.4 per 1000 steps throughout
    gap, slope = sac_aggregate.end_of_training(falling, 0.25)
    assert slope == pytest.approx(-0.4) and not sac_aggregate.converged(gap, slope, CLAIM_CFG)
    assert gap == pytest.approx(np.mean(falling["entropy_gap"][falling["step"] >= 4500]))
    settled = synthetic_curve(-2.4, -0.3, 0.1, settled=True)        # fell over the first half, flat after
    gap, slope = sac_aggregate.end_of_training(settled, 0.25)
    assert (gap, slope) == (pytest.approx(0.1), pytest.approx(0.0, abs=1e-9))
    assert sac_aggregate.converged(gap, slope, CLAIM_CFG)
    assert sac_aggregate.end_of_training(settled, 1.0)[1] < -0.3     # the whole run is not flat
    assert not sac_aggregate.converged(0.1, math.nan, CLAIM_CFG)       # one episode: no slope, not converged


def test_sweep_claims_use_the_seed_as_unit_and_pair_the_targets():
    returns, curves = synthetic_sweep()
    claims = sac_aggregate.claim_rows("pendulum", returns, curves, CLAIM_CFG, TINY["temperatures"], PENDULUM,
                                      uniform_entropy=math.log(2))
    assert all(c["n"] == 3 for c in claims.values())
    for name in ("baseline_temperature_rises_at_small_scale", "candidate_temperature_lower_at_small_scale",
                 "baseline_entropy_near_uniform_at_small_scale", "candidate_entropy_below_uniform_at_small_scale",
                 "baseline_fails_at_small_scale", "candidate_returns_more_at_s0.1",
                 "candidate_same_return_across_scales", "candidate_returns_vary_less_across_scales",
                 "candidate_fewer_failures", "candidate_entropy_reaches_target", "candidate_temperature_settles"):
        assert claims[name]["holds"], name
    assert not claims["candidate_returns_more_at_s1"]["holds"]      # same return at s = 1
    assert not claims["baseline_same_return_across_scales"]["holds"]
    # the spread is per seed: max - min over scales of the seed's mean return, then averaged over seeds
    per_seed = returns.groupby(["temperature", "scale", "seed"])["return"].mean()
    spread = [abs(per_seed["decoupled", 1.0, s] - per_seed["decoupled", 0.1, s]) for s in (0, 1, 2)]
    assert claims["candidate_same_return_across_scales"]["effect"] == pytest.approx(np.mean(spread))
    assert claims["candidate_same_return_across_scales"]["ci_high"] < PENDULUM["same_return_margin"]
    # the effect of "returns more" is the mean over seeds of the per-seed mean difference
    per_seed = returns.groupby(["temperature", "scale", "seed"])["return"].mean()
    want = np.mean([per_seed["decoupled", 0.1, s] - per_seed["auto", 0.1, s] for s in (0, 1, 2)])
    assert claims["candidate_returns_more_at_s0.1"]["effect"] == pytest.approx(want)
    # a -d target that does not fail at s = 0.1 breaks the failure and spread claims
    returns, curves = synthetic_sweep(auto_small_return=-135.0)
    claims = sac_aggregate.claim_rows("pendulum", returns, curves, CLAIM_CFG, TINY["temperatures"], PENDULUM,
                                      uniform_entropy=math.log(2))
    assert not claims["baseline_fails_at_small_scale"]["holds"]
    assert not claims["candidate_returns_vary_less_across_scales"]["holds"]
    assert claims["baseline_same_return_across_scales"]["holds"]
    # a decoupled temperature still falling at Adam's rate, far above its target, has not converged
    returns, curves = synthetic_sweep(decoupled_settles=False)
    claims = sac_aggregate.claim_rows("pendulum", returns, curves, CLAIM_CFG, TINY["temperatures"], PENDULUM,
                                      uniform_entropy=math.log(2))
    assert not claims["candidate_entropy_reaches_target"]["holds"]
    assert not claims["candidate_temperature_settles"]["holds"]
    assert claims["candidate_temperature_settles"]["effect"] == pytest.approx(
        np.mean([(2.5 + 0.1 * s) / 6 for s in (0, 1, 2)]))


class QuadraticBandit(gym.Env):
    """One-step task with a known optimum: observe x ~ U[-1, 1], act a in [-1, 1], reward -(a - x/2)^2,
    so the best action is x / 2 and the best return 0."""
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1)
        return np.array([self.x], np.float32), {}

    def step(self, action):
        return np.array([self.x], np.float32), -float((action[0] - self.x / 2) ** 2), True, False, {}


def test_sac_learns_the_optimal_action_of_a_quadratic_bandit():
    torch.set_num_threads(1)
    env = QuadraticBandit()
    agent = SAC(1, env.action_space.low, env.action_space.high,
                SACConfig(hidden=32, batch_size=64, learning_starts=100, buffer_size=2000, lr_pi=3e-3, lr_q=3e-3),
                TemperatureConfig(kind="fixed", tau=1e-3), seed=0)
    untrained = evaluate(env, greedy_policy(agent.actor), list(range(50)))
    train(env, agent, 500, seed=0)               # 400 updates
    xs = np.linspace(-1, 1, 9, dtype=np.float32)[:, None]
    actions = agent.actor.mode(torch.from_numpy(xs)).detach().numpy()
    np.testing.assert_allclose(actions, xs / 2, atol=0.1)
    trained = evaluate(env, greedy_policy(agent.actor), list(range(50)))
    assert np.mean([e["return"] for e in trained]) > -0.005 > np.mean([e["return"] for e in untrained])


def test_run_identity_comes_from_the_wildcards_and_a_bad_scale_names_the_problem():
    assert sac_train.run_of(job("0.25", "decoupled", 3)) == {
        "env": "pendulum", "scale": 0.25, "temperature": "decoupled", "seed": 3}
    with pytest.raises(ValueError, match="not a number"):
        sac_train.run_of(job("big"))
    with pytest.raises(ValueError, match="must be positive"):
        sac_train.run_of(job("0"))


def test_dm_control_adapter_steps_with_flat_observations_and_sac_runs_on_it():
    env = make_control_env("dm_control:cartpole-swingup", 0.25, max_episode_steps=30)
    assert env.observation_space.shape == (5,) and env.action_space.shape == (1,)
    assert env.action_space.high.tolist() == [0.25]
    o1, _ = env.reset(seed=7)
    o2, _ = env.reset(seed=7)
    np.testing.assert_array_equal(o1, o2)
    assert o1.shape == (5,) and o1.dtype == np.float32
    obs, rew, terminated, truncated, _ = env.step(np.array([0.25], np.float32))
    assert obs.shape == (5,) and isinstance(rew, float) and not terminated and not truncated
    agent = SAC(5, env.action_space.low, env.action_space.high,
                SACConfig(hidden=8, batch_size=8, learning_starts=20, buffer_size=100),
                TemperatureConfig(kind="decoupled"), seed=0)
    progress = train(env, agent, 60, seed=0)
    assert [r["length"] for r in progress.rows] == [30, 30] and agent.updates == 41
    results = evaluate(env, greedy_policy(agent.actor), [1, 2])
    assert [r["length"] for r in results] == [30, 30]
    with pytest.raises(ValueError, match="unknown dm_control task"):
        make_control_env("dm_control:cartpole-juggle")


PAPER = load_params(ROOT / "params.yaml", ROOT / "config/paper.yaml")["decoupled"]["sac"]


@pytest.mark.parametrize("name", PAPER["run_envs"])
def test_every_paper_profile_task_trains_a_few_steps(name):
    env_cfg = {**PAPER["envs"][name], "total_steps": 40, "learning_starts": 10, "max_episode_steps": 20}
    agent_cfg = {**PAPER["agent"], "hidden": 8, "batch_size": 8, "buffer_size": 100}
    env, agent = sac_train.build(env_cfg, agent_cfg, PAPER["temperatures"]["decoupled"], 0.25, seed=0)
    progress = train(env, agent, env_cfg["total_steps"], seed=0)
    assert len(progress.rows) == 2 and agent.updates == 31
    assert all(math.isfinite(r["entropy_unit"]) for r in progress.rows)


def test_snakemake_plans_the_tiny_sac_sweep(tmp_path, env):
    from tests.test_workflow import copy_project, sh

    copy_project(tmp_path)
    out = sh(["snakemake", "-n", "--cores", "1", "decoupled_all", "--configfile", "params.yaml",
              "config/tiny.yaml"], tmp_path, dict(env, PYTHONPATH=str(tmp_path))).stdout
    jobs = dict(line.split()[:2] for line in out.splitlines()
                if line.split()[:1] and line.split()[0].startswith("decoupled_sac"))
    runs = len(TINY["scales"]) * len(TINY["run_temperatures"]) * len(TINY["seeds"])
    assert jobs == {"decoupled_sac_train": str(runs), "decoupled_sac_evaluate": str(runs),
                    "decoupled_sac_aggregate": "1"}
    assert "results/decoupled/sac/pendulum/s0.1/auto/seed0/curve.csv" in out
