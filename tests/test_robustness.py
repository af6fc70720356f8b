"""Robustness scaling: tasks, tokenizer, FLOP count vs torch's counter, the prefix cache, GCG, resume,
bad input, and the tiny chain (data -> tokenizer -> train -> attack / advtrain -> aggregate) in-process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stages.common.artifacts import read_provenance
from stages.common.code import ROOT
from stages.common.params import load_params, validate
from stages.common.stage import StageContext
from stages.robustness import attacks as A
from stages.robustness import model as M
from stages.robustness import tasks
from stages.robustness import tok as T
from stages.robustness import training as TR

SIZES = {"train": 60, "val": 20, "attack": 10}


def tiny_params() -> dict:
    return load_params(ROOT / "params.yaml", ROOT / "config" / "tiny.yaml")["robustness"]


@pytest.fixture(scope="module")
def tokenizer():
    rows = tasks.generate("password_match", SIZES, 0, 50, (1, 3), (1, 2))
    rows += tasks.generate("word_length", SIZES, 1, 50, (1, 3), (1, 2))
    return T.train_bpe([r["text"] for r in rows], 400)


def test_tasks_are_labelled_right_and_splits_disjoint():
    rows = tasks.generate("password_match", {"train": 300, "val": 50, "attack": 50}, 3, 40, (1, 2), (1, 2))
    assert [r["split"] for r in rows].count("val") == 50
    texts = {s: {r["text"] for r in rows if r["split"] == s} for s in tasks.SPLITS}
    assert not (texts["train"] & texts["val"]) and not (texts["train"] & texts["attack"])
    for r in rows:
        sys_pw = r["content"].split("System password: ")[1].split("\n")[0]
        user_pw = r["content"].split("User password: ")[1].split("\n")[0]
        assert r["label"] == int(sys_pw == user_pw) and r["label_name"] == ("DENIED", "GRANTED")[r["label"]]
        assert r["text"] == r["instructions"] + r["content"] + r["chunk"] + "\nAnswer:"
    assert 0.3 < np.mean([r["label"] for r in rows]) < 0.7
    wl = tasks.generate("word_length", SIZES, 1, 50, (1, 3))
    for r in wl:
        a, b = (line.split(": ")[1] for line in r["content"].strip().split("\n"))
        assert r["label"] == (0 if len(a) >= len(b) else 1)  # ties go to FIRST, as in the reference
    assert tasks.generate("word_length", SIZES, 1, 50, (1, 3)) == wl


def test_corpus_loader_checks_columns_and_labels(tmp_path):
    good = tmp_path / "spam.csv"
    good.write_text("text,label\n" + "".join(f"message {i},{'spam' if i % 2 else 'ham'}\n" for i in range(12)))
    rows = tasks.load_corpus(good, ["ham", "spam"], {"train": 6, "val": 3, "attack": 3}, 0)
    assert len(rows) == 12 and {r["label_name"] for r in rows} == {"ham", "spam"}
    assert all(r["chunk"].startswith("message") and r["label_name"] == ["ham", "spam"][r["label"]] for r in rows)
    bad = tmp_path / "nolabel.csv"
    bad.write_text("text,target\nhello,1\n")
    with pytest.raises(tasks.CorpusError, match=r"nolabel.csv: missing column\(s\) \['label'\]"):
        tasks.load_corpus(bad, ["ham", "spam"], SIZES, 0)
    odd = tmp_path / "odd.parquet"
    import pandas as pd

    pd.DataFrame({"text": ["a", "b"], "label": ["ham", "eggs"]}).to_parquet(odd)
    with pytest.raises(tasks.CorpusError, match=r"odd.parquet: column 'label' has value\(s\) \['eggs'\]"):
        tasks.load_corpus(odd, ["ham", "spam"], SIZES, 0)


def test_tokenizer_refuses_unknown_characters_and_filters_attacks(tokenizer):
    assert T.encode(tokenizer, "System password: ab") != []
    with pytest.raises(T.TokenizerError, match="corpus.csv row 7: .*'é'"):
        T.encode(tokenizer, "a café", "corpus.csv row 7")
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randint(2, tokenizer.get_vocab_size(), (10,), generator=gen).tolist() for _ in range(200)]
    kept = [d for d in draws if T.survives_roundtrip(tokenizer, d)]
    assert 0 < len(kept) < len(draws)  # the filter really drops merging sequences, and keeps others
    for d in kept:
        assert T.encode(tokenizer, tokenizer.decode(d)) == d


def small_model(vocab: int, hidden: int = 32, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return M.build({"hidden": hidden, "layers": layers, "heads": 4}, vocab, 0, 96).eval()


def test_analytic_flops_match_torch_flop_counter():
    model = small_model(100)
    cfg = M.config_dict(model)
    pm = A.PromptModel(model, list(range(5, 25)), [30, 31, 32])
    attack = torch.randint(2, 100, (7, 10))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        pm.logits_ids(attack)
    assert fc.get_total_flops() == M.forward_flops(cfg, 7, 13, 20, attention=False)
    for p in model.parameters():
        p.requires_grad_(False)
    W = model.gpt_neox.embed_in.weight
    with FlopCounterMode(display=False) as fc:
        one_hot = torch.nn.functional.one_hot(attack[0], 100).float().requires_grad_(True)
        embeds = torch.cat([one_hot @ W, model.gpt_neox.embed_in(pm.after)])[None]
        loss = torch.nn.functional.cross_entropy(pm.logits_embeds(embeds), torch.tensor([1]))
        torch.autograd.grad(loss, one_hot)
    assert fc.get_total_flops() == M.gcg_grad_flops(cfg, 13, 20, 10, attention=False)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters())
    with FlopCounterMode(display=False) as fc:
        TR.train_step(model, opt, [list(range(3, 3 + n)) for n in (20, 25, 30)], [0, 1, 0], 0, 1e-3, 1.0, 0)
    assert fc.get_total_flops() == M.train_step_flops(cfg, [20, 25, 30], attention=False)
    # a language-model pretraining step: the vocabulary head on every position
    seqs = [list(range(3, 23)), list(range(5, 25))]
    cfg_lm = TR.TrainConfig(1, 2, 1e-3, 1, 0.0, 1, 1.0, lm_steps=1)
    with FlopCounterMode(display=False) as fc:
        rows = TR.lm_pretrain(model, seqs, 0, cfg_lm, torch.Generator().manual_seed(0))
    assert fc.get_total_flops() == M.lm_step_flops(cfg, 2, 20, attention=False)
    assert rows[-1]["flops"] == M.lm_step_flops(cfg, 2, 20)
    # attention adds 4 n (past + n) d per layer to the forward
    assert M.forward_flops(cfg, 1, 13, 20) - M.forward_flops(cfg, 1, 13, 20, attention=False) == 2 * 4 * 13 * 33 * 32


def test_language_model_pretraining_lowers_its_loss_and_shapes_the_classifier():
    """LM pretraining trains the classifier's own transformer (shared), and its loss falls on a
    learnable text (a repeated pattern), from ~log(vocab) toward 0."""
    model = small_model(40)
    before = {k: v.clone() for k, v in model.gpt_neox.state_dict().items()}
    seqs = [[3 + (i + j) % 8 for j in range(24)] for i in range(8)]
    cfg = TR.TrainConfig(1, 8, 3e-3, 5, 0.0, 10, 1.0, lm_steps=60)
    rows = TR.lm_pretrain(model, seqs, 0, cfg, torch.Generator().manual_seed(0))
    assert rows[0]["loss"] > 2.0 and rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    after = model.gpt_neox.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "lm_head")


def test_prefix_cache_gives_the_full_forward_logits():
    model = small_model(100)
    seg = {"head": list(range(5, 20)), "chunk": [40, 41, 42], "answer": [50, 51]}
    attack = torch.randint(2, 100, (3, 4))
    for position in ("suffix", "prefix"):
        before, after = A.split_prompt(seg, position)
        with torch.no_grad():
            cached = A.PromptModel(model, before, after).logits_ids(attack)
            full = M.logits_of(model, [TR.attacked_ids(seg, a, position) for a in attack.tolist()], 0)
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_gcg_gradient_predicts_the_loss_of_token_swaps():
    """The one-hot gradient GCG ranks swaps by is a first-order estimate of the true loss change."""
    from scipy.stats import spearmanr

    model = small_model(60, hidden=32, layers=2)
    for p in model.parameters():
        p.requires_grad_(False)
    pm = A.PromptModel(model, list(range(2, 20)), [40, 41])
    attack = torch.tensor([7, 8, 9, 10])
    grad = A.token_gradients(pm, attack, 0)
    with torch.no_grad():
        base = A._wrong_label_loss(pm.logits_ids(attack[None]), 0)[0]
        for pos in (0, 3):
            swaps = attack.expand(60, -1).clone()
            swaps[:, pos] = torch.arange(60)
            true = A._wrong_label_loss(pm.logits_ids(swaps), 0) - base
            assert spearmanr((grad[pos] - grad[pos, attack[pos]]).numpy(), true.numpy())[0] > 0.5


def test_attacks_keep_filtered_tokens_and_count_asr(tokenizer):
    model = small_model(tokenizer.get_vocab_size(), hidden=16, layers=1)
    for p in model.parameters():
        p.requires_grad_(False)
    allowed = torch.ones(tokenizer.get_vocab_size(), dtype=torch.bool)
    allowed[list(T.special_ids(tokenizer))] = False
    survives = lambda ids: T.survives_roundtrip(tokenizer, ids)  # noqa: E731
    rows = tasks.generate("password_match", SIZES, 0, 50, (1, 3), (1, 2))[:3]
    for kind in ("gcg", "random_token"):
        cfg = A.AttackConfig(kind, "suffix", n_tokens=6, iterations=3, candidates=8, top_k=64)
        for i, r in enumerate(rows):
            seg = TR.segments(tokenizer, r, "test")
            label = int(M.predict(model, [TR.clean_ids(seg)], 0)[0])
            before, after = A.split_prompt(seg, "suffix")
            res = A.run_attack(
                model,
                before,
                after,
                label,
                cfg,
                allowed,
                [allowed.nonzero()[5].item()] * 6,
                survives,
                torch.Generator().manual_seed(i),
            )
            assert len(res.attack_ids) == 6 and survives(res.attack_ids)
            assert not set(res.attack_ids) & T.special_ids(tokenizer)
            assert 0 < res.flops <= res.iterations * res.flops_per_iteration
    assert A.asr_curve([1, 3, -1, 2], 4) == [0.0, 0.25, 0.5, 0.75, 0.75]


def test_attack_longer_than_context_is_refused(tokenizer):
    model = small_model(tokenizer.get_vocab_size())
    cfg = A.AttackConfig("gcg", "suffix", n_tokens=90, iterations=1, candidates=2, top_k=4)
    allowed = torch.ones(tokenizer.get_vocab_size(), dtype=torch.bool)
    with pytest.raises(ValueError, match=r"attacks.x.n_tokens = 90: .* exceed the model's context of 96"):
        A.run_attack(
            model,
            list(range(5, 15)),
            [20],
            0,
            cfg,
            allowed,
            [3] * 90,
            lambda ids: True,
            torch.Generator(),
            where="attacks.x.n_tokens = 90",
        )


def test_pool_sampling_favours_recent_and_high_loss():
    from stages.robustness.advtrain import sample_weights

    w = sample_weights(np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.1, 0.1, 0.1, 0.1]), 0.5, 0.0)
    assert np.all(np.diff(w) > 0) and w.sum() == pytest.approx(1.0)
    w = sample_weights(np.zeros(4), np.array([0.4, 0.1, 0.3, 0.2]), 0.5, 1.0)
    assert list(np.argsort(w)) == [1, 3, 2, 0]


def test_bad_param_is_rejected_naming_the_key():
    import copy

    params = copy.deepcopy(load_params(ROOT / "params.yaml", ROOT / "config" / "tiny.yaml"))
    params["robustness"]["attacks"]["gcg_suffix"]["n_tokens"] = 0
    with pytest.raises(Exception, match="n_tokens"):
        validate(params, source="test")


# ---- the chain, in-process (the Snakemake build of the same chain takes minutes: process start-up) ----


def ctx_for(stage: str, params: dict, keys: dict, inputs: dict, outputs: dict, seed=None, wildcards=None):
    p = tiny_params()

    def get(dotted):
        value = p
        for part in dotted.split(".")[1:]:
            value = value[part]
        return value

    return StageContext(
        stage=f"robustness.{stage}",
        params={a: get(d) for a, d in keys.items()} | params,
        param_keys=keys | {a: f"robustness.{a}" for a in params},
        inputs=inputs,
        outputs=outputs,
        seed_value=seed,
        wildcards=wildcards or {},
    )


def run_stage(module: str, ctx: StageContext) -> None:
    import importlib

    torch.manual_seed(ctx.seed)
    importlib.import_module(f"stages.robustness.{module}").run(ctx)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("robustness")
    p = tiny_params()
    task = sorted(p["tasks"])[0]
    examples = d / "examples.parquet"
    run_stage(
        "data",
        ctx_for("data", {}, {"task": f"robustness.tasks.{task}"}, {}, {"examples": examples}, wildcards={"task": task}),
    )
    tokfile = d / "tokenizer.json"
    run_stage(
        "tokenizer",
        ctx_for(
            "tokenizer",
            {},
            {"tokenizer": "robustness.tokenizer"},
            {"examples": [examples]},
            {"tokenizer": tokfile, "metrics": d / "tm.json"},
        ),
    )
    runs = {}
    for size in ("s1", "s5"):
        for seed in p["seeds"]:
            r = d / size / f"seed{seed}"
            wc = {"task": task, "size": size, "seed": str(seed)}
            out = {
                "model": r / "model.safetensors",
                "config": r / "config.json",
                "curve": r / "train_curve.csv",
                "metrics": r / "train_metrics.json",
            }
            run_stage(
                "train",
                ctx_for(
                    "train",
                    {},
                    {
                        "size": f"robustness.sizes.{size}",
                        "train": "robustness.train",
                        "max_positions": "robustness.max_positions",
                    },
                    {"examples": examples, "tokenizer": tokfile},
                    out,
                    seed,
                    wc,
                ),
            )
            adv = {
                "model_out": r / "adv_model.safetensors",
                "config_out": r / "adv_config.json",
                "curve": r / "adv_curve.csv",
                "metrics": r / "adv_metrics.json",
            }
            common = {"examples": examples, "tokenizer": tokfile}
            run_stage(
                "advtrain",
                ctx_for(
                    "advtrain",
                    {},
                    {"advtrain": "robustness.advtrain", "attack": "robustness.attacks.gcg_suffix"},
                    {**common, "model": out["model"], "config": out["config"]},
                    adv,
                    seed,
                    wc,
                ),
            )
            for phase, (m, c) in {
                "clean": (out["model"], out["config"]),
                "adv": (adv["model_out"], adv["config_out"]),
            }.items():
                res = {"results": r / f"attack_{phase}.parquet", "metrics": r / f"attack_{phase}_metrics.json"}
                run_stage(
                    "attack",
                    ctx_for(
                        "attack",
                        {},
                        {"evaluate": "robustness.evaluate", "attacks": "robustness.attacks"},
                        {**common, "model": m, "config": c},
                        res,
                        seed,
                        wc | {"phase": phase},
                    ),
                )
            runs[size, seed] = r
    agg = {
        "claims": d / "claims.parquet",
        "table": d / "summary.parquet",
        "curves": d / "curves.parquet",
        "plot": d / "plot.png",
        "metrics": d / "metrics.json",
    }
    runs_list = list(runs.values())
    run_stage(
        "aggregate",
        ctx_for(
            "aggregate",
            {},
            {"aggregate": "robustness.aggregate"},
            {
                "models": [r / "model.safetensors" for r in runs_list],
                "adv_models": [r / "adv_model.safetensors" for r in runs_list],
                "attacks": [r / f"attack_{ph}.parquet" for r in runs_list for ph in ("clean", "adv")],
            },
            agg,
        ),
    )
    return {"dir": d, "runs": runs, "agg": agg, "examples": examples, "tokenizer": tokfile, "task": task}


def test_tiny_chain_writes_claims_per_seed(chain):
    claims = pq.read_table(chain["agg"]["claims"]).to_pylist()
    n_seeds = len(tiny_params()["seeds"])
    assert len(claims) >= 8 and all(c["n"] == n_seeds and c["method"] == "robustness" for c in claims)
    summary = pq.read_table(chain["agg"]["table"]).to_pandas()
    assert set(summary.phase) == {"clean", "adv"} and set(summary.attack) == set(tiny_params()["attacks"])
    assert summary.asr.between(0, 1).all()
    prov = read_provenance(chain["runs"]["s1", 0] / "attack_adv.parquet")
    assert prov["wildcards"]["phase"] == "adv"
    curve = (chain["runs"]["s1", 0] / "adv_curve.csv").read_text().splitlines()
    assert (
        curve[0].startswith("step,round,iterations,attack_asr")
        and len(curve) == 1 + 1 + tiny_params()["advtrain"]["rounds"]
    )
    metrics = json.loads(chain["agg"]["metrics"].read_text())
    assert metrics["claims"] == len(claims)


def test_interrupted_attack_resumes_at_the_next_example(chain, monkeypatch):
    r = chain["runs"]["s1", 0]
    wc = {"task": chain["task"], "size": "s1", "seed": "0", "phase": "clean"}
    inputs = {
        "examples": chain["examples"],
        "tokenizer": chain["tokenizer"],
        "model": r / "model.safetensors",
        "config": r / "config.json",
    }
    keys = {"evaluate": "robustness.evaluate", "attacks": "robustness.attacks"}
    out = {"results": r / "resumed.parquet", "metrics": r / "resumed.json"}
    real, calls = A.run_attack, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "run_attack", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_stage("attack", ctx_for("attack", {}, keys, inputs, out, 0, wc))
    monkeypatch.setattr(A, "run_attack", real)
    done = json.loads((r / "resumed.parquet.resume.safetensors.json").read_text())["provenance"]["progress"]["rows"]
    assert sum(len(v) for v in done.values()) >= 2
    run_stage("attack", ctx_for("attack", {}, keys, inputs, out, 0, wc))
    assert pq.read_table(out["results"]).to_pylist() == pq.read_table(r / "attack_clean.parquet").to_pylist()
    assert not (r / "resumed.parquet.resume.safetensors").exists()


def test_rules_parse_with_snakemake():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "robustness_all", "--configfile", "params.yaml", "config/tiny.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": f"{ROOT / '.venv/bin'}:/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("stage", ["train", "advtrain"])
def test_interrupted_training_resumes_to_the_same_model(chain, monkeypatch, stage):
    from safetensors.torch import load_file

    r = chain["runs"]["s1", 0]
    wc = {"task": chain["task"], "size": "s1", "seed": "0"}
    common = {"examples": chain["examples"], "tokenizer": chain["tokenizer"]}
    if stage == "train":
        keys = {"size": "robustness.sizes.s1", "train": "robustness.train", "max_positions": "robustness.max_positions"}
        inputs, ref = common, r / "model.safetensors"
        out = {"model": r / "re.safetensors", "config": r / "re.json", "curve": r / "re.csv", "metrics": r / "rem.json"}
        stop_at = tiny_params()["train"]["log_every"] + 2  # a few steps after the first save
    else:
        keys = {"advtrain": "robustness.advtrain", "attack": "robustness.attacks.gcg_suffix"}
        inputs, ref = (
            {**common, "model": r / "model.safetensors", "config": r / "config.json"},
            r / "adv_model.safetensors",
        )
        out = {
            "model_out": r / "re.safetensors",
            "config_out": r / "re.json",
            "curve": r / "re.csv",
            "metrics": r / "rem.json",
        }
        stop_at = tiny_params()["advtrain"]["examples_per_epoch"] // tiny_params()["advtrain"]["batch_size"] + 1
    real, calls = TR.train_step, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(TR, "train_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, ctx_for(stage, {}, keys, inputs, out, 0, wc))
    monkeypatch.setattr(TR, "train_step", real)
    assert (r / "re.safetensors.resume.safetensors").exists()
    run_stage(stage, ctx_for(stage, {}, keys, inputs, out, 0, wc))
    a, b = load_file(str(r / "re.safetensors")), load_file(str(ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (r / "re.csv").read_text() == (
        ref.parent / ("train_curve.csv" if stage == "train" else "adv_curve.csv")
    ).read_text()


def test_advtrain_learning_rate_warms_up_over_the_first_steps(chain, monkeypatch):
    """The adversarial rounds start from fresh optimizer moments, so their lr ramps up over `warmup`
    steps (counted across rounds) before it stays at `lr`."""
    r = chain["runs"]["s1", 0]
    cfg = tiny_params()["advtrain"]
    steps_per_round = -(-cfg["examples_per_epoch"] // cfg["batch_size"])
    real, lrs = TR.train_step, []

    def recording(model, opt, seqs, labels, pad_id, lr, *rest):
        lrs.append(lr)
        return real(model, opt, seqs, labels, pad_id, lr, *rest)

    monkeypatch.setattr(TR, "train_step", recording)
    out = {"model_out": r / "w.safetensors", "config_out": r / "w.json", "curve": r / "w.csv", "metrics": r / "wm.json"}
    keys = {"advtrain": "robustness.advtrain", "attack": "robustness.attacks.gcg_suffix"}
    inputs = {"examples": chain["examples"], "tokenizer": chain["tokenizer"], "model": r / "model.safetensors",
              "config": r / "config.json"}
    run_stage("advtrain", ctx_for("advtrain", {}, keys, inputs, out, 0, {"task": chain["task"], "size": "s1",
                                                                           "seed": "0"}))
    assert len(lrs) == cfg["rounds"] * steps_per_round and cfg["warmup"] >= 1
    expected = [cfg["lr"] * min(1.0, (s + 1) / (cfg["warmup"] + 1)) for s in range(len(lrs))]
    assert lrs == pytest.approx(expected) and lrs[0] < lrs[-1] == cfg["lr"]


def test_a_local_pythia_folder_is_what_the_paper_profile_trains(chain, tmp_path):
    """`tokenizer.pretrained` and `sizes.<s>.pretrained` load a local Pythia-shaped checkpoint (a causal-LM
    GPT-NeoX saved by transformers, as the hub's Pythia folders are) with no download: the tokenizer is
    the folder's, the classifier starts from the folder's transformer weights with a fresh head."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = T.load(chain["tokenizer"])
    folder = tmp_path / "pythia-tiny"
    torch.manual_seed(3)
    lm = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    lm.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))

    out = {"tokenizer": tmp_path / "tok.json", "metrics": tmp_path / "tok_metrics.json"}
    run_stage("tokenizer", ctx_for("tokenizer", {"tokenizer": {"vocab_size": 512, "pretrained": str(folder)}}, {},
                                   {"examples": [chain["examples"]]}, out))
    assert T.load(out["tokenizer"]).get_vocab() == tok.get_vocab()
    assert json.loads(out["metrics"].read_text())["source"] == str(folder)

    size = {"hidden": 16, "layers": 1, "heads": 2, "init": 0.1, "pretrained": str(folder)}
    model = M.build(size, tok.get_vocab_size(), T.pad_id(tok), 128)
    assert torch.equal(model.gpt_neox.embed_in.weight, lm.gpt_neox.embed_in.weight)
    assert model.score.out_features == M.NUM_LABELS
    r = tmp_path / "run"
    r.mkdir()
    trained = {"model": r / "model.safetensors", "config": r / "config.json", "curve": r / "curve.csv",
               "metrics": r / "metrics.json"}
    run_stage("train", ctx_for("train", {"size": size}, {"train": "robustness.train",
                                                          "max_positions": "robustness.max_positions"},
                               {"examples": chain["examples"], "tokenizer": out["tokenizer"]}, trained, 0,
                               {"task": chain["task"], "size": "pythia", "seed": "0"}))
    assert json.loads(trained["config"].read_text())["hidden_size"] == 16
    with pytest.raises(OSError):
        M.build({**size, "pretrained": str(tmp_path / "missing")}, tok.get_vocab_size(), 0, 128)
