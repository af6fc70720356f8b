"""Koopman autoencoder: discretisation, ground-truth integrator, rollout modes, and the stage chain."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from stages.common.artifacts import read_provenance
from stages.common.code import ROOT
from stages.common.params import deep_merge, select
from stages.common.stage import main as run_stage
from stages.koopman import systems
from stages.koopman.evaluate import ERRORS_SCHEMA
from stages.koopman.model import KoopmanAE, bilinear, rollout


def test_bilinear_rotation_generator_gives_exact_rotation():
    w, dt = 2.0, 0.1
    K_c = torch.tensor([[0.0, w], [-w, 0.0]], dtype=torch.float64)
    K = bilinear(K_c, dt)
    torch.testing.assert_close(K @ K.T, torch.eye(2, dtype=torch.float64))
    assert torch.allclose(torch.linalg.eigvals(K).abs(), torch.ones(2, dtype=torch.float64))
    # The Cayley transform of a rotation generator rotates by 2 atan(w dt / 2), not w dt.
    angle = 2 * math.atan(w * dt / 2)
    expected = torch.tensor([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]],
                            dtype=torch.float64)
    torch.testing.assert_close(K, expected)


def test_bilinear_keeps_decay_stable():
    K = bilinear(torch.tensor([[-3.0]], dtype=torch.float64), 0.5)
    assert K.item() == pytest.approx((1 - 0.75) / (1 + 0.75))


def test_rk4_undamped_duffing_conserves_energy():
    rng = np.random.default_rng(0)
    s0 = rng.uniform(-1.5, 1.5, size=(16, 2))

    def drift(substeps: int) -> float:
        traj = systems.rk4(systems.duffing(0.0), s0, dt=0.05, steps=400, substeps=substeps)
        energy = systems.energy("duffing", traj)
        return float(np.abs(energy - energy[:, :1]).max())

    assert drift(1) < 1e-4
    assert drift(2) < drift(1) / 10  # fourth order: halving the step cuts the error ~16x


def test_rk4_damped_duffing_loses_energy_and_settles_in_a_well():
    s0 = np.array([[0.5, 0.0], [-1.7, 0.3]])
    traj = systems.rk4(systems.duffing(0.1), s0, dt=0.05, steps=2000, substeps=2)
    assert np.all(np.diff(systems.energy("duffing", traj), axis=1) <= 1e-12)
    np.testing.assert_allclose(np.abs(traj[:, -1, 0]), 1.0, atol=0.05)


def reference_rollouts(model: KoopmanAE, x0: torch.Tensor, horizon: int):
    """Written from the formulas: none = psi(K^s phi(x0)); every = z <- phi(psi(K z))."""
    K = model.koopman()
    z0 = model.encode(x0)
    none = torch.stack([model.decode(z0 @ torch.linalg.matrix_power(K, s).T)
                        for s in range(1, horizon + 1)], dim=1)
    every, z = [], z0
    for _ in range(horizon):
        x_hat = model.decode(z @ K.T)
        every.append(x_hat)
        z = model.encode(x_hat)
    return none, torch.stack(every, dim=1)


def test_periodic_extremes_match_no_and_every_step_reencoding():
    torch.manual_seed(0)
    model = KoopmanAE(2, latent_dim=6, hidden=16, depth=2, activation="tanh", dt=0.05).double()
    with torch.no_grad():
        model.K_c.copy_(torch.randn(6, 6, dtype=torch.float64) * 0.5)
        x0 = torch.randn(5, 2, dtype=torch.float64)
        none, every = reference_rollouts(model, x0, horizon=12)
    torch.testing.assert_close(rollout(model, x0, 12, period=1), every)
    torch.testing.assert_close(rollout(model, x0, 12, period=13), none)
    torch.testing.assert_close(rollout(model, x0, 12, period=0), none)
    # A period in between really changes the rollout (after its first reencoding, not before).
    mid = rollout(model, x0, 12, period=4)
    torch.testing.assert_close(mid[:, :4], none[:, :4])
    assert not torch.allclose(mid[:, 4:], none[:, 4:])


def tiny_params() -> dict:
    """params.yaml with the tiny overlay, koopman section only (other methods' sections don't matter)."""
    merged: dict = {}
    for path in (ROOT / "params.yaml", ROOT / "config" / "tiny.yaml"):
        merged = deep_merge(merged, {"koopman": yaml.safe_load(path.read_text())["koopman"]})
    return merged


def stage(module: str, keys: dict, inputs: dict, outputs: dict, seed: int | None = None,
          wildcards: dict | None = None) -> None:
    # The same call Snakemake makes: resolved values travel as --params-json.
    args = [f"koopman.{module}", "--keys", *(f"{a}={d}" for a, d in keys.items()),
            "--params-json", json.dumps(select(tiny_params(), keys.values()))]
    args += ["--in", *(f"{n}={p}" for n, p in inputs.items())] if inputs else []
    args += ["--out", *(f"{n}={p}" for n, p in outputs.items())]
    args += ["--seed", str(seed)] if seed is not None else []
    args += ["--wildcards", *(f"{k}={v}" for k, v in wildcards.items())] if wildcards else []
    assert run_stage(args) == 0


def test_tiny_chain_writes_documented_outputs(tmp_path):
    sys_key = {"system": "koopman.systems.duffing"}
    data = tmp_path / "data" / "trajectories.parquet"
    run = tmp_path / "run"   # identity travels as wildcards, not in the folder name
    job = {"system": "duffing", "seed": "3"}
    stage("simulate", sys_key, {}, {"trajectories": data})
    for attempt in ("a", "b"):  # training twice must give the same bytes
        stage("train", {**sys_key, "model": "koopman.model", "train": "koopman.train"},
              {"trajectories": data},
              {"model": run / f"model_{attempt}.safetensors", "curve": run / f"curve_{attempt}.csv"},
              seed=0, wildcards=job)
    assert (run / "model_a.safetensors").read_bytes() == (run / "model_b.safetensors").read_bytes()
    assert (run / "curve_a.csv").read_text().splitlines()[0] == "step,loss,recon,align,pred"

    stage("evaluate", {**sys_key, "model": "koopman.model", "evaluate": "koopman.evaluate"},
          {"trajectories": data, "model": run / "model_a.safetensors"},
          {"errors": run / "rollout_error.parquet", "metrics": run / "metrics.json"}, seed=0, wildcards=job)
    assert read_provenance(run / "rollout_error.parquet")["wildcards"] == job
    errors = pq.read_table(run / "rollout_error.parquet")
    assert errors.schema.remove_metadata().equals(ERRORS_SCHEMA)
    df = errors.to_pandas()
    assert set(df["split"]) == {"val", "test"}
    assert set(df["mode"]) == {"none", "every", "periodic"}
    assert (df.loc[df["mode"] != "periodic", "k"] == 0).all()
    horizon = int(df["step"].max())
    assert df.groupby(["split", "mode", "k"])["step"].apply(lambda s: sorted(s) == list(
        range(1, horizon + 1))).all()

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["chosen_k"] in set(df.loc[df["mode"] == "periodic", "k"])
    for mode in ("none", "every", "periodic"):
        assert {"k", "mse_report", "mse_final", "mse_mean", "basin_acc"} <= set(metrics["test"][mode])
        assert 0.0 <= metrics["test"][mode]["basin_acc"] <= 1.0

    stage("aggregate", {"evaluate": "koopman.evaluate"},
          {"errors": run / "rollout_error.parquet", "metrics": run / "metrics.json"},
          {"table": tmp_path / "summary.parquet", "plot": tmp_path / "plot.png",
           "metrics": tmp_path / "summary.json"})
    summary = pq.read_table(tmp_path / "summary.parquet").to_pandas()
    assert list(summary["mode"]) == ["none", "every", "periodic"]
    assert set(summary["system"]) == {"duffing"} and set(summary["seed"]) == {3}
    assert "periodic_beats_both" in json.loads((tmp_path / "summary.json").read_text())["duffing"]
