"""Soft Q-learning on the fragment-molecule MDP: exact path counts, an exactly normalised terminal
distribution, and convergence to a known answer on a vocabulary small enough to enumerate: GSQL with
the max-ent backward policy samples x with probability R(x)/Z, naive soft Q-learning does not."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.chem.blocks import Block
from stages.envs.fragments import STOP, FragmentMDP
from stages.rl.frag_soft_q import (
    CachedReward,
    FragSoftQ,
    FragSoftQConfig,
    PathCounts,
    likelihood_metrics,
    sample_metrics,
    train,
)
from stages.rl.frag_task import evaluation_states, make_task

# chain pieces: CC has two stems, so trees of three blocks have several construction orders
BLOCKS = [Block("CC", (0, 1)), Block("C1CC1", (0,)), Block("Cl", (0,))]


def atoms_reward(mols):
    return np.array([m.GetNumAtoms() for m in mols], dtype=np.float64) / 4


def enumerate_sequences(mdp):
    """Every action sequence from the empty state (a tree search): terminal states with the number of
    distinct sequences reaching each non-done state."""
    paths, stack = {}, [(mdp.initial_state(), ())]
    while stack:
        s, seq = stack.pop()
        if s.blocks:
            paths[s] = paths.get(s, 0) + 1
        for a in np.flatnonzero(mdp.action_mask(s)):
            if a != STOP:
                stack.append((mdp.step(s, int(a)), seq + (int(a),)))
    return paths


@pytest.fixture(scope="module")
def mdp():
    return FragmentMDP(BLOCKS, max_blocks=3, fp_bits=32)


def test_path_counts_match_brute_force_enumeration(mdp):
    paths = enumerate_sequences(mdp)
    counts = PathCounts(mdp)
    assert max(paths.values()) > 1
    assert all(counts(s) == n for s, n in paths.items())


def test_terminal_distribution_is_exactly_normalised(mdp):
    torch.manual_seed(0)
    agent = FragSoftQ(mdp, FragSoftQConfig(hidden=16), CachedReward(mdp, atoms_reward))
    states = list(enumerate_sequences(mdp))
    assert math.isclose(np.exp(agent.log_prob_terminal(states)).sum(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("temperature, expected", [("fixed", lambda n: 0.5),
                                                   ("decoupled", lambda n: 0.5 / max(math.log(n), 1))])
def test_temperature_per_state(mdp, temperature, expected):
    agent = FragSoftQ(mdp, FragSoftQConfig(hidden=8, tau=0.5, temperature=temperature),
                      CachedReward(mdp, atoms_reward))
    states = [mdp.initial_state(), mdp.step(mdp.initial_state(), 1 + int(mdp.start_pairs[0]))]
    masks = mdp.action_masks(states)
    assert torch.allclose(agent.tau(masks), torch.tensor([expected(m.sum()) for m in masks],
                                                         dtype=torch.float64))


def trained_on_enumerable(mdp, backward):
    torch.set_num_threads(1)
    cfg = FragSoftQConfig(iterations=400, batch_size=16, hidden=64, lr=3e-3, epsilon=0.1,
                          backward=backward, beta=2.0, eval_every=100)
    agent, rows = train(mdp, CachedReward(mdp, atoms_reward), cfg, seed=0)
    assert [row["step"] for row in rows] == [100, 200, 300, 400]
    states = list(enumerate_sequences(mdp))
    p = np.exp(agent.log_prob_terminal(states))
    R = atoms_reward([mdp.to_mol(s) for s in states]) ** 2
    return agent, states, p, R


def test_gsql_with_the_maxent_backward_policy_samples_r_over_z(mdp):
    agent, states, p, R = trained_on_enumerable(mdp, "maxent")
    n = np.array([PathCounts(mdp)(s) for s in states], float)
    assert np.abs(p - R / R.sum()).sum() < 0.05
    assert np.abs(p - n * R / (n * R).sum()).sum() > 0.15          # not what naive soft Q-learning samples
    # the likelihood check used where the space cannot be enumerated: here its answer is known
    lik = likelihood_metrics(agent, states)
    assert lik["test_molecules"] == len(states)
    assert lik["pearson_logp_logr"] > 0.99 and lik["spearman_logp_logr"] > 0.95
    # V(s0) estimates log Z = 3.88 (naive soft Q-learning's would be log sum n R = 5.11)
    assert abs(lik["v_s0"] - math.log(R.sum())) < 0.2


def test_naive_soft_q_samples_n_times_r_instead(mdp):
    agent, states, p, R = trained_on_enumerable(mdp, "none")
    n = np.array([PathCounts(mdp)(s) for s in states], float)
    to_target, to_nr = np.abs(p - R / R.sum()).sum(), np.abs(p - n * R / (n * R).sum()).sum()
    assert to_target > 0.15 and to_nr < to_target / 2, (to_target, to_nr)   # ~0.26 vs ~0.09 at 400 its
    assert likelihood_metrics(agent, states)["pearson_logp_logr"] < 0.99


SEH = Path(__file__).resolve().parents[1] / "data/external/seh_proxy/bengio2021flow_proxy.pkl.gz"


def test_seh_task_sampled_and_likelihood_metrics():
    task = {"seh_proxy": str(SEH), "max_blocks": 2, "fp_bits": 32, "beta": 4.0, "eval_samples": 12,
            "mode_threshold": 0.5, "test_molecules": 6, "test_seed": 3, "test_stop_prob": 0.5}
    mdp, reward = make_task(task)
    agent, _ = train(mdp, reward, FragSoftQConfig(iterations=3, batch_size=4, hidden=16, backward="maxent",
                                                  beta=task["beta"]), seed=0)
    rows, sampled = sample_metrics(agent, task["eval_samples"], torch.Generator().manual_seed(1), 0.5)
    assert len(rows) == 12 and all(0 < r["reward"] <= 100 and 1 <= r["n_blocks"] <= 2 for r in rows)
    assert 0 < sampled["unique_fraction"] <= 1 and sampled["mean_reward"] > 0
    states = evaluation_states(mdp, task)
    assert states == evaluation_states(mdp, task)            # the shared test set is fixed by its seed
    lik = likelihood_metrics(agent, states)
    # each distinct molecule counts once, whether it comes done or not and however often it is listed
    again = likelihood_metrics(agent, [replace(x, done=not x.done) for x in states] + states[:3])
    assert lik == again and lik["test_molecules"] == len({replace(x, done=False) for x in states})
    # the correlation is the policy's exact log P against the task's log reward, on these molecules
    log_p, log_r = agent.log_prob_terminal(states), task["beta"] * np.log(reward(states))
    assert lik["pearson_logp_logr"] == pytest.approx(float(np.corrcoef(log_p, log_r)[0, 1]), abs=1e-6)
