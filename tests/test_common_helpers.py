"""The shared stage helpers: resume state, the curve writer, the torch-only-when-used seeding."""
import json
import sys

import numpy as np
import pytest
import torch

from stages.common import artifacts
from stages.common.resume import ResumeState, load_optimizer_tensors, optimizer_tensors, rng_state, set_rng_state
from stages.common.stage import StageContext, uses_torch


def ctx_for(tmp_path, params=None, seed=0, inputs=None):
    return StageContext(stage="koopman.train", params=params or {"train": {"lr": 0.1}},
                        param_keys={"train": "koopman.train"}, inputs=inputs or {},
                        outputs={"model": tmp_path / "model.safetensors", "curve": tmp_path / "curve.csv"},
                        seed_value=seed, wildcards={"system": "duffing", "seed": str(seed)})


def test_resume_round_trip_and_only_for_the_same_run(tmp_path):
    state = ResumeState.for_output(ctx_for(tmp_path), "model")
    assert state.path.name == "model.safetensors.resume.safetensors" and state.load() is None
    state.save({"w": torch.arange(4.0)}, {"step": 7, "rows": [{"step": 5, "loss": 0.5}]})
    tensors, progress = ResumeState.for_output(ctx_for(tmp_path), "model").load()
    assert torch.equal(tensors["w"], torch.arange(4.0)) and progress == {"step": 7, "rows": [{"step": 5, "loss": 0.5}]}
    # other params, another seed, or other input bytes: start afresh
    assert ResumeState.for_output(ctx_for(tmp_path, params={"train": {"lr": 0.2}}), "model").load() is None
    assert ResumeState.for_output(ctx_for(tmp_path, seed=1), "model").load() is None
    data = tmp_path / "data.parquet"
    data.write_bytes(b"x")
    assert ResumeState.for_output(ctx_for(tmp_path, inputs={"data": data}), "model").load() is None
    state.clear()
    assert not state.path.exists() and not artifacts.sidecar_path(state.path).exists()


def test_corrupt_resume_file_starts_afresh_and_bad_progress_writes_nothing(tmp_path):
    state = ResumeState.for_output(ctx_for(tmp_path), "model")
    state.save({"w": torch.ones(3)}, {"step": 1})
    state.path.write_bytes(state.path.read_bytes()[:-4] + b"oops")
    assert state.load() is None
    fresh = ResumeState.for_output(ctx_for(tmp_path / "other"), "model")
    with pytest.raises(TypeError):
        fresh.save({"w": torch.ones(1)}, {"step": object()})
    assert not fresh.path.exists()


def test_rng_state_round_trip():
    saved = rng_state()
    json.dumps(saved)
    first = (np.random.rand(), torch.rand(1).item())
    set_rng_state(saved)
    assert (np.random.rand(), torch.rand(1).item()) == first


def test_curve_writer_formats_and_checks_columns(tmp_path):
    ctx = ctx_for(tmp_path)
    ctx.write_curve("curve", [{"step": np.int64(1), "loss": 0.123456789, "ok": True, "t": torch.tensor(2.7)},
                              {"step": 2, "loss": float("nan"), "ok": False, "t": 1.0}])
    assert (tmp_path / "curve.csv").read_text() == "step,loss,ok,t\n1,0.1234568,1,2.7\n2,nan,0,1\n"
    with pytest.raises(artifacts.ArtifactError, match="lacks column"):
        ctx.write_curve("curve", [{"step": 1, "loss": 0.1}, {"step": 2}])


def test_stages_without_torch_do_not_import_it(tmp_path):
    import subprocess

    code = ("import sys; from stages.common.stage import main; "
            f"main(['common.noop', '--params-json', '{{}}', '--out', 'metrics={tmp_path / 'm.json'}']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert not uses_torch("common.noop") and uses_torch("koopman.train")


def test_optimizer_state_round_trips_through_flat_tensors_and_ignores_other_keys():
    def make():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        return net, torch.optim.Adam(net.parameters(), lr=0.1)

    def step(net, opt, n):
        for i in range(n):
            opt.zero_grad()
            net(torch.full((2, 3), float(i))).pow(2).sum().backward()
            opt.step()

    net, opt = make()
    step(net, opt, 3)
    flat = {**optimizer_tensors(opt, "opt"), **{f"0.{k}": v for k, v in net.state_dict().items()}}
    assert set(flat) >= {"opt.0.exp_avg", "opt.3.exp_avg_sq", "opt.1.step"}
    net2, opt2 = make()
    net2.load_state_dict(net.state_dict())
    load_optimizer_tensors(opt2, flat, "opt")  # the module's own "0.weight" keys are not read
    step(net, opt, 2)
    step(net2, opt2, 2)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))
