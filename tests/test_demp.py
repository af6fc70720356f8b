"""DemP: dead-unit criterion, real structural pruning (outputs and optimizer state preserved), the
one-cycle schedule, asymmetric noise, the CIFAR-10 loaders on generated samples, and the tiny chain."""
import json
import math
import pickle
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from stages.demp import datasets, demon, nets
from stages.demp.evaluate import latency_ms

MLP = dict(arch="seq", conv=[], pool_after=[], fc=[12, 10], bn=False)
MLP_BN = dict(MLP, bn=True)
CONV_BN = dict(arch="seq", conv=[6, 8, 5], pool_after=[0], fc=[7], bn=True)
RESNET = dict(arch="resnet18", conv=[6, 6, 6, 8], pool_after=[], fc=[], bn=True)
SHAPE = {"seq_mlp": (1, 6, 6), "conv": (3, 8, 8)}
DEAD = {0: [1, 4], 1: [0, 2, 3]}   # unit layer -> units to kill


def kill(model, shape, dead=DEAD):
    """Make units dead for every input: BN shift very negative with zero scale, or zero incoming
    weights and a negative bias."""
    with torch.no_grad():
        for layer, units in dead.items():
            bn = nets.unit_bn(model, layer)
            if bn is not None:
                bn.weight[units] = 0.0
                bn.bias[units] = -1.0
            else:
                nets.unit_weight(model, layer)[units] = 0.0
                model.units[layer].lin.bias[units] = -1.0
        # settle the BN running statistics on the new activations, so that in eval mode no other
        # unit is dead by accident
        model.train()
        for _ in range(30):
            model(torch.randn(64, *shape))


def trained(cfg, shape, steps=3):
    """A network after a few Adam steps in train mode (BN statistics and Adam moments populated)."""
    torch.manual_seed(0)
    model = nets.build(cfg, shape, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(16, *shape)), torch.randint(4, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("cfg, shape", [(MLP, SHAPE["seq_mlp"]), (CONV_BN, SHAPE["conv"])])
def test_dead_criterion_finds_exactly_the_constructed_dead_units(cfg, shape):
    model, _ = trained(cfg, shape)
    kill(model, shape)
    sums = demon.activation_sums(model, torch.randn(64, *shape))
    dead = demon.dead_units(sums, eps=0.0)
    for layer, mask in enumerate(dead):
        assert torch.nonzero(mask).flatten().tolist() == DEAD.get(layer, [])
    assert all(a.acc is None for a in nets.acts(model)), "probe taps must be switched off again"


@pytest.mark.parametrize("cfg, shape", [(MLP, SHAPE["seq_mlp"]), (MLP_BN, SHAPE["seq_mlp"]),
                                        (CONV_BN, SHAPE["conv"]), (RESNET, SHAPE["conv"])],
                         ids=["mlp", "mlp_bn", "conv_bn", "resnet18"])
def test_prune_removes_dead_units_and_keeps_outputs_and_optimizer_state(cfg, shape):
    model, opt = trained(cfg, shape)
    kill(model, shape)
    model.eval()
    x = torch.randn(32, *shape) * 3
    sums = demon.activation_sums(model, torch.randn(64, *shape))
    keep = demon.keep_indices(demon.dead_units(sums, 0.0), sums)
    state = nets.opt_state_by_name(model, opt)
    pruned, new_state = nets.prune(model, keep, state)

    assert pruned.widths == [w - len(DEAD.get(i, [])) for i, w in enumerate(model.widths)]
    assert nets.n_params(pruned) < nets.n_params(model)
    assert nets.flops(pruned, shape) < nets.flops(model, shape)
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), model(x), rtol=1e-5, atol=1e-5)

    params = dict(pruned.named_parameters())
    assert set(new_state) == set(params)
    for name, st in new_state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert st[key].shape == params[name].shape, (name, key)
    # the moments of surviving units are carried over, not reset
    layer0 = next(n for n in new_state if n.endswith("weight") and n.startswith(("units.0", "blocks.0")))
    torch.testing.assert_close(new_state[layer0]["exp_avg"],
                               state[layer0]["exp_avg"].index_select(0, keep[0]))
    # and the optimizer accepts them
    opt2 = torch.optim.Adam(pruned.parameters(), lr=1e-2)
    nets.load_opt_state(pruned, opt2, new_state)
    pruned.train()
    pruned(x).sum().backward()
    opt2.step()


def test_checkpoint_round_trip_keeps_widths_weights_and_optimizer_state():
    model, opt = trained(CONV_BN, SHAPE["conv"])
    kill(model, SHAPE["conv"])
    sums = demon.activation_sums(model, torch.randn(64, *SHAPE["conv"]))
    pruned, state = nets.prune(model, demon.keep_indices(demon.dead_units(sums, 0.0), sums),
                               nets.opt_state_by_name(model, opt))
    back, back_state = nets.from_tensors(nets.to_tensors(pruned, state), CONV_BN, SHAPE["conv"], 4)
    assert back.widths == pruned.widths
    x = torch.randn(4, *SHAPE["conv"])
    torch.testing.assert_close(back.eval()(x), pruned.eval()(x))
    torch.testing.assert_close(back_state["head.weight"]["exp_avg"], state["head.weight"]["exp_avg"])


def test_a_layer_never_loses_its_last_unit():
    sums = [torch.zeros(5), torch.tensor([0.0, 2.0, 0.0])]
    keep = demon.keep_indices(demon.dead_units(sums, 0.0), sums)
    assert [k.tolist() for k in keep] == [[0], [1]]


def test_one_cycle_schedule_shape():
    peak, total, span = 2.0, 1000, 0.9
    lam = [demon.one_cycle(t, total, peak, span, 0.3, 25, 1e4) for t in range(total)]
    assert lam[0] == pytest.approx(peak / 25)
    top = int(np.argmax(lam))
    assert top == round(0.3 * span * total) and lam[top] == pytest.approx(peak)
    assert all(a <= b + 1e-12 for a, b in zip(lam[:top], lam[1:top + 1])), "rises monotonically"
    assert all(a >= b - 1e-12 for a, b in zip(lam[top:], lam[top + 1:])), "then decays monotonically"
    end = round(span * total)
    assert lam[end] < peak * 1e-4 and lam[-1] == lam[end], "~0 at the end of the span, flat after"


def test_noise_spares_dead_units_and_reaches_live_ones():
    model, _ = trained(MLP_BN, SHAPE["seq_mlp"])
    live = [torch.ones(w, dtype=torch.bool) for w in model.widths]
    live[0][[1, 4]] = False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    demon.add_noise(model, 1e-2, live, torch.Generator().manual_seed(0))
    after = dict(model.named_parameters())
    for name in ("units.0.lin.weight", "units.0.bn.weight", "units.0.bn.bias"):
        changed = (after[name] != before[name]).reshape(len(live[0]), -1).any(1)
        assert changed.tolist() == live[0].tolist(), name
    assert (after["head.weight"] != before["head.weight"]).all()


def test_magnitude_keeps_the_largest_units_of_each_layer():
    model, _ = trained(MLP_BN, SHAPE["seq_mlp"])
    with torch.no_grad():
        nets.unit_bn(model, 0).weight.copy_(torch.arange(12.0))
    keep = demon.top_k(demon.magnitude_scores(model, "auto"), [3, 10])
    assert keep[0].tolist() == [9, 10, 11] and keep[1].tolist() == list(range(10))


def test_fit_with_demp_prunes_during_training_and_keeps_training():
    from stages.demp.train import fit

    cfg = dict(data_seed=0, n_classes=4, n_train=256, n_test=10, size=6, noise=0.3, shift=1)
    x, y = map(torch.as_tensor, datasets.synthetic(cfg)["train"])
    torch.manual_seed(0)
    model = nets.build(dict(MLP_BN, fc=[32, 32]), x.shape[1:], 4)
    train = dict(optimizer="adam", lr=0.03, lr_schedule="constant", momentum=0.9, batch_size=32, log_every=20)
    demp = dict(span=0.9, warmup=0.3, div_factor=25, final_div_factor=1e4, noise_peak=1e-3,
                noise_mask="batch_live", pruning_freq=20)
    pruned, state, rows = fit(model, x, y, train, dict(eps=0.0, probe_size=128), 120, 0, demp=demp,
                              reg="l2", lam_max=0.3)
    assert sum(pruned.widths) < 64 and [r["step"] for r in rows] == [20, 40, 60, 80, 100, 120]
    assert rows[-1]["width"] == sum(pruned.widths) and rows[0]["lam"] > rows[-1]["lam"]
    params = dict(pruned.named_parameters())
    assert all(st["exp_avg"].shape == params[n].shape for n, st in state.items())


def test_global_allocation_keeps_the_total_and_every_layer():
    scores = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([5.0, 6.0, 7.0, 8.0])]
    assert demon.global_widths(scores, 4) == [1, 3]
    assert demon.global_widths(scores, 6) == [2, 4]


class Sleeper(torch.nn.Module):
    """A 'network' whose forward pass takes a known time and logs who ran when."""

    def __init__(self, name, ms, calls):
        super().__init__()
        self.name, self.ms, self.calls = name, ms, calls

    def forward(self, x):
        self.calls.append(self.name)
        time.sleep(self.ms / 1e3)
        return x


def test_latency_is_the_median_forward_time_with_the_models_taking_turns():
    calls = []
    fast, slow = Sleeper("fast", 5.0, calls), Sleeper("slow", 20.0, calls)
    ms = latency_ms([fast, slow], torch.zeros(1), repeats=5, warmup=1)
    assert calls == ["fast", "slow"] + ["fast", "slow"] * 5     # warm-up, then interleaved repeats
    assert ms[0] >= 5.0 and ms[1] >= 20.0                       # a sleep is never shorter than asked
    assert 2.0 < ms[1] / ms[0] < 5.0, ms                         # medians: one load spike does not move them


# --- data --------------------------------------------------------------------------------------------

def fake_cifar(n, rng):
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=n)


def check_cifar(splits, want):
    for split in ("train", "test"):
        x, y = splits[split]
        assert x.shape == (len(want[split][1]), 3, 32, 32) and x.dtype == np.float32
        np.testing.assert_allclose(x * 255, want[split][0].transpose(0, 3, 1, 2), atol=1e-3)
        np.testing.assert_array_equal(y, want[split][1])


def test_cifar_npz_loader(tmp_path):
    rng = np.random.default_rng(0)
    want = {"train": fake_cifar(6, rng), "test": fake_cifar(4, rng)}
    np.savez(tmp_path / "c.npz", x_train=want["train"][0], y_train=want["train"][1],
             x_test=want["test"][0], y_test=want["test"][1])
    check_cifar(datasets.cifar10({"path": str(tmp_path / "c.npz"), "format": "npz"}), want)


def test_cifar_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    classes = ["airplane", "bird", "cat"]   # numbered in sorted order, as torchvision's ImageFolder
    want = {}
    for split, n in (("train", 6), ("test", 3)):
        x, _ = fake_cifar(n, rng)
        y = np.arange(n) % len(classes)
        order = np.argsort(y, kind="stable")   # the loader reads class by class
        for i in range(n):
            folder = tmp_path / split / classes[y[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i:03d}.png")
        want[split] = (x[order], y[order])
    check_cifar(datasets.cifar10({"path": str(tmp_path), "format": "folder"}), want)


def test_cifar_pickle_loader(tmp_path):
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = fake_cifar(2, rng)
        xs.append(x)
        ys.append(y)
        with open(base / name, "wb") as fh:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(2, -1), b"labels": y.tolist()}, fh)
    want = {"train": (np.concatenate(xs[:5]), np.concatenate(ys[:5])), "test": (xs[5], ys[5])}
    check_cifar(datasets.cifar10({"path": str(tmp_path), "format": "pickle"}), want)


def test_bad_dataset_path_names_the_param(tmp_path):
    with pytest.raises(datasets.DatasetError, match=r"demp\.datasets\.cifar10\.path = '.*nope.npz' does not exist"):
        datasets.cifar10({"path": str(tmp_path / "nope.npz"), "format": "npz"})
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((1, 32, 32, 3)))
    with pytest.raises(datasets.DatasetError, match=r"demp\.datasets\.cifar10\.path.*lacks array"):
        datasets.cifar10({"path": str(tmp_path / "bad.npz"), "format": "npz"})


def test_synthetic_task_is_deterministic_and_balanced_enough():
    cfg = dict(data_seed=3, n_classes=4, n_train=400, n_test=40, size=8, noise=0.5, shift=1)
    a, b = datasets.synthetic(cfg), datasets.synthetic(cfg)
    np.testing.assert_array_equal(a["train"][0], b["train"][0])
    assert a["train"][0].shape == (400, 1, 8, 8) and np.bincount(a["train"][1]).min() > 50


# --- the tiny chain in process -----------------------------------------------------------------------
def test_tiny_chain_in_process_takes_run_identity_from_wildcards(tmp_path):
    """data -> train (dense, demp_l0) -> prune -> magnitude_l0 -> prune -> evaluate -> aggregate, each stage
    handed its job's wildcards; the run folders (a, b, c) carry no identity."""
    from stages.common.artifacts import read_provenance
    from stages.common.code import ROOT
    from stages.common.params import load_params
    from stages.common.stage import StageContext
    from stages.demp import aggregate, data, evaluate, magnitude, prune, train

    tiny = load_params(ROOT / "params.yaml", ROOT / "config/tiny.yaml")

    def get(dotted):
        node = tiny
        for part in dotted.split("."):
            node = node[part]
        return node

    def run(module, keys, inputs, outputs, **wildcards):
        keys = {a: f"demp.{d}" for a, d in keys.items()}
        module.run(StageContext(stage=module.__name__.removeprefix("stages."),
                                params={a: get(d) for a, d in keys.items()}, param_keys=keys, inputs=inputs,
                                outputs=outputs, seed_value=0, wildcards={k: str(v) for k, v in wildcards.items()}))

    job = {"dataset": "synthetic", "model": "convnet", "seed": 0}
    fit = {"dataset": "datasets.synthetic", "model": "models.convnet", "train": "train", "criterion": "criterion"}
    dataset = tmp_path / "dataset.parquet"
    run(data, {"dataset": "datasets.synthetic"}, {}, {"dataset": dataset}, dataset="synthetic")
    dense, demp, mag = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(train, fit, {"dataset": dataset}, {"model": dense / "trained.safetensors", "curve": dense / "curve.csv"}, **job)
    run(train, {**fit, "demon": "demon", "sweep": "sweep.convnet"}, {"dataset": dataset},
        {"model": demp / "trained.safetensors", "curve": demp / "curve.csv"}, lam=0, **job)
    assert (demp / "curve.csv").read_text().splitlines()[0] == ",".join(train.CURVE_COLUMNS)

    def prune_and_evaluate(folder, variant):
        run(prune, {"model": "models.convnet", "criterion": "criterion"},
            {"dataset": dataset, "model": folder / "trained.safetensors"},
            {"model": folder / "pruned.safetensors", "widths": folder / "widths.parquet"}, variant=variant, **job)
        run(evaluate, {"model": "models.convnet", "evaluate": "evaluate"},
            {"dataset": dataset, "model": folder / "pruned.safetensors", "reference": dense / "trained.safetensors",
             "curve": folder / "curve.csv"},
            {"table": folder / "eval.parquet", "metrics": folder / "metrics.json"}, variant=variant, **job)
        assert read_provenance(folder / "eval.parquet")["wildcards"]["variant"] == variant

    prune_and_evaluate(dense, "dense")
    prune_and_evaluate(demp, "demp_l0")
    run(magnitude, {**fit, "magnitude": "magnitude"},
        {"dataset": dataset, "dense": dense / "trained.safetensors", "target": demp / "pruned.safetensors"},
        {"model": mag / "trained.safetensors", "curve": mag / "curve.csv"}, lam=0, **job)
    prune_and_evaluate(mag, "magnitude_l0")
    run(aggregate, {"sweep": "sweep", "aggregate": "aggregate"},
        {"tables": [f / "eval.parquet" for f in (dense, demp, mag)], "curves": [demp / "curve.csv"]},
        {"table": tmp_path / "summary.parquet", "plot": tmp_path / "tradeoff.png", "metrics": tmp_path / "m.json",
         "claims": tmp_path / "claims.parquet"})
    summary = pq.read_table(tmp_path / "summary.parquet").to_pylist()
    assert [(r["dataset"], r["model"], r["variant"], r["method"]) for r in summary] == [
        ("synthetic", "convnet", v, v.split("_l")[0]) for v in ("dense", "demp_l0", "magnitude_l0")]
    assert summary[1]["lambda_max"] == get("demp.sweep.convnet.lambda_max")[0]
    assert summary[1]["units"] == summary[2]["units"], "magnitude is pruned to DemP's widths"
    claims = pq.read_table(tmp_path / "claims.parquet").to_pylist()
    assert [c["metric"].split(",")[0] for c in claims] == ["test accuracy", "test accuracy", "latency"]
    assert all(c["n"] <= 1 and not c["holds"] and c["detail"].startswith("not shown") for c in claims)
    assert "latency not measured" in claims[2]["detail"]          # the tiny profile skips timing
    point = json.loads((tmp_path / "m.json").read_text())["synthetic/convnet"]
    assert point["demp_wins"] == 0 and point["max_removed_within_tol"] == 0.0    # one seed shows nothing


def eval_rows(acc: dict, removed=0.5, latency=(0.5, 0.6, 0.55)) -> list[dict]:
    """Per-seed evaluation rows of one (dataset, model) with one sweep point."""
    out = []
    for variant, accs in acc.items():
        for seed, a in enumerate(accs):
            out.append({"dataset": "digits", "model": "mlp", "variant": variant, "seed": seed, "test_acc": a,
                        "removed_fraction": 0.0 if variant == "dense" else removed,
                        "latency_ratio": latency[seed] if variant == "demp_l0" else 1.0})
    return out


def test_claims_pair_variants_by_seed_and_test_dense_within_the_tolerance():
    from stages.demp.aggregate import claim_rows

    sweep = {"mlp": {"lambda_max": [0.03]}}
    rows = eval_rows({"dense": [0.980, 0.990, 0.985], "demp_l0": [0.978, 0.987, 0.984],
                      "magnitude_l0": [0.960, 0.975, 0.970]})
    within, beats, faster = claim_rows(rows, sweep, tol=0.01)[("digits", "mlp", 0.03)]
    assert within["effect"] == pytest.approx(-0.002) and within["holds"]       # 0.2 points below dense, tol 1
    assert beats["effect"] == pytest.approx(np.mean([0.018, 0.012, 0.014])) and beats["holds"]
    assert faster["effect"] == pytest.approx(0.55) and faster["holds"] and faster["n"] == 3
    assert "digits/mlp, lambda_max 0.03 (50% of units removed)" in within["claim"]
    # 3 points below dense: outside a 1-point tolerance, and magnitude wins in one seed of three
    rows = eval_rows({"dense": [0.980, 0.990, 0.985], "demp_l0": [0.950, 0.960, 0.955],
                      "magnitude_l0": [0.940, 0.965, 0.950]})
    within, beats, _ = claim_rows(rows, sweep, tol=0.01)[("digits", "mlp", 0.03)]
    assert not within["holds"] and not beats["holds"]


def test_method_of_a_variant():
    from stages.demp.aggregate import method_of

    assert [method_of(v) for v in ("dense", "demp_l2", "magnitude_l10")] == [
        ("dense", None), ("demp", 2), ("magnitude", 10)]


# --- the tiny chain through Snakemake ----------------------------------------------------------------
# 11 stage processes, 8 in a row on the critical path, each ~3 s of imports: ~45 s on an idle 2-core
# machine (longer when the cores are shared).

def test_tiny_demp_chain_builds(tmp_path, env):
    from tests.test_workflow import copy_project, sh

    copy_project(tmp_path)
    env = dict(env, PYTHONPATH=str(tmp_path))
    sh(["snakemake", "--cores", "2", "--scheduler", "greedy", "demp_all",
        "--configfile", "params.yaml", "config/tiny.yaml"], tmp_path, env)
    summary = pq.read_table(tmp_path / "results/demp/summary.parquet").to_pylist()
    assert {r["method"] for r in summary} == {"dense", "demp", "magnitude"}
    demp_row = next(r for r in summary if r["method"] == "demp")
    mag_row = next(r for r in summary if r["method"] == "magnitude")
    assert demp_row["units"] == mag_row["units"], "magnitude is pruned to DemP's widths"
    run = tmp_path / "results/demp/synthetic/convnet/demp_l0/seed0"
    widths = pq.read_table(run / "widths.parquet").to_pylist()
    assert all(w["pruned"] <= w["trained"] <= w["full"] for w in widths)
    assert (tmp_path / "results/demp/tradeoff.png").stat().st_size > 0
    assert math.isnan(demp_row["latency_ratio"]), "the tiny profile skips timing (deterministic)"
    claims = pq.read_table(tmp_path / "results/demp/claims.parquet").to_pylist()
    assert len(claims) == 3 and {c["method"] for c in claims} == {"demp"}
