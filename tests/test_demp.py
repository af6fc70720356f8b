"""DemP: dead-unit criterion, real structural pruning (outputs and optimizer state preserved), the
one-cycle schedule, asymmetric noise, the CIFAR-10 loaders on generated samples, and the tiny chain."""
import functools
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


def test_validation_split_comes_from_train_and_is_disjoint_from_train_and_test():
    cfg = dict(data_seed=3, n_classes=4, n_train=200, n_test=50, size=6, noise=0.5, shift=1)
    raw = datasets.synthetic(cfg)
    splits = datasets.split_validation(raw, 0.2, seed=3)
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [160, 40, 50]
    key = {s: {x.tobytes() for x in splits[s][0]} for s in splits}    # noisy images: all distinct
    assert not key["val"] & key["train"] and not key["val"] & key["test"]
    assert key["val"] | key["train"] == {x.tobytes() for x in raw["train"][0]}, "val is cut from train"
    np.testing.assert_array_equal(splits["test"][0], raw["test"][0])
    with pytest.raises(datasets.DatasetError, match="val_fraction"):
        datasets.split_validation(raw, 0.001, seed=0)


# --- stages in process -------------------------------------------------------------------------------

@functools.cache
def tiny_params() -> dict:
    """params.yaml + config/tiny.yaml, only the demp block, validated against its own schema."""
    import yaml

    from stages.common.code import ROOT
    from stages.common.params import deep_merge, schema_at, validate

    base, tiny = (yaml.safe_load((ROOT / f).read_text())["demp"] for f in ("params.yaml", "config/tiny.yaml"))
    demp = deep_merge(base, tiny)
    validate(demp, "demp (tiny)", schema_at("demp"), "demp")
    return {"demp": demp}


def tiny_param(dotted: str):
    node = tiny_params()
    for part in dotted.split("."):
        node = node[part]
    return node


def run_stage(module, keys, inputs, outputs, **wildcards):
    """Run one stage module in process at the tiny profile; `keys`: alias -> key under demp."""
    from stages.common.stage import StageContext

    keys = {a: f"demp.{d}" for a, d in keys.items()}
    module.run(StageContext(stage=module.__name__.removeprefix("stages."),
                            params={a: tiny_param(d) for a, d in keys.items()}, param_keys=keys, inputs=inputs,
                            outputs=outputs, seed_value=0, wildcards={k: str(v) for k, v in wildcards.items()}))


def test_final_prune_keeps_the_magnitude_baselines_widths_and_prunes_demp(tmp_path):
    """Units that die while the magnitude baseline is fine-tuned stay: cutting them would compare DemP
    against a smaller network. The same checkpoint as a DemP run loses them."""
    from stages.common.artifacts import save_checkpoint
    from stages.demp import data, prune

    dataset = tmp_path / "dataset.parquet"
    run_stage(data, {"dataset": "datasets.synthetic"}, {}, {"dataset": dataset}, dataset="synthetic")
    model_cfg = tiny_param("demp.models.convnet")
    x, y = data.load_splits(dataset)["train"]
    torch.manual_seed(0)
    model = nets.build(model_cfg, x.shape[1:], int(y.max()) + 1)
    kill(model, tuple(x.shape[1:]), {0: [1], 2: [0, 3]})
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run/trained.safetensors", nets.to_tensors(model), {})
    widths = {}
    for variant in ("magnitude_l0", "demp_l0"):
        out = tmp_path / variant
        run_stage(prune, {"model": "models.convnet", "criterion": "criterion"},
                  {"dataset": dataset, "model": tmp_path / "run/trained.safetensors"},
                  {"model": out / "pruned.safetensors", "widths": out / "widths.parquet"},
                  dataset="synthetic", model="convnet", variant=variant, seed=0)
        widths[variant] = pq.read_table(out / "widths.parquet").to_pylist()
    full = model_cfg["conv"] + model_cfg["fc"]
    assert [w["pruned"] for w in widths["magnitude_l0"]] == full
    assert [w["live"] for w in widths["magnitude_l0"]] == [full[0] - 1, full[1], full[2] - 2]
    assert [w["pruned"] for w in widths["demp_l0"]] == [full[0] - 1, full[1], full[2] - 2]


# --- the tiny chain in process -----------------------------------------------------------------------
def test_tiny_chain_in_process_takes_run_identity_from_wildcards(tmp_path):
    """data -> train (dense, demp_l0) -> prune -> magnitude_l0 -> prune -> evaluate -> aggregate, each stage
    handed its job's wildcards; the run folders (a, b, c) carry no identity."""
    from stages.common.artifacts import read_provenance
    from stages.demp import aggregate, data, evaluate, magnitude, prune, train

    get, run = tiny_param, run_stage
    job = {"dataset": "synthetic", "model": "convnet", "seed": 0}
    fit = {"dataset": "datasets.synthetic", "model": "models.convnet", "train": "train", "criterion": "criterion"}
    dataset = tmp_path / "dataset.parquet"
    run(data, {"dataset": "datasets.synthetic"}, {}, {"dataset": dataset}, dataset="synthetic")
    splits = data.load_splits(dataset)
    n_train = get("demp.datasets.synthetic.n_train")
    assert len(splits["val"][1]) == round(get("demp.datasets.synthetic.val_fraction") * n_train)
    assert len(splits["train"][1]) + len(splits["val"][1]) == n_train
    dense, demp, mag = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(train, fit, {"dataset": dataset}, {"model": dense / "trained.safetensors", "curve": dense / "curve.csv"}, **job)
    run(train, {**fit, "demon": "demon", "sweep": "sweep.convnet"}, {"dataset": dataset},
        {"model": demp / "trained.safetensors", "curve": demp / "curve.csv"}, lam=0, **job)
    assert (demp / "curve.csv").read_text().splitlines()[0] == ",".join(train.CURVE_COLUMNS)
    curve = evaluate.read_curve(demp / "curve.csv")
    assert all(b["elapsed_s"] > a["elapsed_s"] > 0 for a, b in zip(curve, curve[1:]))
    for a, b in zip(curve, curve[1:]):    # steps/s since the previous row, from the same clock
        assert b["steps_per_s"] == pytest.approx((b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"]),
                                                 rel=1e-3)

    def prune_and_evaluate(folder, variant):
        run(prune, {"model": "models.convnet", "criterion": "criterion"},
            {"dataset": dataset, "model": folder / "trained.safetensors"},
            {"model": folder / "pruned.safetensors", "widths": folder / "widths.parquet"}, variant=variant, **job)
        run(evaluate, {"model": "models.convnet", "evaluate": "evaluate", "demon": "demon"},
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
    run(aggregate, {"sweep": "sweep", "aggregate": "aggregate", "magnitude": "magnitude"},
        {"tables": [f / "eval.parquet" for f in (dense, demp, mag)], "curves": [demp / "curve.csv"]},
        {"table": tmp_path / "summary.parquet", "plot": tmp_path / "tradeoff.png", "metrics": tmp_path / "m.json",
         "claims": tmp_path / "claims.parquet"})
    summary = pq.read_table(tmp_path / "summary.parquet").to_pylist()
    assert [(r["dataset"], r["model"], r["variant"], r["method"]) for r in summary] == [
        ("synthetic", "convnet", v, v.split("_l")[0]) for v in ("dense", "demp_l0", "magnitude_l0")]
    assert summary[1]["lambda_max"] == get("demp.sweep.convnet.lambda_max")[0]
    assert summary[1]["units"] == summary[2]["units"], "magnitude is pruned to DemP's widths"
    assert summary[1]["chosen"] and summary[2]["chosen"] and not summary[0]["chosen"]   # the only point
    steps, freq = get("demp.train.steps"), get("demp.demon.pruning_freq")
    for folder in (dense, demp):
        speeds = pq.read_table(folder / "eval.parquet").column("period_steps_per_s").to_pylist()[0]
        assert len(speeds) == math.ceil(steps / freq) and min(speeds) > 0
    assert summary[1]["steps_per_s_first"] > 0 and summary[1]["steps_per_s_last"] > 0
    claims = pq.read_table(tmp_path / "claims.parquet").to_pylist()
    assert [c["metric"].split(",")[0] for c in claims] == ["test accuracy", "test accuracy", "latency",
                                                           "steps/s last / first pruning period"]
    assert all("(val-chosen)" in c["claim"] for c in claims)
    assert all(c["n"] <= 1 and not c["holds"] and c["detail"].startswith("not shown") for c in claims)
    assert "latency not measured" in claims[2]["detail"]          # the tiny profile skips timing
    point = json.loads((tmp_path / "m.json").read_text())["synthetic/convnet"]
    assert point["demp_wins"] == 0 and point["chosen"]["lambda_max"] == get("demp.sweep.convnet.lambda_max")[0]


def eval_rows(acc: dict, removed=0.5, latency=(0.5, 0.6, 0.55), val: dict | None = None,
              speed: dict | None = None) -> list[dict]:
    """Per-seed evaluation rows of one (dataset, model); `acc` (test) and `val`: variant -> per seed;
    `removed`: a number or {variant: number}; `speed`: variant -> steps/s per period (every seed)."""
    out = []
    for variant, accs in acc.items():
        for seed, a in enumerate(accs):
            cut = removed.get(variant, 0.0) if isinstance(removed, dict) else (0.0 if variant == "dense" else removed)
            out.append({"dataset": "digits", "model": "mlp", "variant": variant, "seed": seed, "test_acc": a,
                        "val_acc": (val or acc)[variant][seed], "removed_fraction": cut,
                        "latency_ratio": latency[seed] if variant.startswith("demp") else 1.0,
                        "period_steps_per_s": (speed or {}).get(variant, [10.0, 10.0])})
    return out


def test_claims_pair_variants_by_seed_and_test_dense_within_the_tolerance():
    from stages.demp.aggregate import claim_rows

    sweep = {"mlp": {"lambda_max": [0.03]}}
    rows = eval_rows({"dense": [0.980, 0.990, 0.985], "demp_l0": [0.978, 0.987, 0.984],
                      "magnitude_l0": [0.960, 0.975, 0.970]})
    within, beats, faster, _ = claim_rows(rows, sweep, tol=0.01)[("digits", "mlp", 0.03)]
    assert within["effect"] == pytest.approx(-0.002) and within["holds"]       # 0.2 points below dense, tol 1
    assert beats["effect"] == pytest.approx(np.mean([0.018, 0.012, 0.014])) and beats["holds"]
    assert faster["effect"] == pytest.approx(0.55) and faster["holds"] and faster["n"] == 3
    assert "digits/mlp lambda_max 0.03, 50% units removed" in within["claim"]
    # 3 points below dense: outside a 1-point tolerance, and magnitude wins in one seed of three
    rows = eval_rows({"dense": [0.980, 0.990, 0.985], "demp_l0": [0.950, 0.960, 0.955],
                      "magnitude_l0": [0.940, 0.965, 0.950]})
    within, beats, _, _ = claim_rows(rows, sweep, tol=0.01)[("digits", "mlp", 0.03)]
    assert not within["holds"] and not beats["holds"]


def test_lambda_is_chosen_on_validation_where_validation_and_test_disagree():
    """Two sweep points; l1 removes more. Case A: on validation l1 falls 2 points below dense (outside the
    1-point tolerance) while on test it is level with dense: the choice must be l0. Case B, the mirror:
    l1 is level on validation and 3 points down on test: l1 is chosen, and its test claim fails."""
    from stages.demp.aggregate import choose, claim_rows

    sweep = {"mlp": {"lambda_max": [0.03, 0.1]}}
    test = {"dense": [0.98, 0.98, 0.98], "demp_l0": [0.975, 0.976, 0.977], "demp_l1": [0.98, 0.981, 0.979]}
    val = {"dense": [0.97, 0.97, 0.97], "demp_l0": [0.968, 0.969, 0.97], "demp_l1": [0.95, 0.951, 0.949]}
    removed = {"demp_l0": 0.4, "demp_l1": 0.8}
    rows = eval_rows(test, val=val, removed=removed)
    pick = choose(rows, sweep, tol=0.01)[("digits", "mlp")]
    assert pick["lambda_max"] == 0.03 and "within 0.01" in pick["why"]
    assert pick["val_acc"] == pytest.approx(0.969) and pick["dense_val_acc"] == pytest.approx(0.97)
    claims = claim_rows(rows, sweep, 0.01, {("digits", "mlp"): pick})
    assert "(val-chosen)" in claims[("digits", "mlp", 0.03)][0]["claim"]
    assert "(val-chosen)" not in claims[("digits", "mlp", 0.1)][0]["claim"]
    # a choice by test accuracy would have been l1 (level with dense and 80% removed)
    assert claims[("digits", "mlp", 0.1)][0]["holds"]

    rows = eval_rows({**test, "demp_l1": [0.95, 0.951, 0.949]},
                     val={**val, "demp_l1": [0.97, 0.971, 0.969]}, removed=removed)
    pick = choose(rows, sweep, tol=0.01)[("digits", "mlp")]
    assert pick["lambda_max"] == 0.1
    within = claim_rows(rows, sweep, 0.01, {("digits", "mlp"): pick})[("digits", "mlp", 0.1)][0]
    assert "(val-chosen)" in within["claim"] and within["effect"] == pytest.approx(-0.03) and not within["holds"]

    # nothing within tolerance on validation: the most accurate point on validation
    rows = eval_rows(test, val={**val, "demp_l0": [0.90] * 3, "demp_l1": [0.93] * 3}, removed=removed)
    pick = choose(rows, sweep, tol=0.01)[("digits", "mlp")]
    assert pick["lambda_max"] == 0.1 and pick["why"].startswith("no point within")


def test_aggregate_refuses_a_magnitude_baseline_of_other_widths():
    from stages.demp.aggregate import WidthMismatch, check_widths

    rows = [{"dataset": "digits", "model": "mlp", "variant": v, "seed": 0, "widths": w}
            for v, w in (("dense", [256, 256]), ("demp_l0", [100, 40]), ("magnitude_l0", [100, 40]))]
    check_widths(rows, "per_layer")
    rows[2]["widths"] = [100, 38]                      # two units re-pruned after fine-tuning
    with pytest.raises(WidthMismatch, match=r"magnitude_l0 seed 0: magnitude widths \[100, 38\] vs DemP \[100, 40\]"):
        check_widths(rows, "per_layer")
    rows[2]["widths"] = [110, 30]                      # a global threshold moves units between layers
    check_widths(rows, "global")
    with pytest.raises(WidthMismatch):
        check_widths(rows, "per_layer")


def test_steps_per_second_per_pruning_period_from_the_curve():
    from stages.demp.evaluate import period_speeds

    # 10 steps per row; periods of 20 steps taking 2 s, 1 s and (the 10-step tail) 0.25 s
    elapsed = {10: 1.0, 20: 2.0, 30: 2.5, 40: 3.0, 50: 3.25}
    curve = [{"step": k, "elapsed_s": v} for k, v in elapsed.items()]
    assert period_speeds(curve, 20) == pytest.approx([10.0, 20.0, 40.0])
    # a period boundary without its own row (25) falls back on the last row before it
    assert period_speeds(curve, 25) == pytest.approx([20 / 2.0, 30 / 1.25])


def test_training_speedup_claim_divides_out_the_dense_runs_drift():
    from stages.demp.aggregate import claim_rows

    sweep = {"mlp": {"lambda_max": [0.03]}}
    acc = {"dense": [0.98] * 3, "demp_l0": [0.97] * 3, "magnitude_l0": [0.97] * 3}
    # the machine got 10% faster for every run (dense: 1.1x); DemP's last period is 2.2x its first in
    # seeds 0 and 1 (2x from pruning, whatever the seed's overall speed) and 2x in seed 2 (1.82x)
    rows = eval_rows(acc, speed={"dense": [10.0, 10.0, 11.0]})
    demp = {r["seed"]: r for r in rows if r["variant"] == "demp_l0"}
    demp[0]["period_steps_per_s"] = [8.0, 12.0, 17.6]
    demp[1]["period_steps_per_s"] = [4.0, 6.0, 8.8]
    demp[2]["period_steps_per_s"] = [8.0, 12.0, 16.0]
    speed = claim_rows(rows, sweep, tol=0.01)[("digits", "mlp", 0.03)][3]
    assert speed["effect"] == pytest.approx(np.mean([2.0, 2.0, 16 / 8 / 1.1])) and speed["n"] == 3
    assert speed["holds"] and "speeds up" in speed["claim"]
    rows = eval_rows(acc, speed={"dense": [10.0, 10.0], "demp_l0": [10.0, 10.0]})
    assert not claim_rows(rows, sweep, tol=0.01)[("digits", "mlp", 0.03)][3]["holds"]


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
    assert len(claims) == 4 and {c["method"] for c in claims} == {"demp"}
    evals = {r["variant"]: r for r in (pq.read_table(p).to_pylist()[0]
                                       for p in (tmp_path / "results/demp").glob("*/*/*/seed0/eval.parquet"))}
    assert evals["magnitude_l0"]["widths"] == evals["demp_l0"]["widths"], "equal widths, layer by layer"
