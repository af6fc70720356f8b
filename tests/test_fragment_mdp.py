"""Fragment-molecule MDP (stages/envs/fragments.py) on the seh_frag and a BRICS vocabulary."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from stages.chem.blocks import Block, brics_blocks, nci_smiles, seh_frag_blocks
from stages.envs.fragments import STOP, FragmentMDP

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "data" / "external" / "seh_proxy" / "bengio2021flow_proxy.pkl.gz"
SEH = seh_frag_blocks()
IDX = {b.smiles: i for i, b in enumerate(SEH)}


@pytest.fixture(scope="module")
def mdp():
    return FragmentMDP(SEH, max_blocks=5)


@pytest.fixture(scope="module")
def rollouts(mdp):
    return mdp.random_rollouts(500, np.random.default_rng(0), stop_prob=0.2)


def build(mdp, steps):
    """Apply steps (None or (block smiles of an existing node, its open stem), block smiles, block
    stem); nodes are found by block, since canonicalization renumbers them."""
    s = mdp.initial_state()
    for target, smiles, stem in steps:
        if target is None:
            slot = 0
        else:
            (slot,) = [k for k, (node, st) in enumerate(s.open_stems)
                       if SEH[s.blocks[node]].smiles == target[0] and st == target[1]]
        s = mdp.step(s, mdp.encode_action(slot, IDX[smiles], stem))
    return s


def test_action_layout(mdp):
    assert mdp.n_pairs == sum(len(b.stems) for b in SEH)
    assert mdp.n_slots == 4 * 6 - 2 * 3  # (max_blocks - 1) cyclohexanes
    assert mdp.n_actions == 1 + mdp.n_slots * mdp.n_pairs
    a = mdp.encode_action(3, IDX["c1ccccc1"], 4)
    assert mdp.decode_action(a) == (3, IDX["c1ccccc1"], 4) and mdp.decode_action(STOP) is None


def test_start_state(mdp):
    s0 = mdp.initial_state()
    mask = mdp.action_mask(s0)
    assert not mask[STOP] and mask.sum() == len(SEH)
    with pytest.raises(ValueError, match="illegal"):
        mdp.step(s0, STOP)
    s1 = mdp.step(s0, int(np.flatnonzero(mask)[IDX["c1ccccc1"]]))
    assert s1.blocks == (IDX["c1ccccc1"],) and len(s1.open_stems) == 6 and mdp.n_parents(s1) == 1


def test_terminal_and_full_states(mdp):
    s = build(mdp, [(None, "C", 0), (("C", 0), "C", 0)])  # ethane: no open stem left
    mask = mdp.action_mask(s)
    assert mask[STOP] and mask.sum() == 1
    done = mdp.step(s, STOP)
    assert mdp.is_terminal(done) and not mdp.action_mask(done).any()
    hexane = IDX["C1CCCCC1"]
    full = mdp.make_state([hexane] * 5, [(0, k, k + 1, 0) for k in range(4)])
    assert full.n_blocks == mdp.max_blocks and full.open_stems
    assert mdp.action_mask(full).sum() == 1  # only stop at max_blocks


def test_rollouts_give_valid_distinct_molecules(mdp, rollouts):
    assert all(s.done and 1 <= s.n_blocks <= mdp.max_blocks for s in rollouts)
    smiles = []
    for s in rollouts:
        mol = mdp.to_mol(s)
        for atom in mol.GetAtoms():  # valences RDKit accepts, H counts non-negative
            assert atom.GetTotalNumHs() >= 0
        smi = Chem.MolToSmiles(mol)
        assert Chem.MolFromSmiles(smi) is not None, smi
        smiles.append(smi)
    assert len(set(smiles)) > 100
    assert max(s.n_blocks for s in rollouts) == mdp.max_blocks


def test_rollouts_are_deterministic(mdp):
    a = mdp.random_rollouts(20, np.random.default_rng(7), 0.3)
    b = mdp.random_rollouts(20, np.random.default_rng(7), 0.3)
    c = mdp.random_rollouts(20, np.random.default_rng(8), 0.3)
    assert a == b and a != c


@pytest.mark.parametrize("max_blocks", [1, 2, 3])
def test_max_blocks_respected(max_blocks):
    small = FragmentMDP(SEH, max_blocks=max_blocks)
    states = small.random_rollouts(100, np.random.default_rng(1), stop_prob=0.0)
    assert max(s.n_blocks for s in states) == max_blocks


def test_every_legal_action_gives_a_valid_molecule(mdp):
    """Each usable block stem at an open slot of a few states, and random legal actions elsewhere."""
    rng = np.random.default_rng(2)
    states = [replace(s, done=False) for s in mdp.random_rollouts(30, rng, 0.3)]
    states = [s for s in states if s.n_blocks < mdp.max_blocks and s.open_stems]
    for s in states[:3]:
        for a in range(1, 1 + mdp.n_pairs):
            mdp.to_mol(mdp.step(s, a))
    for s in states:
        legal = np.flatnonzero(mdp.action_mask(s))
        for a in rng.choice(legal, size=min(40, legal.size), replace=False):
            child = mdp.step(s, int(a))
            assert child.n_blocks == s.n_blocks + (a != STOP)
            mdp.to_mol(child)
            assert (s, int(a)) in mdp.parents(child) or a == STOP


def test_state_is_canonical(mdp):
    """Br-CC-Cl built starting from any of its blocks, or given in any node order, is one state."""
    a = build(mdp, [(None, "Br", 0), (("Br", 0), "CC", 0), (("CC", 1), "Cl", 0)])
    b = build(mdp, [(None, "Cl", 0), (("Cl", 0), "CC", 1), (("CC", 0), "Br", 0)])
    c = build(mdp, [(None, "CC", 0), (("CC", 1), "Cl", 0), (("CC", 0), "Br", 0)])
    br, cc, cl = IDX["Br"], IDX["CC"], IDX["Cl"]
    d = mdp.make_state([cl, br, cc], [(2, 0, 1, 0), (0, 0, 2, 1)])
    assert a == b == c == d and hash(a) == hash(d)
    assert mdp.to_smiles(a) == "ClCCBr"
    e = mdp.make_state([cl, br, cc], [(2, 1, 1, 0), (0, 0, 2, 0)])  # Br and Cl swapped: other state
    assert e != a and mdp.to_smiles(e) == "ClCCBr"


@pytest.mark.parametrize("blocks,bonds,match", [
    (["CC", "Br"], [], "bonds"),
    (["CC", "Br"], [(0, 0, 1, 1)], "usable stem"),
    (["CC", "Br", "Cl"], [(0, 0, 1, 0), (0, 0, 2, 0)], "at most one bond"),
    (["CC", "Br", "Cl"], [(0, 0, 1, 0), (1, 0, 1, 0)], "at most one bond"),
    (["C1CCCCC1"] * 6, [(0, k, k + 1, 0) for k in range(5)], "max_blocks"),
])
def test_make_state_rejects_bad_trees(mdp, blocks, bonds, match):
    with pytest.raises(ValueError, match=match):
        mdp.make_state([IDX[b] for b in blocks], bonds)


@pytest.mark.parametrize("steps,n_parents", [
    ([(None, "c1ccccc1", 0), (("c1ccccc1", 0), "c1ccccc1", 0)], 1),  # symmetric dimer: one pair
    ([(None, "c1ccccc1", 0), (("c1ccccc1", 0), "c1ccccc1", 1)], 2),  # stems differ: two
    ([(None, "c1ccccc1", 0), (("c1ccccc1", 0), "C", 0)], 2),  # toluene: remove either block
    ([(None, "CC", 0), (("CC", 0), "Br", 0), (("CC", 1), "Br", 0)], 2),  # chain: two leaves
    ([(None, "C1CCCCC1", 0), (("C1CCCCC1", 0), "C", 0), (("C1CCCCC1", 1), "C", 0),
      (("C1CCCCC1", 2), "C", 0)], 3),  # star
    ([(None, "c1ccccc1", 0), (("c1ccccc1", 0), "C1CCCCC1", 0), (("C1CCCCC1", 1), "C", 0)], 2),
])
def test_n_parents_on_hand_built_trees(mdp, steps, n_parents):
    s = build(mdp, steps)
    assert mdp.n_parents(s) == n_parents
    for parent, action in mdp.parents(s):
        assert mdp.step(parent, action) == s
    assert mdp.n_parents(mdp.step(s, STOP)) == 1


def test_parents_invert_step(mdp, rollouts):
    for s in rollouts[:150]:
        s = replace(s, done=False)
        parents = mdp.parents(s)
        assert len(parents) >= 1 and len(set(parents)) == len(parents)
        assert all(mdp.step(p, a) == s for p, a in parents)
        leaves = sum(1 for i in range(s.n_blocks)
                     if sum(i in (u, v) for u, _, v, _ in s.bonds) <= 1)
        assert len(parents) <= leaves


def test_features(mdp, rollouts):
    states = [mdp.initial_state()] + rollouts[:50]
    f = mdp.features(states)
    assert f.shape == (51, mdp.feature_dim) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(f, mdp.features(states))
    distinct = {mdp.to_smiles(s) for s in rollouts[:50]}
    assert len({row.tobytes() for row in f}) >= len(distinct) + 1
    assert f[0].sum() == 1  # empty state: only the "empty" flag


def test_brics_vocabulary_builds_valid_molecules():
    blocks = brics_blocks(nci_smiles(200), max_blocks=40)
    mdp = FragmentMDP(blocks, max_blocks=4)
    assert any(len(set(b.stems)) < len(b.stems) for b in blocks)  # an atom with two stems
    for s in mdp.random_rollouts(100, np.random.default_rng(3), 0.2):
        assert Chem.MolFromSmiles(mdp.to_smiles(s)) is not None


def test_block_without_usable_stem_is_rejected():
    with pytest.raises(ValueError, match="no stem"):
        FragmentMDP([Block("C", (0,)), Block("FC(F)(F)F", (1,))], max_blocks=3)


def test_empty_vocabulary_or_bad_max_blocks():
    with pytest.raises(ValueError):
        FragmentMDP([], max_blocks=3)
    with pytest.raises(ValueError, match="max_blocks"):
        FragmentMDP(SEH, max_blocks=0)


def test_assembled_molecules_score_finite(mdp, rollouts):
    from stages.chem.seh_proxy import load_seh_proxy, seh_task_reward
    raw = load_seh_proxy(WEIGHTS).raw_scores([mdp.to_mol(s) for s in rollouts[:128]])
    assert np.isfinite(raw).all() and raw.std() > 0
    reward = seh_task_reward(raw)
    assert ((reward >= 1e-4) & (reward <= 100)).all()
